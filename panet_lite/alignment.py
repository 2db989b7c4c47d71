"""Prototype alignment regularisation (PAR): segment the supports with prototypes of the query."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE
from .matching import prototype_scores, upsample_scores
from .pooling import EPS


def query_prototypes(query_features: torch.Tensor, query_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes of the query's own predicted regions, at feature resolution.

    query_features: (B, Q, C, h, w); query_scores: (B, Q, 1 + N, h, w).
    Returns prototypes (B, 1 + N, C), pooled over all Q queries of an episode, and
    `present` (B, N): whether way w was predicted anywhere in the episode's queries.
    """
    J = query_scores.shape[2]
    pred = query_scores.argmax(dim=2)  # (B, Q, h, w); no gradient flows through argmax
    masks = F.one_hot(pred, J).permute(0, 1, 4, 2, 3).to(query_features.dtype)  # (B, Q, J, h, w)
    pooled = torch.einsum("bqchw,bqjhw->bjc", query_features, masks)
    area = masks.sum(dim=(1, 3, 4))  # (B, J)
    return pooled / (area.unsqueeze(-1) + EPS), area[:, 1:] > 0


def support_target(support_fg: torch.Tensor, support_bg: torch.Tensor) -> torch.Tensor:
    """A support's masks (..., H, W) as a cross-entropy target: 1 on the foreground, then 0 on the
    background (written last, as in the authors' code), 255 (ignored) elsewhere."""
    label = torch.full(support_fg.shape, IGNORE, dtype=torch.long, device=support_fg.device)
    label[support_fg == 1] = 1
    label[support_bg == 1] = 0
    return label


def alignment_terms(support_features: torch.Tensor, query_features: torch.Tensor, query_scores: torch.Tensor,
                    support_fg: torch.Tensor, support_bg: torch.Tensor) -> dict:
    """PAR before its reduction: every support re-segmented from the query, and its loss term.

    support_features: (B, N, K, C, h, w); query_features: (B, Q, C, h, w);
    query_scores: (B, Q, 1 + N, h, w) (before upsampling); support_fg, support_bg: (B, N, K, H, W).
    Returns a dict:
      query_prototypes (B, 1 + N, C)   [query bg, query way 1, ..., way N], pooled over the queries
      present (B, N)                   whether the query prediction holds way w (else it is skipped)
      logits (B, N, K, 2, H, W)        support (w, k) scored against [query bg, query way w], upsampled
      target (B, N, K, H, W)           1 on the support's foreground, then 0 on its background, else 255
      terms (B, N, K)                  the cross-entropy of each support over its non-ignored pixels
    """
    B, N, K = support_fg.shape[:3]
    H, W = support_fg.shape[-2:]
    protos, present = query_prototypes(query_features, query_scores)  # (B, 1+N, C), (B, N)
    # For way w the prototypes are [query bg, query way w]: shape (B, N, 2, C).
    pairs = torch.stack([protos[:, :1].expand(B, N, -1), protos[:, 1:]], dim=2)
    # Score each support image against its own way's pair: (B*N*K, 1, C, h, w) vs (B*N*K, 2, C).
    feats = support_features.flatten(0, 2).unsqueeze(1)
    pair_per_shot = pairs.unsqueeze(2).expand(B, N, K, 2, -1).flatten(0, 2)
    scores = prototype_scores(feats, pair_per_shot)[:, 0]  # (B*N*K, 2, h, w)
    logits = upsample_scores(scores, (H, W))
    label = support_target(support_fg.flatten(0, 2), support_bg.flatten(0, 2))
    ce = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none").flatten(1)
    n_valid = (label != IGNORE).flatten(1).sum(dim=1).clamp_min(1)  # an all-ignored image adds 0, not NaN
    return {"query_prototypes": protos, "present": present, "logits": logits.view(B, N, K, 2, H, W),
            "target": label.view(B, N, K, H, W), "terms": (ce.sum(dim=1) / n_valid).view(B, N, K)}


def alignment_loss(support_features: torch.Tensor, query_features: torch.Tensor, query_scores: torch.Tensor,
                   support_fg: torch.Tensor, support_bg: torch.Tensor) -> torch.Tensor:
    """PAR: cross-entropy of the supports re-segmented from query prototypes, averaged over the batch.

    Shapes as in `alignment_terms`. Each (way, shot) term is divided by N and K; ways absent from
    the query prediction are skipped (the divisor stays N K).
    """
    N, K = support_fg.shape[1:3]
    parts = alignment_terms(support_features, query_features, query_scores, support_fg, support_bg)
    per_episode = (parts["terms"] * parts["present"].unsqueeze(-1)).sum(dim=(1, 2)) / (N * K)
    return per_episode.mean()
