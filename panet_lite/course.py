"""Course helpers: notebook setup and "train or load" of the small models the chapters share."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from .data import SegmentationSource, train_classes
from .demo import DemoConfig, demo_train_config
from .methods import ALIGN, get_method
from .model import PANet
from .runtime import resolve_device
from .synthetic import SyntheticFewShot
from .train import TrainConfig, checkpoint_step, train

CHECKPOINTS = Path("checkpoints")  # relative to the notebook's folder, where Jupyter runs it


def setup(seed: int = 0, threads: int = 2) -> torch.device:
    """The first cell of every chapter: seeds, CPU threads, and the device to use."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return resolve_device("auto")


def course_sources(size: int = 96, n_images: int = 2000) -> tuple[SyntheticFewShot, SyntheticFewShot]:
    """The embedded dataset's training stream and its (disjoint) test stream, as the demo uses them."""
    return SyntheticFewShot("trainaug", n_images, size), SyntheticFewShot("val", n_images // 2, size)


def course_model_config(fold: int = 0, shots: int = 1, align: bool = True, steps: int | None = None,
                        method: str = "panet", seed: int | None = None) -> TrainConfig:
    """The small-encoder recipe of the demo for one fold / shot count, with or without alignment.

    `method` "mlc" or "ssp" (any name in methods.METHODS) trains that method with the same recipe
    (encoder, steps, batches, lr and episodes), so that a comparison measures the method alone; PAR
    stays off for a method that does not have it.
    `seed` (default the demo's 1234) draws other initial weights and other training episodes.
    """
    cfg = demo_train_config(DemoConfig(fold=fold, steps=steps or DemoConfig.steps))
    return replace(cfg, shots=shots, align=align and ALIGN in get_method(method).switches, method=method,
                   seed=cfg.seed if seed is None else seed)


def course_run_name(cfg: TrainConfig, fold: int = 0) -> str:
    """The folder of a course run under notebooks/checkpoints/, e.g. small-fold0-1shot-align-600."""
    tag = get_method(cfg.method).run_tag or ("align" if cfg.align else "noalign")
    seed = "" if cfg.seed == DemoConfig.seed else f"-seed{cfg.seed}"
    return f"small-fold{fold}-{cfg.shots}shot-{tag}-{cfg.steps}{seed}"


def train_or_load(fold: int = 0, shots: int = 1, align: bool = True, steps: int | None = None,
                  directory: str | Path | None = None, progress: bool = True, method: str = "panet",
                  seed: int | None = None) -> tuple[PANet, list[dict]]:
    """A small model trained on the 15 classes outside `fold`: loaded from
    `notebooks/checkpoints/<name>/checkpoint.pt` when that run is complete, otherwise trained
    (or resumed) there first, and announced either way. Returns (model in eval mode, history)."""
    cfg = course_model_config(fold, shots, align, steps, method, seed)
    name = course_run_name(cfg, fold)
    out = Path(directory or CHECKPOINTS) / name
    # train() decides: a finished run is loaded, an interrupted one resumed, a missing one trained.
    if checkpoint_step(out / "checkpoint.pt") >= cfg.steps:
        print(f"loading {out.as_posix()}/checkpoint.pt (trained earlier; delete that folder to train again)")
    else:
        print(f"training {name} for {cfg.steps} steps into {out.as_posix()}/ (a few minutes on 2 CPU cores)")
    source, _ = course_sources()
    return train(source, train_classes(fold), cfg, out=out, progress=progress)


def foundation_model(backbone: str = "dinov2_vits14", method: str = "panet") -> tuple[PANet, bool]:
    """PANet (or another method) on a frozen DINOv2 encoder with its pretrained weights, downloaded once
    into the Hugging Face cache; where they cannot be had (offline), one line saying what and how, and
    the same model with random weights. Returns (model in eval mode, whether the weights are DINOv2's)."""
    from .foundation import FoundationWeightsUnavailable

    try:
        return PANet(backbone, pretrained=True, method=method).eval(), True
    except FoundationWeightsUnavailable as error:
        print(f"{error}. Going on with RANDOM weights: shapes and mechanics only, not results")
        return PANet(backbone, pretrained=False, method=method).eval(), False


def photo_source(voc_root: str | Path = "../data/pascal") -> tuple[SegmentationSource, int | None, str]:
    """A prepared VOC's PASCAL-5i test images (PANet's test split) at 417 px where `voc_root` holds one,
    else the embedded dataset's test stream at its own size; with a line saying which, and why."""
    from .sources import open_source, split_for

    root = Path(voc_root)
    if root.is_dir():
        try:
            return (open_source("pascal5i", root, split_for("pascal5i", "faithful")), 417,
                    f"PASCAL VOC in {root.as_posix()}")
        except (OSError, ValueError) as error:
            print(f"{root.as_posix()} is not a prepared VOC ({str(error).splitlines()[0]})")
    why = f"no prepared VOC in {root.as_posix()} (python -m panet_lite prepare pascal --root data/pascal)"
    return course_sources()[1], None, f"the embedded dataset: {why}"
