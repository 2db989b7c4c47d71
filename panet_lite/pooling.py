"""Masked average pooling (late fusion: masks applied to features) and PANet's foreground/background prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5  # PANet's guard against empty masks


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of each feature map over its mask, after upsampling the features to the mask.

    features: (..., C, h, w) at feature resolution; masks: (..., H, W) float 0/1 at image size.
    Returns (..., C): sum(F * M) / (sum(M) + 1e-5). The mask is applied to the features, not to
    the input image (PANet's "late fusion"), and at the mask's resolution: upsampling the
    features rather than shrinking the mask keeps thin objects that a stride-8 mask would lose.
    """
    lead = features.shape[:-3]
    C, h, w = features.shape[-3:]
    H, W = masks.shape[-2:]
    up = F.interpolate(features.reshape(-1, C, h, w), size=(H, W), mode="bilinear", align_corners=False)
    up = up.reshape(*lead, C, H, W)
    m = masks.unsqueeze(-3).to(up.dtype)  # (..., 1, H, W)
    return (up * m).sum(dim=(-2, -1)) / (m.sum(dim=(-2, -1)) + EPS)


def episode_prototypes(support_features: torch.Tensor, support_fg: torch.Tensor,
                       support_bg: torch.Tensor) -> torch.Tensor:
    """PANet's prototypes of an episode: one background prototype, then one per way.

    support_features: (B, N, K, C, h, w); support_fg, support_bg: (B, N, K, H, W).
    Returns (B, 1 + N, C): [bg, way 1, ..., way N]. Each way's foreground prototype averages
    its K shots; the single background prototype averages all N x K background pools.
    """
    fg = masked_average_pool(support_features, support_fg).mean(dim=2)  # (B, N, C)
    bg = masked_average_pool(support_features, support_bg).mean(dim=(1, 2))  # (B, C)
    return torch.cat([bg.unsqueeze(1), fg], dim=1)  # (B, 1 + N, C)
