"""Frozen DINOv2 patch features as a PANet encoder: a ViT-S/14 or ViT-B/14 from timm, its patch tokens
reshaped to a feature map at output stride 14 (the other encoders' is 8).

DINOv2 (Oquab et al., 2023, arXiv:2304.07193) was trained without labels on LVD-142M, and its paper
evaluates segmentation on frozen features; so here: no parameter is trained and the module stays in
eval mode. The weights are timm's copies of Meta's release, on the Hugging Face hub.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .files import load_torch_file


class FoundationBackbone(NamedTuple):
    """A DINOv2 model: timm's name for it, the Hugging Face repo timm downloads it from, the size
    of that repo's model.safetensors in MB (10^6 bytes), its architecture, and the mean and std its inputs are
    normalised with (timm's pretrained config gives ImageNet's, as DINOv2's own transforms do)."""

    timm_name: str
    hf_repo: str
    size_mb: float
    arch: str  # in DINOv2's paper's words
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


# Sizes as listed on each repo's "Files and versions" page (huggingface.co/<repo>/tree/main,
# model.safetensors, 2023 upload), and equal to 4 bytes times timm's parameter count
# (22,056,192 and 86,579,712 parameters: 88.2 MB and 346.3 MB).
FOUNDATION_BACKBONES = {
    "dinov2_vits14": FoundationBackbone("vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
                                        88.2, "ViT-S/14"),
    "dinov2_vitb14": FoundationBackbone("vit_base_patch14_dinov2.lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
                                        346.0, "ViT-B/14"),
}
HF_WEIGHTS_FILE = "model.safetensors"  # the file timm fetches first from these repos
PATCH_SIZE = 14


class FoundationWeightsUnavailable(RuntimeError):
    """The DINOv2 weights are neither in the Hugging Face cache nor downloadable (e.g. offline)."""


def _backbone(name: str) -> FoundationBackbone:
    if name not in FOUNDATION_BACKBONES:
        raise ValueError(f"unknown foundation backbone {name!r}; choose one of {', '.join(FOUNDATION_BACKBONES)}")
    return FOUNDATION_BACKBONES[name]


def input_side(size: int, stride: int = PATCH_SIZE) -> int:
    """The multiple of `stride` nearest to an image side `size` (ties go up), at least `stride`:
    417 -> 420, 400 -> 406, 21 -> 28.

    A protocol's images are resized to this side before the encoder (DINOv2 cuts them into 14 x 14
    patches, none partial); its masks stay at image resolution, and predictions are compared there.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be positive, got size={size}, stride={stride}")
    return max(stride, (size + stride // 2) // stride * stride)


def patch_coverage(mask: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """The fraction of each patch's pixels inside a mask: (..., H, W), both sides multiples of `patch`
    -> (..., H / patch, W / patch). A token's weight in PANet's masked average pooling when the
    tokens are upsampled to the mask by nearest interpolation (chapter 10)."""
    H, W = mask.shape[-2:]
    if H % patch or W % patch:
        raise ValueError(f"a {H} x {W} mask does not split into {patch} x {patch} patches: fit the image first "
                         f"(DINOv2Encoder.fit, input_side)")
    x = mask if mask.is_floating_point() else mask.float()  # float64 stays float64
    blocks = x.unflatten(-2, (H // patch, patch)).unflatten(-1, (W // patch, patch))
    return blocks.mean(dim=(-3, -1))


class DINOv2Encoder(nn.Module):
    """A frozen DINOv2 ViT: (B, 3, H, W) -> (B, C, H/14, W/14), C = 384 (ViT-S/14) or 768 (ViT-B/14).

    The input is normalised with `mean` and `std` (ImageNet's, as timm's pretrained_cfg gives them)
    and resized to sides that are multiples of 14 (`fit`, `input_side`); timm's `dynamic_img_size` interpolates the position
    embeddings, learned on a 37 x 37 grid (518 px), to each input's grid. Built with random weights:
    `load_dinov2_weights` (or `build_dinov2`) loads DINOv2's.
    """

    stride = PATCH_SIZE
    # The smallest image side with 2 patches a side after `fit` (21 -> 28): on a 1 x 1 feature map the
    # foreground and background prototypes would be the same vector.
    min_size = 21

    def __init__(self, name: str = "dinov2_vits14") -> None:
        super().__init__()
        import timm

        backbone = _backbone(name)
        self.name = name
        self.vit = timm.create_model(backbone.timm_name, pretrained=False, dynamic_img_size=True)
        if tuple(self.vit.patch_embed.patch_size) != (self.stride, self.stride):
            raise ValueError(f"{backbone.timm_name} has patches of {self.vit.patch_embed.patch_size}, not 14 x 14")
        self.out_channels: int = self.vit.embed_dim
        self.mean: tuple[float, ...] = tuple(self.vit.pretrained_cfg["mean"])
        self.std: tuple[float, ...] = tuple(self.vit.pretrained_cfg["std"])
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "DINOv2Encoder":
        # Frozen features are the eval-mode ones whatever the parent model does: a PANet's .train()
        # must not switch on drop-path or dropout in here.
        return super().train(False)

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) resized (bilinear, antialiased) to the nearest sides that are multiples of
        14 (`input_side`), e.g. 417 -> 420; unchanged where they already are. Masks stay at the image's
        own resolution: PANet's pooling brings the features to them."""
        side = (input_side(x.shape[-2]), input_side(x.shape[-1]))
        if side == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=side, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), normalised -> (B, C, H'/14, W'/14) patch features, H' and W' the sides `fit`
        resizes to (timm's dynamic_img_size would otherwise drop the pixels past the last whole patch)."""
        x = self.fit(x)
        h, w = x.shape[-2:]
        tokens = self.vit.forward_features(x)  # (B, prefix + h*w, C): class token first, patches row by row
        patches = tokens[:, self.vit.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(x.shape[0], self.out_channels, h // self.stride, w // self.stride)


def _which_file(name: str) -> str:
    """The advice that ends a weights error: the files that hold `name`'s weights."""
    return f"give {FOUNDATION_BACKBONES[name].hf_repo}'s {HF_WEIGHTS_FILE} or Meta's {name}_pretrain.pth"


def _read_state_dict(path: Path, source: str, fix: str) -> dict:
    """A weights file as a dict of tensors: .safetensors, or a torch.save file (.pth, .bin). Errors
    are one line: `source` (how the file was named) first, `fix` (what to do instead) last."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # SafetensorError, or an OSError for a truncated file
            reason = (str(error).strip().splitlines() or [""])[0][:160]
            raise ValueError(f"{source}: not a readable .safetensors file ({reason}); {fix}") from None
    try:
        state = load_torch_file(path, weights_only=True)
    except ValueError as error:  # its message names the file and says why (only --pretrained files get here)
        raise ValueError(f"--pretrained: {error}; {fix}") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))  # a training checkpoint wraps it
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} holds no state dict of tensors; {fix}")
    return state


def _load_state_dict(encoder: DINOv2Encoder, state: dict, source: str) -> None:
    """Load a state dict in timm's layout, Meta's original one, or a DINOv2Encoder's; every key must match."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if state and all(k.startswith("vit.") for k in state):  # saved from a DINOv2Encoder
        state = {k[len("vit."):]: v for k, v in state.items()}
    own = encoder.vit.state_dict()
    # timm's own filter: renames Meta's layout (mask_token dropped, w12/w3 -> fc1/fc2) and resamples
    # position embeddings saved for another grid; a timm-layout file passes through unchanged.
    try:
        state = checkpoint_filter_fn(dict(state), encoder.vit)
    except Exception as error:
        raise ValueError(f"{source}: not {encoder.name} weights (timm could not convert them: "
                         f"{type(error).__name__})") from None
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        problems = [f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in
                    (("tensors missing", missing), ("unexpected", unexpected), ("of other shapes", wrong)) if keys]
        raise ValueError(f"{source}: not {encoder.name} weights ({'; '.join(problems)}); {_which_file(encoder.name)}")
    encoder.vit.load_state_dict(state, strict=True)


def _resolves(url: str) -> bool:
    """Whether the host of `url` has an address (DNS answers at once, or fails at once, offline)."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except (OSError, UnicodeError):
        return False


@contextlib.contextmanager
def _quiet(logger: str):
    """A library's logger silenced below ERROR for the duration (the hub logs each retry as a warning)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _download_reason(error: Exception, resolves: bool) -> str:
    """Why the hub download failed, in a few words (the hub's own messages run over several lines);
    `resolves`: whether the hub's host had an address when the download was tried."""
    from huggingface_hub import constants
    from huggingface_hub.utils import LocalEntryNotFoundError  # also where huggingface_hub < 0.24 has it

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if not resolves:
        return f"{constants.ENDPOINT} cannot be resolved (no internet?) and the file is not in the cache"
    if isinstance(error, LocalEntryNotFoundError):
        return "the Hugging Face hub cannot be reached and the file is not in the cache"
    first = (str(error).strip().splitlines() or [""])[0][:120]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_dinov2_weights(encoder: DINOv2Encoder, pretrained: bool | str | Path) -> None:
    """Load DINOv2's weights into `encoder`. True: from the Hugging Face hub, downloaded once into its
    cache (`huggingface_hub.constants.HF_HUB_CACHE`); a path: a local .safetensors, .pth or .bin file
    in timm's layout (as on the hub) or Meta's (dinov2_vits14_pretrain.pth). False: nothing is loaded."""
    if pretrained is False:
        return
    if pretrained is not True:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        source = f"--pretrained {path}"
        _load_state_dict(encoder, _read_state_dict(path, source, _which_file(encoder.name)), source)
        return
    from huggingface_hub import constants, hf_hub_download

    backbone = FOUNDATION_BACKBONES[encoder.name]
    # A host that does not resolve (no network) is no reason to wait out the hub's five retries and print
    # their warnings: look in the cache only. Other failures (a proxy, the hub down) retry quietly.
    resolves = not constants.HF_HUB_OFFLINE and _resolves(constants.ENDPOINT)
    try:
        # The file timm itself loads first from these repos, fetched by the hub client that timm uses,
        # into the same cache. Not timm's load_state_dict_from_hf: before timm 1.0.29 it torch.loads
        # a .safetensors file it is asked for, and left to choose, it reads an offline failure as "no
        # .safetensors here" and tries pytorch_model.bin as well, waiting out the hub's retries twice.
        with _quiet("huggingface_hub"):
            path = Path(hf_hub_download(backbone.hf_repo, HF_WEIGHTS_FILE, local_files_only=not resolves))
    except Exception as error:  # offline, no network, proxy, hub error: all end the same way
        raise FoundationWeightsUnavailable(
            f"cannot get the {encoder.name} weights ({backbone.hf_repo}, {HF_WEIGHTS_FILE}, {backbone.size_mb:g} MB) "
            f"into the Hugging Face cache {constants.HF_HUB_CACHE}: {_download_reason(error, resolves)}; connect to the "
            f"internet once, or pass --pretrained PATH with a local copy of the file (--pretrained false: random "
            f"weights, not a result)") from None
    source = f"{backbone.hf_repo}/{HF_WEIGHTS_FILE} (cached at {path})"
    _load_state_dict(encoder, _read_state_dict(path, source, "delete it to download it again"), source)


def build_dinov2(name: str, pretrained: bool | str | Path = False) -> DINOv2Encoder:
    """A frozen DINOv2 encoder, "dinov2_vits14" or "dinov2_vitb14", with DINOv2's weights unless
    `pretrained` is False (random weights: for tests, never for a result)."""
    _backbone(name)
    encoder = DINOv2Encoder(name)
    load_dinov2_weights(encoder, pretrained)
    return encoder
