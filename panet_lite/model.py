"""PANet: prototypes from the supports, cosine matching on the query, prototype alignment in training."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .alignment import alignment_loss
from .encoders import MIN_IMAGE_SIZE, build_encoder
from .matching import ALPHA, prototype_scores, upsample_scores
from .pooling import episode_prototypes


class PANetOutput(NamedTuple):
    logits: torch.Tensor  # (B, Q, 1 + N, H, W): [bg, way 1, ..., way N] scores at image size
    align_loss: torch.Tensor  # scalar; zero in eval mode or with align=False


class PANet(nn.Module):
    """Few-shot segmenter with no parameters beyond its encoder.

    backbone: "vgg16" (the paper's), "resnet50" (dilated, COCO 2-way row) or "small" (CPU course).
    pretrained: True for torchvision's ImageNet weights, a path for a local state dict, False
    for random init. align: add the prototype alignment loss in training. alpha: cosine scale.
    """

    def __init__(self, backbone: str = "vgg16", pretrained: bool | str | Path = False, align: bool = True,
                 alpha: float = ALPHA, resnet_layer: str = "layer3") -> None:
        super().__init__()
        self.backbone, self.align, self.alpha, self.resnet_layer = backbone, align, alpha, resnet_layer
        self.encoder = build_encoder(backbone, pretrained, resnet_layer)

    @property
    def init_args(self) -> dict:
        """The constructor's arguments (but `pretrained`): what a checkpoint stores to rebuild this model."""
        return {"backbone": self.backbone, "align": self.align, "alpha": self.alpha, "resnet_layer": self.resnet_layer}

    def encode(self, support_images: torch.Tensor, query_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of all supports (B, N, K, C, h, w) and queries (B, Q, C, h, w), in one batch."""
        B, N, K = support_images.shape[:3]
        Q = query_images.shape[1]
        images = torch.cat([support_images.flatten(0, 2), query_images.flatten(0, 1)])
        if min(images.shape[-2:]) < MIN_IMAGE_SIZE:  # 1 feature pixel a side: fg and bg prototypes coincide
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels are too small for the "
                             f"stride-8 encoder: use at least {MIN_IMAGE_SIZE} pixels a side (--size)")
        feats = self.encoder(images)
        return feats[: B * N * K].unflatten(0, (B, N, K)), feats[B * N * K:].unflatten(0, (B, Q))

    def forward(self, support_images: torch.Tensor, support_fg: torch.Tensor, support_bg: torch.Tensor,
                query_images: torch.Tensor) -> PANetOutput:
        """support_images (B, N, K, 3, H, W) normalised; support_fg, support_bg (B, N, K, H, W) float 0/1;
        query_images (B, Q, 3, H, W). Returns logits (B, Q, 1 + N, H, W) and the alignment loss."""
        support_feats, query_feats = self.encode(support_images, query_images)
        prototypes = episode_prototypes(support_feats, support_fg, support_bg)  # (B, 1+N, C)
        scores = prototype_scores(query_feats, prototypes, self.alpha)  # (B, Q, 1+N, h, w)
        logits = upsample_scores(scores, query_images.shape[-2:])
        if self.training and self.align:
            align = alignment_loss(support_feats, query_feats, scores, support_fg, support_bg)
        else:
            align = logits.new_zeros(())
        return PANetOutput(logits, align)
