"""PASCAL VOC 2012 + SBD: download, build SegmentationClassAug and trainaug, check their counts, read a source.

The general file I/O (atomic writes, readers, download errors) is in `files.py`, shared with COCO.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.io
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import IGNORE, VOC_CLASSES, SegmentationSource, read_data_json
# DataError is re-exported: callers catch pascal.DataError as before the file I/O moved to files.py.
from .files import (Archive, DataError, FolderLock, atomic_write, download_archive, ensure_folder, extract, fetch_once,
                    image_size, prepare_hint, read_ids, read_png_mask, read_rgb, write_text_if_changed)

VOC_SUBDIR = Path("VOCdevkit", "VOC2012")
# The official archives (the URLs and checksums torchvision's VOC and SBD datasets use).
VOC_ARCHIVE = Archive("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                      "VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd")
SBD_ARCHIVE = Archive("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                      "benchmark.tgz", "benchmark.tgz", "82b4d87ceb2ed10f6038a1cba92111cb")
SBD_ITEMS = ("cls", "img", "inst", "train.txt", "val.txt")  # what torchvision moves out of benchmark.tgz
SPLITS = ("trainaug", "val")
BUILDING = ".panet_lite_building"  # present in VOC2012 while a VOC+SBD build is unfinished
INDEX_FILE = "panet_lite_index.json"  # per-image classes + file stamps, so re-runs skip finished work
REFERENCE_FILE = "pascal5i_reference_counts.json"  # in data/: the counts of a correct preparation


# ----------------------------------------------------------------------------- paths and files

def base_dir(root: str | Path) -> Path:
    """The folder that holds VOCdevkit (and SBD); `root` may also be VOCdevkit or VOC2012 itself."""
    root = Path(root).expanduser()
    if root.name == "VOC2012" and root.parent.name == "VOCdevkit":
        return root.parent.parent
    if root.name == "VOCdevkit":
        return root.parent
    return root


@dataclass(frozen=True)
class VOCLayout:
    """The file names of a VOC2012 tree, written once: the builder, the reader and the embedded
    dataset's exporter (`synthetic.write_voc_tree`) all go through it."""

    voc: Path  # .../VOCdevkit/VOC2012

    @classmethod
    def of(cls, root: str | Path) -> "VOCLayout":
        return cls(base_dir(root) / VOC_SUBDIR)

    @property
    def sets(self) -> Path:
        return self.voc / "ImageSets" / "Segmentation"

    def image(self, image_id: str) -> Path:
        return self.voc / "JPEGImages" / f"{image_id}.jpg"

    def mask(self, image_id: str, folder: str = "SegmentationClassAug") -> Path:
        """A mask PNG: SegmentationClassAug (built), SegmentationClass / SegmentationObject (VOC's own),
        SegmentationObjectAug (built instances)."""
        return self.voc / folder / f"{image_id}.png"

    def split_list(self, split: str) -> Path:
        return self.sets / f"{split}.txt"

    def class_list(self, split: str, class_id: int) -> Path:
        return self.sets / split / f"class{class_id}.txt"


def voc_palette() -> list[int]:
    """VOC's 256-colour palette (flat RGB list): label 255 is drawn cream, 0 black."""
    palette = []
    for index in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((index >> (3 * bit)) & 1) << (7 - bit)
            g |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def _lines(ids: list[str]) -> str:
    return "".join(f"{i}\n" for i in ids)


def read_sbd_mat(path: Path, struct: str, fix: str = "") -> np.ndarray:
    """`<struct>.Segmentation` of an SBD .mat file (GTcls: classes, GTinst: instances), `(H, W)` uint8."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(mat[struct].Segmentation)
    except FileNotFoundError:
        raise DataError(f"missing SBD annotation {path}; {fix}") from None
    except (KeyError, AttributeError):
        raise DataError(f"{path} has no {struct}.Segmentation field; is it an SBD "
                        f"{'cls' if struct == 'GTcls' else 'inst'} file? {fix}") from None
    except Exception as error:
        raise DataError(f"unreadable SBD annotation {path} ({error}); {fix}") from error
    if segmentation.ndim != 2 or segmentation.size == 0:
        raise DataError(f"{path}: {struct}.Segmentation has shape {segmentation.shape}, expected (H, W); {fix}")
    if not np.issubdtype(segmentation.dtype, np.integer):
        if not np.array_equal(segmentation, np.round(segmentation)):
            raise DataError(f"{path}: {struct}.Segmentation holds non-integer labels; {fix}")
    if segmentation.min() < 0 or segmentation.max() > 255:
        raise DataError(f"{path}: {struct}.Segmentation has values outside 0-255; {fix}")
    return segmentation.astype(np.uint8)


def write_png_mask(mask: np.ndarray, path: Path) -> None:
    """Write an `(H, W)` uint8 label array as a palette PNG (indices = labels, VOC colours)."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.putpalette(_PALETTE)  # 'L' -> 'P', pixel values unchanged
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def check_mask(mask: np.ndarray, size: tuple[int, int], path: Path, image: Path, fix: str,
               max_label: int | None = 20) -> set[int]:
    """Check an `(H, W)` uint8 mask against its image; return the classes in it (0 and 255 excluded)."""
    if mask.shape != size:
        raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {image} is "
                        f"{size[1]}x{size[0]} (width x height); {fix}")
    counts = np.bincount(mask.ravel(), minlength=256)
    if max_label is None:
        return set()
    bad = np.flatnonzero(counts[max_label + 1:IGNORE]) + max_label + 1
    if bad.size:
        raise DataError(f"mask {path} has labels {bad.tolist()}; allowed are 0-{max_label} and {IGNORE}; {fix}")
    return {int(c) for c in np.flatnonzero(counts[1:max_label + 1]) + 1}


# ----------------------------------------------------------------------------- downloads

def _ensure_voc(base: Path, download: bool, url: str | None, md5: str | None, progress: bool) -> bool:
    """Make sure base/VOCdevkit/VOC2012 is extracted, downloading it if needed."""
    url, md5 = url or VOC_ARCHIVE.url, md5 or VOC_ARCHIVE.md5
    missing = (f"VOC2012 not found at {base / VOC_SUBDIR}. Run `{prepare_hint(base)}` to download it "
               f"(2 GB), or extract {VOC_ARCHIVE.filename} ({url}) in {base}.")
    return fetch_once(base / VOC_SUBDIR, base / VOC_ARCHIVE.filename, url, md5, download, missing, progress)


def sbd_complete(sbd: Path) -> bool:
    """True if the SBD folder holds everything torchvision moves out of benchmark.tgz."""
    return all((sbd / item).exists() for item in SBD_ITEMS)


def _ensure_sbd(sbd: Path, download: bool, url: str | None, md5: str | None, progress: bool) -> bool:
    """Make sure SBD (cls/, img/, inst/, train.txt, val.txt) is in `sbd`, downloading it if needed."""
    if sbd_complete(sbd):
        return False
    extracted = sbd / "benchmark_RELEASE" / "dataset"
    fetched = not any((sbd / item).exists() for item in SBD_ITEMS)
    if fetched:
        if not download:
            raise DataError(f"SBD not found at {sbd} (needed to build SegmentationClassAug). Run "
                            f"`{prepare_hint(sbd.parent)}` to download it (1.4 GB), or extract benchmark.tgz "
                            f"({SBD_ARCHIVE.url}) and move benchmark_RELEASE/dataset/* to {sbd}.")
        archive = sbd / SBD_ARCHIVE.filename
        download_archive(url or SBD_ARCHIVE.url, archive, md5 or SBD_ARCHIVE.md5, progress)
        extract(archive, sbd)
    # benchmark_RELEASE/dataset/* -> sbd/, as torchvision's SBDataset lays it out. Each move is a
    # rename, so a run interrupted between them left a complete extraction: this finishes the moves.
    for item in SBD_ITEMS:
        if not (sbd / item).exists():
            if not (extracted / item).exists():
                raise DataError(f"SBD at {sbd} is incomplete ({item} missing); delete {sbd} and run "
                                f"`{prepare_hint(sbd.parent)}` again.")
            shutil.move(str(extracted / item), str(sbd / item))
    return fetched


# ----------------------------------------------------------------------------- mask building

@dataclass(frozen=True)
class _Job:
    """One image of trainaug/val: where its masks go and, if they must be built, where they come from."""

    image_id: str
    image: Path
    class_out: Path  # SegmentationClassAug/<id>.png
    object_out: Path  # SegmentationObjectAug/<id>.png
    class_src: Path | None  # VOC SegmentationClass png or SBD cls mat; None: class_out must exist
    object_src: Path | None  # VOC SegmentationObject png or SBD inst mat; None: only check if present
    listed_in: Path  # the list file that names this image (for error messages)


def _stamp(paths: list[Path]) -> list:
    """(mtime_ns, size) of each file, None where missing: tells whether a cached result is stale."""
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
            stamps.append([stat.st_mtime_ns, stat.st_size])
        except FileNotFoundError:
            stamps.append(None)
    return stamps


def _read_source(path: Path, struct: str, fix: str) -> np.ndarray:
    return read_png_mask(path, fix) if path.suffix == ".png" else read_sbd_mat(path, struct, fix)


def _build_mask(out: Path, src: Path | None, struct: str, size: tuple[int, int], image: Path,
                max_label: int | None) -> tuple[set[int], int]:
    """Check `out` if it exists, else convert `src` into it; returns (classes, masks written)."""
    if out.exists():
        mask = read_png_mask(out, "delete it and run prepare again")
        return check_mask(mask, size, out, image, "delete it and run prepare again", max_label), 0
    fix = "fix or replace it (re-extract its archive), then run prepare again"
    mask = _read_source(src, struct, fix)
    classes = check_mask(mask, size, src, image, fix, max_label)
    write_png_mask(mask, out)
    return classes, 1


def _run_job(job: _Job, cached: dict | None) -> tuple[dict, int]:
    """Build/check the masks of one image; returns ({'classes', 'stamp'}, masks written)."""
    stamp = _stamp([job.image, job.class_out, job.object_out])
    object_pending = job.object_src is not None and stamp[2] is None
    if cached is not None and cached.get("stamp") == stamp and not object_pending:
        return cached, 0
    size = image_size(job.image, image_fix(job.image_id, job.image, job.listed_in))
    classes, written = _build_mask(job.class_out, job.class_src, "GTcls", size, job.image, 20)
    if job.object_src is not None or job.object_out.exists():
        written += _build_mask(job.object_out, job.object_src, "GTinst", size, job.image, None)[1]
    stamp = _stamp([job.image, job.class_out, job.object_out])
    return {"classes": sorted(classes), "stamp": stamp}, written


def _run_jobs(jobs: list[_Job], cache: dict, progress: bool) -> tuple[dict[str, dict], int]:
    """Run the jobs on a thread pool (PIL and zlib release the GIL); returns (results by id, written)."""
    results: dict[str, dict] = {}
    written = 0
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        futures = [pool.submit(_run_job, job, cache.get(job.image_id)) for job in jobs]
        ids = {future: job.image_id for future, job in zip(futures, jobs)}
        with tqdm(total=len(jobs), desc="masks", unit="img", disable=not progress) as bar:
            for future in as_completed(futures):
                results[ids[future]], n = future.result()
                written += n
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error, don't run the queued jobs
    return results, written


def image_fix(image_id: str, image: Path, listed_in: Path) -> str:
    """The smallest fix for one missing or damaged VOC image: restore that file from the VOC archive."""
    member = image.relative_to(image.parents[3]).as_posix()  # VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    return (f"{listed_in} lists {image_id}. Restore that one file from the VOC archive ({VOC_ARCHIVE.url}): "
            f"`tar -xf {VOC_ARCHIVE.filename} -C {image.parents[3]} {member}`, then run the command again "
            f"(work already done is kept)")


def _jobs(voc: Path, sbd: Path | None, ids: list[str], voc_annotated: set[str],
          listed_in: Callable[[str], Path]) -> list[_Job]:
    """The jobs for `ids`; with `sbd` None, masks are only read from SegmentationClassAug."""
    jobs, layout = [], VOCLayout(voc)
    for image_id in ids:
        class_src = object_src = None
        if sbd is not None and image_id in voc_annotated:
            class_src = layout.mask(image_id, "SegmentationClass")
            object_src = layout.mask(image_id, "SegmentationObject")
        elif sbd is not None:
            class_src, object_src = sbd / "cls" / f"{image_id}.mat", sbd / "inst" / f"{image_id}.mat"
        jobs.append(_Job(image_id, layout.image(image_id), layout.mask(image_id),
                         layout.mask(image_id, "SegmentationObjectAug"), class_src, object_src, listed_in(image_id)))
    return jobs


def _list_finder(voc: Path, sbd: Path | None, voc_train: list[str], voc_val: list[str]) -> Callable[[str], Path]:
    """image id -> the list file it comes from: VOC's val.txt / train.txt, SBD's train.txt / val.txt,
    or trainaug.txt when SegmentationClassAug was given ready-made."""
    layout, where = VOCLayout(voc), {}
    if sbd is not None:
        for name in ("val.txt", "train.txt"):
            where |= dict.fromkeys(read_ids(sbd / name), sbd / name)
    elif layout.split_list("trainaug").is_file():
        where |= dict.fromkeys(read_ids(layout.split_list("trainaug")), layout.split_list("trainaug"))
    where |= dict.fromkeys(voc_train, layout.split_list("train"))
    where |= dict.fromkeys(voc_val, layout.split_list("val"))
    return lambda image_id: where.get(image_id, layout.split_list("trainaug"))


def _shared_trainaug(voc: Path, voc_val: list[str]) -> list[str] | None:
    """trainaug ids if SegmentationClassAug already holds a mask for all of trainaug and val, else None.

    The trainaug list comes from ImageSets/Segmentation/trainaug.txt if present, otherwise it is
    every mask in SegmentationClassAug minus VOC val (the shared archive holds exactly those).
    """
    aug = voc / "SegmentationClassAug"
    if not aug.is_dir():
        return None
    stems = {name[:-4] for name in os.listdir(aug) if name.endswith(".png")}
    listed = VOCLayout(voc).split_list("trainaug")
    trainaug = read_ids(listed) if listed.is_file() else sorted(stems - set(voc_val))
    if trainaug and set(trainaug) | set(voc_val) <= stems:
        return sorted(trainaug)
    return None


def _load_index(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_lists(voc: Path, splits: dict[str, list[str]], results: dict[str, dict]) -> None:
    """Write trainaug.txt and the sorted per-class lists {split}/class{N}.txt (the authors' layout)."""
    layout = VOCLayout(voc)
    write_text_if_changed(layout.split_list("trainaug"), _lines(splits["trainaug"]))
    for split, ids in splits.items():
        for c in range(1, 21):
            members = [i for i in ids if c in results[i]["classes"]]
            write_text_if_changed(layout.class_list(split, c), _lines(members))


def prepare_pascal(root: str | Path, download: bool = True, voc_url: str | None = None,
                   voc_md5: str | None = None, sbd_url: str | None = None, sbd_md5: str | None = None,
                   progress: bool = True, check_counts: bool = True, reference: dict | None = None) -> dict:
    """Download what is missing of VOC2012 and SBD and build SegmentationClassAug, trainaug and class lists.

    Layout (torchvision's): root/VOCdevkit/VOC2012 and root/SBD. If VOC2012/SegmentationClassAug
    already holds a mask for every trainaug and val image, SBD is not needed. Otherwise masks
    are built: VOC's SegmentationClass for VOC's train+val images, SBD's cls/*.mat for the rest
    (and SegmentationObjectAug from SegmentationObject / inst/*.mat). Safe to re-run: finished
    work is skipped and an interrupted run is completed. The url/md5 arguments replace the
    official ones (e.g. a mirror). Finally the lists are compared with the counts of a correct
    preparation (`check_pascal_counts`; `reference` as there), unless `check_counts` is False:
    a partial SBD or SegmentationClassAug builds without error, only the counts reveal it.
    Returns a report: route, image and mask counts, downloads, whether the counts were checked.
    Raises DataError (naming the file and the fix) on missing or malformed data.
    """
    base = ensure_folder(base_dir(root), "data folder (--root)")
    with FolderLock(base, "a `prepare pascal` on this folder"):
        return _prepare_pascal(base, download, voc_url, voc_md5, sbd_url, sbd_md5, progress, check_counts, reference)


def _prepare_pascal(base: Path, download: bool, voc_url: str | None, voc_md5: str | None, sbd_url: str | None,
                    sbd_md5: str | None, progress: bool, check_counts: bool, reference: dict | None) -> dict:
    downloaded = ["VOC2012"] if _ensure_voc(base, download, voc_url, voc_md5, progress) else []
    voc, sbd = base / VOC_SUBDIR, base / "SBD"
    voc_train = read_ids(VOCLayout(voc).split_list("train"))
    voc_val = sorted(read_ids(VOCLayout(voc).split_list("val")))
    building = voc / BUILDING

    trainaug = None
    if not sbd_complete(sbd) and not building.exists():
        trainaug = _shared_trainaug(voc, voc_val)
    if trainaug is not None:
        route, source_dir = "SegmentationClassAug", None
    else:
        route, source_dir = "VOC+SBD", sbd
        if _ensure_sbd(sbd, download, sbd_url, sbd_md5, progress):
            downloaded.append("SBD")
        sbd_ids = read_ids(sbd / "train.txt") + read_ids(sbd / "val.txt")
        trainaug = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
        building.touch()
        for folder in ("SegmentationClassAug", "SegmentationObjectAug"):
            (voc / folder).mkdir(exist_ok=True)
            for stale in (voc / folder).glob("*.tmp"):  # left by a killed run
                stale.unlink()

    ids = sorted(set(trainaug) | set(voc_val))
    jobs = _jobs(voc, source_dir, ids, set(voc_train) | set(voc_val),
                 _list_finder(voc, sbd if source_dir is not None else None, voc_train, voc_val))
    index_path = voc / INDEX_FILE
    results, written = _run_jobs(jobs, _load_index(index_path), progress)
    _write_lists(voc, {"trainaug": trainaug, "val": voc_val}, results)
    write_text_if_changed(index_path, json.dumps({"version": 1, "images": results}, sort_keys=True))
    building.unlink(missing_ok=True)
    if check_counts:
        check_pascal_counts(base, reference, rebuilt=True)
    return {
        "route": route,
        "trainaug": len(trainaug),
        "val": len(voc_val),
        "masks_written": written,
        "object_masks": sum(job.object_out.exists() for job in jobs),
        "downloaded": downloaded,
        "counts_checked": check_counts,
    }


# ----------------------------------------------------------------------------- reference counts

def reference_counts() -> dict[str, dict]:
    """The counts of a correct preparation, from data/pascal5i_reference_counts.json.

    {split: {"images": n, "per_class": {class id: images containing it}}}, for trainaug and val.
    """
    splits = read_data_json(REFERENCE_FILE)["splits"]
    return {split: {"images": entry["images"],
                    "per_class": {int(c): n for c, n in entry["images_per_class"].items()}}
            for split, entry in splits.items()}


def prepared_counts(root: str | Path) -> dict[str, dict]:
    """The same counts, read from a prepared tree's lists (what PascalVOC and the episodes use)."""
    counts = {}
    for split in SPLITS:
        source = PascalVOC(root, split)
        classes = range(1, source.num_classes + 1)
        counts[split] = {"images": len(source.ids()),
                         "per_class": dict(zip(classes, map(len, source.class_lists(classes))))}
    return counts


def _count_mismatches(found: dict, reference: dict) -> list[tuple[str, str, int, int]]:
    """(split, what and its list file, expected, found) for each count that differs, totals first."""
    mismatches = []
    for split, want in reference.items():
        got = found[split]
        if got["images"] != want["images"]:
            mismatches.append((split, f"total ({split}.txt)", want["images"], got["images"]))
        for c, n in sorted(want["per_class"].items()):
            if got["per_class"].get(c, 0) != n:
                what = f"class {c} {VOC_CLASSES[c]} ({split}/class{c}.txt)"
                mismatches.append((split, what, n, got["per_class"].get(c, 0)))
    return mismatches


def _counts_fix(base: Path, splits: set[str], rebuilt: bool) -> str:
    """Likely cause and fix of a count mismatch, by the splits it touches (trainaug: SBD; val: VOC)."""
    voc = base / VOC_SUBDIR
    causes, delete = [], []
    if "trainaug" in splits:
        causes.append("a partial or damaged SBD download or extraction (SBD/cls, SBD/train.txt, SBD/val.txt), "
                      "another SBD, or an incomplete SegmentationClassAug, from which trainaug is built")
        delete.append(base / "SBD")
    if "val" in splits:
        causes.append("an incomplete or modified VOC2012 (ImageSets/Segmentation/val.txt, SegmentationClass)")
        delete.append(base / "VOCdevkit")
    else:
        delete.append(voc / "SegmentationClassAug")  # inside VOCdevkit otherwise
    fix = (f"delete {' and '.join(map(str, delete))}, then run `{prepare_hint(base)}` again: it downloads or "
           f"re-extracts what is missing and rebuilds the masks and lists")
    if not rebuilt:
        fix = (f"run `{prepare_hint(base)}` (it rebuilds lists that were edited or are stale); if the counts "
               f"still differ, {fix}")
    return (f"Likely cause: {'; or '.join(causes)}. To fix: {fix}. For a deliberate subset, "
            f"`--no-check-counts` (check_counts=False) skips this check.")


def check_pascal_counts(root: str | Path, reference: dict | None = None, rebuilt: bool = False) -> dict:
    """Compare a prepared tree's per-split and per-class image counts with a correct preparation's.

    A partial SBD download or SegmentationClassAug prepares without any error, just with fewer
    images, and would silently change every result; the counts catch it. `reference` defaults to
    data/pascal5i_reference_counts.json (the real dataset); small test trees pass their own, in
    the same layout. `rebuilt`: the lists were just rebuilt (by prepare), which changes the advice.
    Returns the counts found; raises DataError naming each difference, its likely cause and the fix.
    """
    base = base_dir(root)
    found = prepared_counts(base)
    mismatches = _count_mismatches(found, reference_counts() if reference is None else reference)
    if mismatches:
        shown = "; ".join(f"{split} {what}: expected {want:,} images, found {got:,}"
                          for split, what, want, got in mismatches[:5])
        more = f"; and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
        named = f" (data/{REFERENCE_FILE})" if reference is None else ""
        raise DataError(f"the PASCAL-5i lists in {base / VOC_SUBDIR / 'ImageSets' / 'Segmentation'} do not "
                        f"match the reference counts{named} of a correct preparation: {shown}{more}. "
                        f"{_counts_fix(base, {m[0] for m in mismatches}, rebuilt)}")
    return found


# ----------------------------------------------------------------------------- the source

class PascalVOC(SegmentationSource):
    """PASCAL VOC 2012 with SBD masks (SegmentationClassAug): split "trainaug" (10,582) or "val" (1,449)."""

    num_classes = 20
    class_names = VOC_CLASSES[1:]

    def __init__(self, root: str | Path, split: str = "trainaug"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.base = base_dir(root)
        self.layout = VOCLayout.of(root)
        self.voc = self.layout.voc
        self.split = split
        needed = [self.layout.split_list(split), self.voc / "SegmentationClassAug"]
        needed += [self.layout.class_list(split, c) for c in range(1, 21)]
        missing = [path for path in needed if not path.exists()]
        if missing:
            raise DataError(f"PASCAL VOC is not prepared in {self.base} ({missing[0]} is missing). "
                            f"Run `{prepare_hint(self.base)}` first.")
        self._ids = sorted(read_ids(needed[0]))
        self._lists = {c: read_ids(self.layout.class_list(split, c)) for c in range(1, 21)}
        self._classes_of: dict[str, set[int]] = {}
        for c, members in self._lists.items():
            for image_id in members:
                self._classes_of.setdefault(image_id, set()).add(c)

    def ids(self) -> list[str]:
        """Every image id of the split, sorted."""
        return list(self._ids)

    def load(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Image `(3, H, W)` uint8 RGB and label `(H, W)` int64 (0 bg, 1..20, 255 ignore)."""
        path = self.layout.image(image_id)
        if not path.is_file():
            raise DataError(f"missing image {path}. {image_fix(image_id, path, self.layout.split_list(self.split))}")
        image = read_rgb(path)
        label = self._read_mask("SegmentationClassAug", image_id, image.shape[1:])
        return image, label

    def instances_missing(self) -> str | None:
        if (self.voc / "SegmentationObjectAug").is_dir():
            return None
        return (f"box supports need instance masks, and {self.voc / 'SegmentationObjectAug'} is missing; run "
                f"`{prepare_hint(self.base)}` (it builds them from VOC SegmentationObject and SBD inst/)")

    def load_instances(self, image_id: str, classes=None) -> torch.Tensor:
        """Instance mask `(H, W)` int64 from SegmentationObjectAug: 0 bg, 1..n instances, 255 borders
        (the instances of every class: `classes` is accepted for the common interface and unused)."""
        problem = self.instances_missing()
        if problem:
            raise DataError(problem)
        return self._read_mask("SegmentationObjectAug", image_id)

    def _read_mask(self, folder: str, image_id: str, size: tuple[int, int] | None = None) -> torch.Tensor:
        path = self.layout.mask(image_id, folder)
        if not path.exists():
            hint = (" Instance masks are built from SBD: put SBD in place and run prepare again."
                    if folder == "SegmentationObjectAug" else "")
            raise DataError(f"missing mask {path}.{hint} Run `{prepare_hint(self.base)}`.")
        mask = read_png_mask(path, "delete it and run prepare again")
        if size is not None and tuple(mask.shape) != tuple(size):
            raise DataError(f"mask {path} is {tuple(mask.shape)} but its image is {tuple(size)} (H, W); "
                            f"delete it and run prepare again")
        return torch.from_numpy(mask.astype(np.int64))  # (H, W)

    def classes_in(self, image_id: str) -> set[int]:
        """The class ids in an image's mask (0 and 255 excluded), from the prepared lists."""
        return set(self._classes_of.get(image_id, ()))

    def class_lists(self, classes) -> list[list[str]]:
        """For each class (in the given order), the sorted ids of the split's images that contain it."""
        return [list(self._lists[c]) for c in classes]
