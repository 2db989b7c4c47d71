"""Class IoU accumulated over episodes (PANet's metric), mIoU and FB-IoU, by bincount."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import IGNORE


class IoUMeter:
    """Accumulates TP, FP and FN per *global* class id over the queries of many episodes.

    For every query and every episode-local label j in [0, 1..N] whose ground-truth region
    G_j = {target == j} is non-empty, with P_j = {pred == j, target != 255}: TP += |P_j & G_j|,
    FP += |P_j - G_j|, FN += |G_j - P_j|, under global id (0 for background).
    count_absent_fp=False is PANet's meter (faithful): a label absent from the query's ground
    truth records nothing, so its false positives are lost. True is the corrected meter.
    """

    def __init__(self, num_classes: int, count_absent_fp: bool = False) -> None:
        self.num_classes = num_classes
        self.count_absent_fp = count_absent_fp
        self.tp = torch.zeros(num_classes + 1, dtype=torch.float64)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_ids: Sequence[int] | torch.Tensor) -> None:
        """pred, target: (H, W) or (Q, H, W) episode-local labels (target 255 = ignore);
        class_ids: the ways' global ids (N,). All queries must share the episode's class_ids."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        ids = torch.as_tensor(class_ids, dtype=torch.long).flatten().cpu()
        J = len(ids) + 1
        pred = pred.reshape(-1, pred.shape[-2] * pred.shape[-1])
        target = target.reshape(pred.shape)
        Q = pred.shape[0]
        p_lo, p_hi = torch.aminmax(pred)
        if p_lo < 0 or p_hi >= J:
            raise ValueError(f"pred holds labels outside 0..{J - 1} for a {J - 1}-way episode")
        bad_target = f"target holds labels outside 0..{J - 1} and 255 for a {J - 1}-way episode"
        t_lo, t_hi = torch.aminmax(target)
        if t_lo < 0 or t_hi > IGNORE:
            raise ValueError(bad_target)
        # One table lookup maps the target's labels to rows: 0..J-1 stay, 255 -> row J (dropped below),
        # anything else -> row J + 1, whose count says the target was invalid. Then one multiply-add
        # and one bincount give every query's confusion matrix: no masked copies, few passes.
        rows = torch.full((IGNORE + 1,), J + 1, dtype=torch.long, device=pred.device)
        rows[:J] = torch.arange(J, device=pred.device)
        rows[IGNORE] = J
        cells = (J + 2) * J  # per query: target row (J + 2 of them) x predicted label (J)
        flat = torch.add(pred.long(), rows[target.long()], alpha=J)
        if Q > 1:
            flat += torch.arange(Q, device=pred.device).unsqueeze(1) * cells
        conf = torch.bincount(flat.flatten(), minlength=Q * cells).view(Q, J + 2, J).cpu()
        if conf[:, J + 1].any():
            raise ValueError(bad_target)
        conf = conf[:, :J].double()  # conf[q, t, p] = #pixels of query q with target t and prediction p
        tp = conf.diagonal(dim1=1, dim2=2)  # (Q, J)
        gt = conf.sum(dim=2)  # |G_j|
        predicted = conf.sum(dim=1)  # |P_j| (pred == j, target != 255)
        record = gt > 0 if not self.count_absent_fp else torch.ones_like(gt, dtype=torch.bool)
        global_ids = torch.cat([torch.zeros(1, dtype=torch.long), ids])
        self.tp.index_add_(0, global_ids, (tp * record).sum(0))
        self.fp.index_add_(0, global_ids, ((predicted - tp) * record).sum(0))
        self.fn.index_add_(0, global_ids, ((gt - tp) * record).sum(0))

    def sum_over_ranks(self) -> "IoUMeter":
        """Under torchrun, add every rank's counts into every rank's meter (in place): each rank then
        holds the counts of all episodes, exactly as one process would (they are integers)."""
        from .distributed import sum_over_ranks

        counts = sum_over_ranks(torch.stack([self.tp, self.fp, self.fn]))
        self.tp, self.fp, self.fn = counts[0].clone(), counts[1].clone(), counts[2].clone()
        return self

    def class_iou(self) -> torch.Tensor:
        """IoU of every global id 0..num_classes: (num_classes + 1,), NaN where nothing was recorded."""
        union = self.tp + self.fp + self.fn
        return torch.where(union > 0, self.tp / union.clamp_min(1), torch.full_like(union, math.nan))

    def mean_iou(self, classes: Sequence[int]) -> float:
        """Mean class IoU over the given global ids (e.g. a fold's 5 test classes)."""
        return self.class_iou()[list(classes)].mean().item()

    def fb_iou(self) -> float:
        """FB-IoU: mean of the background IoU and the IoU of all foreground classes pooled."""
        tp = torch.stack([self.tp[0], self.tp[1:].sum()])
        union = tp + torch.stack([self.fp[0], self.fp[1:].sum()]) + torch.stack([self.fn[0], self.fn[1:].sum()])
        return (tp / union).mean().item()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0, as numpy's np.std in the authors' code) over runs."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return t.mean().item(), t.std(unbiased=False).item() if len(t) > 1 else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of the paired differences a_i - b_i and its standard error, sd(ddof=1) / sqrt(n).

    For two models tested on the same runs (run i: the same episodes for both), the pairs share
    each run's difficulty, which the difference cancels; comparing the two means with the runs'
    unpaired std would count that shared noise twice. Needs at least two pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same number of runs, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a standard error needs at least two paired runs")
    d = torch.tensor(list(a), dtype=torch.float64) - torch.tensor(list(b), dtype=torch.float64)
    return d.mean().item(), (d.std(unbiased=True) / math.sqrt(len(d))).item()


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """The paired difference a_i - b_i: (mean, standard error, low, high), where [low, high] is the two-sided
    `level` interval of Student's t with n - 1 degrees of freedom (n = pairs): with few pairs the SE is
    itself uncertain, and t's quantile says by how much (4.30 SE at 3 pairs, 2.78 at 5, against 1.96
    for a known spread). An interval that excludes zero says the two differ on what they shared."""
    from scipy import stats

    mean, se = paired_difference(a, b)
    half = stats.t.ppf(0.5 + level / 2, df=len(a) - 1) * se
    return mean, se, mean - half, mean + half
