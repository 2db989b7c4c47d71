"""Feature encoders, each registered in ENCODERS with its input statistics, stride and smallest input:
at output stride 8 PANet's VGG-16, a dilated ResNet-50, the deep-stem ResNet-50 of MLC and SSP and a
small CPU CNN; at stride 14 the frozen DINOv2 ViTs of foundation.py."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .data import IMAGENET_MEAN, IMAGENET_STD
from .files import load_torch_file
from .foundation import FOUNDATION_BACKBONES, DINOv2Encoder

# (out_channels, n_convs) of VGG-16's five blocks.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class PretrainedWeightsUnavailable(UserWarning):
    """ImageNet weights could not be fetched; the encoder keeps its random initialisation."""


def _conv(c_in: int, c_out: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=dilation, dilation=dilation)


def _pool(stride: int) -> nn.MaxPool2d:
    # PANet uses 3x3 pools with padding 1 (not VGG's 2x2), so a 417 input gives 209, 105, 53.
    return nn.MaxPool2d(kernel_size=3, stride=stride, padding=1)


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)


class VGG16Encoder(nn.Sequential):
    """PANet's VGG-16 trunk: (B, 3, H, W) -> (B, 512, ceil(H/8), ceil(W/8)).

    Pools after blocks 1-3 halve the resolution, the pool after block 4 has stride 1, block 5
    is dilated by 2 and conv5_3 is not followed by a ReLU. Its parameters are, in order, the 13
    convolutions' (weight, bias) pairs with torchvision's shapes, so weights copy by position.
    """

    out_channels = 512

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for block, (c_out, n_convs) in enumerate(VGG16_BLOCKS):
            dilation = 2 if block == 4 else 1
            for _ in range(n_convs):
                layers += [_conv(c_in, c_out, dilation), nn.ReLU(inplace=True)]
                c_in = c_out
            if block < 3:
                layers.append(_pool(stride=2))
            elif block == 3:
                layers.append(_pool(stride=1))
        super().__init__(*layers[:-1])  # drop the ReLU after conv5_3
        _kaiming_init(self)


def _conv_gn_relu(c_in: int, c_out: int, dilation: int = 1) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: an episode's batch is a handful of images whose statistics
    # would leak between support and query; GroupNorm normalises each image on its own.
    return [_conv(c_in, c_out, dilation), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True)]


class SmallEncoder(nn.Sequential):
    """A small CNN with PANet's stride-8 layout, for the CPU chapters: (B, 3, H, W) -> (B, C, H/8, W/8).

    Three blocks of two 3x3 convolutions (16, 32, 64 channels) with the same 3x3/stride-2 pools
    as PANet's VGG, then a dilated block and, as in PANet, no ReLU on the last convolution.
    GroupNorm after each convolution lets it train from scratch in minutes (VGG starts from
    ImageNet instead). About 0.3 M parameters: a 96x96 episode costs milliseconds on a CPU.
    """

    def __init__(self, width: int = 16, out_channels: int = 128) -> None:
        widths = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [*_conv_gn_relu(c_in, c_out), *_conv_gn_relu(c_out, c_out), _pool(stride=2)]
            c_in = c_out
        layers += [*_conv_gn_relu(c_in, out_channels, dilation=2), _conv(out_channels, out_channels, dilation=2)]
        super().__init__(*layers)
        self.out_channels = out_channels
        _kaiming_init(self)


class ResNet50Encoder(nn.Module):
    """torchvision's ResNet-50 with layer3/layer4 strides replaced by dilation (output stride 8).

    `layer` picks the feature map that is returned: "layer3" (1024 channels, the default: more
    generic than layer4, whose ImageNet features are tuned to the 1000 training classes) or
    "layer4" (2048 channels).
    """

    def __init__(self, layer: str = "layer3", pretrained: bool | str | Path = False) -> None:
        super().__init__()
        from torchvision.models import resnet50

        if layer not in ("layer3", "layer4"):
            raise ValueError(f"layer must be 'layer3' or 'layer4', got {layer!r}")
        net = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        if pretrained:
            state = _fetch_state_dict(pretrained, "ResNet50_Weights", "IMAGENET1K_V1")
            if state is not None:
                try:
                    net.load_state_dict(state)
                except RuntimeError:
                    raise ValueError(f"--pretrained {pretrained}: not ResNet-50 ImageNet weights in torchvision's "
                                     f"layout (resnet50-0676ba61.pth)") from None
        self.layer = layer
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = net.layer4 if layer == "layer4" else None
        self.out_channels = 2048 if layer == "layer4" else 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.layer4(x) if self.layer4 is not None else x


class _Bottleneck(nn.Module):
    """ResNet's bottleneck block (1x1, 3x3, 1x1, x4 channels) with an optional final ReLU."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None,
                 last_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.last_relu = downsample, last_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return self.relu(out) if self.last_relu else out


def _stage(c_in: int, planes: int, blocks: int, stride: int, dilation: int, first_dilation: int,
           last_relu: bool = True) -> nn.Sequential:
    downsample = None
    if stride != 1 or c_in != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(c_in, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [_Bottleneck(c_in, planes, stride, first_dilation, downsample)]
    layers += [_Bottleneck(planes * 4, planes, dilation=dilation, last_relu=last_relu or i < blocks - 2)
               for i in range(blocks - 1)]
    return nn.Sequential(*layers)


class DeepStemResNet50Encoder(nn.Module):
    """The encoder of MLC's baseline and of SSP: a "deep stem" ResNet-50 (three 3x3 convolutions,
    64-64-128 channels, instead of one 7x7), cut after layer3, whose stride is replaced by dilation
    2 (output stride 8, 1024 channels), and whose last block has no final ReLU: the features that
    are matched by cosine keep their negative values ("in the metric learning paradigm, the final
    ReLU is removed", as those authors put it).

    `freeze_bn` keeps every BatchNorm layer in eval mode, its statistics and affine parameters
    fixed (those methods train with it; with a batch of a few episodes, batch statistics would be
    noise). `pretrained` is a path to the deep-stem ImageNet weights those methods use (their
    `pretrained/resnet50.pth`, published with their code, not in torchvision); keys of layer4 and
    fc are ignored. `freeze_stem` fixes the stem and layer1 (SSP's code trains layer2 and layer3 only;
    MLC's baseline, the same encoder here, is trained the same way).
    """

    out_channels = 1024

    def __init__(self, pretrained: bool | str | Path = False, freeze_bn: bool = True, freeze_stem: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(128, 64, 3, stride=1, dilation=1, first_dilation=1)
        self.layer2 = _stage(256, 128, 4, stride=2, dilation=1, first_dilation=1)
        self.layer3 = _stage(512, 256, 6, stride=1, dilation=2, first_dilation=1, last_relu=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.freeze_bn, self.freeze_stem = freeze_bn, freeze_stem
        if pretrained:
            self.load_weights(pretrained)
        if freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
        if freeze_stem:
            for part in (self.conv1, self.bn1, self.layer1):
                part.requires_grad_(False)

    def load_weights(self, pretrained: bool | str | Path) -> None:
        """Load the deep-stem ResNet-50 ImageNet weights (a state dict in this layout; layer4 and fc ignored)."""
        if pretrained is True:
            raise ValueError("the deep-stem ResNet-50 weights are not in torchvision: download resnet50.pth as MLC's "
                             "and SSP's READMEs say (github.com/LiheYoung/MiningFSS) and pass its path")
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        state = load_torch_file(path, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()} if isinstance(state, dict) else state
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
        wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if missing or wrong:
            raise ValueError(f"--pretrained {path}: not deep-stem ResNet-50 weights ("
                             + (f"{len(missing)} tensors missing, e.g. {missing[0]}" if missing else
                                f"{len(wrong)} of other shapes, e.g. {wrong[0]}")
                             + "); give the resnet50.pth that MLC and SSP use")
        self.load_state_dict({k: state.get(k, v) for k, v in own.items()})

    def train(self, mode: bool = True) -> "DeepStemResNet50Encoder":
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


_warned: set[str] = set()


def _fetch_state_dict(pretrained: bool | str | Path, enum_name: str, member: str) -> dict | None:
    """torchvision's ImageNet state dict (downloaded once, cached), or a local .pth file.

    Returns None, after one clear warning, when the download is impossible (e.g. offline).
    """
    if not isinstance(pretrained, bool):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        try:
            state = load_torch_file(path, weights_only=True)
        except ValueError as error:
            raise ValueError(f"--pretrained: {error}; give torchvision's ImageNet file (e.g. vgg16-397923af.pth), "
                             f"true to download it, or false") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"--pretrained {path} holds no state dict of tensors; give torchvision's ImageNet "
                             f"file (e.g. vgg16-397923af.pth)")
        return state
    import torchvision.models as tvm

    weights = getattr(getattr(tvm, enum_name), member)
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # no network, proxy, corrupt cache: all end the same way
        if enum_name not in _warned:
            _warned.add(enum_name)
            warnings.warn(
                f"could not download {enum_name}.{member} ({type(exc).__name__}: {exc}); the encoder "
                f"keeps its random initialisation. To use ImageNet weights offline, download "
                f"{weights.url} elsewhere and pass pretrained='path/to/file.pth'.",
                PretrainedWeightsUnavailable,
                stacklevel=3,
            )
        return None


def load_vgg16_weights(encoder: VGG16Encoder, pretrained: bool | str | Path = True) -> bool:
    """Copy the first 26 tensors (13 conv weights and biases) of a VGG-16 state dict into `encoder`.

    `pretrained=True` uses torchvision's `VGG16_Weights.IMAGENET1K_V1` (vgg16-397923af.pth);
    a path loads a local copy of a state dict in torchvision's layout. Returns whether weights
    were loaded (False when the download was impossible).
    """
    state = _fetch_state_dict(pretrained, "VGG16_Weights", "IMAGENET1K_V1")
    if state is None:
        return False
    tensors = list(state.values())[:26]
    params = list(encoder.parameters())
    if len(tensors) < 26 or any(t.shape != p.shape for t, p in zip(tensors, params)):
        raise ValueError(f"--pretrained {pretrained}: the state dict does not start with VGG-16's 13 conv "
                         f"(weight, bias) pairs; give torchvision's vgg16-397923af.pth")
    with torch.no_grad():
        for p, t in zip(params, tensors):
            p.copy_(t)
    return True


OUTPUT_STRIDE = 8  # the CNN encoders map an n-pixel side to ceil(n / 8) feature pixels
# The smallest image side with at least 2 feature pixels per side: on a 1 x 1 feature map the
# foreground and background prototypes are the same vector, and training stalls at loss ln 2.
MIN_IMAGE_SIZE = OUTPUT_STRIDE + 1


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder, as timm's pretrained configs describe a model: how to build it, the
    statistics its inputs are normalised with (mean, std per RGB channel, of [0, 1] images), its
    output stride, the smallest image side it maps to 2 feature pixels a side, whether `train`
    trains it (False: frozen features, tested with `test --notrain`), whether activation
    checkpointing can cut it, and the pretrained weights `pretrained=True` loads (None: none to
    download)."""

    build: Callable[[bool | str | Path, str], nn.Module]  # (pretrained, resnet_layer) -> the encoder
    about: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = OUTPUT_STRIDE
    min_size: int = MIN_IMAGE_SIZE
    trains: bool = True
    recompute: bool = False
    weights: str | None = None

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std): what the data pipeline normalises this encoder's images with."""
        return self.mean, self.std


def _vgg16(pretrained, resnet_layer) -> VGG16Encoder:
    encoder = VGG16Encoder()
    if pretrained:
        load_vgg16_weights(encoder, pretrained)
    return encoder


def _small(pretrained, resnet_layer) -> SmallEncoder:
    if pretrained:
        raise ValueError(f"the small encoder has no ImageNet weights: use pretrained=False (--pretrained false; "
                         f"`test --notrain` needs --backbone {' or '.join(PRETRAINED_BACKBONES)})")
    return SmallEncoder()


def _dinov2(name: str) -> Callable[[bool | str | Path, str], nn.Module]:
    def build(pretrained, resnet_layer):
        from .foundation import build_dinov2

        return build_dinov2(name, pretrained)
    return build


ENCODERS: dict[str, EncoderSpec] = {
    "vgg16": EncoderSpec(_vgg16, "the paper's VGG-16", recompute=True,
                         weights="torchvision's VGG16_Weights.IMAGENET1K_V1 (528 MB)"),
    "resnet50": EncoderSpec(lambda pretrained, layer: ResNet50Encoder(layer, pretrained), "a dilated ResNet-50",
                            weights="torchvision's ResNet50_Weights.IMAGENET1K_V1 (98 MB)"),
    "resnet50-deepstem": EncoderSpec(lambda pretrained, layer: DeepStemResNet50Encoder(pretrained),
                                     "MLC's and SSP's deep-stem ResNet-50 (weights: a local file)"),
    "small": EncoderSpec(_small, "the CPU course's small CNN", recompute=True),
    **{name: EncoderSpec(_dinov2(name), f"a frozen DINOv2 {b.arch}", b.mean, b.std,
                         DINOv2Encoder.stride, DINOv2Encoder.min_size, trains=False,
                         weights=f"timm's {b.timm_name} ({b.size_mb:g} MB, Hugging Face hub)")
       for name, b in FOUNDATION_BACKBONES.items()},
}


class _Names(Sequence):
    """The names of the registered encoders that `keep` accepts, read from ENCODERS at each use (so an
    encoder registered later is among them): what --backbone's choices and checks compare with."""

    def __init__(self, keep: Callable[[EncoderSpec], bool]) -> None:
        self.keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n, e in ENCODERS.items() if self.keep(e))

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


BACKBONES = _Names(lambda e: e.trains)  # the encoders `train` trains
FROZEN_BACKBONES = _Names(lambda e: not e.trains)  # features only, never trained
PRETRAINED_BACKBONES = _Names(lambda e: e.weights is not None)  # `test --notrain`'s choices
RECOMPUTE_BACKBONES = _Names(lambda e: e.recompute)  # Sequentials that recompute_pieces can cut


def encoder_spec(backbone: str) -> EncoderSpec:
    """The registered encoder called `backbone`, or one clear error listing them."""
    if backbone not in ENCODERS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[backbone]


def build_encoder(backbone: str, pretrained: bool | str | Path = False, resnet_layer: str = "layer3") -> nn.Module:
    """The encoder registered as `backbone` (ENCODERS): "vgg16" (the paper's), "resnet50",
    "resnet50-deepstem", "small", or a frozen DINOv2 ViT ("dinov2_vits14", "dinov2_vitb14").
    `pretrained` True loads its weights (see ENCODERS[backbone].weights), a path a local copy."""
    return encoder_spec(backbone).build(pretrained, resnet_layer)


def recompute_pieces(encoder: nn.Module) -> list[nn.Sequential]:
    """A Sequential encoder cut after each max-pool: the pieces that activation checkpointing keeps
    only the inputs of, and recomputes one at a time in the backward pass. Each piece starts with a
    convolution, so no in-place ReLU ever overwrites a kept input."""
    if not isinstance(encoder, nn.Sequential):
        raise ValueError(f"recompute needs one of the {', '.join(RECOMPUTE_BACKBONES)} encoders, "
                         f"not {type(encoder).__name__}")
    pieces, current = [], []
    for layer in encoder:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            pieces.append(nn.Sequential(*current))
            current = []
    return pieces + ([nn.Sequential(*current)] if current else [])

