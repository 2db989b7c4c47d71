"""Segmentation sources (labelled images) and the PASCAL-5i / COCO-20i fold definitions.

The fold definitions live in the repository's data/folds.json (readable, and the only copy):
this module reads them. pyproject.toml maps data/ into wheels as panet_lite/_data.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

IGNORE = 255  # VOC's "don't care" label (object borders)
FOLDS_FILE = "folds.json"


def data_file(name: str) -> Path:
    """The path of one of data/'s committed definition files (folds.json, reference counts).

    A wheel holds them in panet_lite/_data; a checkout (and so the editable install) reads
    data/ beside the package, so an edit of the file takes effect without reinstalling.
    """
    package = Path(__file__).resolve().parent
    for folder in (package / "_data", package.parent / "data"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"panet_lite's data file {name} is missing (looked in {package / '_data'} and "
                            f"{package.parent / 'data'}); reinstall panet_lite or restore data/{name}.")


@functools.cache
def read_data_json(name: str) -> dict:
    """A data/ JSON file, parsed once per process (the definitions don't change while it runs);
    the dict is shared, so callers read it and never modify it."""
    path = data_file(name)
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it from the repository.") from None


@dataclass(frozen=True)
class Benchmark:
    """Which classes a few-shot benchmark has and which of them each fold holds out (tests on)."""

    name: str
    class_names: tuple[str, ...]  # class id k is class_names[k - 1]
    folds: tuple[tuple[int, ...], ...]  # per fold, the held-out class ids

    @classmethod
    def load(cls, name: str) -> "Benchmark":
        """The benchmark `name` ("pascal5i", "coco20i") as data/folds.json defines it."""
        entry = read_data_json(FOLDS_FILE)[name]
        return cls(name, tuple(entry["class_names"]),
                   tuple(tuple(fold["test_class_ids"]) for fold in entry["folds"]))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def test_classes(self, fold: int) -> list[int]:
        """Global ids of the classes the fold holds out, ascending."""
        if not 0 <= fold < self.n_folds:
            raise ValueError(f"fold must be in 0..{self.n_folds - 1}, got {fold}")
        return sorted(self.folds[fold])

    def train_classes(self, fold: int) -> list[int]:
        """The classes outside the fold, ascending: the ones episodic training draws from."""
        held_out = set(self.test_classes(fold))
        return [c for c in range(1, self.n_classes + 1) if c not in held_out]


PASCAL5I = Benchmark.load("pascal5i")
COCO20I = Benchmark.load("coco20i")
BENCHMARKS = (PASCAL5I, COCO20I)
VOC_CLASSES = ("background", *PASCAL5I.class_names)  # indexed by label: VOC_CLASSES[15] == "person"


def _benchmark_of(n_classes: int, n_folds: int) -> Benchmark:
    """The benchmark with that many classes and folds (20: PASCAL-5i, 80: COCO-20i)."""
    for bench in BENCHMARKS:
        if (bench.n_classes, bench.n_folds) == (n_classes, n_folds):
            return bench
    known = ", ".join(f"{b.name} ({b.n_classes} classes, {b.n_folds} folds)" for b in BENCHMARKS)
    raise ValueError(f"no benchmark with {n_classes} classes in {n_folds} folds; {FOLDS_FILE} defines {known}")


def fold_classes(fold: int, n_classes: int = 20, n_folds: int = 4) -> list[int]:
    """Global ids of the classes a fold holds out, as folds.json defines them for the benchmark
    with `n_classes`: 5i+1..5i+5 (PASCAL-5i, 20), 20i+1..20i+20 (COCO-20i, 80)."""
    return _benchmark_of(n_classes, n_folds).test_classes(fold)


def train_classes(fold: int, n_classes: int = 20, n_folds: int = 4) -> list[int]:
    """The classes outside the fold, ascending: the ones episodic training draws from."""
    return _benchmark_of(n_classes, n_folds).train_classes(fold)


# ImageNet's input statistics: what every encoder here but a future one is normalised with. Each
# encoder declares its own (encoders.ENCODERS[name].stats); these are the default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_STATS = (IMAGENET_MEAN, IMAGENET_STD)
Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per RGB channel, of [0, 1] images


def normalize(images: torch.Tensor, stats: Stats = IMAGENET_STATS) -> torch.Tensor:
    """uint8 or [0, 1] float RGB images (..., 3, H, W) -> float, minus `stats`' mean over its std
    (ImageNet's by default; an encoder's own: `model.input_stats`)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
    return _standardise_(x, stats)


def normalize_(grey_levels: torch.Tensor, stats: Stats = IMAGENET_STATS) -> torch.Tensor:
    """`normalize` of uint8 images given as float grey levels (..., 3, H, W), in place: the same values
    (the same operations in the same order), without allocating a new image per operation."""
    return _standardise_(grey_levels.div_(255), stats)


def _standardise_(x: torch.Tensor, stats: Stats) -> torch.Tensor:
    """[0, 1] float RGB (..., 3, H, W) minus the mean, over the std, in place."""
    mean, std = stats
    return x.sub_(x.new_tensor(mean).view(3, 1, 1)).div_(x.new_tensor(std).view(3, 1, 1))


class SegmentationSource:
    """A set of images with semantic masks: 0 = background, 1..num_classes = classes, 255 = ignore.

    Subclasses set `num_classes` and `class_names` and implement `ids()`, `load()` and
    `classes_in()`; `class_lists()` (what the episode sampler draws from) is derived from them.
    """

    num_classes: int
    class_names: Sequence[str]

    def ids(self) -> list[str]:
        """Every image id of the split, sorted."""
        raise NotImplementedError

    def load(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Image `(3, H, W)` uint8 RGB and label `(H, W)` int64 of one image."""
        raise NotImplementedError

    def classes_in(self, image_id: str) -> set[int]:
        """The class ids present in an image's mask (0 and 255 excluded)."""
        raise NotImplementedError

    def load_for_classes(self, image_id: str, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The image and a label in which the given classes have their full masks (what an
        episode of those classes sees). Semantic masks already do; COCO overrides this because
        its instances overlap."""
        return self.load(image_id)

    def instances_missing(self) -> str | None:
        """None if `load_instances` works; otherwise, in one line, what is missing and how to get it."""
        return (f"the {type(self).__name__} data has no instance masks, so it has no boxes to give; "
                f"test it with --support dense or scribble")

    def load_instances(self, image_id: str, classes: Sequence[int]) -> torch.Tensor:
        """Instance ids `(H, W)` int64 of an image (0 none, 255 where its label is 255) on the pixels of
        the given classes, for box supports: each instance of those classes has its own id."""
        raise ValueError(self.instances_missing())

    def class_lists(self, classes: Sequence[int]) -> list[list[str]]:
        """For each class (in the given order), the sorted ids of the images that contain it."""
        lists: dict[int, list[str]] = {c: [] for c in classes}
        for image_id in self.ids():
            for c in self.classes_in(image_id):
                if c in lists:
                    lists[c].append(image_id)
        return [sorted(lists[c]) for c in classes]
