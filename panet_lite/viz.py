"""Figures for the course: one colour per episode label, used the same way in every chapter."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from .data import IGNORE
from .data import IMAGENET_MEAN, IMAGENET_STD

BACKGROUND_COLOR = "#9e9e9e"  # episode label 0
WAY_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4")  # ways 1..5
IGNORE_COLOR = "#ffffff"  # 255 borders


def label_colors(n_ways: int) -> list[str]:
    """[background, way 1, ..., way N] colours."""
    if n_ways > len(WAY_COLORS):
        raise ValueError(f"at most {len(WAY_COLORS)} ways have colours, got {n_ways}")
    return [BACKGROUND_COLOR, *WAY_COLORS[:n_ways]]


def to_image(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image, uint8 or ImageNet-normalised float, as an (H, W, 3) array in [0, 1]."""
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).numpy() / 255
    mean = image.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def label_to_rgb(label: torch.Tensor, n_ways: int) -> np.ndarray:
    """Episode labels (H, W) (0 bg, 1..N ways, 255 ignore) as an (H, W, 3) colour image."""
    from matplotlib.colors import to_rgb

    lut = np.array([to_rgb(c) for c in label_colors(n_ways)])
    lab = label.detach().cpu().numpy()
    out = np.ones((*lab.shape, 3)) * np.array(to_rgb(IGNORE_COLOR))
    valid = lab != IGNORE
    out[valid] = lut[np.clip(lab[valid], 0, n_ways)]
    return out


def overlay(ax, image: torch.Tensor, label: torch.Tensor | None = None, n_ways: int = 1, alpha: float = 0.55,
            title: str | None = None) -> None:
    """Draw an image with its foreground labels tinted in their way colours (background left clear)."""
    ax.imshow(to_image(image))
    if label is not None:
        rgb = label_to_rgb(label, n_ways)
        lab = label.detach().cpu().numpy()
        a = np.where((lab > 0) & (lab != IGNORE), alpha, 0.0)
        ax.imshow(np.dstack([rgb, a]))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def mask_label(fg: torch.Tensor, way: int) -> torch.Tensor:
    """A binary support mask (H, W) as an episode label map for way index `way` (0-based)."""
    return (fg > 0).long() * (way + 1)


def show_episode(item: dict, pred: torch.Tensor | None = None, class_names: Sequence[str] | None = None,
                 size: float = 1.8):
    """One episode (an EpisodeDataset item, unbatched): supports by way, then each query with its
    ground truth and, if given, the prediction (Q, H, W). Returns the figure."""
    N, K = item["support_fg"].shape[:2]
    Q = item["query_images"].shape[0]
    cols = max(K, 2 + (pred is not None))
    fig, axes = plt.subplots(N + Q, cols, figsize=(size * cols, size * (N + Q)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for w in range(N):
        c = int(item["class_ids"][w])
        name = class_names[c - 1] if class_names else f"class {c}"
        for k in range(K):
            overlay(axes[w, k], item["support_images"][w, k], mask_label(item["support_fg"][w, k], w), N,
                    title=f"way {w + 1} ({name}), shot {k + 1}" if k == 0 else f"shot {k + 1}")
    for q in range(Q):
        row = N + q
        overlay(axes[row, 0], item["query_images"][q], title=f"query {q + 1}")
        overlay(axes[row, 1], item["query_images"][q], item["query_labels"][q], N, title="ground truth")
        if pred is not None:
            overlay(axes[row, 2], item["query_images"][q], pred[q], N, title="prediction")
    fig.tight_layout()
    return fig


def legend_handles(n_ways: int, class_names: Sequence[str] | None = None):
    """Patches for a legend: background and each way in its colour."""
    from matplotlib.patches import Patch

    names = ["background"] + [class_names[i] if class_names else f"way {i + 1}" for i in range(n_ways)]
    return [Patch(color=c, label=n) for c, n in zip(label_colors(n_ways), names)]


def label_cmap(n_ways: int) -> ListedColormap:
    """A colormap for imshow of episode labels 0..N (use vmin=0, vmax=N)."""
    return ListedColormap(label_colors(n_ways))


def plot_history(history: Sequence[dict], ax=None, keys: Sequence[str] = ("seg_loss", "align_loss"), label: str = ""):
    """Loss curves from `train`'s history (one point per logging interval)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in keys:
        ax.plot(steps, [h[key] for h in history], label=f"{label}{key.replace('_', ' ')}")
    ax.set_xlabel("training step (episodes)")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return ax


def plot_table(table: dict, folds: Sequence[int] = (0, 1, 2, 3), ax_size: tuple[float, float] = (5.0, 3.4)):
    """Bars of a `reproduce.summarize` table, one panel per shot count: our mIoU per fold and their
    mean (with the std over runs), and the paper's beside them when the table holds it. A synthetic
    pipeline check (no paper numbers) is titled as one. Returns the figure."""
    from .reproduce import PIPELINE_CHECK
    from .sources import REGISTRY

    check = table.get("kind") == PIPELINE_CHECK
    settings = table["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(ax_size[0] * len(settings), ax_size[1]), sharey=True,
                             squeeze=False)
    labels = [str(f) for f in folds] + ["mean"]
    x = np.arange(len(labels))
    for ax, s in zip(axes[0], settings):
        # int() keys: a table read back from table.json has its fold keys as strings.
        miou, std = ({int(f): v for f, v in s[k].items()} for k in ("miou", "miou_std"))
        paper = {int(f): v for f, v in s.get("paper_miou", {}).items()}
        ours = [miou.get(f, np.nan) for f in folds] + [s["mean_miou"]]
        errors = [std.get(f, np.nan) for f in folds] + [np.nan]  # no std for the mean of folds
        has_paper = bool(paper) or s.get("paper_mean") is not None
        width = 0.4 if has_paper else 0.6
        ax.bar(x - width / 2 if has_paper else x, ours, width, yerr=errors, capsize=3, color=WAY_COLORS[0],
               label="ours (± std over runs)")
        if has_paper:
            theirs = [paper.get(f, np.nan) for f in folds] + [s.get("paper_mean") or np.nan]
            ax.bar(x + width / 2, theirs, width, color=BACKGROUND_COLOR, label="paper")
        setting = f"{s['ways']}-way {s['shots']}-shot"
        name = REGISTRY[table["dataset"]].title if table["dataset"] in REGISTRY else table["dataset"]
        ax.set_title(f"{PIPELINE_CHECK}: {setting}" if check else f"{name} {setting}", fontsize=10)
        ax.set_xticks(x, labels)
        ax.set_xlabel("fold")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("mIoU (%)")
    axes[0, 0].set_ylim(0, 1.25 * axes[0, 0].get_ylim()[1])  # room for the legend above the bars
    axes[0, 0].legend(frameon=False, fontsize=8, loc="upper left", ncols=2)
    if check:
        fig.suptitle(f"{PIPELINE_CHECK.capitalize()} (embedded data): not a reproduction, no paper numbers",
                     fontsize=10)
    fig.tight_layout()
    return fig
