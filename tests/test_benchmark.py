"""The benchmark's yardsticks compute what panet_lite computes: the loop-structured PANet
(benchmarks/reference.py) gives the same logits, alignment loss and gradients, and the set-based
metric the same class IoUs, so `benchmarks/compare.py` times like against like."""
import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from reference import LoopPANet, SetIoU  # noqa: E402

from panet_lite import IoUMeter, PANet  # noqa: E402
from panet_lite.data import IGNORE  # noqa: E402


def episode(B=2, N=2, K=2, Q=2, H=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (B, N, K, H, H), generator=g)
    fg, bg = (labels == 1).double(), (labels == 0).double()  # label 2: in neither mask
    q_labels = torch.randint(0, N + 1, (B, Q, H, H), generator=g)
    return (torch.randn(B, N, K, 3, H, H, generator=g, dtype=torch.float64), fg, bg,
            torch.randn(B, Q, 3, H, H, generator=g, dtype=torch.float64), q_labels)


@pytest.mark.parametrize("shape", [dict(), dict(B=1, N=1, K=5, Q=1, H=33)])
def test_the_loop_reference_is_panet(shape):
    torch.manual_seed(0)
    ours = PANet("small").double().train()
    theirs = LoopPANet(copy.deepcopy(ours.encoder)).train()
    s, fg, bg, q, _ = episode(**shape)
    out = ours(s, fg, bg, q)
    logits, align = theirs(s, fg, bg, q)
    torch.testing.assert_close(out.logits, logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.align_loss, align, rtol=1e-10, atol=1e-10)
    assert align.item() > 0
    (out.logits.square().mean() + out.align_loss).backward()
    (logits.square().mean() + align).backward()
    for a, b in zip(ours.encoder.parameters(), theirs.encoder.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10)


def test_the_set_based_metric_is_panets_meter():
    g = torch.Generator().manual_seed(1)
    fast, slow = IoUMeter(20), SetIoU(20)
    for i in range(6):
        ways = 1 + i % 3
        pred = torch.randint(0, ways + 1, (19, 23), generator=g)
        target = torch.randint(0, ways + 1, (19, 23), generator=g)
        target[:, ::5] = IGNORE
        if i == 4:
            target[target == ways] = 0  # a way absent from the ground truth: it records nothing
        ids = torch.randperm(20, generator=g)[:ways] + 1
        fast.update(pred, target, ids)
        slow.update(pred, target, ids)
    torch.testing.assert_close(fast.class_iou(), slow.class_iou(), rtol=0, atol=1e-12, equal_nan=True)
