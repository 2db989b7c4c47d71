"""Small fake VOC, SBD and COCO trees in the real on-disk formats, their archives, and a local HTTP server."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image
from pycocotools import mask as mask_utils

from panet_lite.pascal import voc_palette

# The standard PASCAL scenario: overlaps and exclusions that trainaug must get right.
VOC_TRAIN = ["2007_000032", "2007_000039", "2007_000063"]
VOC_VAL = ["2007_000033", "2007_000042", "2007_000061"]
SBD_TRAIN = ["2007_000039", "2007_000033", "2008_000002", "2008_000003"]  # 2007_000033 is VOC val
SBD_VAL = ["2007_000063", "2008_000008"]
UNLABELLED = ["2009_000001"]  # a VOC JPEG with no segmentation (VOC has ~5,000 such)
TRAINAUG = sorted((set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL))
SBD_ONLY = sorted((set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_TRAIN) - set(VOC_VAL))

VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"


# ----------------------------------------------------------------------------- scenes

@dataclass
class Scene:
    """One fake labelled image: pixels, instances and the class of each instance."""

    image: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) uint8: 0 background, 1..n instances (no borders)
    categories: list[int]  # class id (1..20) of instance k at index k - 1

    def borders(self) -> np.ndarray:
        """(H, W) bool: pixels next to a pixel of another instance (VOC marks them 255)."""
        inst = self.instances
        edge = np.zeros(inst.shape, dtype=bool)
        edge[1:] |= inst[1:] != inst[:-1]
        edge[:-1] |= inst[:-1] != inst[1:]
        edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
        edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
        return edge

    def class_mask(self, borders: bool) -> np.ndarray:
        """(H, W) uint8 class labels; with VOC's 255 borders if `borders`."""
        mask = np.array([0] + self.categories, dtype=np.uint8)[self.instances]
        if borders:
            mask[self.borders()] = 255
        return mask

    def object_mask(self, borders: bool) -> np.ndarray:
        """(H, W) uint8 instance ids; with VOC's 255 borders if `borders`."""
        mask = self.instances.copy()
        if borders:
            mask[self.borders()] = 255
        return mask


def scene(image_id: str) -> Scene:
    """The deterministic fake scene of an image id: 1-3 rectangles, some of the same class."""
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    height, width = int(rng.integers(20, 32)), int(rng.integers(20, 32))
    instances = np.zeros((height, width), dtype=np.uint8)
    categories: list[int] = []
    for k in range(int(rng.integers(1, 4))):
        top, left = int(rng.integers(0, height - 6)), int(rng.integers(0, width - 6))
        bottom, right = int(rng.integers(top + 5, height + 1)), int(rng.integers(left + 5, width + 1))
        instances[top:bottom, left:right] = k + 1
        repeat = categories and rng.random() < 0.4
        categories.append(categories[-1] if repeat else int(rng.integers(1, 21)))
    present = [k for k in range(1, len(categories) + 1) if (instances == k).any()]
    renumber = np.zeros(256, dtype=np.uint8)
    renumber[present] = np.arange(1, len(present) + 1)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Scene(image, renumber[instances], [categories[k - 1] for k in present])


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    """Save an (H, W) uint8 label array as VOC does: a 'P' PNG with VOC's palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(voc_palette())
    image.save(path, format="PNG")


def _write_ids(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# ----------------------------------------------------------------------------- VOC and SBD

def make_voc_tree(base: Path, train_ids, val_ids, image_only_ids=()) -> Path:
    """Write base/VOCdevkit/VOC2012 with JPEGImages, SegmentationClass/Object and ImageSets/Segmentation.

    `image_only_ids` get a JPEG but no segmentation (like the SBD images and VOC's unlabelled ones).
    Returns the VOC2012 folder.
    """
    voc = Path(base) / "VOCdevkit" / "VOC2012"
    for image_id in [*train_ids, *val_ids, *image_only_ids]:
        _save_jpeg(scene(image_id).image, voc / "JPEGImages" / f"{image_id}.jpg")
    for image_id in [*train_ids, *val_ids]:
        s = scene(image_id)
        save_palette_png(s.class_mask(borders=True), voc / "SegmentationClass" / f"{image_id}.png")
        save_palette_png(s.object_mask(borders=True), voc / "SegmentationObject" / f"{image_id}.png")
    sets = voc / "ImageSets" / "Segmentation"
    _write_ids(sets / "train.txt", sorted(train_ids))
    _write_ids(sets / "val.txt", sorted(val_ids))
    _write_ids(sets / "trainval.txt", sorted([*train_ids, *val_ids]))
    return voc


def _boundary_cells(masks: list[np.ndarray]) -> np.ndarray:
    """A MATLAB cell column of sparse logical boundary maps, as SBD stores `Boundaries`."""
    cells = np.empty((len(masks), 1), dtype=object)
    for k, mask in enumerate(masks):
        edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[1:-1, 2:]
        cells[k, 0] = scipy.sparse.csc_matrix(edge)
    return cells


def save_sbd_mats(s: Scene, cls_path: Path, inst_path: Path) -> None:
    """Write an SBD cls/<id>.mat (struct GTcls) and inst/<id>.mat (struct GTinst) for a scene."""
    classes = s.class_mask(borders=False)
    present = sorted(set(s.categories))
    gt_cls = {
        "Segmentation": classes,
        "Boundaries": _boundary_cells([classes == c for c in range(1, 21)]),
        "CategoriesPresent": np.array(present, dtype=np.uint8).reshape(-1, 1),
    }
    gt_inst = {
        "Segmentation": s.object_mask(borders=False),
        "Boundaries": _boundary_cells([s.instances == k for k in range(1, len(s.categories) + 1)]),
        "Categories": np.array(s.categories, dtype=np.uint8).reshape(-1, 1),
    }
    for path, name, struct in ((cls_path, "GTcls", gt_cls), (inst_path, "GTinst", gt_inst)):
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, {name: struct}, do_compression=True)


def make_sbd_tree(sbd: Path, train_ids, val_ids) -> Path:
    """Write an SBD folder as torchvision leaves it: img/*.jpg, cls/*.mat, inst/*.mat, train.txt, val.txt."""
    sbd = Path(sbd)
    for image_id in [*train_ids, *val_ids]:
        s = scene(image_id)
        _save_jpeg(s.image, sbd / "img" / f"{image_id}.jpg")
        save_sbd_mats(s, sbd / "cls" / f"{image_id}.mat", sbd / "inst" / f"{image_id}.mat")
    _write_ids(sbd / "train.txt", train_ids)  # SBD's lists are not sorted either
    _write_ids(sbd / "val.txt", val_ids)
    return sbd


def make_pascal_trees(base: Path, sbd: bool = True) -> Path:
    """The standard scenario: VOC2012 in base/VOCdevkit and (if `sbd`) SBD in base/SBD. Returns base."""
    base = Path(base)
    make_voc_tree(base, VOC_TRAIN, VOC_VAL, image_only_ids=SBD_ONLY + UNLABELLED)
    if sbd:
        make_sbd_tree(base / "SBD", SBD_TRAIN, SBD_VAL)
    return base


def expected_masks(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The (class, object) masks prepare must write: VOC's (with borders) where VOC has them, else SBD's."""
    s = scene(image_id)
    from_voc = image_id in VOC_TRAIN or image_id in VOC_VAL
    return s.class_mask(borders=from_voc), s.object_mask(borders=from_voc)


def reference_counts() -> dict:
    """The counts a correct preparation of the scenario has, in check_pascal_counts' `reference` layout:
    per split, the images and, per class 1..20, the images whose expected class mask shows it."""
    counts = {}
    for split, ids in (("trainaug", TRAINAUG), ("val", VOC_VAL)):
        present = [set(np.unique(expected_masks(i)[0]).tolist()) - {0, 255} for i in ids]
        counts[split] = {"images": len(ids), "per_class": {c: sum(c in p for p in present) for c in range(1, 21)}}
    return counts


def pack_voc(base: Path, out_dir: Path) -> Path:
    """Pack base/VOCdevkit as the real VOCtrainval_11-May-2012.tar (members VOCdevkit/VOC2012/...)."""
    archive = Path(out_dir) / VOC_ARCHIVE
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(Path(base) / "VOCdevkit", arcname="VOCdevkit")
    return archive


def pack_sbd(sbd: Path, out_dir: Path) -> Path:
    """Pack an SBD folder as the real benchmark.tgz (members benchmark_RELEASE/dataset/...)."""
    archive = Path(out_dir) / SBD_ARCHIVE
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for item in ("cls", "img", "inst", "train.txt", "val.txt"):
            tar.add(Path(sbd) / item, arcname=f"benchmark_RELEASE/dataset/{item}")
    return archive


# ----------------------------------------------------------------------------- COCO

# Listed out of order, with non-contiguous ids: the source must sort them (1 -> 1, 3 -> 2, ...);
# airplane has no annotation but is a category of the file, so it still gets a class.
COCO_CATEGORIES = [(18, "dog", "animal"), (1, "person", "person"), (3, "car", "vehicle"),
                   (90, "toothbrush", "indoor"), (5, "airplane", "vehicle"), (7, "train", "vehicle")]


def _box(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _polygon(*rects) -> list[list[float]]:
    """COCO polygon segmentation: one [x1, y1, x2, y2, ...] list per (left, top, right, bottom) rectangle."""
    return [[float(v) for v in (l, t, r, t, r, b, l, b)] for l, t, r, b in rects]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (iscrowd=1 style): run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE with string counts, as stored in JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": list(mask.shape)}


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Reference decoding of any COCO segmentation to an (H, W) uint8 mask (pycocotools)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def _coco_annotations(height: int, width: int) -> list[list[tuple[int, object, int]]]:
    """Per image: (category id, segmentation, iscrowd). Image 0 has overlaps, image 2 nothing."""
    person_crowd = _box(height, width, 10, 2, 20, 12)
    dog = _box(height, width, 3, 3, 15, 20)
    return [
        [(1, _polygon((2, 2, 14, 12)), 0),  # person
         (3, _polygon((10, 6, 24, 18)), 0),  # car, drawn over the person
         (1, uncompressed_rle(person_crowd), 1)],  # a crowd of people, RLE
        [(18, compressed_rle(dog), 0),  # dog, compressed RLE
         (90, _polygon((16, 16, 22, 20)), 0)],
        [],
        [(7, _polygon((1, 1, 8, 8), (12, 12, 20, 22)), 0)],  # one train in two parts
    ]


def make_coco_tree(root: Path, split: str = "train2014", first_id: int = 9) -> dict:
    """Write root/<split>/*.jpg and root/annotations/instances_<split>.json (polygons and RLEs).

    Returns {stem: [(category id, (H, W) uint8 mask), ...]} in annotation order, decoded with pycocotools.
    """
    root = Path(root)
    height, width = 24, 28
    images, annotations, expected = [], [], {}
    for n, anns in enumerate(_coco_annotations(height, width)):
        image_id = first_id + 7 * n
        stem = f"COCO_{split}_{image_id:012d}"
        pixels = np.random.default_rng(image_id).integers(0, 256, (height, width, 3), dtype=np.uint8)
        grey = n == 3  # COCO has some greyscale images
        _save_jpeg(pixels[..., 0] if grey else pixels, root / split / f"{stem}.jpg")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width,
                       "license": 1, "coco_url": "", "date_captured": "", "flickr_url": ""})
        expected[stem] = []
        for category, segmentation, crowd in anns:
            mask = decode_segmentation(segmentation, height, width)
            annotations.append({"id": 1000 + len(annotations), "image_id": image_id, "category_id": category,
                                "segmentation": segmentation, "area": float(mask.sum()), "iscrowd": crowd,
                                "bbox": [0.0, 0.0, float(width), float(height)]})
            expected[stem].append((category, mask))
    categories = [{"id": i, "name": name, "supercategory": sup} for i, name, sup in COCO_CATEGORIES]
    dataset = {"info": {"description": "fake COCO"}, "licenses": [], "images": images,
               "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    return expected


def pack_coco(root: Path, out_dir: Path) -> dict[str, Path]:
    """Zip a fake COCO tree as the real train2014.zip, val2014.zip and annotations_trainval2014.zip."""
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archives = {}
    for name, folder in (("train2014", "train2014"), ("val2014", "val2014"),
                         ("annotations", "annotations")):
        archive = out_dir / ("annotations_trainval2014.zip" if name == "annotations" else f"{name}.zip")
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted((root / folder).rglob("*")):
                zf.write(path, path.relative_to(root).as_posix())
        archives[name] = archive
    return archives


# ----------------------------------------------------------------------------- serving

def md5(path: Path) -> str:
    """Hex md5 of a file."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@dataclass
class Server:
    """A local HTTP server: `url` is its base URL, `requests` the paths asked for so far."""

    url: str
    requests: list[str]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (torchvision's redirect probe) are fine


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[Server]:
    """Serve `directory` on 127.0.0.1 from a background thread for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
