"""Figures for the course, in one place: one colour per episode label, used the same way in every
chapter; episodes (`show_episode`, `plot_episode`), legends, loss curves and result tables."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap, to_rgb

from .data import IGNORE, IMAGENET_MEAN, IMAGENET_STD

BACKGROUND_COLOR = "#9e9e9e"  # episode label 0
WAY_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4")  # ways 1..5
IGNORE_COLOR = "#ffffff"  # 255 borders
OTHER_CLASS_COLOR = "#3a3a3a"  # a class that is in the image but not in the episode (labels as stored)
# A prediction scored against the ground truth (Okabe-Ito colours, distinguishable with colour-blindness).
OUTCOME_COLORS = {"true positive": "#009e73", "false positive": "#d55e00", "false negative": "#56b4e9"}


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


def outline(ax, label: torch.Tensor, n_ways: int, linewidth: float = 1.6) -> None:
    """Outline each way's region of an episode label map in its colour, on a white halo (visible on
    any image or map)."""
    from matplotlib import patheffects

    lab = label.detach().cpu().numpy()
    for w in range(n_ways):
        region = (lab == w + 1).astype(float)
        if region.any():
            lines = ax.contour(region, levels=[0.5], colors=[WAY_COLORS[w]], linewidths=linewidth)
            lines.set_path_effects([patheffects.withStroke(linewidth=linewidth + 1.8, foreground="white")])


def ground_truth(ax, image: torch.Tensor, label: torch.Tensor, n_ways: int = 1, title: str | None = None) -> None:
    """An image with its ground truth drawn as outlines, one per way in the way's colour, instead of a
    fill that hides the object's texture."""
    overlay(ax, image, title=title)
    outline(ax, label, n_ways, linewidth=1.8)


def outcome(ax, image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, title: str | None = None,
            alpha: float = 0.65) -> None:
    """A prediction scored pixel by pixel against the episode ground truth: true positives (the right
    way), false positives (a way where there is another way or background) and false negatives
    (an object pixel predicted background), each in its colour; 255 pixels are left clear."""
    p, t = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    valid = t != IGNORE
    masks = {"true positive": valid & (t > 0) & (p == t), "false positive": valid & (p > 0) & (p != t),
             "false negative": valid & (t > 0) & (p == 0)}
    rgba = np.zeros((*t.shape, 4))
    for name, mask in masks.items():
        rgba[mask] = (*to_rgb(OUTCOME_COLORS[name]), alpha)
    overlay(ax, image, title=title)
    ax.imshow(rgba, interpolation="nearest")


OUTCOME_MEANINGS = {"true positive": "the right way", "false positive": "a way on background or another way",
                    "false negative": "an object predicted background"}


def outcome_handles(detailed: bool = False):
    """Legend patches for `outcome`; `detailed` adds what each colour means (background includes the
    objects of classes outside the episode, which the episode's labels count as 0)."""
    from matplotlib.patches import Patch

    return [Patch(color=c, label=f"{n}: {OUTCOME_MEANINGS[n]}" if detailed else n) for n, c in OUTCOME_COLORS.items()]


def mask_label(fg: torch.Tensor, way: int) -> torch.Tensor:
    """A binary support mask (H, W) as an episode label map for way index `way` (0-based)."""
    return (fg > 0).long() * (way + 1)


def show_episode(item: dict, pred: torch.Tensor | None = None, class_names: Sequence[str] | None = None,
                 size: float = 1.8):
    """One episode (an EpisodeDataset item, unbatched): supports by way, then each query with its
    ground truth (outlined) and, if given, the prediction (Q, H, W) scored pixel by pixel (true and
    false positives, false negatives). Returns the figure."""
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
            support_panel(axes[w, k], item["support_images"][w, k], item["support_fg"][w, k], w, N,
                          f"way {w + 1} ({name}), shot {k + 1}" if k == 0 else f"shot {k + 1}")
    for q in range(Q):
        row = N + q
        overlay(axes[row, 0], item["query_images"][q], title=f"query {q + 1}")
        ground_truth(axes[row, 1], item["query_images"][q], item["query_labels"][q], N, title="ground truth")
        if pred is not None:
            outcome(axes[row, 2], item["query_images"][q], pred[q], item["query_labels"][q], title="prediction")
    if pred is not None:
        fig.legend(handles=outcome_handles(), loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    return fig


def stored_label_rgb(label: torch.Tensor, class_ids: Sequence[int]) -> np.ndarray:
    """A label map with global ids (H, W) as colours: the episode's classes in their way colours,
    any other class dark grey, background grey, 255 white."""
    colors = {0: BACKGROUND_COLOR, IGNORE: IGNORE_COLOR} | {c: WAY_COLORS[w] for w, c in enumerate(class_ids)}
    lab = label.numpy()
    out = np.empty((*lab.shape, 3))
    out[:] = to_rgb(OTHER_CLASS_COLOR)
    for value, color in colors.items():
        out[lab == value] = to_rgb(color)
    return out


def support_panel(ax, image: torch.Tensor, fg: torch.Tensor, way: int, n_ways: int, title: str) -> None:
    """A support image with its mask lightly tinted and outlined in the way's colour."""
    overlay(ax, image, mask_label(fg, way), n_ways, alpha=0.3, title=title)
    if fg.any():
        ax.contour(fg.numpy(), levels=[0.5], colors=[WAY_COLORS[way]], linewidths=1.2)


def support_annotation(ax, image: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, way: int = 0,
                       title: str | None = None) -> None:
    """What a support's annotation says: foreground tinted in the way's colour, background left as it
    is, pixels that are neither (unlabelled) faded to white."""
    ax.imshow(to_image(image))
    fg, bg = fg.detach().cpu().numpy() > 0, bg.detach().cpu().numpy() > 0
    tint = np.zeros(fg.shape + (4,))
    tint[fg] = (*to_rgb(WAY_COLORS[way]), 0.6)
    tint[~fg & ~bg] = (1.0, 1.0, 1.0, 0.65)
    ax.imshow(tint, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_support_kinds(items: dict[str, Sequence[dict]], size: float = 1.9):
    """One row per episode, one column per support kind: its first support as `support_annotation`
    draws it. `items` maps a kind ("dense", "bbox", "scribble") to the same episodes' items."""
    kinds = list(items)
    rows = len(items[kinds[0]])
    fig, axes = plt.subplots(rows, len(kinds), figsize=(size * len(kinds), size * rows), squeeze=False)
    for r in range(rows):
        for c, kind in enumerate(kinds):
            item = items[kind][r]
            fg, bg = item["support_fg"][0, 0], item["support_bg"][0, 0]
            share = f"fg {100 * fg.mean():.1f}%, bg {100 * bg.mean():.1f}%"
            support_annotation(axes[r, c], item["support_images"][0, 0], fg, bg,
                               title=f"{kind}\n{share}" if r == 0 else share)
    fig.tight_layout()
    return fig


def plot_episode(state: dict, size: float = 1.7):
    """Supports with their masks (one row per way), then each query: its image, its labels as
    stored and its episode-local ground truth. Returns the figure."""
    item, names = state["item"], state["class_names"]
    N, K = item["support_fg"].shape[:2]
    Q = item["query_images"].shape[0]
    cols = max(K, 3)
    fig, axes = plt.subplots(N + Q, cols, figsize=(max(size * cols, 5.4), size * (N + Q)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for w in range(N):
        for k in range(K):
            title = f"way {w + 1}: {names[w]}\nshot {k + 1}" if k == 0 else f"\nshot {k + 1}"
            support_panel(axes[w, k], item["support_images"][w, k], item["support_fg"][w, k], w, N, title)
    for q in range(Q):
        row = axes[N + q]
        overlay(row[0], item["query_images"][q], title=f"query {q + 1}\n{state['query_ids'][q]}")
        row[1].imshow(stored_label_rgb(state["query_labels_stored"][q], state["class_ids"]), interpolation="nearest")
        row[1].set_title("labels as stored\n(global class ids)", fontsize=9)
        row[2].imshow(label_to_rgb(item["query_labels"][q], N), interpolation="nearest")
        row[2].set_title("episode ground truth\n(0 background, w for way w)", fontsize=9)
    handles = legend_handles(N, names, stored=True)
    legend_h = 0.22 * math.ceil(len(handles) / 2) + 0.15  # inches kept free under the panels
    fig.set_figheight(size * (N + Q) + legend_h + 0.35)
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    split = "held-out" if state["split"] == "test" else "training"
    fig.suptitle(f"fold {state['fold']} ({split} classes): {N}-way {K}-shot, seed {state['seed']}, "
                 f"episode {state['index']}", fontsize=10)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    return fig


def legend_handles(n_ways: int, class_names: Sequence[str] | None = None, stored: bool = False):
    """Patches for a legend: background and each way in its colour. `stored` is the legend of labels
    as stored (global ids): ways numbered, plus the other classes and the 255 borders."""
    from matplotlib.patches import Patch

    if not stored:
        names = ["background"] + [class_names[i] if class_names else f"way {i + 1}" for i in range(n_ways)]
        return [Patch(color=c, label=n) for c, n in zip(label_colors(n_ways), names)]
    handles = [Patch(color=BACKGROUND_COLOR, label="background (0)")]
    handles += [Patch(color=WAY_COLORS[w], label=f"way {w + 1}: {class_names[w] if class_names else w + 1}")
                for w in range(n_ways)]
    handles.append(Patch(color=OTHER_CLASS_COLOR, label="another class (becomes 0)"))
    handles.append(Patch(facecolor=IGNORE_COLOR, edgecolor="0.5", label="border (255, ignored)"))
    return handles


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
    ax.set_xlabel("training step (one batch of episodes each)")
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
            ax.bar(x + width / 2, theirs, width, color=BACKGROUND_COLOR,
                   label="paper" if s.get("paper_in_paper", True) else "published (not the paper's)")
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
