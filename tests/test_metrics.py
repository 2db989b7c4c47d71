"""IoUMeter equals the authors' set-based metric, by hand and on random N-way episodes."""
import math

import numpy as np
import pytest
import torch

from panet_lite.metrics import IoUMeter, mean_std


class SetMetric:
    """The authors' Metric.record / get_mIoU / get_mIoU_binary logic, pixel sets and all."""

    def __init__(self, max_label, count_absent_fp=False):
        self.labels = list(range(max_label + 1))
        self.rows = []
        self.count_absent_fp = count_absent_fp

    def record(self, pred, target, labels):
        stats = np.full((len(self.labels), 3), np.nan)
        for j, label in enumerate([0] + labels):
            idx = np.where(np.logical_and(pred == j, target != 255))
            p = set(zip(idx[0].tolist(), idx[1].tolist()))
            idx = np.where(target == j)
            g = set(zip(idx[0].tolist(), idx[1].tolist()))
            if g or self.count_absent_fp:
                stats[self.labels.index(label)] = [len(p & g), len(p - g), len(g - p)]
        self.rows.append(stats)

    def class_iou(self):
        s = np.nansum(np.stack(self.rows), axis=0)
        with np.errstate(invalid="ignore"):
            return s[:, 0] / s.sum(axis=1)

    def fb_iou(self):
        s = np.nansum(np.stack(self.rows), axis=0)
        pooled = np.stack([s[0], s[1:].sum(axis=0)])
        return (pooled[:, 0] / pooled.sum(axis=1)).mean()


def test_hand_computed_one_way():
    pred = torch.tensor([[0, 1, 1], [1, 0, 0]])
    target = torch.tensor([[0, 1, 255], [0, 0, 1]])
    m = IoUMeter(20)
    m.update(pred, target, [7])
    # bg: G={(0,0),(1,0),(1,1)}, P={(0,0),(1,1),(1,2)}: TP 2, FP 1, FN 1 -> 2/4
    # class 7: G={(0,1),(1,2)}, P={(0,1),(1,0)} (the 255 pixel is excluded): TP 1, FP 1, FN 1 -> 1/3
    iou = m.class_iou()
    assert iou[0].item() == pytest.approx(0.5) and iou[7].item() == pytest.approx(1 / 3)
    assert math.isnan(iou[3].item())
    assert m.mean_iou([7]) == pytest.approx(1 / 3)
    assert m.fb_iou() == pytest.approx((0.5 + 1 / 3) / 2)


def test_absent_class_quirk_and_corrected_meter():
    pred = torch.tensor([[2, 2], [1, 0]])
    target = torch.tensor([[0, 0], [1, 0]])  # way 2 (global 9) absent from the ground truth
    faithful, corrected = IoUMeter(20), IoUMeter(20, count_absent_fp=True)
    for m in (faithful, corrected):
        m.update(pred, target, [4, 9])
    assert math.isnan(faithful.class_iou()[9].item())  # its two false positives are lost
    assert corrected.class_iou()[9].item() == 0.0  # counted: TP 0, FP 2
    assert faithful.class_iou()[0].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("count_absent_fp", [False, True])
def test_random_n_way_episodes_match_set_metric(count_absent_fp):
    g = torch.Generator().manual_seed(0)
    ours, ref = IoUMeter(20, count_absent_fp), SetMetric(20, count_absent_fp)
    for _ in range(60):
        n_ways = int(torch.randint(1, 4, (1,), generator=g))
        ids = (torch.randperm(20, generator=g)[:n_ways] + 1).tolist()
        Q = int(torch.randint(1, 3, (1,), generator=g))
        target = torch.randint(0, n_ways + 1, (Q, 9, 11), generator=g)
        if torch.rand(1, generator=g) < 0.5:  # some ways absent from the ground truth
            target[target == n_ways] = 0
        target[torch.rand(Q, 9, 11, generator=g) < 0.1] = 255
        pred = torch.randint(0, n_ways + 1, (Q, 9, 11), generator=g)
        ours.update(pred, target, ids)
        for q in range(Q):
            ref.record(pred[q].numpy(), target[q].numpy(), ids)
    np.testing.assert_allclose(ours.class_iou().numpy(), ref.class_iou(), equal_nan=True)
    assert ours.fb_iou() == pytest.approx(ref.fb_iou())


def test_bad_input_is_a_clear_error():
    m = IoUMeter(20)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), [1])
    with pytest.raises(ValueError, match="outside 0..1"):
        m.update(torch.full((2, 2), 2), torch.zeros(2, 2, dtype=torch.long), [1])


def test_mean_std_is_population_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.4]) == (0.4, 0.0)


def test_paired_difference_by_hand():
    from panet_lite.metrics import paired_difference

    # differences 2, -1, 5, 2: mean 2; squared deviations 0, 9, 9, 0 -> sd sqrt(18 / 3) = sqrt(6); SE sqrt(6) / 2
    mean, se = paired_difference([10.0, 20.0, 35.0, 8.0], [8.0, 21.0, 30.0, 6.0])
    assert mean == pytest.approx(2.0) and se == pytest.approx(6 ** 0.5 / 2)
    # A constant shift has no spread: pairing removes the runs' shared difficulty entirely.
    assert paired_difference([50.0, 60.0, 70.0], [49.0, 59.0, 69.0]) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="same number"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least two"):
        paired_difference([1.0], [2.0])


def test_paired_interval_is_students_t_with_n_minus_1_degrees_of_freedom():
    from panet_lite.metrics import paired_interval

    # Differences 1, 2, 3: mean 2, sd 1, SE 1/sqrt(3); t(0.975, 2 df) = 4.302653 (tables), so +-2.48414.
    mean, se, low, high = paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert (mean, se) == pytest.approx((2.0, 3 ** -0.5))
    assert (low, high) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-6)
    assert paired_interval([3.0, 1.0, 4.0, 1.0, 5.0], [0.0] * 5, level=0.9)[2] > paired_interval(
        [3.0, 1.0, 4.0, 1.0, 5.0], [0.0] * 5)[2]  # a lower level, a narrower interval
