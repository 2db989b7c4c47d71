"""The benchmark registry: what each `--dataset` name means, in one place.

An entry says which classes and folds the benchmark has, which split each role reads (training,
the faithful test, the standard test), how to open a split, which published rows it is compared
with and which `prepare` command builds its data. The command line takes its choices from here;
`reproduce`, the course's figures and the tests read the same entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .data import COCO20I, PASCAL5I, Benchmark, SegmentationSource

ROLES = ("train", "faithful", "standard", "hsnet")


def _open_pascal(root: Path, split: str) -> SegmentationSource:
    from .pascal import PascalVOC

    return PascalVOC(root, split)


def _open_coco(root: Path, split: str) -> SegmentationSource:
    from .coco import COCOSource

    return COCOSource(root, split)


def _open_synthetic(root: Path | None, split: str, size: int = 96, n_images: int = 2000) -> SegmentationSource:
    from .synthetic import SyntheticFewShot

    return SyntheticFewShot(split, n_images if split == "trainaug" else n_images // 2, size)


@dataclass(frozen=True)
class Dataset:
    """One entry of the registry."""

    name: str  # the --dataset value
    title: str  # as figures and tables print it
    classes: Benchmark  # class names and the held-out classes of each fold (data/folds.json)
    splits: dict[str, str]  # role ("train", "faithful", "standard", "hsnet") -> split name
    opener: Callable[..., SegmentationSource]  # (root, split, **options) -> source
    paper: str | None  # the dataset of the paper's rows it is compared with; None: never compared
    prepare: str | None  # `python -m panet_lite prepare <this>` builds its root; None: needs no data
    # Options only this dataset has: name -> (type, help); the default is the opener's. The command
    # line spells them --NAME-OPTION (e.g. --synthetic-size).
    options: dict[str, tuple[type, str]] = field(default_factory=dict)

    def split(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if role not in self.splits:
            why = {"hsnet": ": HSNet's lists are PASCAL-5i's (its COCO-20i lists rely on its own preprocessed "
                            "masks); use --dataset pascal5i"}.get(role, "")
            raise ValueError(f"--protocol {role} is not defined for {self.name}{why}")
        return self.splits[role]

    def flag(self, option: str) -> str:
        return f"--{self.name}-{option}".replace("_", "-")

    def open(self, root: str | Path | None, split: str, options: Mapping | None = None) -> SegmentationSource:
        """The image source of one split; `root` is the prepared data directory, `options` this dataset's
        own options (e.g. {"size": 64} for the embedded dataset; real datasets keep their images' sizes)."""
        if self.prepare is not None and root is None:
            raise ValueError(f"--root is required for {self.name}: the directory you prepared with "
                             f"`python -m panet_lite prepare {self.prepare} --root DIR`")
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(f"{self.name} has no option {', '.join(unknown)} (its options: {known})")
        source = self.opener(None if root is None else Path(root), split, **options)
        if source.num_classes != self.classes.n_classes:  # e.g. a COCO file with a subset of the categories
            raise ValueError(f"{self.title}'s folds need {self.classes.n_classes} classes, but the {split} data in "
                             f"{root} has {source.num_classes}; prepare the full, official annotations "
                             f"(`python -m panet_lite prepare {self.prepare} --root DIR`)")
        return source


# The faithful protocol tests on the *training* images of the held-out classes: the authors'
# quirk that produced the paper's table (docs/protocol.md).
REGISTRY: dict[str, Dataset] = {d.name: d for d in (
    Dataset("pascal5i", "PASCAL-5i", PASCAL5I,
            {"train": "trainaug", "faithful": "trainaug", "standard": "val", "hsnet": "val"},
            _open_pascal, paper="pascal5i", prepare="pascal"),
    Dataset("coco20i", "COCO-20i", COCO20I, {"train": "train2014", "faithful": "train2014", "standard": "val2014"},
            _open_coco, paper="coco20i", prepare="coco"),
    Dataset("synthetic", "embedded dataset", PASCAL5I, {"train": "trainaug", "faithful": "trainaug", "standard": "val"},
            _open_synthetic, paper=None, prepare=None, options={"size": (int, "image side of the embedded dataset")}),
)}
DATASETS = tuple(REGISTRY)
PREPARE_CHOICES = tuple(d.prepare for d in REGISTRY.values() if d.prepare)


def dataset(name: str) -> Dataset:
    """The registry entry of a --dataset name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return REGISTRY[name]


def benchmark(name: str) -> Benchmark:
    """The classes and folds of a dataset."""
    return dataset(name).classes


def open_source(name: str, root: str | Path | None, split: str, options: Mapping | None = None) -> SegmentationSource:
    """The image source of one split of a dataset (`root` is unused for the embedded dataset;
    `options` are the dataset's own, see `Dataset.options`)."""
    return dataset(name).open(root, split, options)


def split_for(name: str, role: str) -> str:
    """The split a role reads: role is "train", "faithful" or "standard"."""
    return dataset(name).split(role)
