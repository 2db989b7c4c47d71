"""PANet as its authors' code structures it, written here from the method's specification
(docs/protocol.md): the yardstick `benchmark.py --compare` times panet_lite against.

The arithmetic is PANet's; the structure is theirs: a Python loop over the episodes of a batch,
and inside it lists of ways and shots. Each support's feature map is upsampled to the image,
once for its foreground mask and again for its background mask, and kept for the backward pass;
every prototype is scored against the query separately; the alignment loss loops over ways and
shots, each support re-scored on its own. Its metric (`SetIoU`) counts pixels per class with
Python sets of pixel coordinates. `tests/test_benchmark.py` checks that this model and this metric compute exactly what
panet_lite's do, so the benchmark compares like with like.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255
EPS = 1e-5
SCALE = 20.0


class LoopPANet(nn.Module):
    """The same encoder as a panet_lite.PANet (shared, so both have identical weights), loops around it.

    forward(support_images (B, N, K, 3, H, W), support_fg, support_bg (B, N, K, H, W),
    query_images (B, Q, 3, H, W)) -> (logits (B, Q, 1 + N, H, W), align_loss).
    """

    def __init__(self, encoder: nn.Module, align: bool = True) -> None:
        super().__init__()
        self.encoder, self.align = encoder, align

    @staticmethod
    def get_features(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) features, (1, H, W) mask -> (1, C): features upsampled to the mask, then averaged."""
        up = F.interpolate(features, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        return (up * mask[None]).sum(dim=(2, 3)) / (mask[None].sum(dim=(2, 3)) + EPS)

    @staticmethod
    def cal_dist(features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """(Q, C, h, w) features, (1, C) prototype -> (Q, h, w) scaled cosine."""
        return F.cosine_similarity(features, prototype[..., None, None], dim=1) * SCALE

    def forward(self, support_images, support_fg, support_bg, query_images):
        B, N, K = support_fg.shape[:3]
        Q = query_images.shape[1]
        size = query_images.shape[-2:]
        images = torch.cat([support_images.flatten(0, 2), query_images.flatten(0, 1)])
        features = self.encoder(images)
        support_features = features[: B * N * K].unflatten(0, (B, N, K))
        query_features = features[B * N * K:].unflatten(0, (B, Q))
        outputs, align_loss = [], features.new_zeros(())
        for b in range(B):
            fg_fts = [[self.get_features(support_features[b, w, k][None], support_fg[b, w, k][None])
                       for k in range(K)] for w in range(N)]
            bg_fts = [[self.get_features(support_features[b, w, k][None], support_bg[b, w, k][None])
                       for k in range(K)] for w in range(N)]
            fg_prototypes = [sum(way) / K for way in fg_fts]
            bg_prototype = sum(sum(way) / K for way in bg_fts) / N
            prototypes = [bg_prototype] + fg_prototypes
            scores = torch.stack([self.cal_dist(query_features[b], p) for p in prototypes], dim=1)  # (Q, 1+N, h, w)
            outputs.append(F.interpolate(scores, size=size, mode="bilinear", align_corners=False))
            if self.align and self.training:
                align_loss = align_loss + self.align_loss(query_features[b], scores, support_features[b],
                                                          support_fg[b], support_bg[b])
        return torch.stack(outputs), align_loss / B

    def align_loss(self, query_features, scores, support_features, fore_mask, back_mask):
        """PAR for one episode: query (Q, C, h, w), scores (Q, 1+N, h, w), supports (N, K, C, h, w),
        masks (N, K, H, W)."""
        N, K = fore_mask.shape[:2]
        pred_mask = scores.argmax(dim=1, keepdim=True)  # (Q, 1, h, w)
        binary_masks = [pred_mask == i for i in range(1 + N)]
        skip_ways = [i for i in range(N) if binary_masks[i + 1].sum() == 0]
        pred_mask = torch.stack(binary_masks, dim=1).float()  # (Q, 1+N, 1, h, w)
        query_prototypes = (query_features.unsqueeze(1) * pred_mask).sum(dim=(0, 3, 4))
        query_prototypes = query_prototypes / (pred_mask.sum(dim=(0, 3, 4)) + EPS)  # (1+N, C)
        loss = query_features.new_zeros(())
        for way in range(N):
            if way in skip_ways:
                continue
            for shot in range(K):
                img_fts = support_features[way, [shot]]  # (1, C, h, w)
                pair = [query_prototypes[[0]], query_prototypes[[way + 1]]]
                supp_pred = torch.stack([self.cal_dist(img_fts, p) for p in pair], dim=1)  # (1, 2, h, w)
                supp_pred = F.interpolate(supp_pred, size=fore_mask.shape[-2:], mode="bilinear", align_corners=False)
                label = torch.full_like(fore_mask[way, shot], IGNORE, dtype=torch.long)
                label[fore_mask[way, shot] == 1] = 1
                label[back_mask[way, shot] == 1] = 0
                loss = loss + F.cross_entropy(supp_pred, label[None], ignore_index=IGNORE) / K / N
        return loss


class SetIoU:
    """PANet's accumulated class IoU, counted as the authors' metric counts it: per query and per label
    of the episode, the sets of (row, column) coordinates predicted as the label (255 pixels left
    out) and labelled as it; a label absent from the ground truth records nothing; TP, FP and FN
    are the sizes of the intersection and the two differences. The same numbers as
    panet_lite.IoUMeter (faithful), by another road."""

    def __init__(self, num_classes: int) -> None:
        self.tp = [0] * (num_classes + 1)
        self.fp = [0] * (num_classes + 1)
        self.fn = [0] * (num_classes + 1)

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_ids) -> None:
        pred, target = pred.numpy(), target.numpy()
        for j, c in enumerate([0] + [int(c) for c in class_ids]):
            rows, cols = np.where(np.logical_and(pred == j, target != IGNORE))
            predicted = set(zip(rows.tolist(), cols.tolist()))
            rows, cols = np.where(target == j)
            labelled = set(zip(rows.tolist(), cols.tolist()))
            if labelled:
                self.tp[c] += len(predicted & labelled)
                self.fp[c] += len(predicted - labelled)
                self.fn[c] += len(labelled - predicted)

    def class_iou(self) -> torch.Tensor:
        tp, fp, fn = (torch.tensor(v, dtype=torch.float64) for v in (self.tp, self.fp, self.fn))
        union = tp + fp + fn
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
