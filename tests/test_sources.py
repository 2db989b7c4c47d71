"""The benchmark registry: one entry per --dataset name, which everything else reads."""
import pytest

from panet_lite import reproduce
from panet_lite.cli import build_parser
from panet_lite.data import COCO20I, PASCAL5I
from panet_lite.sources import DATASETS, PREPARE_CHOICES, REGISTRY, ROLES, benchmark, dataset, open_source, split_for
from panet_lite.synthetic import SyntheticFewShot


def parser_choices(command: str, dest: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if a.dest == dest).choices)


def test_the_command_line_offers_exactly_the_registered_datasets():
    assert DATASETS == ("pascal5i", "coco20i", "synthetic")
    for command in ("train", "test", "reproduce"):
        assert parser_choices(command, "dataset") == DATASETS
    assert parser_choices("prepare", "dataset") == PREPARE_CHOICES == ("pascal", "coco")


def test_each_entry_names_its_classes_splits_and_published_rows():
    assert benchmark("pascal5i") is PASCAL5I and benchmark("coco20i") is COCO20I
    assert benchmark("synthetic") is PASCAL5I  # the embedded dataset is shaped like PASCAL-5i
    # The faithful protocol tests on the training split (the authors' quirk), the standard and HSNet's on val.
    assert [split_for("pascal5i", r) for r in ROLES] == ["trainaug", "trainaug", "val", "val"]
    assert [split_for("coco20i", r) for r in ROLES[:3]] == ["train2014", "train2014", "val2014"]
    for name in ("coco20i", "synthetic"):  # HSNet's lists are PASCAL-5i's
        with pytest.raises(ValueError, match=f"--protocol hsnet is not defined for {name}: HSNet's lists are"):
            split_for(name, "hsnet")
    assert {name: d.paper for name, d in REGISTRY.items()} == {"pascal5i": "pascal5i", "coco20i": "coco20i",
                                                             "synthetic": None}
    with pytest.raises(ValueError, match="unknown dataset 'voc'; choose one of pascal5i, coco20i, synthetic"):
        dataset("voc")
    with pytest.raises(ValueError, match="role must be one of train, faithful, standard, hsnet"):
        split_for("pascal5i", "test")


def test_opening_a_split():
    source = open_source("synthetic", None, "val", {"size": 40})
    assert isinstance(source, SyntheticFewShot) and (source.split, source.size, source.n_images) == ("val", 40, 1000)
    with pytest.raises(ValueError, match="--root is required for coco20i.*prepare coco --root DIR"):
        open_source("coco20i", None, "train2014")
    with pytest.raises(ValueError, match=r"pascal5i has no option size \(its options: none\)"):
        open_source("pascal5i", "/nonexistent", "val", {"size": 40})


def test_a_pipeline_check_names_the_dataset_by_its_registered_title():
    rows = [{"fold": 0, "shots": 1, "miou": 0.5, "miou_std": 0.0, "fb_iou": 0.6}]
    assert reproduce.title(reproduce.summarize("synthetic", rows)).startswith(
        f"Synthetic pipeline check on the {REGISTRY['synthetic'].title} (not a reproduction")
