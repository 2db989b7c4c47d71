"""The demo: a small PANet trained on three folds of the embedded dataset, tested on the fourth."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data import fold_classes, train_classes
from .evaluate import EvalConfig, evaluate
from .options import check_options, option
from .synthetic import SyntheticFewShot
from .train import TrainConfig, build_model, train


@dataclass
class DemoConfig:
    """A CPU-sized version of the paper's recipe; under 3 minutes on 2 cores."""

    fold: int = option(0, "the unseen fold, 0..3: its 5 classes are never trained on", choices=(0, 1, 2, 3))
    steps: int = option(600, "training steps, 1-shot", at_least=1)
    batch_size: int = option(8, "episodes per step (the paper: 1); on a CPU an episode costs about the same in a "
                                "batch of 8 as of 4, and 8 average out more gradient noise", at_least=1)
    lr: float = option(0.03, "learning rate; higher than the paper's 1e-3, as the small encoder starts from "
                             "scratch", at_least=0)
    milestone: float = option(0.8, "the lr is divided by 10 after this fraction of the steps", at_least=0)
    size: int = option(96, "image side of the embedded dataset", at_least=32)
    n_images: int = option(2000, "images in the training split (the test split has half as many)", at_least=1)
    test_episodes: int = option(500, "1-shot test episodes on the unseen fold (one run)", at_least=1)
    seed: int = option(1234, "seed of the initial weights and of the training episodes", at_least=0)
    test_seed: int = option(1234, "seed of the test episodes (kept when --seed changes)", at_least=0)
    threads: int = option(2, "CPU threads for PyTorch", at_least=1)

    def __post_init__(self) -> None:
        check_options(self)


def demo_train_config(cfg: DemoConfig) -> TrainConfig:
    # channels_last: on a CPU too, oneDNN's convolutions run about 25% faster in that layout.
    return TrainConfig(backbone="small", pretrained=False, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                       milestones=(int(cfg.steps * cfg.milestone),), size=None, seed=cfg.seed, device="cpu",
                       channels_last=True, log_every=max(1, cfg.steps // 20))


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Evaluate untrained, train, evaluate again; returns the figures of the report."""
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    source = SyntheticFewShot("trainaug", cfg.n_images, cfg.size)
    test_source = SyntheticFewShot("val", cfg.n_images // 2, cfg.size)
    train_cfg = demo_train_config(cfg)
    eval_cfg = EvalConfig(runs=1, episodes=cfg.test_episodes, seed=cfg.test_seed, size=None, batch_size=25,
                          device="cpu")
    test = fold_classes(cfg.fold)
    torch.manual_seed(cfg.seed)
    model = build_model(train_cfg)
    before = evaluate(model, test_source, test, eval_cfg, progress=progress)
    t0 = time.perf_counter()
    model, history = train(source, train_classes(cfg.fold), train_cfg, model=model, progress=progress)
    train_seconds = time.perf_counter() - t0
    after = evaluate(model, test_source, test, eval_cfg, progress=progress)
    return {
        "fold": cfg.fold, "seed": cfg.seed, "test_seed": cfg.test_seed, "steps": cfg.steps, "batch_size": cfg.batch_size,
        "test_classes": test, "test_episodes": cfg.test_episodes,
        "miou": after.miou, "miou_untrained": before.miou, "fb_iou": after.fb_iou,
        "fb_iou_untrained": before.fb_iou, "class_iou": {str(k): v for k, v in after.class_iou.items()},
        "final_loss": history[-1]["loss"], "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
    }


def format_report(r: dict) -> str:
    from .synthetic import CLASS_NAMES

    lines = [
        "",
        f"PANet demo: small encoder, embedded dataset, fold {r['fold']} unseen",
        f"  trained {r['steps']} steps of {r['batch_size']} 1-shot episodes on the other 15 classes in {r['train_seconds']:.0f} s",
        f"  tested on {r['test_episodes']} 1-way 1-shot episodes of the 5 unseen classes (PANet's metric, "
        f"test seed {r.get('test_seed', 1234)})",
        "",
        f"  {'':28s} {'untrained':>10s} {'trained':>10s}",
        f"  {'mIoU (unseen classes)':28s} {r['miou_untrained']:10.3f} {r['miou']:10.3f}",
        f"  {'FB-IoU':28s} {r['fb_iou_untrained']:10.3f} {r['fb_iou']:10.3f}",
        "",
        "  class IoU after training:",
    ]
    lines += [f"    {int(c):2d} {CLASS_NAMES[int(c) - 1]:24s} {v:.3f}" for c, v in r["class_iou"].items()]
    lines.append(f"\n  total time {r['seconds']:.0f} s")
    return "\n".join(lines)
