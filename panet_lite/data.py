"""Segmentation sources (labelled images) and the PASCAL-5i / COCO-20i fold definitions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE = 255  # VOC's "don't care" label (object borders)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def fold_classes(fold: int, n_classes: int = 20, n_folds: int = 4) -> list[int]:
    """Global ids of the classes a fold holds out: 5i+1..5i+5 (PASCAL-5i), 20i+1..20i+20 (COCO-20i)."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    per_fold = n_classes // n_folds
    return list(range(fold * per_fold + 1, (fold + 1) * per_fold + 1))


def train_classes(fold: int, n_classes: int = 20, n_folds: int = 4) -> list[int]:
    """The classes outside the fold, ascending: the ones episodic training draws from."""
    held_out = set(fold_classes(fold, n_classes, n_folds))
    return [c for c in range(1, n_classes + 1) if c not in held_out]


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

    def class_lists(self, classes: Sequence[int]) -> list[list[str]]:
        """For each class (in the given order), the sorted ids of the images that contain it."""
        lists: dict[int, list[str]] = {c: [] for c in classes}
        for image_id in self.ids():
            for c in self.classes_in(image_id):
                if c in lists:
                    lists[c].append(image_id)
        return [sorted(lists[c]) for c in classes]


@dataclass(frozen=True)
class Benchmark:
    """Which classes a few-shot benchmark has and how it splits them into folds."""

    name: str
    n_classes: int
    n_folds: int = 4

    def test_classes(self, fold: int) -> list[int]:
        return fold_classes(fold, self.n_classes, self.n_folds)

    def train_classes(self, fold: int) -> list[int]:
        return train_classes(fold, self.n_classes, self.n_folds)


PASCAL5I = Benchmark("pascal5i", 20)
COCO20I = Benchmark("coco20i", 80)
