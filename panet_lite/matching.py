"""Non-parametric matching: scaled cosine similarity between pixel features and prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA = 20.0  # PANet's fixed similarity scale
COS_EPS = 1e-8


def prototype_scores(features: torch.Tensor, prototypes: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """alpha * cos(F(x), p_j) for every pixel x and prototype j.

    features: (B, Q, C, h, w); prototypes: (B, J, C). Returns (B, Q, J, h, w).
    Cosine as torch.nn.functional.cosine_similarity computes it (each norm clamped at 1e-8).
    """
    f = features / features.norm(dim=2, keepdim=True).clamp_min(COS_EPS)
    p = prototypes / prototypes.norm(dim=2, keepdim=True).clamp_min(COS_EPS)
    return alpha * torch.einsum("bqchw,bjc->bqjhw", f, p)


def upsample_scores(scores: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of (..., J, h, w) scores to (..., J, H, W): PANet's align_corners=False,
    or MLC's and SSP's align_corners=True (the corner pixels of both grids coincide)."""
    lead, (J, h, w) = scores.shape[:-3], scores.shape[-3:]
    up = F.interpolate(scores.reshape(-1, J, h, w), size=size, mode="bilinear", align_corners=align_corners)
    return up.reshape(*lead, J, *size)
