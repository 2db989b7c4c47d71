"""Which images a benchmark trains and tests on: one place that maps (dataset, protocol) to sources."""
from __future__ import annotations

from pathlib import Path

from .data import COCO20I, PASCAL5I, Benchmark, SegmentationSource

DATASETS = ("pascal5i", "coco20i", "synthetic")

# (training split, faithful test split, standard test split). The faithful protocol tests on
# the *training* images of the held-out classes: the authors' quirk that produced the paper's table.
SPLITS = {
    "pascal5i": ("trainaug", "trainaug", "val"),
    "coco20i": ("train2014", "train2014", "val2014"),
    "synthetic": ("trainaug", "trainaug", "val"),
}


def benchmark(dataset: str) -> Benchmark:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return COCO20I if dataset == "coco20i" else PASCAL5I


def open_source(dataset: str, root: str | Path | None, split: str, synthetic_size: int = 96,
                synthetic_images: int = 2000) -> SegmentationSource:
    """The image source of one split. `root` is the prepared data directory (unused for synthetic)."""
    benchmark(dataset)
    if dataset == "synthetic":
        from .synthetic import SyntheticFewShot

        n = synthetic_images if split == "trainaug" else synthetic_images // 2
        return SyntheticFewShot(split, n, synthetic_size)
    if root is None:
        raise ValueError(f"--root is required for {dataset}: the directory you prepared with "
                         f"`python -m panet_lite prepare {dataset[:-2]} --root DIR`")
    if dataset == "pascal5i":
        from .pascal import PascalVOC

        return PascalVOC(root, split)
    from .coco import COCOSource

    return COCOSource(root, split)


def split_for(dataset: str, role: str) -> str:
    """role: "train", "faithful" or "standard"."""
    train, faithful, standard = SPLITS[dataset]
    return {"train": train, "faithful": faithful, "standard": standard}[role]
