"""General data-file I/O: atomic writes, readers that fail with a fix, downloads that say what went wrong.

Every dataset module (pascal, coco) builds on these; none of them knows a dataset's layout.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision.datasets.utils as tv_utils
from PIL import Image
from tqdm.auto import tqdm

EXTRACTED = ".panet_lite_extracted"  # written into a folder once its archive is fully extracted


class DataError(ValueError):
    """Missing or malformed dataset files; the message names the file and says how to fix it."""


def prepare_hint(root: str | Path, dataset: str = "pascal") -> str:
    """The command that prepares a dataset, for error messages."""
    return f"python -m panet_lite prepare {dataset} --root {root}"


def read_ids(path: Path) -> list[str]:
    """The image ids listed in a text file, one per line (blank lines skipped)."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"missing list file {path}") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` and rename tmp onto `path`, so `path` is either absent or complete."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_if_changed(path: Path, text: str) -> bool:
    """Atomically write `text` unless the file already holds it; True if written."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return True


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as a `(3, H, W)` uint8 RGB tensor, laid out as the file decodes (height, width, channel
    in memory: channels_last strides), so that no copy reorders it; `.contiguous()` gives the planar layout."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"missing image {path}") from None
    except Exception as error:
        raise DataError(f"unreadable image {path} ({error}); replace it with a complete copy") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W), channels_last strides


def image_size(path: Path, fix: str) -> tuple[int, int]:
    """(H, W) of an image that decodes completely: a file cut short (a truncated JPEG still has its
    header) fails here, during `prepare`, not hours into training."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.load()
    except FileNotFoundError:
        raise DataError(f"missing image {path}; {fix}") from None
    except Exception as error:
        raise DataError(f"unreadable image {path} ({error}); {fix}") from error
    return height, width


def read_png_mask(path: Path, fix: str = "") -> np.ndarray:
    """A single-channel ('P' or 'L') PNG of label indices as an `(H, W)` uint8 array."""
    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.array(image)
    except FileNotFoundError:
        raise DataError(f"missing mask {path}; {fix}") from None
    except Exception as error:
        raise DataError(f"unreadable mask {path} ({error}); {fix}") from error
    if mode not in ("P", "L"):
        raise DataError(f"mask {path} has mode {mode!r}; expected a palette ('P') or grey ('L') PNG "
                        f"whose pixel values are the labels; {fix}")
    return array


# ----------------------------------------------------------------------------- downloads

@dataclass(frozen=True)
class Archive:
    """Where a dataset archive comes from: our own table, so no library's internals are changed."""

    url: str
    filename: str
    md5: str | None


def download_archive(url: str, archive: Path, md5: str | None, progress: bool) -> None:
    """Fetch `url` to `archive` unless a copy with that md5 is there; the file appears only when complete.

    A failed or damaged download raises DataError saying what to do; nothing half-written is left.
    """
    if archive.is_file() and (md5 is None or tv_utils.check_integrity(str(archive), md5)):
        return
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=archive.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({error}). Check the network and run again, or "
                        f"download it yourself and put it at {archive}.") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if md5 and not tv_utils.check_integrity(str(part), md5):
        actual = tv_utils.calculate_md5(str(part))
        part.unlink()
        raise DataError(f"checksum mismatch for {archive} (from {url}): expected md5 {md5}, got "
                        f"{actual}. The download is damaged or the server sent another file; run "
                        f"again to download it again.")
    os.replace(part, archive)


def extract(archive: Path, into: Path) -> None:
    """Unpack a .tar / .tgz / .zip archive into a folder (torchvision's extractor)."""
    try:
        tv_utils.extract_archive(str(archive), str(into))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{archive} is not a complete archive ({error}); delete it and run again.") from error


def fetch_once(target: Path, archive: Path, url: str, md5: str | None, download: bool, missing: str,
               progress: bool, into: Path | None = None) -> bool:
    """Download `archive` and extract it (into `into`, default: the archive's folder) so that folder
    `target` appears, unless that is done already.

    `target` is done when it holds our EXTRACTED marker, or when it exists with no archive beside it
    (the user extracted it). A target without marker next to its archive is an interrupted
    extraction: it is extracted again (the archive is reused if its md5 matches).
    Returns True if something was fetched; `missing` is the error message when download=False.
    """
    if (target / EXTRACTED).exists() or (target.is_dir() and (not archive.exists() or not download)):
        return False
    if not download:
        raise DataError(missing)
    download_archive(url, archive, md5, progress)
    extract(archive, into or archive.parent)
    if not target.is_dir():
        raise DataError(f"{archive} (from {url}) did not contain {target}; check the URL.")
    (target / EXTRACTED).touch()
    return True


def load_torch_file(path: Path, weights_only: bool) -> object:
    """`torch.load` on the CPU; a file that is not one PyTorch wrote (or was cut short) raises
    ValueError("... (why)") for the caller to complete with its advice."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # a zip (torch.save) or a legacy pickle
        raise ValueError(f"{path} is not a PyTorch file (it starts with {head!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ValueError(f"{path} is not a readable PyTorch file ({type(error).__name__}: {reason})") from None


def folder_kind(path: Path) -> str | None:
    """What is in the way of using `path` as a folder: "a file", "inside a file", or None."""
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            return "a file" if p == path else f"inside the file {p}"
    return None


def ensure_folder(path: str | Path, what: str) -> Path:
    """Create folder `path` (and its parents); a clear error if a file stands in the way or it cannot be written."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        raise DataError(f"{what} {path} is {kind}, not a folder; give a folder path (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {what} {path} ({error.strerror}); give a folder you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"cannot write to {what} {path}; give a folder you can write to")
    return path


def ensure_writable_file(path: str | Path, what: str) -> Path:
    """Check, before any work, that file `path` can be written later (its folder is created)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give a file path, e.g. {path / 'episodes.json'}")
    kind = folder_kind(path)
    if kind not in (None, "a file"):  # an existing file is overwritten; a path through a file cannot be made
        raise DataError(f"{what} {path} is {kind}; give a path in a folder you can write to")
    ensure_folder(path.parent, f"the folder of {what}")
    return path


class FolderLock:
    """An exclusive lock on a folder, held while one process writes there (a run, a prepared tree).

    It is an advisory `flock` on FOLDER/.panet_lite.lock, which the system releases when the
    holder exits for any reason (kill -9 included), so a stale lock never blocks a rerun. The
    file records the holder's process id for the message of a second process and is removed when
    the holder finishes. On systems without `fcntl` (Windows) the lock is a no-op.
    """

    FILE = ".panet_lite.lock"

    def __init__(self, folder: str | Path, what: str = "this folder") -> None:
        self.folder, self.what, self._file = Path(folder), what, None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:
            return self
        path = self.folder / self.FILE
        while True:
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise DataError(f"{self.folder} is in use by process {holder} ({self.what}); wait for it to "
                                f"finish or stop it, or use another folder") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                (self.folder / self.FILE).unlink()  # while still locked; a kill -9 leaves it, unlocked
            self._file.close()  # closing releases the lock
            self._file = None
