"""Figures for the course, in one place: one colour per episode label, used the same way in every
chapter; episodes (`show_episode`, `plot_episode`), legends, loss curves and result tables, and
the widgets' figures (`plot_similarity`, `plot_projection`, `plot_pixel_cosine`, `plot_alignment`,
`plot_model_swap`, `plot_ssp_steps`, `plot_metric`), each drawing the plain data an `explain`
function returns. No widget here: `widgets` shows these figures under its controls."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.patches import Patch

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


# ----------------------------------------------------------------------------- the widgets' figures
# What `explain` computes, drawn; `widgets` shows these figures under its controls.

def _with_supports(item: dict, N: int, k: int, width: float, slots: int, bottom_h: float,
                   names: Sequence[str] | None = None):
    """A figure whose top strip shows the first k supports of each way (at least `slots` thumbnails wide,
    sized to fit `width`); returns (figure, the subfigure below it, `bottom_h` inches high)."""
    n_thumbs = max(N * k, slots)
    top_h = 0.8 * width / n_thumbs + 0.3  # inches: thumbnails fit the width
    fig = plt.figure(figsize=(width, top_h + bottom_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(top_h, bottom_h))
    for j, ax in enumerate(top.subplots(1, n_thumbs, squeeze=False)[0]):
        ax.axis("off")
        if j < N * k:
            w, s = divmod(j, k)
            long = f"way {w + 1} ({names[w]}), shot {s + 1}" if names else f"way {w + 1}, shot {s + 1}"
            support_panel(ax, item["support_images"][w, s], item["support_fg"][w, s], w, N,
                          long if N * k <= (4 if names else 8) else f"w{w + 1} s{s + 1}")
    return fig, bottom


def plot_similarity(maps: dict, item: dict, class_names: Sequence[str] | None = None, query: int = 0,
                    size: float = 1.8):
    """The supports used (top), then for one query: the ground truth and the prediction (left),
    each prototype's cosine map (middle row) and softmax probability at the chosen alpha (bottom
    row), with the ground-truth outlines drawn on every map. Returns the figure."""
    N = maps["prototypes"].shape[0] - 1
    k = maps["shots"]
    names = list(class_names) if class_names else [f"way {w + 1}" for w in range(N)]
    cols = N + 2
    fig, bottom = _with_supports(item, N, k, width=size * cols + 1.0, slots=cols, bottom_h=2.3 * size)
    axes = bottom.subplots(2, cols, squeeze=False)
    label = item["query_labels"][query]
    ground_truth(axes[0, 0], item["query_images"][query], label, N, title="query\nground truth")
    iou = maps["iou"]
    outcome(axes[1, 0], item["query_images"][query], maps["pred"][query], label,
            title="prediction\nIoU " + ", ".join(f"{iou[w + 1]:.2f}" for w in range(N)))
    proto_names = ["background"] + [f"way {w + 1} ({n})" for w, n in enumerate(names)]
    cosine = maps["method"].upsample(maps["cosine"][query:query + 1], tuple(label.shape))[0]  # (1 + N, H, W)
    lo, hi = cosine.min().item(), cosine.max().item()  # one colour scale for all maps of this query
    for j in range(N + 1):
        im_cos = axes[0, j + 1].imshow(cosine[j].numpy(), cmap="magma", vmin=lo, vmax=hi)
        axes[0, j + 1].set_title(f"cosine to\n{proto_names[j]}", fontsize=8)
        im_p = axes[1, j + 1].imshow(maps["probs"][query, j].numpy(), cmap="viridis", vmin=0, vmax=1)
        axes[1, j + 1].set_title(f"P({proto_names[j].split(' (')[0]})\nalpha = {maps['alpha']:.3g}", fontsize=8)
        for row in (0, 1):
            outline(axes[row, j + 1], label, N, linewidth=1.4)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    bottom.colorbar(im_cos, ax=axes[0].tolist(), shrink=0.9, label="cosine")
    bottom.colorbar(im_p, ax=axes[1].tolist(), shrink=0.9, label="probability")
    bottom.legend(handles=outcome_handles(), loc="outside lower left", ncols=3, fontsize=8, frameon=False)
    return fig


def plot_projection(proj: dict, class_names: Sequence[str] | None = None, ax=None, max_points: int = 3000):
    """Pixels as dots coloured by their ground truth, prototypes as stars (each shot's pool as a
    small diamond when there are several shots). Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.6))
    N = proj["prototypes"].shape[0] - 1
    names = ["background"] + (list(class_names) if class_names else [f"way {w + 1}" for w in range(N)])
    colors = [BACKGROUND_COLOR, *WAY_COLORS[:N]]
    points, labels = proj["points"], proj["labels"]
    if len(points) > max_points:  # an even subsample keeps the picture light and deterministic
        idx = torch.linspace(0, len(points) - 1, max_points).long()
        points, labels = points[idx], labels[idx]
    for j in range(N + 1):
        sel = labels == j
        ax.scatter(points[sel, 0], points[sel, 1], s=4, alpha=0.35, color=colors[j], linewidths=0,
                   label=f"{names[j]} pixels")
    if proj["shots"] > 1:
        for w in range(N):
            sp = proj["shot_prototypes"][w]
            ax.scatter(sp[:, 0], sp[:, 1], s=45, marker="D", color=colors[w + 1], edgecolors="black",
                       linewidths=0.6, label=f"{names[w + 1]}: each shot" if w == 0 else None)
    for j in range(N + 1):
        p = proj["prototypes"][j]
        ax.scatter([p[0]], [p[1]], s=260, marker="*", color=colors[j], edgecolors="black", linewidths=1.0,
                   label=f"prototype: {names[j]}", zorder=5)
    ev = proj["explained"]
    space = "unit-length features (cosine view)" if proj["normalize"] else "raw features"
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f}% of variance)")
    ax.set_title(f"query pixels and prototypes, PCA of {space}", fontsize=10)
    legend = ax.legend(fontsize=7, loc="best", framealpha=0.8)
    for handle in legend.legend_handles:  # the pixel dots are tiny and faint: full-size, opaque swatches
        if handle.get_label().endswith(" pixels") or getattr(handle, "get_sizes", lambda: [99])()[0] < 10:
            handle.set_alpha(1.0)
            handle.set_sizes([36])
    ax.grid(alpha=0.25)
    return ax


def _mark(ax, y: int, x: int) -> None:
    ax.plot([x], [y], marker="+", markersize=16, markeredgewidth=4, color="white")
    ax.plot([x], [y], marker="+", markersize=14, markeredgewidth=1.8, color="black")


def _bars(ax, values, colors, names, highlight: int, ylabel: str, fmt: str, lim=None) -> None:
    """One bar per label, the highlighted one edged in black, each with its value written on it."""
    bars = ax.bar(range(len(values)), values, color=colors, edgecolor="black",
                  linewidth=[2.2 if j == highlight else 0 for j in range(len(values))])
    ax.bar_label(bars, labels=[format(v, fmt) for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(values)), names, fontsize=8, rotation=20 if len(values) > 3 else 0)
    ax.set_ylabel(ylabel, fontsize=9)
    if lim is not None:
        ax.set_ylim(*lim)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)


def plot_pixel_cosine(maps: dict, item: dict, pixel: dict, class_names: Sequence[str] | None = None,
                      size: float = 2.6):
    """One query pixel: where it is (the ground truth outlined), what was predicted, its cosine to
    every prototype and the softmax probabilities at alpha. Returns the figure."""
    N = maps["prototypes"].shape[0] - 1
    names = ["background"] + (list(class_names) if class_names else [f"way {w + 1}" for w in range(N)])
    colors = [BACKGROUND_COLOR, *WAY_COLORS[:N]]
    q, y, x = pixel["query"], pixel["y"], pixel["x"]
    fig, axes = plt.subplots(1, 4, figsize=(4 * size + 0.6, size + 0.6), width_ratios=(1, 1, 1.25, 1.25),
                             layout="constrained")
    label = item["query_labels"][q]
    truth = "ignored (255)" if pixel["label"] == IGNORE else names[pixel["label"]]
    ground_truth(axes[0], item["query_images"][q], label, N, title=f"pixel (y {y}, x {x})\nground truth: {truth}")
    right = "right" if pixel["pred"] == pixel["label"] else ("not scored" if pixel["label"] == IGNORE else "wrong")
    outcome(axes[1], item["query_images"][q], maps["pred"][q], label,
            title=f"prediction: {names[pixel['pred']]}\n({right})")
    for ax in axes[:2]:
        _mark(ax, y, x)
    _bars(axes[2], pixel["cosine"].tolist(), colors, names, pixel["pred"], "cosine to the prototype", ".3f")
    axes[2].set_title("cosine: the largest wins", fontsize=9)
    _bars(axes[3], pixel["probs"].tolist(), colors, names, pixel["pred"], "probability", ".2f", lim=(0, 1.15))
    axes[3].set_title(f"softmax of alpha x cosine, alpha = {maps['alpha']:.3g}", fontsize=9)
    # An object of a class outside the episode is background (0) in the episode's labels: a way predicted
    # on it is a false positive, as on any background pixel.
    fig.legend(handles=outcome_handles(detailed=True), loc="outside lower center", ncols=3, fontsize=8,
               frameon=False)
    return fig


def plot_alignment(steps: dict, item: dict, way: int = 0, summary: str | None = None, size: float = 2.0):
    """Top: each query's ground truth and its prediction at feature resolution (the regions the query
    prototypes average). Below, one row per shot of way `way` (0-based): the support and its mask,
    the PAR target (white: ignored), the re-segmentation by [query bg, query way] and the foreground
    probability, titled with the shot's loss term. `summary`, the figure's title, is the loss as a
    sum of its terms (`explain.alignment_summary(steps, class_names)`; none if None). Returns the figure."""
    N, K = steps["terms"].shape
    Q = steps["query_pred"].shape[0]
    cols = max(4, 2 * Q)
    fig, axes = plt.subplots(1 + K, cols, figsize=(size * cols, size * (1 + K) + 0.18 * (N + 1) + 0.3),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    h, w_ = steps["query_pred"].shape[-2:]
    for q in range(Q):
        ground_truth(axes[0, 2 * q], item["query_images"][q], item["query_labels"][q], N,
                     title=f"query {q + 1}: ground truth")
        axes[0, 2 * q + 1].imshow(label_to_rgb(steps["query_pred"][q], N), interpolation="nearest")
        axes[0, 2 * q + 1].set_title(f"its prediction at {h}x{w_}", fontsize=9)
    skipped = not bool(steps["present"][way])
    for k in range(K):
        row = axes[1 + k]
        image, fg = item["support_images"][way, k], item["support_fg"][way, k]
        support_panel(row[0], image, fg, way, N, f"support: way {way + 1}, shot {k + 1}")
        target = steps["target"][way, k].clone()
        target[target == 1] = way + 1
        row[1].imshow(label_to_rgb(target, N), interpolation="nearest")
        row[1].set_title("target (white: ignored)", fontsize=9)
        logits = steps["logits"][way, k]
        overlay(row[2], image, logits.argmax(dim=0) * (way + 1), N,
                title="zero prototype: no way" if skipped else "re-segmented by the query")
        row[3].imshow(logits.softmax(dim=0)[1].numpy(), cmap="magma", vmin=0, vmax=1)
        term = steps["terms"][way, k].item()
        row[3].set_title("skipped: adds 0" if skipped else f"P(fg); CE {term:.3f} / {N * K}", fontsize=9)
        for ax in row[:4]:
            ax.axis("on")
    if summary is not None:
        fig.suptitle(summary, fontsize=9, family="monospace")
    return fig


def plot_model_swap(state: dict, item: dict, class_names: Sequence[str] | None = None, size: float = 2.4):
    """The supports (top); the query's ground truth, the chosen model's prediction scored pixel by
    pixel, and every model's IoU on this episode, the chosen one edged in black. Returns the figure."""
    maps = state["maps"][state["model"]]
    N, k = maps["prototypes"].shape[0] - 1, maps["shots"]
    names = list(class_names) if class_names else [f"way {w + 1}" for w in range(N)]
    fig, bottom = _with_supports(item, N, k, width=3 * size + 2.4, slots=4, bottom_h=size + 0.9, names=names)
    axes = bottom.subplots(1, 3, width_ratios=(1, 1, 1.6))
    label = item["query_labels"][0]
    ground_truth(axes[0], item["query_images"][0], label, N, title="query: ground truth")
    iou = maps["iou"]
    outcome(axes[1], item["query_images"][0], maps["pred"][0], label,
            title=f"{state['model']}\nIoU " + ", ".join(f"{iou[w + 1]:.2f}" for w in range(N)))
    models = list(state["maps"])
    values = [state["maps"][m]["miou"] for m in models]
    chosen = models.index(state["model"])
    bars = axes[2].barh(range(len(models)), values, color=[WAY_COLORS[2] if i == chosen else BACKGROUND_COLOR
                                                           for i in range(len(models))],
                        edgecolor="black", linewidth=[2 if i == chosen else 0 for i in range(len(models))])
    axes[2].bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    axes[2].set_yticks(range(len(models)), models, fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1.15)
    axes[2].set_xlabel("IoU on this episode" if N == 1 else f"mean IoU of the {N} ways", fontsize=9)
    axes[2].grid(axis="x", alpha=0.3)
    bottom.legend(handles=outcome_handles(), loc="outside lower left", ncols=3, fontsize=8, frameon=False)
    return fig


def plot_ssp_steps(steps: dict, item: dict, class_name: str | None = None, query: int = 0, size: float = 2.2):
    """SSP step by step. Top: the support, the query's ground truth, and P(foreground) after each
    matching. Bottom: the confident query pixels that become the self-support prototypes, how well
    each pixel's adaptive background prototype fits it, and each matching's prediction scored
    pixel by pixel, with its IoU. Returns the figure."""
    stages = steps["stages"]
    cols = 2 + len(stages)
    fig, axes = plt.subplots(2, cols, figsize=(size * cols + 0.9, 2 * size + 0.9), squeeze=False,
                             layout="constrained")
    image, label = item["query_images"][query], item["query_labels"][query]
    name = f" ({class_name})" if class_name else ""
    k = steps["shots"]
    support_panel(axes[0, 0], item["support_images"][0, 0], item["support_fg"][0, 0], 0, 1,
                  f"support{name}" + (f", shot 1 of {k}" if k > 1 else ""))
    ground_truth(axes[0, 1], image, label, 1, title="query: ground truth")
    titles = {"support": "1. support prototypes", "self-support": "2. with self-support",
              "refined": "3. refined: 0.7 x 3rd + 0.3 x 2nd"}
    for j, stage in enumerate(stages):
        im = axes[0, 2 + j].imshow(steps["probs"][stage].numpy(), cmap="viridis", vmin=0, vmax=1)
        axes[0, 2 + j].set_title(f"P(foreground)\n{titles[stage]}", fontsize=9)
        outline(axes[0, 2 + j], label, 1, linewidth=1.4)
        outcome(axes[1, 2 + j], image, steps["preds"][stage], label, title=f"{titles[stage]}\nIoU {steps['iou'][stage]:.2f}")
    H, W = label.shape
    chosen = torch.full(steps["fg_mask"].shape, IGNORE, dtype=torch.long)
    chosen[steps["bg_mask"]] = 0
    chosen[steps["fg_mask"]] = 1
    chosen = F.interpolate(chosen[None, None].float(), size=(H, W), mode="nearest")[0, 0].long()
    n_fg, n_bg = int(steps["fg_mask"].sum()), int(steps["bg_mask"].sum())
    overlay(axes[1, 0], image, title=f"confident after 1: {n_fg} fg, {n_bg} bg\nof {steps['fg_mask'].numel()} "
                                     f"feature pixels")
    rgba = label_to_rgb(chosen, 1)
    axes[1, 0].imshow(np.dstack([rgba, np.where(chosen == IGNORE, 0.0, 0.6)]), interpolation="nearest")
    fit = F.interpolate(steps["bg_fit"][None, None], size=(H, W), mode="bilinear", align_corners=True)[0, 0]
    im_fit = axes[1, 1].imshow(fit.numpy(), cmap="magma", vmin=-1, vmax=1)
    axes[1, 1].set_title("cos to each pixel's\nadaptive bg prototype", fontsize=9)
    outline(axes[1, 1], label, 1, linewidth=1.4)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0, -1], shrink=0.85, label="P(foreground)")
    fig.colorbar(im_fit, ax=axes[1, 1], shrink=0.8, location="bottom", label="cosine")
    handles = [Patch(color=WAY_COLORS[0], label="confident foreground"),
               Patch(color=BACKGROUND_COLOR, label="confident background"), *outcome_handles()]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    return fig


def plot_metric(state: dict, class_names: Sequence[str]):
    """Left: both averages against the number of episodes, for the chosen meter (the other meter's
    accumulated mIoU faint), a line at n. Right: each class's IoU after n episodes, both ways.
    Returns the figure."""
    n, meter = state["episodes"], state["meter"]
    other_meter = next(m for m in state["curves"] if m != meter)
    curves, other = state["curves"][meter], state["curves"][other_meter]
    E = len(curves["accumulated"])
    x = torch.arange(1, E + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), width_ratios=(1.3, 1), layout="constrained")
    ax = axes[0]
    ax.plot(x, 100 * curves["accumulated"], color=WAY_COLORS[1], linewidth=2, label="accumulated (PANet's mIoU)")
    ax.plot(x, 100 * curves["per_episode"], color=WAY_COLORS[0], linewidth=2, linestyle="--",
            label="mean of per-episode IoUs")
    ax.plot(x, 100 * other["accumulated"], color=WAY_COLORS[1], linewidth=1, alpha=0.35,
            label=f"accumulated, {other_meter} meter")
    ax.axvline(n, color="black", linewidth=0.8)
    ax.set_xlabel("episodes")
    ax.set_ylabel("mIoU over the fold's classes")
    ax.set_title(f"{state['ways']}-way {state['shots']}-shot, {meter} meter", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.grid(alpha=0.3)
    ax = axes[1]
    c = torch.arange(len(class_names))
    acc, per = curves["accumulated_class"][n - 1], curves["per_episode_class"][n - 1]
    ax.bar(c - 0.2, 100 * acc.nan_to_num(), width=0.4, color=WAY_COLORS[1], label="accumulated")
    ax.bar(c + 0.2, 100 * per.nan_to_num(), width=0.4, color=WAY_COLORS[0], label="per-episode mean")
    for i in range(len(class_names)):
        if acc[i].isnan():
            ax.text(i, 2, "no episode\nyet", ha="center", fontsize=7)
    ax.set_xticks(c.tolist(), class_names, fontsize=8, rotation=20)
    ax.set_ylim(0, 100)
    ax.set_ylabel("class IoU")
    ax.set_title(f"after {n} episodes: mIoU {100 * curves['accumulated'][n - 1]:.1f} accumulated, "
                 f"{100 * curves['per_episode'][n - 1]:.1f} per episode", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig
