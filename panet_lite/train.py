"""Episodic training with the paper's recipe, resumable from a checkpoint that holds everything."""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from . import distributed
from .data import IGNORE, IMAGENET_STATS, SegmentationSource
from .encoders import ENCODERS, FROZEN_BACKBONES, MIN_IMAGE_SIZE, RECOMPUTE_BACKBONES, encoder_spec
from .episodes import EpisodeDataset
from .files import FolderLock, atomic_write, ensure_folder, load_torch_file
from .methods import ALIGN, METHODS, get_method, methods_help
from .model import PANet
from .options import check_options, none_or, option, parse_bool_or_path, parse_int_tuple
from .runtime import (DEVICE_HELP, DTYPES, WORKERS_HELP, at_least_float32, auto_or_int, autocast, check_precision,
                      loader_options)


@dataclass
class TrainConfig:
    """Defaults are PANet's PASCAL-5i recipe (docs/protocol.md, section 4)."""

    backbone: str = option("vgg16", "encoder: the paper's vgg16, a dilated resnet50, MLC's and SSP's "
                                    "resnet50-deepstem, or the CPU course's small CNN; a frozen one "
                                    f"({', '.join(FROZEN_BACKBONES)}) with reproduce --notrain only",
                           choices=ENCODERS.keys())
    pretrained: bool | str = option(True, "ImageNet initialisation of the encoder: true, false, or the path of a "
                                          "local .pth state dict", parse=parse_bool_or_path)
    method: str = option("panet", methods_help(), choices=METHODS.keys())  # a live view: registered methods
    refine: bool = option(False, "ssp: a second self-support step (SSP's --refine)")
    align: bool = option(True, "prototype alignment regularisation (PAR; PANet's, so --method panet only)")
    align_weight: float = option(1.0, "total loss = segmentation + align_weight x PAR", at_least=0)
    ways: int = option(1, "classes per training episode (N)", at_least=1)
    shots: int = option(1, "support images per class (K)", at_least=1)
    queries: int = option(1, "query images per episode", at_least=1)
    batch_size: int = option(1, "episodes per optimiser step", at_least=1)
    steps: int = option(30_000, "training steps", at_least=1)
    optimizer: str = option("sgd", "the paper's SGD, or adamw for experiments", choices=("sgd", "adamw"))
    lr: float = option(1e-3, "learning rate, on all parameters, encoder included", at_least=0)
    momentum: float = option(0.9, "SGD momentum", at_least=0)
    weight_decay: float = option(5e-4, "weight decay", at_least=0)
    milestones: tuple[int, ...] = option((10_000, 20_000), "comma-separated steps at which the lr is multiplied "
                                                           "by gamma (stepped per iteration)", parse=parse_int_tuple)
    gamma: float = option(0.1, "lr factor at each milestone", at_least=0)
    size: int | None = option(417, "images and labels resized to size x size; none keeps the source's size",
                              parse=none_or(int), at_least=MIN_IMAGE_SIZE)
    flip: bool = option(True, "random horizontal flip of every image, p = 0.5")
    faithful: bool = option(True, "255 borders count as support background, as in PANet's code (mlc and ssp "
                                  "leave them out, as theirs do)")
    seed: int = option(1234, "seed of the initial weights and of the training episodes", at_least=0)
    device: str = option("auto", DEVICE_HELP)
    amp: bool = option(False, "bfloat16 autocast on CUDA (off reproduces the paper in fp32)")
    dtype: str = option("float32", "the precision of weights and arithmetic: the paper's float32, or float64 "
                                   "(slower; for comparing process layouts and code paths, whose "
                                   "float32 results differ by round-off)", choices=DTYPES)
    channels_last: bool = option(False, "channels-last memory format for convolutions (faster on GPU and CPU)")
    recompute: bool = option(False, "activation checkpointing: keep only a few of the encoder's activations and "
                                    "recompute the others in backward (less memory, one more encoder forward "
                                    "per step; vgg16 and small)")
    workers: int | str = option("auto", WORKERS_HELP, parse=auto_or_int, at_least=0)
    log_every: int = option(50, "steps between log lines", at_least=1)
    checkpoint_every: int = option(1000, "steps between checkpoints (one is always written at the end)", at_least=1)

    def __post_init__(self) -> None:
        check_options(self)
        method = get_method(self.method)
        method.check(self.align, self.refine)
        method.check_ways(self.ways)
        check_precision(self.amp, self.dtype)
        if self.recompute and self.backbone not in RECOMPUTE_BACKBONES:
            raise ValueError(f"--recompute works with the {' and '.join(RECOMPUTE_BACKBONES)} encoders, not "
                             f"{self.backbone}: drop it, or lower --batch-size / --size to save memory")

    @classmethod
    def for_method(cls, method: str, **overrides) -> "TrainConfig":
        """The config of a method with its own recipe (its `recipe` in methods.METHODS), then `overrides`."""
        return cls(**{"method": method, **get_method(method).recipe, **overrides})


# Each method's recipe where it differs from PANet's (methods.py holds them; this is a view of them).
METHOD_DEFAULTS = {name: dict(m.recipe) for name, m in METHODS.items() if m.recipe}


def build_model(config: TrainConfig) -> PANet:
    return PANet(config.backbone, pretrained=config.pretrained, align=config.align, method=config.method,
                 refine=config.refine)


# Fields that say how to run, not what is trained: a checkpoint may be resumed with other values.
RUN_ONLY_FIELDS = ("steps", "pretrained", "device", "amp", "dtype", "channels_last", "recompute", "workers",
                   "log_every", "checkpoint_every")


def recipe(config: TrainConfig | dict) -> dict:
    """The fields of a training config that define the trained model (all but RUN_ONLY_FIELDS)."""
    d = asdict(config) if isinstance(config, TrainConfig) else dict(config)
    d = {k: v for k, v in d.items() if k not in RUN_ONLY_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # JSON and pickle agree


def build_optimizer(model: PANet, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW, over all trainable parameters (frozen ones stay out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}")


def load_checkpoint(path: str | Path) -> dict:
    """The contents of a checkpoint written by `train` (on the CPU): weights, optimiser, step, config...

    A bare state dict (a file of weights only) comes back as {"model": state_dict}.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f"did you mean {inside}?" if inside.is_file() else "give the checkpoint.pt file that `train` wrote"
        raise FileNotFoundError(f"checkpoint {path} is a folder; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = load_torch_file(path, weights_only=False)
    except ValueError as error:
        raise ValueError(f"{error}: it is no checkpoint, or was cut short; copy or download it again, or train "
                         f"a new one") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a panet_lite checkpoint or a state dict")
    return ckpt if "model" in ckpt else {"model": ckpt}


def checkpoint_step(path: str | Path) -> int:
    """The step a training checkpoint was saved at (0 if there is none)."""
    return load_checkpoint(path).get("step", 0) if Path(path).is_file() else 0


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, Q, 1+N, H, W) logits against (B, Q, H, W) episode labels, 255 ignored."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(0, 1), ignore_index=IGNORE)


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)


def _rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, config: TrainConfig,
                    classes: Sequence[int]) -> None:
    """Everything needed to resume exactly; written to a temp file and renamed (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "model_args": model.init_args, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": state.step, "history": state.history,
                "rng": _rng_states(), "config": asdict(config), "classes": list(classes)}, tmp)
    tmp.replace(path)


def model_from_checkpoint(ckpt: dict, path: str | Path = "the checkpoint") -> PANet:
    """A PANet (train mode, on the CPU) with a checkpoint's architecture and weights.

    A bare state dict is read as the weights of the default model (VGG-16); weights that do not fit
    the architecture raise ValueError naming `path` and the first mismatching tensors.
    """
    if "model_args" in ckpt:
        model = PANet(**ckpt["model_args"], pretrained=False)
    else:  # a bare state dict, or written before checkpoints stored the model's arguments
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in ckpt.get("config", {}).items() if k in known}
        model = build_model(TrainConfig(**{**saved, "pretrained": False}))
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path} holds no model weights; give a checkpoint.pt written by `train`")
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        want = model.state_dict()
        missing = [k for k in want if k not in weights]
        unexpected = [k for k in weights if k not in want]
        shapes = [k for k in want if k in weights and weights[k].shape != want[k].shape]
        found = "; ".join(f"{what}: {', '.join(keys[:2])}{' ...' if len(keys) > 2 else ''}" for what, keys in
                          (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys)
        raise ValueError(f"the weights in {path} do not fit PANet({model.backbone}) ({found}); it is the state dict "
                         f"of another model: give a checkpoint.pt written by `train`, which records its "
                         f"architecture") from None
    return model


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> PANet:
    """A PANet in eval mode with the weights of a training checkpoint (or a bare state dict)."""
    return model_from_checkpoint(load_checkpoint(checkpoint), checkpoint).to(device).eval()


def _check_resumable(ckpt: dict, config: TrainConfig, path: Path) -> None:
    """A checkpoint resumes only the same recipe, and only up to a step count it has not passed."""
    if not all(k in ckpt for k in ("config", "step", "optimizer", "scheduler", "rng")):
        raise ValueError(f"{path} is not a training checkpoint written by `train` (it holds only weights); "
                         f"move it away, or use another output directory")
    saved = recipe(ckpt["config"])
    changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in recipe(config).items() if k in saved and saved[k] != v]
    if changed:
        raise ValueError(f"{path} was trained with another recipe ({'; '.join(changed)}); "
                         f"use another output directory, or delete it to start over")
    if ckpt["step"] > config.steps:
        raise ValueError(f"{path} is at step {ckpt['step']}, past the {config.steps} steps asked for; "
                         f"ask for at least {ckpt['step']} steps or use another output directory")


def check_trainable(config: TrainConfig) -> None:
    """Refuse, in one line, a method or an encoder that is not trained (frozen features, a training-free
    method): they are tested as they are, with `test --notrain` or `reproduce --notrain`."""
    method, encoder = get_method(config.method), encoder_spec(config.backbone)
    if not method.trains:
        raise ValueError(f"{method.title} is not trained: test it as it is with `test --notrain --method "
                         f"{method.name}` or `reproduce --notrain --method {method.name}`")
    if not encoder.trains:
        raise ValueError(f"{config.backbone} is {encoder.about}: its features are never trained; test them as they "
                         f"are with `test --notrain --backbone {config.backbone}` or `reproduce --notrain "
                         f"--backbone {config.backbone}`")


def train(source: SegmentationSource, classes: Sequence[int], config: TrainConfig, out: str | Path | None = None,
          model: PANet | None = None, progress: bool = True) -> tuple[PANet, list[dict]]:
    """Train PANet on episodes of `classes` drawn from `source`; returns the model and the loss history.

    With `out`, checkpoints go to `out/checkpoint.pt` and log lines to `out/log.jsonl`; if a
    checkpoint is there, training resumes from it (same config expected) and continues where it
    stopped: the episodes are a fixed sequence from the seed, so a resumed run sees the same data.
    A checkpoint that has all `config.steps` steps is the finished run: its model and history are
    returned at once (rerunning a finished command costs nothing). While it runs, `out` is locked:
    a second `train` on the same folder is refused, naming the process that holds it.
    """
    check_trainable(config)
    if out is None:
        return _train(source, classes, config, None, model, progress)
    finished = _finished_run(Path(out) / "checkpoint.pt", config, model)
    if finished is not None:  # reading a finished run needs no lock (and no write access)
        return finished
    if not distributed.current().main:  # under torchrun rank 0 holds the lock and writes; the others only read
        return _train(source, classes, config, Path(out), model, progress)
    out = ensure_folder(out, "run folder (--out)")
    with FolderLock(out, "a `train` writing this run"):
        return _train(source, classes, config, out, model, progress)


def _resumable_checkpoint(path: Path, config: TrainConfig) -> dict | None:
    """The checkpoint a run in `path`'s folder resumes from (None if there is none), checked against `config`."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except ValueError as error:
        raise ValueError(f"cannot resume the run in {path.parent}: {str(error).split(': it is no')[0]}; delete it "
                         f"to train this run from the start, or use another --out") from None
    _check_resumable(ckpt, config, path)
    return ckpt


def _finished_run(path: Path, config: TrainConfig, model: PANet | None) -> tuple[PANet, list[dict]] | None:
    """A run whose checkpoint holds all `config.steps` steps: its model (in eval mode) and history."""
    ckpt = _resumable_checkpoint(path, config)
    if ckpt is None or ckpt["step"] != config.steps:
        return None
    if model is None:
        model = model_from_checkpoint(ckpt, path)
    else:
        model.load_state_dict(ckpt["model"])
    return model.to(distributed.device(config.device)).eval(), ckpt["history"]


def _trim_log(log: Path, step: int) -> None:
    """Keep the log lines up to `step`: a run killed after its last checkpoint logged steps that the
    resumed run logs again (a line cut short by the kill goes too)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    text = "".join(kept)
    if text != log.read_text():
        atomic_write(log, lambda tmp: tmp.write_text(text))


def _train(source: SegmentationSource, classes: Sequence[int], config: TrainConfig, out: Path | None,
           model: PANet | None, progress: bool) -> tuple[PANet, list[dict]]:
    from tqdm.auto import tqdm

    ranks = distributed.current()
    if config.batch_size % ranks.world:
        raise ValueError(f"--batch-size {config.batch_size} does not split over {ranks.world} processes: under "
                         f"torchrun each takes batch-size / processes episodes of every batch; use a multiple of "
                         f"{ranks.world}")
    write = ranks.main  # rank 0 alone writes checkpoints and logs
    progress = progress and write
    device = distributed.device(config.device)
    ckpt_path = Path(out) / "checkpoint.pt" if out is not None else None
    ckpt = _resumable_checkpoint(ckpt_path, config) if ckpt_path is not None else None
    if ckpt is not None and ckpt["step"] == config.steps:  # finished by a run that held the lock a moment ago
        return _finished_run(ckpt_path, config, model)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    # A resumed run overwrites the initial weights: no need to fetch ImageNet weights for it.
    dtype = getattr(torch, config.dtype)
    model = (model or build_model(config if ckpt is None else replace(config, pretrained=False))).to(device, dtype)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.recompute = config.recompute
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(ckpt["step"], ckpt["history"])
        _set_rng_states(ckpt["rng"])
    model.train()
    dataset = EpisodeDataset(source, classes, config.steps * config.batch_size, config.ways, config.shots,
                             config.queries, config.seed, config.size, config.flip,
                             config.faithful and getattr(model, "borders_are_background", True),
                             stats=getattr(model, "input_stats", IMAGENET_STATS))
    # Batch s is episodes s*B .. s*B + B - 1 of the stream; under torchrun rank r takes its share of each.
    share = config.batch_size // ranks.world
    first = state.step * config.batch_size + ranks.rank * share
    remaining = Subset(dataset, [first + s * config.batch_size + i for s in range(config.steps - state.step)
                                 for i in range(share)])
    loader = DataLoader(remaining, batch_size=share, shuffle=False,
                        **loader_options(config.workers, device))
    net = model if ranks.world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if out is not None and write:
        _trim_log(out / "log.jsonl", state.step)
    log_file = open(out / "log.jsonl", "a") if out is not None and write else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=config.steps, initial=state.step, disable=not progress, desc="train", unit="step")
    # The log's running sums stay on the device and are read every --log-every steps: reading them every
    # step (.item()) would make the CPU wait for each step to finish before it queues the next.
    others = [n for n in get_method(config.method).loss_names(config.align, config.refine) if n != ALIGN]
    keys = ("loss", "seg_loss", "align_loss") + (("aux_loss",) if others else ())
    sums, n_sum, t0 = torch.zeros(len(keys), dtype=torch.float64, device=device), 0, time.perf_counter()
    try:
        for batch in loader:
            batch = {k: v.to(device, dtype if v.is_floating_point() else v.dtype, non_blocking=True)
                     for k, v in batch.items()}
            with autocast(device, config.amp):
                out_ = net(batch["support_images"], batch["support_fg"], batch["support_bg"], batch["query_images"],
                           batch["query_labels"])
                if ranks.world == 1:
                    loss, parts = step_losses(out_, batch["query_labels"], config.align_weight)
                else:
                    loss, parts = shared_losses(out_, batch["query_labels"], config.align_weight, ranks.world)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state.step += 1
            sums += torch.stack([parts[k].detach().to(sums.device, torch.float64) for k in keys])
            n_sum += 1
            bar.update(1)
            if state.step % config.log_every == 0 or state.step == config.steps:
                row = {"step": state.step, **dict(zip(keys, (sums / n_sum).tolist())),
                       "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0}
                if device.type == "cuda":
                    row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                state.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", align=f"{row['align_loss']:.3f}")
                if log_file:
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                sums, n_sum = torch.zeros_like(sums), 0
            if write and ckpt_path is not None and (state.step % config.checkpoint_every == 0
                                                    or state.step == config.steps):
                save_checkpoint(ckpt_path, model, optimizer, scheduler, state, config, classes)
    finally:
        bar.close()
        if log_file:
            log_file.close()
    distributed.barrier()  # the last checkpoint is on disk before any rank goes on
    return model.eval(), state.history


def step_losses(out_, labels: torch.Tensor, align_weight: float) -> tuple[torch.Tensor, dict]:
    """The loss of one process's training step, segmentation + align_weight x PAR (+ SSP's auxiliary
    losses), and its terms for the log."""
    seg = segmentation_loss(at_least_float32(out_.logits), labels)
    loss = seg + align_weight * at_least_float32(out_.align_loss) + at_least_float32(out_.aux_loss)
    return loss, {"loss": loss, "seg_loss": seg, "align_loss": out_.align_loss, "aux_loss": out_.aux_loss}


def shared_losses(out_, labels: torch.Tensor, align_weight: float, world: int) -> tuple[torch.Tensor, dict]:
    """The loss of this rank's share of a batch, scaled so that DDP's average of the ranks' gradients is the
    gradient of the whole batch's loss, and the whole batch's loss terms (for the log).

    The segmentation loss is a mean over all labelled pixels of the batch: each rank's sum of
    cross-entropies is divided by the pixel count of all ranks (and multiplied by the world size,
    which DDP's average divides out again). PAR is a mean over episodes, and every rank has the
    same number of them, so the ranks' means average to the batch's. SSP's auxiliary losses are
    means over each rank's pixels, averaged over the ranks: equal to one process's when every
    share has as many labelled pixels.
    """
    logits = at_least_float32(out_.logits)
    seg_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(0, 1), ignore_index=IGNORE, reduction="sum")
    stats = torch.stack([seg_sum.detach(), (labels != IGNORE).sum().to(seg_sum.dtype),
                         out_.align_loss.detach().to(seg_sum.device, seg_sum.dtype),
                         out_.aux_loss.detach().to(seg_sum.device, seg_sum.dtype)])
    stats = distributed.sum_over_ranks(stats)
    pixels = stats[1].clamp_min(1)
    loss = world * seg_sum / pixels + align_weight * at_least_float32(out_.align_loss) + at_least_float32(out_.aux_loss)
    seg, align, aux = stats[0] / pixels, stats[2] / world, stats[3] / world
    return loss, {"loss": seg + align_weight * align + aux, "seg_loss": seg, "align_loss": align, "aux_loss": aux}
