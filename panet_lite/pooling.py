"""Masked average pooling (late fusion: masks applied to features) and PANet's foreground/background prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5  # PANet's guard against empty masks


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of each feature map over its mask, after upsampling the features to the mask.

    features: (..., C, h, w) at feature resolution; masks: (..., H, W) float 0/1 at image size.
    Returns (..., C): sum(up(F) * M) / (sum(M) + 1e-5), with up = bilinear upsampling to (H, W).
    The mask is applied to the features, not to the input image (PANet's "late fusion"), and at
    the mask's resolution: upsampling the features rather than shrinking the mask keeps thin
    objects that a stride-8 mask would lose.

    The upsampled features are never built. Upsampling is linear, so for each channel
    sum_x up(F)(x) M(x) = sum_y F(y) up^T(M)(y), where up^T (the transpose of upsampling) spreads
    the mask back onto the feature grid: one channel at image size instead of C, the same number
    up to float round-off (tests/test_model.py checks it against the direct formula).
    """
    h, w = features.shape[-2:]
    weights = upsample_transpose(masks.to(features.dtype), (h, w)).unsqueeze(-3)  # (..., 1, h, w)
    area = masks.to(features.dtype).sum(dim=(-2, -1)).unsqueeze(-1)  # (..., 1)
    return (features * weights).sum(dim=(-2, -1)) / (area + EPS)


def upsample_transpose(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The transpose of bilinear upsampling (align_corners=False) from `size` to the maps' size.

    maps: (..., H, W) -> (..., h, w) with <up(F), M> = <F, up^T(M)> for every F of size (h, w).
    It is the gradient of upsampling, so autograd computes it (no gradient flows into `maps`).
    """
    H, W = maps.shape[-2:]
    flat = maps.detach().reshape(-1, 1, H, W)
    with torch.enable_grad():
        grid = torch.zeros(flat.shape[0], 1, *size, dtype=flat.dtype, device=flat.device, requires_grad=True)
        up = F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False)
        (weights,) = torch.autograd.grad(up, grid, grad_outputs=flat)
    return weights.reshape(*maps.shape[:-2], *size)


def downsampled_mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling as MLC and SSP do it: the mask is brought down to the features.

    features: (..., C, h, w); masks: (..., H, W) float 0/1. The mask is resized to (h, w) by
    bilinear interpolation with align_corners=True, a soft mask m, and the prototype is
    sum(F * m) / (sum(m) + 1e-5): an average over the feature grid, where PANet's averages over
    the image's pixels. A thin object can fall between the grid's sample points and vanish.
    """
    h, w = features.shape[-2:]
    H, W = masks.shape[-2:]
    flat = masks.to(features.dtype).reshape(-1, 1, H, W)
    small = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=True).reshape(*masks.shape[:-2], 1, h, w)
    return (features * small).sum(dim=(-2, -1)) / (small.sum(dim=(-2, -1)) + EPS)


def episode_prototypes(support_features: torch.Tensor, support_fg: torch.Tensor,
                       support_bg: torch.Tensor, pool=masked_average_pool) -> torch.Tensor:
    """PANet's prototypes of an episode: one background prototype, then one per way.

    support_features: (B, N, K, C, h, w); support_fg, support_bg: (B, N, K, H, W).
    Returns (B, 1 + N, C): [bg, way 1, ..., way N]. Each way's foreground prototype averages
    its K shots; the single background prototype averages all N x K background pools.
    `pool` is PANet's `masked_average_pool` or MLC's and SSP's `downsampled_mask_pool`.
    """
    fg = pool(support_features, support_fg).mean(dim=2)  # (B, N, C)
    bg = pool(support_features, support_bg).mean(dim=(1, 2))  # (B, C)
    return torch.cat([bg.unsqueeze(1), fg], dim=1)  # (B, 1 + N, C)
