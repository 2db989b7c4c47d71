"""Episodic testing: the PANet-faithful protocol (runs x episodes, seeds 1234+r) and the standard one."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from . import distributed
from .data import IMAGENET_STATS, PASCAL5I, SegmentationSource
from .encoders import MIN_IMAGE_SIZE
from .episodes import (HSNET_EPISODES, HSNET_SEED, HSNET_SIZE, Episode, EpisodeDataset, as_episodes,
                       draw_hsnet_episodes, hsnet_pairs)
from .files import DataError, ensure_writable_file
from .metrics import IoUMeter, mean_std
from .model import PANet
from .options import check_options, none_or, option
from .runtime import (DEVICE_HELP, DTYPES, WORKERS_HELP, at_least_float32, auto_or_int, autocast, check_precision,
                      loader_options, test_batch_size)
from .supports import SUPPORT_HELP, SUPPORTS


PROTOCOLS = ("faithful", "standard", "hsnet")
# What a protocol fixes unless asked otherwise (the command line applies these to the flags not given).
PROTOCOL_DEFAULTS = {"hsnet": {"runs": 1, "episodes": HSNET_EPISODES, "seed": HSNET_SEED, "size": HSNET_SIZE}}


@dataclass
class EvalConfig:
    """Defaults are the PANet-faithful protocol (docs/protocol.md, "Testing protocols and the metric")."""

    ways: int = option(1, "classes per test episode (N)", at_least=1)
    shots: int = option(1, "support images per class (K)", at_least=1)
    queries: int = option(1, "query images per episode", at_least=1)
    runs: int = option(5, "test runs; run r draws its episodes with test seed + r", at_least=1)
    episodes: int = option(1000, "episodes per run", at_least=1)
    seed: int = option(1234, "seed of the test episodes (the paper's: 1234, runs 1234..1238)", flag="test-seed",
                       at_least=0)
    size: int | None = option(417, "model input side; the faithful protocol scores on the resized label too; "
                                   "none keeps the source's size", parse=none_or(int), at_least=MIN_IMAGE_SIZE)
    protocol: str = option("faithful", "faithful: the paper's test (training images of the held-out classes, "
                                       "resized, the authors' meter); standard: the val images at their original "
                                       "size, corrected meter; hsnet: HSNet's fixed PASCAL-5i val lists, one run of "
                                       "1,000 episodes, seed 0, 400 px, the test most later papers report",
                           choices=PROTOCOLS)
    original_size: bool = option(False, "hsnet protocol: score each query at its original size instead of "
                                        "400 x 400 (HSNet's use_original_imgsize)")
    support: str = option("dense", SUPPORT_HELP, choices=SUPPORTS)
    batch_size: int | str = option("auto", "episodes per forward pass, or auto: 8 on a GPU (1 where each query is "
                                           "scored at its own size), 1 on the CPU; the results do not depend on it",
                                   parse=auto_or_int, at_least=1)
    device: str = option("auto", DEVICE_HELP)
    amp: bool = option(False, "bfloat16 autocast on CUDA")
    dtype: str = option("float32", "the precision of the test's arithmetic: float32, or float64 (slower; the "
                                   "models are converted in place) to compare batchings and process layouts "
                                   "without round-off", choices=DTYPES)
    compile: bool = option(False, "torch.compile the model's encoder (in place) before testing: a minute or two "
                                  "to compile, then faster forwards (on 2 CPU cores about 15%; "
                                  "benchmarks/compare.py --compile measures yours)")
    workers: int | str = option("auto", WORKERS_HELP, parse=auto_or_int, at_least=0)
    save_episodes: str | None = option(None, "file to write the drawn episodes (image ids) to, as JSON; none "
                                             "writes nothing", parse=none_or(str))

    def __post_init__(self) -> None:
        check_options(self)
        check_precision(self.amp, self.dtype)

    @classmethod
    def for_protocol(cls, protocol: str, **overrides) -> "EvalConfig":
        """The config of a protocol with its own defaults (hsnet: 1 run, 1,000 episodes, seed 0, 400 px)."""
        return cls(**{"protocol": protocol, **PROTOCOL_DEFAULTS.get(protocol, {}), **overrides})


@dataclass
class EvalResult:
    miou: float  # mean over runs of the mean class IoU of the test classes (0..1)
    miou_std: float
    fb_iou: float
    fb_iou_std: float
    class_iou: dict[int, float]  # per test class, mean over runs
    runs: list[dict] = field(default_factory=list)  # per run: miou, fb_iou, class_iou

    @classmethod
    def of_runs(cls, runs: list[dict], classes: Sequence[int]) -> "EvalResult":
        """Means and stds over `runs` (each: miou, fb_iou, class_iou of `classes`)."""
        miou, miou_std = mean_std([r["miou"] for r in runs])
        fb, fb_std = mean_std([r["fb_iou"] for r in runs])
        class_iou = {c: sum(r["class_iou"][c] for r in runs) / len(runs) for c in classes}
        return cls(miou, miou_std, fb, fb_std, class_iou, runs)

    def as_dict(self) -> dict:
        return {"miou": self.miou, "miou_std": self.miou_std, "fb_iou": self.fb_iou, "fb_iou_std": self.fb_iou_std,
                "class_iou": {str(k): v for k, v in self.class_iou.items()}, "runs": self.runs}


@torch.no_grad()
def predict(model: PANet, batch: dict, device: torch.device, amp: bool = False,
            size: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted episode labels (B, Q, H, W) for a collated batch; logits upsampled to `size` if given."""
    dtype = next(model.parameters()).dtype  # float32, or float64 (EvalConfig.dtype)
    with autocast(device, amp):
        logits = model(*(batch[k].to(device, dtype) for k in ("support_images", "support_fg", "support_bg",
                                                                "query_images"))).logits
    logits = at_least_float32(logits)
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        B, Q = logits.shape[:2]
        logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        logits = logits.unflatten(0, (B, Q))
    return class_argmax(logits, dim=2)


def class_argmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """`logits.argmax(dim)` (the first maximum on ties), reduced over a contiguous last axis instead:
    PyTorch's CPU argmax over a middle axis of (B, Q, 1 + N, H, W) is 8-25x slower than the copy."""
    return logits.movedim(dim, -1).contiguous().argmax(dim=-1)


def _hsnet_draw(source: SegmentationSource, classes: Sequence[int], config: EvalConfig) -> list[Episode]:
    """HSNet's episodes for the fold whose test classes are `classes`, after checking the settings and
    that the source holds every image of the fold's list."""
    folds = [f for f in range(PASCAL5I.n_folds) if PASCAL5I.test_classes(f) == list(classes)]
    if source.num_classes != PASCAL5I.n_classes or not folds:
        raise ValueError("the hsnet protocol is defined on PASCAL-5i only (HSNet's lists are VOC val image ids); "
                         "test a pascal5i fold")
    if config.ways != 1 or config.queries != 1 or config.runs != 1:
        raise ValueError("the hsnet protocol is 1-way with one query and one run of fixed episodes: use --ways 1, "
                         "--queries 1 and --runs 1")
    fold = folds[0]
    pairs = hsnet_pairs(fold)
    listed = sorted({image_id for image_id, _ in pairs})
    known = set(source.ids())
    missing = [image_id for image_id in listed if image_id not in known]
    if missing:
        where = getattr(source, "base", "the data")
        raise DataError(f"{len(missing)} of the {len(listed)} images of HSNet's fold-{fold} list are not in the "
                        f"prepared val split of {where} (the first: {missing[0]}); prepare VOC 2012 + SBD in full: "
                        f"`python -m panet_lite prepare pascal --root DIR`")
    return as_episodes(draw_hsnet_episodes(pairs, config.shots, config.episodes, config.seed), classes)


def check_support(source: SegmentationSource, support: str) -> None:
    """Refuse, in one line, box supports on a source without instance masks (before any work)."""
    problem = source.instances_missing() if support == "bbox" else None
    if problem:
        raise DataError(f"--support bbox: {problem}")


def evaluate(model: PANet | Mapping[Hashable, PANet], source: SegmentationSource, classes: Sequence[int],
             config: EvalConfig, progress: bool = True,
             episodes: Sequence[Episode] | None = None) -> EvalResult | dict[Hashable, EvalResult]:
    """Test `model` on episodes of `classes` (global ids, ascending) from `source`.

    `model` may be a mapping of models (e.g. one per training seed): each batch of episodes is then
    drawn once and tested by all of them, and the results come back under the same keys, each the
    result its model gets alone.

    `episodes` replaces the protocol's draw with fixed episodes, tested in one run under the
    protocol's images, sizes and meter: e.g. an HSNet-style list of another dataset through
    `as_episodes(draw_hsnet_episodes(pairs, shots), classes)`.
    """
    from tqdm.auto import tqdm

    if config.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {config.protocol!r}")
    standard, hsnet = config.protocol == "standard", config.protocol == "hsnet"
    full_size = standard or (hsnet and config.original_size)  # the query scored at its original size
    if config.original_size and not hsnet:
        raise ValueError("--original-size applies to --protocol hsnet (standard always scores at the original "
                         "size, faithful at --size)")
    device = distributed.device(config.device)
    batch_size = test_batch_size(config.batch_size, device, full_size)
    if full_size and (batch_size != 1 or config.queries != 1):
        raise ValueError(f"the {config.protocol} protocol scores each query at its own size here: use "
                         f"--batch-size 1 and --queries 1")
    if episodes is not None and config.runs != 1:
        raise ValueError("fixed episodes are one run: use runs=1")
    check_support(source, config.support)
    fixed = list(episodes) if episodes is not None else _hsnet_draw(source, classes, config) if hsnet else None
    if config.save_episodes:  # before the work: a path that cannot be written fails now, not after the last episode
        ensure_writable_file(config.save_episodes, "--save-episodes")
    several = isinstance(model, Mapping)
    models = dict(model) if several else {None: model}
    if not models:
        raise ValueError("no models to test: the mapping is empty")
    # PANet's supports count their 255 borders as background under its own test; MLC's and SSP's never do.
    borders = {getattr(m, "borders_are_background", True) for m in models.values()}
    if len(borders) != 1:
        raise ValueError("models tested together must draw the same supports: test PANet apart from MLC and SSP "
                         "(their supports never count 255 borders as background)")
    borders = borders.pop()
    stats = {tuple(map(tuple, getattr(m, "input_stats", IMAGENET_STATS))) for m in models.values()}
    if len(stats) != 1:
        raise ValueError("models tested together must take the same input: these encoders normalise their images "
                         "with different statistics (ENCODERS[...].stats); test them one at a time")
    stats = stats.pop()
    ranks = distributed.current()  # under torchrun: rank r tests episodes r, r + W, r + 2W, ... of each run
    progress = progress and ranks.main
    models = {key: m.to(device, getattr(torch, config.dtype)).eval() for key, m in models.items()}
    if config.compile:
        for m in models.values():
            m.encoder.compile()  # nn.Module.compile: the weights keep their names; compiled on the first batch
    runs, drawn = {key: [] for key in models}, []
    for run in range(config.runs):
        dataset = EpisodeDataset(source, classes, config.episodes, config.ways, config.shots, config.queries,
                                 seed=config.seed + run, size=config.size, flip=False,
                                 faithful=config.protocol == "faithful" and borders, keep_query_size=full_size,
                                 episodes=fixed, pil_resize=hsnet, support=config.support, stats=stats)
        drawn.append([ep.__dict__ for ep in dataset.episodes])
        # The corrected meter (false positives of absent classes counted) is, on 1-way episodes,
        # HSNet's too: per class, fg and bg intersection and union summed over episodes, 255 left out.
        meters = {key: IoUMeter(source.num_classes, count_absent_fp=config.protocol != "faithful") for key in models}
        mine = dataset if ranks.world == 1 else Subset(dataset, range(ranks.rank, len(dataset), ranks.world))
        loader = DataLoader(mine, batch_size=batch_size, **loader_options(config.workers, device))
        for batch in tqdm(loader, disable=not progress, desc=f"test run {run + 1}/{config.runs}", leave=False):
            target = batch["query_labels_full"] if full_size else batch["query_labels"]
            for key, m in models.items():
                pred = predict(m, batch, device, config.amp, size=target.shape[-2:])
                for b in range(pred.shape[0]):
                    meters[key].update(pred[b].cpu(), target[b], batch["class_ids"][b])
        for key, meter in meters.items():
            iou = meter.sum_over_ranks().class_iou()
            runs[key].append({"seed": config.seed + run, "miou": meter.mean_iou(classes), "fb_iou": meter.fb_iou(),
                              "class_iou": {c: iou[c].item() for c in classes}})
    if config.save_episodes and ranks.main:
        path = Path(config.save_episodes)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"classes": list(classes), "ways": config.ways, "shots": config.shots,
                                    "runs": drawn}, indent=1))
    results = {key: EvalResult.of_runs(model_runs, classes) for key, model_runs in runs.items()}
    return results if several else results[None]
