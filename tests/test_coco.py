"""prepare_coco and COCOSource on a small generated COCO 2014 tree (offline, local HTTP)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fakedata as fd
from panet_lite import coco
from panet_lite.coco import COCOSource, prepare_coco
from panet_lite.data import COCO20I
from panet_lite.pascal import DataError

CLASS_OF = {1: 1, 3: 2, 5: 3, 7: 4, 18: 5, 90: 6}  # ascending category id -> 1..N
TRAIN = [f"COCO_train2014_{i:012d}" for i in (9, 16, 23, 30)]  # image 2 has no annotations


def make_tree(root: Path) -> dict:
    expected = fd.make_coco_tree(root, "train2014", first_id=9)
    expected.update(fd.make_coco_tree(root, "val2014", first_id=42))
    return expected


@pytest.fixture
def tree(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "coco"
    expected = make_tree(root)
    prepare_coco(root, download=False, progress=False)
    return root, expected


def test_categories_map_to_one_to_n_in_ascending_id_order(tree):
    source = COCOSource(tree[0])
    assert source.category_ids == [1, 3, 5, 7, 18, 90]
    assert source.class_names == ("person", "car", "airplane", "train", "dog", "toothbrush")
    assert source.num_classes == 6  # 80 on the real files


def test_ids_class_lists_and_classes_in(tree):
    source = COCOSource(str(tree[0]), split="train2014")
    assert source.ids() == TRAIN
    assert source.class_lists([1, 2, 3, 4, 5, 6]) == [[TRAIN[0]], [TRAIN[0]], [], [TRAIN[3]], [TRAIN[1]], [TRAIN[1]]]
    assert source.classes_in(TRAIN[0]) == {1, 2} and source.classes_in(TRAIN[2]) == set()
    val = COCOSource(tree[0], split="val2014")
    assert val.ids()[0] == "COCO_val2014_000000000042" and val.class_lists([1]) == [[val.ids()[0]]]


def test_load_paints_instances_in_annotation_order(tree):
    root, expected = tree
    source = COCOSource(root)
    for stem in TRAIN:
        image, label = source.load(stem)
        want = np.zeros((24, 28), dtype=np.int64)
        for category, mask in expected[stem]:
            want[mask.astype(bool)] = CLASS_OF[category]
        assert image.dtype == torch.uint8 and image.shape == (3, 24, 28)  # greyscale images too
        assert label.dtype == torch.int64 and torch.equal(label, torch.from_numpy(want))


def test_class_mask_is_the_union_of_instances(tree):
    root, expected = tree
    source = COCOSource(root)
    person = np.zeros((24, 28), dtype=bool)
    for category, mask in expected[TRAIN[0]]:
        if category == 1:  # a polygon and a crowd RLE
            person |= mask.astype(bool)
    union = source.class_mask(TRAIN[0], 1)
    assert union.dtype == torch.bool and torch.equal(union, torch.from_numpy(person))
    _, label = source.load(TRAIN[0])
    assert (union & (label == 2)).any()  # the car covers part of a person in `load`, not in the union
    dog = expected[TRAIN[1]][0][1].astype(bool)  # compressed RLE
    assert torch.equal(source.class_mask(TRAIN[1], CLASS_OF[18]), torch.from_numpy(dog))
    assert not source.class_mask(TRAIN[2], 1).any()


def test_second_prepare_rewrites_and_reloads_nothing(tree, monkeypatch):
    root, _ = tree
    lists = sorted((root / coco.LISTS_DIR).rglob("*"))
    before = {p: p.stat().st_mtime_ns for p in lists}
    monkeypatch.setattr(coco, "load_coco_api", lambda path: pytest.fail("annotations loaded again"))
    report = prepare_coco(root, download=False, progress=False)
    assert report["train2014"] == {"images": 4, "classes": 6} and report["downloaded"] == []
    assert {p: p.stat().st_mtime_ns for p in lists} == before


def test_unprepared_and_missing_files_say_what_to_run(tmp_path):
    with pytest.raises(DataError, match="python -m panet_lite prepare coco --root"):
        COCOSource(tmp_path)
    with pytest.raises(DataError, match="python -m panet_lite prepare coco --root"):
        prepare_coco(tmp_path, download=False, progress=False)


def test_missing_image_is_named(tmp_path):
    root = tmp_path / "coco"
    make_tree(root)
    missing = root / "val2014" / "COCO_val2014_000000000049.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=str(missing)):
        prepare_coco(root, download=False, progress=False)


def test_missing_image_at_load_is_named(tree):
    root, _ = tree
    source = COCOSource(root)
    (root / "train2014" / f"{TRAIN[1]}.jpg").unlink()
    with pytest.raises(DataError, match=f"{TRAIN[1]}.jpg"):
        source.load(TRAIN[1])


def test_missing_annotation_file_is_named(tmp_path):
    root = tmp_path / "coco"
    make_tree(root)
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DataError, match="instances_val2014.json"):
        prepare_coco(root, download=False, progress=False)


@pytest.fixture
def served(tmp_path):
    source = tmp_path / "source"
    make_tree(source)
    archives = fd.pack_coco(source, tmp_path / "www")
    with fd.serve_directory(tmp_path / "www") as server:
        urls = {name: (f"{server.url}/{path.name}", fd.md5(path)) for name, path in archives.items()}
        yield server, urls


def test_download_end_to_end(tmp_path, served):
    server, urls = served
    report = prepare_coco(tmp_path / "dest", urls=urls, progress=False)
    assert report["downloaded"] == ["annotations", "train2014", "val2014"]
    assert COCOSource(tmp_path / "dest").class_lists([1, 4]) == [[TRAIN[0]], [TRAIN[3]]]
    asked = len(server.requests)
    assert prepare_coco(tmp_path / "dest", urls=urls, progress=False)["downloaded"] == []
    assert len(server.requests) == asked


def test_download_checksum_mismatch(tmp_path, served):
    _, urls = served
    urls["val2014"] = (urls["val2014"][0], "f" * 32)
    with pytest.raises(DataError, match="checksum mismatch .*val2014.zip"):
        prepare_coco(tmp_path / "dest", urls=urls, progress=False)


def test_episode_labels_use_union_masks_where_instances_overlap(tree):
    """An episode of class c sees c's full union mask even where a later instance of another class
    is painted over it in `load()`."""
    src = COCOSource(tree[0], "train2014")
    overlapped = 0
    for image_id in src.ids():
        for c in src.classes_in(image_id):
            _, label = src.load_for_classes(image_id, [c])
            assert torch.equal(label == c, src.class_mask(image_id, c))
            assert set(np.unique(label.numpy())) <= {0, c}
            overlapped += int((src.load(image_id)[1] == c).sum() < (label == c).sum())
    assert overlapped > 0  # the fake tree has overlapping instances of different classes


def _set_categories(root: Path, categories: list[tuple[int, str]]) -> None:
    """Give both annotation files these categories (the fake annotations use ids 1, 3, 7, 18 and 90)."""
    for split in coco.COCO_SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        dataset = json.loads(path.read_text())
        dataset["categories"] = [{"id": i, "name": n, "supercategory": ""} for i, n in categories]
        path.write_text(json.dumps(dataset))


def test_the_80_categories_are_coco20is(tmp_path):
    """A file with COCO-20i's 80 categories maps them to the folds' classes 1..80; another 80 is refused."""
    root = tmp_path / "coco"
    make_tree(root)
    official = coco.coco20i_categories()  # from data/folds.json
    assert len(official) == 80 and official[0] == (1, "person") and official[-1] == (90, "toothbrush")
    _set_categories(root, official)
    prepare_coco(root, download=False, progress=False)
    source = COCOSource(root)
    assert source.class_names == COCO20I.class_names and source.num_classes == 80
    assert source.class_lists([COCO20I.class_names.index("dog") + 1]) == [[TRAIN[1]]]

    renamed = [(i, "puppy" if i == 18 else n) for i, n in official]
    _set_categories(root, renamed)
    annotation_file = root / "annotations" / "instances_train2014.json"
    with pytest.raises(DataError, match=f"{annotation_file} has 80 categories but not COCO-20i's: its category 18 "
                                        f"is 'puppy' where data/folds.json has 18 'dog'"):
        prepare_coco(root, download=False, progress=False)
