"""HSNet's test (`--protocol hsnet`): its lists, its episodes draw for draw, its metric, end to end offline.

The episodes are checked against a reference written here the way HSNet's own test draws them
(numpy's global generator seeded 0, one `np.random.choice(..., 1, replace=False)` per shot, redrawn
while it is the query); the metric against per-class fg/bg sums of intersection and union on
hand-computed masks with 255 borders; the command on a generated VOC tree that holds the images of
fold 0's list (tiny images, so the whole file takes seconds).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata as fd
from panet_lite.cli import main
from panet_lite.episodes import as_episodes, hsnet_episodes, hsnet_pairs, resize_pair
from panet_lite.metrics import IoUMeter
from panet_lite.pascal import VOCLayout

# Measured on HSNet's lists against the real val masks (data/README.md): lines and pairs per class.
LINES = [346, 451, 725, 346]
PER_CLASS = [80, 57, 86, 58, 65, 69, 96, 115, 102, 69, 74, 125, 76, 72, 378, 58, 49, 90, 82, 67]


def reference_episodes(fold: int, shots: int, episodes: int = 1000) -> list[tuple[str, list[str], int]]:
    """HSNet's DatasetPASCAL.sample_episode in a loop, as its test.py runs it (seed 0, no workers)."""
    lines = (Path(__file__).resolve().parents[1] / "data/hsnet/pascal/val" / f"fold{fold}.txt").read_text()
    metadata = [[line.split("__")[0], int(line.split("__")[1]) - 1] for line in lines.split("\n")[:-1]]
    classwise = {c: [] for c in range(20)}
    for name, c in metadata:
        classwise[c] += [name]
    np.random.seed(0)
    out = []
    for idx in range(episodes):
        query, c = metadata[idx % len(metadata)]
        supports = []
        while True:
            support = np.random.choice(classwise[c], 1, replace=False)[0]
            if query != support:
                supports.append(support)
            if len(supports) == shots:
                break
        out.append((query, [str(s) for s in supports], c + 1))
    return out


def test_the_lists_are_hsnets():
    pairs = [hsnet_pairs(f) for f in range(4)]
    assert [len(p) for p in pairs] == LINES
    counts = Counter(c for p in pairs for _, c in p)
    assert [counts[c] for c in range(1, 21)] == PER_CLASS
    assert pairs[0][0] == ("2007_000033", 1) and len({i for i, _ in pairs[0]}) == 345
    for f, p in enumerate(pairs):  # each fold's list holds only its 5 test classes
        assert {c for _, c in p} == set(range(5 * f + 1, 5 * f + 6))


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("fold", range(4))
def test_episodes_match_hsnets_draw_for_draw(fold, shots):
    assert hsnet_episodes(fold, shots) == reference_episodes(fold, shots)


def test_the_first_five_shot_episodes_and_the_repeated_supports():
    episodes = hsnet_episodes(0, 5)
    assert episodes[:3] == [
        ("2007_000033", ["2010_001174", "2007_001884", "2011_002515", "2010_000238", "2011_001114"], 1),
        ("2007_000061", ["2011_001589", "2008_001580", "2008_001260", "2011_001793", "2011_000234"], 4),
        ("2007_000129", ["2010_000083", "2007_006449", "2008_000725", "2010_006070", "2007_003188"], 2)]
    # HSNet draws each shot on its own: 133 of the 1,000 fold-0 5-shot episodes repeat a support.
    assert sum(len(set(s)) < len(s) for _, s, _ in episodes) == 133
    assert all(query not in supports for query, supports, _ in episodes)
    # Episode i is line i mod 346: the list is walked about three times.
    assert [q for q, _, _ in episodes[346:349]] == [q for q, _, _ in episodes[:3]]
    ways = as_episodes(episodes[:2], [1, 2, 3, 4, 5])
    assert ways[1].ways == [3] and ways[1].query == ["2007_000061"] and ways[1].query_ways == [0]


def hsnet_meter(episodes) -> tuple[float, float, dict]:
    """HSNet's AverageMeter over (pred, target in {0, 1, 255}, class) triples, written out plainly."""
    inter, union = {}, {}
    for pred, target, c in episodes:
        for v in (0, 1):
            p, t = (pred == v) & (target != 255), (target == v)
            inter[v, c] = inter.get((v, c), 0) + int((p & t).sum())
            union[v, c] = union.get((v, c), 0) + int((p | t).sum())
    classes = sorted({c for _, _, c in episodes})
    iou = {c: inter[1, c] / max(union[1, c], 1) for c in classes}
    fb = np.mean([sum(inter[v, c] for c in classes) / sum(union[v, c] for c in classes) for v in (0, 1)])
    return float(np.mean(list(iou.values()))), float(fb), iou


def test_the_metric_on_hand_computed_masks_with_borders():
    # Class 1, episode a: target fg is the left 2x2 block, a 255 border column; the prediction
    # covers the fg and spills one pixel into the border (left out) and one into the background.
    target_a = torch.tensor([[1, 1, 255, 0], [1, 1, 255, 0], [0, 0, 0, 0]])
    pred_a = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]])
    # Class 1, episode b: fg missed entirely.   Class 2, episode c: perfect.
    target_b, pred_b = torch.tensor([[0, 1], [1, 255]]), torch.tensor([[0, 0], [0, 0]])
    target_c, pred_c = torch.tensor([[1, 0], [0, 0]]), torch.tensor([[1, 0], [0, 0]])
    episodes = [(pred_a, target_a, 1), (pred_b, target_b, 1), (pred_c, target_c, 2)]
    # By hand. fg of class 1: inter 4 + 0, union (4 + 1 spill) + 2 = 7 -> 4/7; class 2: 1/1.
    # bg: inter (5 of a's 6 bg pixels) + 1 + 3 = 9; union a: 6 + 0 (the spill is in bg's target) -> 6,
    # b: 3 (pred bg covers its 3 valid pixels), c: 3 -> 12. fg pooled: inter 5, union 8.
    miou, fb, iou = hsnet_meter(episodes)
    assert iou == {1: 4 / 7, 2: 1.0} and miou == pytest.approx((4 / 7 + 1) / 2)
    assert fb == pytest.approx((9 / 12 + 5 / 8) / 2)
    meter = IoUMeter(20, count_absent_fp=True)  # the meter --protocol hsnet uses
    for pred, target, c in episodes:
        meter.update(pred, target, [c])
    assert meter.mean_iou([1, 2]) == pytest.approx(miou, abs=1e-12)
    assert meter.fb_iou() == pytest.approx(fb, abs=1e-12)


def test_images_are_resized_as_torchvision_resizes_a_pil_image():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    label = torch.from_numpy(rng.integers(0, 3, (37, 53)))
    image, resized_label = resize_pair(torch.from_numpy(array).permute(2, 0, 1), label, 40, pil=True)
    want = np.asarray(transforms.Resize((40, 40))(Image.fromarray(array)))
    assert torch.equal(image, torch.from_numpy(want.copy()).permute(2, 0, 1))
    nearest = torch.nn.functional.interpolate(label[None, None].float(), size=(40, 40), mode="nearest")
    assert torch.equal(resized_label, nearest[0, 0].long())


# ----------------------------------------------------------------------------- end to end

def write_fold_tree(root: Path, fold: int = 0, size: int = 20, drop: int = 0) -> Path:
    """A prepared VOC tree whose val split is the images of HSNet's fold list: each holds a block of
    every class the list names for it, ringed by a 255 border. `drop` leaves out the last images."""
    layout = VOCLayout.of(root)
    classes_of: dict[str, list[int]] = {}
    for image_id, c in hsnet_pairs(fold):
        classes_of.setdefault(image_id, []).append(c)
    ids = sorted(classes_of)[: len(classes_of) - drop]
    rng = np.random.default_rng(fold)
    for n, image_id in enumerate(ids):
        mask = np.zeros((size, size), np.uint8)
        for k, c in enumerate(classes_of[image_id]):
            top = 2 + 6 * k
            mask[top - 1:top + 5, 1:size - 1] = 255
            mask[top:top + 4, 2:size - 2] = c
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        layout.image(image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(layout.image(image_id), quality=95)
        fd.save_palette_png(mask, layout.mask(image_id))
    layout.sets.mkdir(parents=True, exist_ok=True)
    layout.split_list("val").write_text("".join(f"{i}\n" for i in ids))
    for c in range(1, 21):
        layout.class_list("val", c).parent.mkdir(parents=True, exist_ok=True)
        layout.class_list("val", c).write_text("".join(f"{i}\n" for i in ids if c in classes_of[i]))
    return root


@pytest.fixture(scope="module")
def fold0_tree(tmp_path_factory) -> Path:
    return write_fold_tree(tmp_path_factory.mktemp("hsnet-voc"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small model trained one step on the embedded dataset's fold-0 training classes."""
    run = tmp_path_factory.mktemp("hsnet-run")
    assert main(["train", "--dataset", "synthetic", "--synthetic-size", "32", "--size", "32", "--fold", "0",
                 "--backbone", "small", "--pretrained", "false", "--steps", "1", "--device", "cpu",
                 "--out", str(run)]) == 0
    return run / "checkpoint.pt"


def hsnet_args(root, checkpoint, *extra):
    return ["test", "--dataset", "pascal5i", "--root", str(root), "--fold", "0", "--protocol", "hsnet",
            "--checkpoint", str(checkpoint), "--device", "cpu", "--size", "32", "--episodes", "40", *extra]


@pytest.mark.parametrize("original_size", [False, True])
def test_protocol_hsnet_end_to_end(fold0_tree, checkpoint, tmp_path, capsys, original_size):
    saved = tmp_path / "episodes.json"
    extra = ["--original-size"] if original_size else []
    assert main(hsnet_args(fold0_tree, checkpoint, "--json", "--save-episodes", str(saved), *extra)) == 0
    out = capsys.readouterr().out
    assert "hsnet protocol, fold 0, 1-way 1-shot, 1 x 40 episodes" in out and "one run: no std" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["runs"]) == 1 and result["runs"][0]["seed"] == 0  # HSNet's seed unless --test-seed
    drawn = json.loads(saved.read_text())["runs"][0]
    assert [(e["query"][0], e["support"][0], e["ways"][0] + 1) for e in drawn] == \
        [(q, s, c) for q, s, c in hsnet_episodes(0, 1, 40)]
    assert 0 <= result["miou"] <= 1 and set(result["class_iou"]) == {"1", "2", "3", "4", "5"}


@pytest.mark.parametrize("case", ["coco20i", "synthetic", "2-way", "runs", "missing images", "original size"])
def test_protocol_hsnet_bad_input_is_one_line(case, fold0_tree, checkpoint, tmp_path, capsys):
    if case == "missing images":
        root = write_fold_tree(tmp_path / "partial", drop=3)
    args = {
        "coco20i": ["test", "--dataset", "coco20i", "--root", str(tmp_path), "--fold", "0", "--protocol", "hsnet",
                    "--checkpoint", str(checkpoint)],
        "synthetic": ["test", "--dataset", "synthetic", "--fold", "0", "--protocol", "hsnet",
                      "--checkpoint", str(checkpoint)],
        "2-way": hsnet_args(fold0_tree, checkpoint, "--ways", "2"),
        "runs": hsnet_args(fold0_tree, checkpoint, "--runs", "5"),
        "missing images": hsnet_args(root if case == "missing images" else None, checkpoint),
        "original size": ["test", "--dataset", "pascal5i", "--root", str(fold0_tree), "--fold", "0",
                          "--protocol", "standard", "--checkpoint", str(checkpoint), "--original-size"],
    }[case]
    expected = {
        "coco20i": "--protocol hsnet is not defined for coco20i: HSNet's lists are PASCAL-5i's",
        "synthetic": "--protocol hsnet is not defined for synthetic",
        "2-way": "the hsnet protocol is 1-way with one query and one run",
        "runs": "use --ways 1, --queries 1 and --runs 1",
        "missing images": "3 of the 345 images of HSNet's fold-0 list are not in the prepared val split",
        "original size": "--original-size applies to --protocol hsnet",
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and "%|" not in line]
    assert "Traceback" not in err and len(lines) == 1 and expected in lines[0], err
    if case == "missing images":
        assert "(the first: 2011_003030)" in lines[0] and "prepare pascal --root DIR" in lines[0]


def test_a_table_under_hsnets_test_sets_no_panet_number_beside():
    from panet_lite import reproduce

    rows = [{"fold": f, "shots": 1, "miou": 0.5 + f / 100, "miou_std": 0.0, "fb_iou": 0.7,
             "eval_config": {"protocol": "hsnet"}} for f in range(4)]
    table = reproduce.summarize("pascal5i", rows)
    assert table["kind"] == reproduce.HSNET_TEST and "paper_mean" not in table["settings"][0]
    md = reproduce.markdown(table)
    assert md.startswith("Results on pascal5i under HSNet's test") and "PANet's published numbers come from" in md
    assert "| 1-way 1-shot | 50.0 | 51.0 | 52.0 | 53.0 | 51.5 | 70.0 |" in md  # one run: no ± 0.0
    # Later methods' published numbers beside ours, each with the test it was measured under.
    assert "| SSP | 1-way 1-shot | resnet50 | 61.4 | 67.8 | 66.5 | 50.9 | 61.7 | mlc |" in md
    assert "- `mlc`: MLC's test: val images with an object of at least 2 x 32 x 32 px" in md


def test_later_methods_rows_are_consistent_and_name_their_test():
    from panet_lite.paper import LATER_RESULTS, TESTS, later_results

    for r in LATER_RESULTS:  # a mistyped fold shows up as a mean that is not the folds' mean
        assert abs(sum(r.folds) / 4 - r.mean) <= 0.06, r
        assert r.test in TESTS and r.source.startswith("github.com/")
    # SSP reports COCO-20i under two tests, several points apart.
    coco = {r.test: r.mean for r in later_results("coco20i", shots=1) if r.method == "SSP"}
    assert coco == {"mlc": 33.6, "hsnet-coco": 37.4}


def test_lineage_is_ordered_and_shares_the_package_numbers():
    from panet_lite import paper

    years = [e.year for e in paper.LINEAGE]
    assert years == sorted(years)
    names = [e.method for e in paper.LINEAGE]
    assert names[:5] == ["OSLSM", "co-FCN", "SG-One", "CANet", "PANet"] and names[-2:] == ["MLC baseline", "SSP"]
    panet = paper.LINEAGE[names.index("PANet")]
    assert (panet.one_shot, panet.five_shot) == (paper.paper_result("pascal5i", 1, 1).mean,
                                                 paper.paper_result("pascal5i", 1, 5).mean)
    for e in paper.LINEAGE:
        later = {r.shots: r.mean for r in paper.later_results("pascal5i") if r.method == e.method}
        if later:
            assert (e.one_shot, e.five_shot) == (later[1], later[5])
        assert e.read_from and (e.one_shot is None) == (e.five_shot is None)
    table = paper.lineage_markdown()
    assert table.count("\n") == len(paper.LINEAGE) + 1 and "| SSP | 2022 |" in table


@pytest.mark.parametrize("original_size", [False, True])
def test_protocol_hsnet_without_training_on_frozen_dinov2_tokens(fold0_tree, capsys, original_size):
    # The images are fitted to whole 14-px patches (32 -> 28); the labels, and the score, stay at 32 px or,
    # with --original-size, at each query's own size.
    argv = ["test", "--dataset", "pascal5i", "--root", str(fold0_tree), "--fold", "0", "--protocol", "hsnet",
            "--notrain", "--backbone", "dinov2_vits14", "--pretrained", "false", "--method", "ssp",
            "--device", "cpu", "--size", "32", "--episodes", "40", "--json"]
    assert main(argv + (["--original-size"] if original_size else [])) == 0
    out = capsys.readouterr().out
    assert "hsnet protocol, fold 0, 1-way 1-shot, 1 x 40 episodes" in out
    assert "no training: SSP's matching on dinov2_vits14's RANDOM weights (--pretrained false): NOT a result" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert 0 <= result["miou"] <= 1 and set(result["class_iou"]) == {"1", "2", "3", "4", "5"}
