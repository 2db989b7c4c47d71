"""Support annotations: the authors' boxes and our scribbles, in episodes, tests and reproductions."""
import numpy as np
import pytest
import torch
from scipy import ndimage

import fakedata as fd
from panet_lite.coco import COCOSource, prepare_coco
from panet_lite.data import fold_classes
from panet_lite.episodes import EpisodeDataset, resize_pair
from panet_lite.evaluate import EvalConfig, evaluate
from panet_lite.model import PANet
from panet_lite.pascal import PascalVOC, prepare_pascal
from panet_lite.reproduce import markdown, summarize
from panet_lite.supports import BG_STROKES, brush_radius, scribble, scribble_masks, thin
from panet_lite.synthetic import SyntheticFewShot, write_voc_tree

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def boxes_reference(label: np.ndarray, instances: np.ndarray, class_id: int):
    """The authors' boxes, pixel by pixel: the instances on the class's pixels, their boxes, the largest's."""
    ids = sorted({int(i) for i in instances[label == class_id]} - {0, 255})
    area = {i: int(((instances == i) & (label == class_id)).sum()) for i in ids}
    largest = max(ids, key=lambda i: (area[i], -i))
    fg, bg = np.zeros(label.shape, bool), np.ones(label.shape, bool)
    for i in ids:
        rows, cols = np.nonzero((instances == i) & (label == class_id))
        bg[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = False
        if i == largest:
            fg[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return fg, bg


# ----------------------------------------------------------------------------- thinning and strokes

def test_thin_keeps_a_line_and_thins_a_bar_to_its_middle():
    line = np.zeros((9, 20), bool)
    line[4, 2:18] = True
    assert np.array_equal(thin(line), line)
    bar = np.zeros((11, 30), bool)
    bar[2:9, 3:27] = True  # 7 rows thick
    skeleton = thin(bar)
    rows, cols = np.nonzero(skeleton)
    assert set(rows.tolist()) == {5} and cols.min() <= 6 and cols.max() >= 22  # the middle row, less ~half the thickness at the ends


@pytest.mark.parametrize("seed", range(4))
def test_thin_is_one_pixel_wide_connected_and_inside(seed):
    rng = np.random.default_rng(seed)
    blob = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((60, 70)), 4) > 0.5, iterations=2)
    blob = blob & (ndimage.label(blob, EIGHT)[0] == 1)  # one 8-connected piece
    skeleton = thin(blob)
    assert skeleton.any() and not (skeleton & ~blob).any()
    assert ndimage.label(skeleton, EIGHT)[1] == 1  # thinning keeps connectivity
    blocks = skeleton[:-1, :-1] & skeleton[1:, :-1] & skeleton[:-1, 1:] & skeleton[1:, 1:]
    assert not blocks.any()  # no 2 x 2 block: one pixel wide


def test_a_stroke_stays_inside_its_region_and_depends_only_on_its_seed():
    yy, xx = np.mgrid[:80, :120]
    region = ((yy - 40) / 30) ** 2 + ((xx - 60) / 50) ** 2 <= 1  # an ellipse
    radius = 2
    stroke = scribble(region, np.random.default_rng(0), radius, 60)
    assert stroke.any() and not (stroke & ~region).any()
    assert ndimage.label(stroke, EIGHT)[1] == 1  # one stroke
    # Every stroke pixel is within the brush of a pixel at least `radius` inside the region.
    inner = ndimage.binary_erosion(region, np.ones((2 * radius + 1,) * 2, bool), border_value=0)
    assert not (stroke & ~ndimage.binary_dilation(inner, iterations=2 * radius)).any()
    assert np.array_equal(stroke, scribble(region, np.random.default_rng(0), radius, 60))
    assert not np.array_equal(stroke, scribble(~region, np.random.default_rng(0), radius, 60))
    assert not scribble(np.zeros_like(region), np.random.default_rng(0), radius, 60).any()


def test_a_region_thinner_than_the_brush_still_gets_a_stroke():
    region = np.zeros((20, 40), bool)
    region[9:11, 5:35] = True  # 2 px thick, brush radius 3
    stroke = scribble(region, np.random.default_rng(1), 3, 30)
    assert stroke.any() and not (stroke & ~region).any()


def test_large_regions_are_thinned_coarsely_and_stay_inside():
    yy, xx = np.mgrid[:417, :417]
    region = (yy - 200) ** 2 + (xx - 220) ** 2 >= 90 ** 2  # background around a disc
    stroke = scribble(region, np.random.default_rng(3), brush_radius(417, 417), 208)
    assert stroke.sum() > 200 and not (stroke & ~region).any()


def test_scribble_masks_of_a_support():
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[10:40, 8:50] = 3
    label[45:60, 30:60] = 7  # another way's class: not background
    label[9, 8:50] = 255
    fg, bg = scribble_masks(label, 3, [3, 7], np.random.default_rng(5))
    assert fg.dtype == torch.bool and fg.any() and bg.any()
    assert (label[fg] == 3).all()
    assert (label[bg] == 0).all()  # neither way's class, never a 255 border
    assert ndimage.label(bg.numpy(), EIGHT)[1] <= BG_STROKES


# ----------------------------------------------------------------------------- supports in episodes

@pytest.fixture(scope="module")
def synthetic():
    return SyntheticFewShot("trainaug", 200, 64)


def test_box_episodes_are_the_authors_boxes_of_the_resized_flipped_support(synthetic):
    classes = fold_classes(1)
    boxes = EpisodeDataset(synthetic, classes, 12, 2, 2, seed=7, size=80, flip=True, support="bbox")
    dense = EpisodeDataset(synthetic, classes, 12, 2, 2, seed=7, size=80, flip=True)
    compared = 0
    for index in range(len(boxes)):
        item, ref = boxes[index], dense[index]
        assert torch.equal(item["support_images"], ref["support_images"])  # same images, flips included
        assert torch.equal(item["query_labels"], ref["query_labels"])
        ep = boxes.episodes[index]
        gen = torch.Generator().manual_seed(7 * 1_000_003 + index)  # the dataset's flip draw
        flipped = (torch.rand(4 + 1, generator=gen) < 0.5).tolist()
        for w, shots in enumerate(ep.support):
            for k, image_id in enumerate(shots):
                _, label = resize_pair(*synthetic.load(image_id), 80)
                if flipped[2 * w + k]:
                    label = label.flip(-1)
                fg, bg = boxes_reference(label.numpy(), label.numpy(), classes[ep.ways[w]])
                assert np.array_equal(item["support_fg"][w, k].numpy(), fg)
                assert np.array_equal(item["support_bg"][w, k].numpy(), bg)
                compared += 1
    assert compared == 12 * 4


def test_scribble_episodes_are_deterministic_and_inside_their_regions(synthetic):
    classes = fold_classes(0)
    a = EpisodeDataset(synthetic, classes, 6, 2, 1, seed=11, support="scribble")
    b = EpisodeDataset(synthetic, classes, 6, 2, 1, seed=11, support="scribble")
    for index in (0, 3, 5):
        x, y = a[index], b[index]
        assert torch.equal(x["support_fg"], y["support_fg"]) and torch.equal(x["support_bg"], y["support_bg"])
        ep = a.episodes[index]
        for w, (image_id,) in enumerate(ep.support):
            label = synthetic.load(image_id)[1]
            fg, bg = x["support_fg"][w, 0].bool(), x["support_bg"][w, 0].bool()
            assert fg.any() and (label[fg] == classes[ep.ways[w]]).all()
            assert bg.any() and (label[bg] == 0).all()
    assert not torch.equal(a[0]["support_bg"], a[1]["support_bg"])


def test_an_unknown_support_is_refused(synthetic):
    with pytest.raises(ValueError, match="--support must be one of dense, bbox, scribble"):
        EpisodeDataset(synthetic, fold_classes(0), 2, support="boxes")
    with pytest.raises(ValueError, match="--support must be one of"):
        EvalConfig(support="boxes")


def test_evaluate_with_weak_supports_runs_and_differs_from_dense(synthetic):
    model = PANet("small", pretrained=False).eval()
    results = {s: evaluate(model, synthetic, fold_classes(0), EvalConfig(runs=1, episodes=6, size=None, support=s,
                                                                         device="cpu"), progress=False)
               for s in ("dense", "bbox", "scribble")}
    assert all(0 <= r.fb_iou <= 1 for r in results.values())
    assert results["bbox"].fb_iou != results["dense"].fb_iou and results["scribble"].fb_iou != results["dense"].fb_iou


# ----------------------------------------------------------------------------- instances of the datasets

def test_pascal_box_episodes_use_the_prepared_instance_masks(tmp_path):
    base = fd.make_pascal_trees(tmp_path / "data")
    prepare_pascal(base, download=False, progress=False, reference=fd.reference_counts())
    source = PascalVOC(base, split="val")
    classes = [c for c in range(1, 21) if len(source.class_lists([c])[0]) >= 2][:1]
    data = EpisodeDataset(source, classes, 3, 1, 1, seed=3, support="bbox")
    for index in range(3):
        image_id = data.episodes[index].support[0][0]
        label = source.load(image_id)[1].numpy()
        fg, bg = boxes_reference(label, source.load_instances(image_id).numpy(), classes[0])
        assert np.array_equal(data[index]["support_fg"][0, 0].numpy(), fg)
        assert np.array_equal(data[index]["support_bg"][0, 0].numpy(), bg)


@pytest.mark.filterwarnings("ignore:.*categories, not COCO 2014's 80")  # the fake tree has 6
def test_coco_instances_give_one_box_per_annotation_crowds_included(tmp_path):
    root = tmp_path / "coco"
    expected = fd.make_coco_tree(root, "train2014", first_id=9)
    fd.make_coco_tree(root, "val2014", first_id=42)
    prepare_coco(root, download=False, progress=False)
    source = COCOSource(root, "train2014")
    person, train = 1, 4  # category ids 1 and 7
    # Image 0: a person polygon and a crowd of people (RLE): two instances, two boxes.
    stem = "COCO_train2014_000000000009"
    instances = source.load_instances(stem, [person]).numpy()
    masks = [m.astype(bool) for category, m in expected[stem] if category == 1]
    assert sorted(set(np.unique(instances)) - {0}) == [1, 2]
    assert np.array_equal(instances > 0, masks[0] | masks[1])
    label = source.load_for_classes(stem, [person])[1].numpy()
    fg, bg = boxes_reference(label, instances, person)
    data = EpisodeDataset(source, [person], 1, episodes=[_episode(stem, stem)], support="bbox")
    assert np.array_equal(data[0]["support_fg"][0, 0].numpy(), fg)
    assert np.array_equal(data[0]["support_bg"][0, 0].numpy(), bg)
    for mask in masks:  # neither instance is background
        assert not (bg & mask).any()
    # Image 3: one train in two parts is one instance, so one box spans both parts.
    stem = "COCO_train2014_000000000030"
    (mask,) = [m.astype(bool) for category, m in expected[stem] if category == 7]
    rows, cols = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    data = EpisodeDataset(source, [train], 1, episodes=[_episode(stem, stem)], support="bbox")
    assert np.array_equal(data[0]["support_fg"][0, 0].numpy(), box)
    assert np.array_equal(data[0]["support_bg"][0, 0].numpy(), ~box)


def _episode(support: str, query: str):
    from panet_lite.episodes import Episode

    return Episode([0], [[support]], [query], [0])


def test_box_supports_without_instance_masks_fail_in_one_line_before_any_work(tmp_path, capsys):
    from panet_lite.cli import main

    voc = write_voc_tree(tmp_path / "voc", n_train=60, n_val=20, size=48)
    for path in (voc / "SegmentationObjectAug").iterdir():
        path.unlink()
    (voc / "SegmentationObjectAug").rmdir()
    code = main(["test", "--dataset", "pascal5i", "--root", str(tmp_path / "voc"), "--fold", "0", "--notrain",
                 "--support", "bbox", "--episodes", "2", "--runs", "1"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "--support bbox" in err and "SegmentationObjectAug is missing" in err and "prepare pascal" in err


def test_the_embedded_data_as_a_voc_tree_carries_instances(tmp_path):
    voc = write_voc_tree(tmp_path / "voc", n_train=30, n_val=10, size=48)
    source = PascalVOC(tmp_path / "voc", split="val")
    for image_id in source.ids()[:5]:
        label, instances = source.load(image_id)[1], source.load_instances(image_id)
        assert torch.equal(instances == 255, label == 255)
        for c in source.classes_in(image_id):  # one object a class: one instance on its pixels
            assert len(set(instances[label == c].tolist())) == 1
    assert (voc / "SegmentationObjectAug").is_dir()


# ----------------------------------------------------------------------------- tables

def _row(fold: int, shots: int, support: str) -> dict:
    return {"fold": fold, "shots": shots, "miou": 0.4, "miou_std": 0.01, "fb_iou": 0.6,
            "train_config": {"method": "panet"}, "eval_config": {"protocol": "faithful", "support": support}}


def test_box_tables_set_the_papers_box_row_beside_and_scribble_tables_none():
    rows = [_row(f, k, "bbox") for f in range(4) for k in (1, 5)]
    table = summarize("pascal5i", rows)
    assert [s["paper_mean"] for s in table["settings"]] == [45.1, 52.8]
    assert "the authors' boxes" in markdown(table).splitlines()[0]
    table = summarize("pascal5i", [_row(f, 1, "scribble") for f in range(4)])
    assert table["settings"][0].get("paper_mean") is None
    assert "not set beside" in markdown(table).splitlines()[0]
    assert "(48.1" in markdown(summarize("pascal5i", [_row(f, 1, "dense") for f in range(4)]))
