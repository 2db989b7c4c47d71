"""data/folds.json against the benchmarks' rules (hand-written expectations), and the API that reads it."""
import json
from pathlib import Path

import pytest

from panet_lite import data, fold_classes, train_classes
from panet_lite.data import COCO20I, PASCAL5I, VOC_CLASSES
from panet_lite.pascal import PascalVOC

FOLDS = json.loads((Path(__file__).resolve().parent.parent / "data" / "folds.json").read_text())

PASCAL_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                "tvmonitor"]
COCO_GAPS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # category ids COCO 2014 does not use


def test_the_package_reads_the_committed_file():
    assert data.data_file("folds.json") == Path(__file__).resolve().parent.parent / "data" / "folds.json"
    assert data.read_data_json("folds.json") == FOLDS


def test_pascal5i_folds_are_5i_plus_1_to_5i_plus_5():
    entry = FOLDS["pascal5i"]
    assert entry["class_names"] == PASCAL_NAMES
    assert [f["fold"] for f in entry["folds"]] == [0, 1, 2, 3]
    for i, fold in enumerate(entry["folds"]):
        assert fold["test_class_ids"] == list(range(5 * i + 1, 5 * i + 6))
        assert fold["test_class_names"] == [PASCAL_NAMES[c - 1] for c in fold["test_class_ids"]]
    assert entry["folds"][0]["test_class_names"] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert entry["folds"][1]["test_class_names"] == ["bus", "car", "cat", "chair", "cow"]
    assert entry["folds"][2]["test_class_names"] == ["diningtable", "dog", "horse", "motorbike", "person"]
    assert entry["folds"][3]["test_class_names"] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def test_coco20i_folds_are_contiguous_in_ascending_category_id():
    entry = FOLDS["coco20i"]
    assert entry["category_ids"] == [c for c in range(1, 91) if c not in COCO_GAPS]
    names = entry["class_names"]
    assert len(names) == 80 == len(set(names))
    assert names[:11] == ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
                          "traffic light", "fire hydrant"]  # ids 1..11, then the gap at 12
    assert names[11] == "stop sign" and names[17:20] == ["horse", "sheep", "cow"]  # ids 13, 19..21
    assert names[60:] == ["dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
                          "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
                          "teddy bear", "hair drier", "toothbrush"]
    for i, fold in enumerate(entry["folds"]):
        assert fold["fold"] == i and fold["test_class_ids"] == list(range(20 * i + 1, 20 * i + 21))
        assert fold["test_class_names"] == names[20 * i:20 * i + 20]
    assert entry["folds"][0]["test_class_names"][-1] == "cow" and entry["folds"][1]["test_class_names"][0] == "elephant"
    assert entry["folds"][2]["test_class_names"][0] == "wine glass"
    assert entry["folds"][3]["test_class_names"][0] == "dining table"


@pytest.mark.parametrize("fold", range(4))
def test_api_follows_the_file(fold):
    assert fold_classes(fold) == PASCAL5I.test_classes(fold) == FOLDS["pascal5i"]["folds"][fold]["test_class_ids"]
    assert train_classes(fold) == [c for c in range(1, 21) if c not in fold_classes(fold)]
    assert fold_classes(fold, 80) == COCO20I.test_classes(fold) == list(range(20 * fold + 1, 20 * fold + 21))
    assert len(COCO20I.train_classes(fold)) == 60 and not set(COCO20I.train_classes(fold)) & set(fold_classes(fold, 80))


def test_names_and_sizes():
    assert VOC_CLASSES == ("background", *PASCAL_NAMES) and VOC_CLASSES[15] == "person"
    assert PascalVOC.class_names == tuple(PASCAL_NAMES)
    assert (PASCAL5I.n_classes, PASCAL5I.n_folds, COCO20I.n_classes, COCO20I.n_folds) == (20, 4, 80, 4)
    assert COCO20I.class_names == tuple(FOLDS["coco20i"]["class_names"])


def test_bad_folds_and_unknown_sizes_are_value_errors():
    with pytest.raises(ValueError, match="fold must be in 0..3, got 4"):
        fold_classes(4)
    with pytest.raises(ValueError, match="no benchmark with 6 classes"):
        fold_classes(0, n_classes=6)
