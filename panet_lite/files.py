"""General data-file I/O: atomic writes, readers that fail with a fix, downloads that say what went wrong.

Every dataset module (pascal, coco) builds on these; none of them knows a dataset's layout.
"""
from __future__ import annotations

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
    """An image file as a `(3, H, W)` uint8 RGB tensor."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"missing image {path}") from None
    except Exception as error:
        raise DataError(f"unreadable image {path} ({error}); replace it with a complete copy") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def image_size(path: Path, fix: str) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
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
