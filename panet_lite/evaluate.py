"""Episodic testing: the PANet-faithful protocol (runs x episodes, seeds 1234+r) and the standard one."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import SegmentationSource
from .encoders import MIN_IMAGE_SIZE
from .episodes import EpisodeDataset
from .files import ensure_writable_file
from .metrics import IoUMeter, mean_std
from .model import PANet
from .options import check_options, none_or, option
from .runtime import DEVICE_HELP, autocast, resolve_device


PROTOCOLS = ("faithful", "standard")


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
                                       "size, corrected meter", choices=PROTOCOLS)
    batch_size: int = option(1, "episodes per forward pass (results do not depend on it)", at_least=1)
    device: str = option("auto", DEVICE_HELP)
    amp: bool = option(False, "bfloat16 autocast on CUDA")
    workers: int = option(0, "DataLoader worker processes", at_least=0)
    save_episodes: str | None = option(None, "file to write the drawn episodes (image ids) to, as JSON; none "
                                             "writes nothing", parse=none_or(str))

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class EvalResult:
    miou: float  # mean over runs of the mean class IoU of the test classes (0..1)
    miou_std: float
    fb_iou: float
    fb_iou_std: float
    class_iou: dict[int, float]  # per test class, mean over runs
    runs: list[dict] = field(default_factory=list)  # per run: miou, fb_iou, class_iou

    def as_dict(self) -> dict:
        return {"miou": self.miou, "miou_std": self.miou_std, "fb_iou": self.fb_iou, "fb_iou_std": self.fb_iou_std,
                "class_iou": {str(k): v for k, v in self.class_iou.items()}, "runs": self.runs}


@torch.no_grad()
def predict(model: PANet, batch: dict, device: torch.device, amp: bool = False,
            size: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted episode labels (B, Q, H, W) for a collated batch; logits upsampled to `size` if given."""
    with autocast(device, amp):
        logits = model(batch["support_images"].to(device), batch["support_fg"].to(device),
                       batch["support_bg"].to(device), batch["query_images"].to(device)).logits.float()
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        B, Q = logits.shape[:2]
        logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        logits = logits.unflatten(0, (B, Q))
    return logits.argmax(dim=2)


def evaluate(model: PANet, source: SegmentationSource, classes: Sequence[int], config: EvalConfig,
             progress: bool = True) -> EvalResult:
    """Test `model` on episodes of `classes` (global ids, ascending) from `source`."""
    from tqdm.auto import tqdm

    if config.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'faithful' or 'standard', got {config.protocol!r}")
    standard = config.protocol == "standard"
    if standard and (config.batch_size != 1 or config.queries != 1):
        raise ValueError("the standard protocol scores each query at its own size: use batch_size=1, queries=1")
    if config.save_episodes:  # before the work: a path that cannot be written fails now, not after the last episode
        ensure_writable_file(config.save_episodes, "--save-episodes")
    device = resolve_device(config.device)
    model = model.to(device).eval()
    runs, drawn = [], []
    for run in range(config.runs):
        dataset = EpisodeDataset(source, classes, config.episodes, config.ways, config.shots, config.queries,
                                 seed=config.seed + run, size=config.size, flip=False, faithful=not standard,
                                 keep_query_size=standard)
        drawn.append([ep.__dict__ for ep in dataset.episodes])
        meter = IoUMeter(source.num_classes, count_absent_fp=standard)
        loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers)
        for batch in tqdm(loader, disable=not progress, desc=f"test run {run + 1}/{config.runs}", leave=False):
            target = batch["query_labels_full"] if standard else batch["query_labels"]
            pred = predict(model, batch, device, config.amp, size=target.shape[-2:])
            for b in range(pred.shape[0]):
                meter.update(pred[b].cpu(), target[b], batch["class_ids"][b])
        iou = meter.class_iou()
        runs.append({"seed": config.seed + run, "miou": meter.mean_iou(classes), "fb_iou": meter.fb_iou(),
                     "class_iou": {c: iou[c].item() for c in classes}})
    if config.save_episodes:
        path = Path(config.save_episodes)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"classes": list(classes), "ways": config.ways, "shots": config.shots,
                                    "runs": drawn}, indent=1))
    miou, miou_std = mean_std([r["miou"] for r in runs])
    fb, fb_std = mean_std([r["fb_iou"] for r in runs])
    class_iou = {c: sum(r["class_iou"][c] for r in runs) / len(runs) for c in classes}
    return EvalResult(miou, miou_std, fb, fb_std, class_iou, runs)
