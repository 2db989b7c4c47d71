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


def test_the_table_projection_is_the_arithmetic_of_the_measured_rates():
    """8 models: per fold 30,000 steps and 5,000 test episodes at 1 and at 5 shots. With workers a step
    takes the longer of its computation and its loading spread over them; without, the two add."""
    from benchmark import table_projection

    train, test, load = {1: 0.01, 5: 0.03}, {1: 0.004, 5: 0.01}, {1: 0.01, 5: 0.03}
    got = table_projection(train, test, load, workers=8)  # computation-bound: 4 x 30,000 x 0.04 s = 80 min
    assert (got["training_minutes"], got["test_minutes"]) == (80.0, round(4 * 5000 * 0.014 / 60, 1))
    assert got["minutes"] == round(80 + 4 * 5000 * 0.014 / 60, 1)
    slow = table_projection(train, test, {1: 0.1, 5: 0.3}, workers=8)  # loading-bound: 0.1 / 8 > 0.01
    assert slow["training_minutes"] == 4 * 30000 * (0.1 / 8 + 0.3 / 8) / 60
    assert slow["training_bound_by"] == "1-shot loading, 5-shot loading"
    alone = table_projection(train, test, load, workers=0)
    assert alone["training_minutes"] == round(4 * 30000 * (0.02 + 0.06) / 60, 1)


def test_the_loader_rows_time_episode_dataset_beside_the_minimal_loader_on_voc_size_jpegs(tmp_path):
    """The generated tree holds VOC-size JPEGs (landscape and portrait) that the minimal loader reads as
    EpisodeDataset does, and the rows report both rates and their ratio."""
    from benchmark import loader_rows, minimal_episode, voc_like_tree
    from PIL import Image

    from panet_lite.episodes import EpisodeDataset
    from panet_lite.pascal import PascalVOC

    voc = voc_like_tree(tmp_path, n=40)
    sizes = {Image.open(p).size for p in (voc / "JPEGImages").glob("trainaug-*.jpg")}
    assert sizes == {(500, 375), (375, 500)}
    source = PascalVOC(tmp_path, "trainaug")
    image_id = source.ids()[0]
    (image, label), = minimal_episode(voc, [image_id], 40)
    ours = EpisodeDataset(source, [1], 1, episodes=[], size=40)._load(image_id, False, [])
    assert torch.equal(label[0, 0].long(), ours[1].long())
    assert image.shape == (1, 3, 40, 40)
    one, five = loader_rows(str(tmp_path), n=2, size=40, repeats=1)
    assert one.value > 0 and five.value > 0
    minimal = one.notes["minimal_loader_episodes_per_s"]  # rounded to 0.1: off by up to 0.05
    ratio = minimal / one.value  # so off by up to ratio x 0.05 / minimal; the reported ratio is rounded to 0.01
    assert one.notes["time_ratio_to_minimal"] == pytest.approx(ratio, abs=0.005 + ratio * 0.05 / minimal + 1e-9)
