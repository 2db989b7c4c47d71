"""COCO 2014 instances: download, per-class image lists, and a source with union-of-instance class masks."""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import FOLDS_FILE, SegmentationSource, read_data_json
from .files import (DataError, FolderLock, ensure_folder, fetch_once, image_size, prepare_hint, read_ids,
                    read_rgb, write_text_if_changed)

COCO_SPLITS = ("train2014", "val2014")
LISTS_DIR = "panet_lite_lists"  # root/panet_lite_lists/<split>/{index.json, images.txt, class<N>.txt}

# Official archives and their md5 (the md5s are the ones widely published for these files;
# the annotations one is also the S3 ETag of the object).
COCO_ARCHIVES = {
    "annotations": ("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                    "0a379cfc70b0e71301e0f377548639bd"),
    "train2014": ("http://images.cocodataset.org/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88"),
    "val2014": ("http://images.cocodataset.org/zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3"),
}


def _archive_sources(urls: dict | None) -> dict[str, tuple[str, str | None]]:
    """COCO_ARCHIVES with overrides: {name: url} keeps the official md5, {name: (url, md5)} replaces it."""
    sources = dict(COCO_ARCHIVES)
    for name, value in (urls or {}).items():
        if name not in sources:
            raise ValueError(f"unknown COCO archive {name!r}; expected one of {sorted(sources)}")
        sources[name] = (value, sources[name][1]) if isinstance(value, str) else tuple(value)
    return sources


def load_coco_api(annotation_file: Path):
    """pycocotools' COCO index of an instances file, without its prints; DataError if unreadable."""
    from pycocotools.coco import COCO

    if not annotation_file.is_file():
        raise DataError(f"missing COCO annotation file {annotation_file}; run "
                        f"`{prepare_hint(annotation_file.parents[1], 'coco')}`.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except Exception as error:
        raise DataError(f"unreadable COCO annotation file {annotation_file} ({error}); delete it and run "
                        f"`{prepare_hint(annotation_file.parents[1], 'coco')}` again.") from error


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_mtime_ns, stat.st_size]


def _check_annotations(coco, annotation_file: Path, image_dir: Path) -> None:
    """Every annotation names a known image and category, and every image file exists."""
    categories, images = set(coco.cats), set(coco.imgs)
    for ann in coco.dataset.get("annotations", []):
        if ann["category_id"] not in categories or ann["image_id"] not in images:
            raise DataError(f"{annotation_file}: annotation {ann['id']} refers to an unknown "
                            f"category {ann['category_id']} or image {ann['image_id']}; the file is damaged, "
                            f"delete it and run prepare again.")
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    missing = [info["file_name"] for info in coco.imgs.values() if info["file_name"] not in present]
    if missing:
        raise DataError(f"{len(missing)} images of {annotation_file.name} are missing from {image_dir} "
                        f"(e.g. {image_dir / missing[0]}); delete {image_dir} and run "
                        f"`{prepare_hint(image_dir.parent, 'coco')}` again.")


def _check_images(coco, annotation_file: Path, image_dir: Path, progress: bool) -> None:
    """Decode every image once, and compare its size with its annotation's: a file cut short (its
    header still reads) fails here, during `prepare`, not hours into training."""
    def check(info: dict) -> None:
        path = image_dir / info["file_name"]
        fix = (f"replace it with the original from the {image_dir.name}.zip archive (or delete {image_dir} "
               f"and run `{prepare_hint(image_dir.parent, 'coco')}` again)")
        height, width = image_size(path, fix)
        if (height, width) != (info["height"], info["width"]):
            raise DataError(f"image {path} is {width}x{height} but {annotation_file.name} says "
                            f"{info['width']}x{info['height']}; {fix}")

    infos = list(coco.imgs.values())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for _ in tqdm(pool.map(check, infos), total=len(infos), desc=f"decode {image_dir.name}", unit="img",
                      disable=not progress):
            pass


def coco20i_categories() -> list[tuple[int, str]]:
    """COCO-20i's 80 (category id, name) pairs in ascending id order, from data/folds.json."""
    entry = read_data_json(FOLDS_FILE)["coco20i"]
    return list(zip(entry["category_ids"], entry["class_names"]))


def _check_categories(coco, annotation_file: Path) -> None:
    """A file with as many categories as COCO-20i must have COCO-20i's (data/folds.json).

    The folds are defined on the 2014 categories: another set of 80 (another release, a relabelled
    file) would silently give other objects the folds' class ids. Files with fewer categories
    (subsets, the tests' small trees) are taken as they are.
    """
    want = coco20i_categories()
    got = [(c, coco.cats[c]["name"]) for c in sorted(coco.cats)]
    if len(got) != len(want):
        warnings.warn(f"{annotation_file} has {len(got)} categories, not COCO 2014's {len(want)}: it is prepared "
                      f"as it is (COCOSource reads it), but --dataset coco20i needs all {len(want)}")
    if len(got) == len(want) and got != want:
        (c, name), (want_c, want_name) = next((g, w) for g, w in zip(got, want) if g != w)
        raise DataError(f"{annotation_file} has {len(got)} categories but not COCO-20i's: its category {c} is "
                        f"{name!r} where data/{FOLDS_FILE} has {want_c} {want_name!r}. Use the official COCO 2014 "
                        f"annotations: delete {annotation_file} and run "
                        f"`{prepare_hint(annotation_file.parents[1], 'coco')}` again.")


def build_class_lists(root: Path, split: str, progress: bool = False) -> dict:
    """Write root/panet_lite_lists/<split>/: images.txt, class<N>.txt (sorted stems), index.json.

    Class N is the N-th category id in ascending order. An image is in a class's list if it
    has an annotation of that category (what the authors' pycocotools getImgIds(catIds) gives).
    Skipped if index.json matches the annotation file. Returns the index (without lists).
    """
    annotation_file = root / "annotations" / f"instances_{split}.json"
    out = root / LISTS_DIR / split
    index_path = out / "index.json"
    stamp = _file_stamp(annotation_file) if annotation_file.is_file() else None
    with contextlib.suppress(OSError, ValueError):
        index = json.loads(index_path.read_text())
        if index["annotation_stamp"] == stamp and (out / "images.txt").is_file():
            return index
    coco = load_coco_api(annotation_file)
    _check_categories(coco, annotation_file)
    _check_annotations(coco, annotation_file, root / split)
    _check_images(coco, annotation_file, root / split, progress)
    category_ids = sorted(coco.cats)
    stem_of = {image_id: Path(info["file_name"]).stem for image_id, info in coco.imgs.items()}
    write_text_if_changed(out / "images.txt", "".join(f"{s}\n" for s in sorted(stem_of.values())))
    for n, category in enumerate(category_ids, start=1):
        members = sorted(stem_of[i] for i in set(coco.getImgIds(catIds=[category])))
        write_text_if_changed(out / f"class{n}.txt", "".join(f"{s}\n" for s in members))
    index = {"annotation_stamp": stamp, "category_ids": category_ids,
             "names": [coco.cats[c]["name"] for c in category_ids], "images": len(stem_of)}
    write_text_if_changed(index_path, json.dumps(index))
    return index


def prepare_coco(root: str | Path, download: bool = True, urls: dict | None = None,
                 progress: bool = True) -> dict:
    """Download what is missing of COCO 2014 (train2014/, val2014/, annotations/) and build class lists.

    Layout: root/train2014, root/val2014, root/annotations/instances_{train,val}2014.json, as the
    official zips extract. `urls` overrides archives by name ("annotations", "train2014",
    "val2014"): a URL, or a (URL, md5) pair. Safe to re-run. Returns a report per split.
    """
    root = ensure_folder(Path(root).expanduser(), "data folder (--root)")
    with FolderLock(root, "a `prepare coco` on this folder"):
        return _prepare_coco(root, download, urls, progress)


def _prepare_coco(root: Path, download: bool, urls: dict | None, progress: bool) -> dict:
    downloaded = []
    for name, (url, md5) in _archive_sources(urls).items():
        archive = root / Path(urlparse(url).path).name
        missing = (f"COCO {name} not found in {root}. Run `{prepare_hint(root, 'coco')}` to download it, "
                   f"or download {url} and extract it in {root}.")
        if fetch_once(root / name, archive, url, md5, download, missing, progress):
            downloaded.append(name)
    report: dict = {"downloaded": downloaded}
    for split in COCO_SPLITS:
        index = build_class_lists(root, split, progress)
        report[split] = {"images": index["images"], "classes": len(index["category_ids"])}
    return report


class COCOSource(SegmentationSource):
    """COCO 2014 instances as semantic masks: category ids in ascending order -> classes 1..80.

    Image ids are file stems (e.g. "COCO_train2014_000000000009"). COCO instances can overlap:
    `load` paints the instances in annotation order (later ones win), while `class_mask` gives
    the union of one class's instances, which is the mask of a class in COCO-20i (no ignore label).
    """

    num_classes = 80

    def __init__(self, root: str | Path, split: str = "train2014"):
        if split not in COCO_SPLITS:
            raise ValueError(f"split must be one of {COCO_SPLITS}, got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        lists = self.root / LISTS_DIR / split
        try:
            index = json.loads((lists / "index.json").read_text())
        except (OSError, ValueError):
            raise DataError(f"COCO is not prepared in {self.root} ({lists / 'index.json'} is missing). "
                            f"Run `{prepare_hint(self.root, 'coco')}` first.") from None
        self.category_ids: list[int] = index["category_ids"]
        self.class_names = tuple(index["names"])
        self.num_classes = len(self.category_ids)
        self._class_of_category = {c: n for n, c in enumerate(self.category_ids, start=1)}
        self._ids = read_ids(lists / "images.txt")
        self._lists = {n: read_ids(lists / f"class{n}.txt") for n in range(1, self.num_classes + 1)}
        self._classes_of: dict[str, set[int]] = {}
        for n, members in self._lists.items():
            for stem in members:
                self._classes_of.setdefault(stem, set()).add(n)
        self._coco = None
        self._image_of: dict[str, int] = {}

    def ids(self) -> list[str]:
        """Every image stem of the split, sorted."""
        return list(self._ids)

    def classes_in(self, image_id: str) -> set[int]:
        """The classes (1..80) annotated in an image."""
        return set(self._classes_of.get(image_id, ()))

    def class_lists(self, classes) -> list[list[str]]:
        """For each class (in the given order), the sorted stems of the images that contain it."""
        return [list(self._lists[c]) for c in classes]

    def _annotations(self, image_id: str) -> tuple[torch.Tensor, list[tuple[int, np.ndarray]]]:
        """The image `(3, H, W)` uint8 and its (class, `(H, W)` uint8 mask) pairs in annotation order."""
        if self._coco is None:  # the train annotations take ~20 s to index: only when pixels are needed
            self._coco = load_coco_api(self.root / "annotations" / f"instances_{self.split}.json")
            self._image_of = {Path(info["file_name"]).stem: i for i, info in self._coco.imgs.items()}
        if image_id not in self._image_of:
            raise KeyError(f"{image_id} is not an image of COCO {self.split}")
        info = self._coco.imgs[self._image_of[image_id]]
        path = self.root / self.split / info["file_name"]
        image = read_rgb(path)
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise DataError(f"image {path} is {image.shape[2]}x{image.shape[1]} but its annotations say "
                            f"{info['width']}x{info['height']}; replace it with the original file.")
        anns = self._coco.loadAnns(self._coco.getAnnIds(imgIds=[info["id"]]))
        return image, [(self._class_of_category[a["category_id"]], self._coco.annToMask(a)) for a in anns]

    def load(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Image `(3, H, W)` uint8 RGB and label `(H, W)` int64; where instances overlap, later ones win."""
        image, masks = self._annotations(image_id)
        label = np.zeros(image.shape[1:], dtype=np.int64)  # (H, W)
        for class_id, mask in masks:
            label[mask.astype(bool)] = class_id
        return image, torch.from_numpy(label)

    def load_for_classes(self, image_id: str, classes) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and a label holding the union mask of each given class (later classes win where two
        overlap) and 0 elsewhere: the COCO-20i masks of an episode's classes."""
        image, masks = self._annotations(image_id)
        label = np.zeros(image.shape[1:], dtype=np.int64)  # (H, W)
        for class_id in classes:
            for mask_class, mask in masks:
                if mask_class == class_id:
                    label[mask.astype(bool)] = class_id
        return image, torch.from_numpy(label)

    def instances_missing(self) -> str | None:
        return None  # COCO's annotations are instances

    def load_instances(self, image_id: str, classes) -> torch.Tensor:
        """Instance ids `(H, W)` int64 of the given classes' annotations (crowd regions included, each one
        instance), numbered 1, 2, ... and painted in the order `load_for_classes` paints them, so the
        instance on a pixel belongs to the class its label has there; 0 elsewhere."""
        image, masks = self._annotations(image_id)
        instances = np.zeros(image.shape[1:], dtype=np.int64)  # (H, W)
        number = 0
        for class_id in classes:
            for mask_class, mask in masks:
                if mask_class == class_id:
                    number += 1
                    instances[mask.astype(bool)] = number
        if number >= 255:
            raise DataError(f"image {image_id} has {number} instances of classes {list(classes)}: more than the "
                            f"254 an instance map holds")
        return torch.from_numpy(instances)

    def class_mask(self, image_id: str, class_id: int) -> torch.Tensor:
        """`(H, W)` bool: the union of the instance masks of one class (1..80) in an image."""
        image, masks = self._annotations(image_id)
        union = np.zeros(image.shape[1:], dtype=bool)  # (H, W)
        for mask_class, mask in masks:
            if mask_class == class_id:
                union |= mask.astype(bool)
        return torch.from_numpy(union)
