"""PANet: prototypes from the supports, cosine matching on the query, prototype alignment in training.

The same model runs the later methods built on PANet's matching, chosen by `method` (a name in
methods.METHODS): MLC's baseline (Yang et al., ICCV 2021) and SSP's self-support matching (Fan et
al., ECCV 2022). The model holds the encoder and the options; the method does the matching.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .episodes import size_mismatch
from .encoders import EncoderSpec, build_encoder, encoder_spec, recompute_pieces
from .methods import METHODS, Method, PANetOutput, get_method

__all__ = ["METHODS", "PANet", "PANetOutput"]


class PANet(nn.Module):
    """Few-shot segmenter with no parameters beyond its encoder.

    backbone: "vgg16" (the paper's), "resnet50" (dilated; for the COCO-20i 2-way row filed under PANet,
    not in PANet's paper), "resnet50-deepstem" (MLC's
    and SSP's) or "small" (CPU course). pretrained: True for torchvision's ImageNet weights, a path
    for a local state dict, False for random init. method: a name in methods.METHODS: "panet", "mlc" (MLC's
    baseline) or "ssp" (self-support matching, 1-way episodes); `model.matching` is its object. align: add the prototype alignment loss in training
    (PANet's; default on for "panet", refused for the others). alpha: cosine scale (default: the
    method's, 20 or 10). refine: SSP's second self-support step.
    """

    recompute = False  # set by train(config.recompute): activation checkpointing of the encoder in training

    def __init__(self, backbone: str = "vgg16", pretrained: bool | str | Path = False, align: bool | None = None,
                 alpha: float | None = None, resnet_layer: str = "layer3", method: str = "panet",
                 refine: bool = False) -> None:
        super().__init__()
        self.backbone, self.resnet_layer = backbone, resnet_layer
        self.encoder_spec: EncoderSpec = encoder_spec(backbone)  # its input statistics, stride, smallest input
        self._set_method(method, align, alpha, refine)
        self.encoder = build_encoder(backbone, pretrained, resnet_layer)

    def _set_method(self, method: str, align: bool | None, alpha: float | None, refine: bool) -> None:
        matching = get_method(method)
        self.align = matching.check(align, refine)
        self.matching: Method = matching  # the registered method object: pooling, matching, losses
        self.method, self.refine = matching.name, refine
        self.alpha = matching.scale if alpha is None else alpha

    def as_method(self, method: str, refine: bool = False) -> "PANet":
        """This model's encoder under another method's matching (its scale, pooling, upsampling and
        support borders), e.g. to test what SSP's matching alone does for an encoder trained as PANet.

        The new model shares the encoder itself (its weights and its train/eval mode), not a copy;
        PAR is on only for "panet". Train it only if the two models should learn together.
        """
        other = copy.copy(self)
        other._modules = dict(self._modules)  # assigning a module to one never changes the other
        other._set_method(method, None, None, refine)
        return other

    @property
    def init_args(self) -> dict:
        """The constructor's arguments (but `pretrained`): what a checkpoint stores to rebuild this model."""
        return {"backbone": self.backbone, "align": self.align, "alpha": self.alpha, "resnet_layer": self.resnet_layer,
                "method": self.method, "refine": self.refine}

    @property
    def input_stats(self):
        """(mean, std) the data pipeline normalises this model's images with: its encoder's (ENCODERS)."""
        return self.encoder_spec.stats

    @property
    def borders_are_background(self) -> bool:
        """Whether this method's supports count their 255 borders as background (PANet's code does)."""
        return self.matching.borders_are_background

    def encode(self, support_images: torch.Tensor, query_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of all supports (B, N, K, C, h, w) and queries (B, Q, C, h, w), in one batch."""
        B, N, K = support_images.shape[:3]
        Q = query_images.shape[1]
        images = torch.cat([support_images.flatten(0, 2), query_images.flatten(0, 1)])
        spec = self.encoder_spec
        if min(images.shape[-2:]) < spec.min_size:  # 1 feature pixel a side: fg and bg prototypes coincide
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels are too small for the "
                             f"stride-{spec.stride} encoder: use at least {spec.min_size} pixels a side (--size)")
        feats = self._run_encoder(images)
        return feats[: B * N * K].unflatten(0, (B, N, K)), feats[B * N * K:].unflatten(0, (B, Q))

    def _run_encoder(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's features; with `recompute` (training, gradients on), only the input of each
        piece between max-pools is kept, and each piece's activations are recomputed in backward, one
        image at a time (the encoders normalise each image on its own, so that changes nothing): the
        same gradients, a fraction of the memory, one more encoder forward per step."""
        if not (self.recompute and self.training and torch.is_grad_enabled()):
            return self.encoder(images)
        x = images
        for piece in recompute_pieces(self.encoder):
            x = torch.cat([checkpoint(piece, image, use_reentrant=False) for image in x.split(1)])
        return x

    def forward(self, support_images: torch.Tensor, support_fg: torch.Tensor, support_bg: torch.Tensor,
                query_images: torch.Tensor, query_labels: torch.Tensor | None = None) -> PANetOutput:
        """support_images (B, N, K, 3, H, W) normalised; support_fg, support_bg (B, N, K, H, W) float 0/1;
        query_images (B, Q, 3, H, W); query_labels (B, Q, H, W) episode labels, needed only to train SSP.
        Returns a PANetOutput: logits (B, Q, 1 + N, H, W) and, in training, the method's losses by name
        (`out.align_loss` is PAR, `out.aux_loss` the weighted sum of the others)."""
        if support_images.shape[-2:] != query_images.shape[-2:]:
            raise ValueError(size_mismatch([tuple(support_images.shape[-2:]), tuple(query_images.shape[-2:])],
                                           "this episode's supports and queries"))
        support_feats, query_feats = self.encode(support_images, query_images)
        size = tuple(query_images.shape[-2:])
        m = self.matching
        scores, steps = m.match(support_feats, query_feats, support_fg, support_bg, self.alpha, self.refine)
        logits = m.upsample(scores, size)
        if not self.training:
            return PANetOutput(logits, {}, m.loss_weights)
        losses = m.losses(support_feats, query_feats, support_fg, support_bg, scores, steps, query_labels, size,
                          self.alpha, self.align, self.refine)
        return PANetOutput(logits, losses, m.loss_weights)
