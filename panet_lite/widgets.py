"""Interactive views for the chapters: thin ipywidgets layers over plain functions that tests call.

Every view follows one pattern. A plain function computes plain data from an episode
(`episode_state`, `similarity_maps`, `project_features`); another draws that data as a
matplotlib figure (`viz.plot_episode`, and here `plot_similarity`, `plot_projection`). The widget classes
only wire controls to them: changing a control calls `compute()`, which stores the result in
`.state`, then `render()`, which draws `.figure()` into `.output`. Show a view with
`display(view)` (or just `view` as a cell's last line); call `view.figure()` for the same
picture as a static figure, e.g. for a notebook read on GitHub, where widgets do not render.

The episodes come from `EpisodeDataset`, i.e. from PANet's sampler: episode `index` of the
stream `seed` is the one the sampler draws after episodes 0..index-1. Which images it holds
depends on the ways and shots it is drawn with, so a view draws with `max_shots` shots (the shots
slider uses the first k) and its title names the draw: "1-way 5-shot episode 0, seed 1234" is
episode 0 of `evaluate`'s first run with 1 way, 5 shots and test seed 1234, not its 1-shot episode 0.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.patches import Patch
from torch.utils.data import DataLoader

from .alignment import alignment_loss, alignment_terms
from .data import IGNORE, SegmentationSource, fold_classes, train_classes
from .episodes import EpisodeDataset, resize_pair
from .evaluate import class_argmax, predict
from .matching import ALPHA, prototype_scores, upsample_scores
from .metrics import IoUMeter
from .model import PANet
from .pooling import downsampled_mask_pool, episode_prototypes, masked_average_pool
from .ssp import SSP_SCALE, ssp_match
# The figures live in viz, the plotting home; plot_episode is re-exported for the widget's users.
from .viz import (BACKGROUND_COLOR, WAY_COLORS, ground_truth, label_to_rgb, outcome, outcome_handles,  # noqa: F401
                  outline, overlay, plot_episode, support_panel)

MAX_WAYS = len(WAY_COLORS)
MAX_SHOTS = 5


# ----------------------------------------------------------------------------- episodes

def split_classes(fold: int, split: str = "test", n_classes: int = 20) -> list[int]:
    """The global class ids episodes are drawn from: the fold's held-out classes ("test") or the others ("train")."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    return fold_classes(fold, n_classes) if split == "test" else train_classes(fold, n_classes)


def load_episode(source: SegmentationSource, classes: Sequence[int], ways: int = 1, shots: int = 1,
                 seed: int = 1234, index: int = 0, queries: int = 1, size: int | None = None):
    """Episode `index` of the sampler's stream `seed`, as (Episode of image ids, EpisodeDataset item).

    The item holds support_images (N, K, 3, H, W), support_fg/support_bg (N, K, H, W),
    query_images (Q, 3, H, W), query_labels (Q, H, W) and class_ids (N,), unbatched.
    """
    dataset = EpisodeDataset(source, classes, index + 1, ways, shots, queries, seed=seed, size=size)
    return dataset.episodes[index], dataset[index]


def episode_title(seed: int, index: int, ways: int, drawn_shots: int, shots: int | None = None,
                  queries: int = 1) -> str:
    """The name of episode `index` of the sampler's stream `seed` drawn with `ways` ways and `drawn_shots`
    shots: the episode that `evaluate`'s first run draws at that index with that test seed, ways,
    shots and queries. When a view uses only the first `shots` of them, the title says so."""
    title = f"{ways}-way {drawn_shots}-shot episode {index}, seed {seed}"
    if queries != 1:
        title += f", {queries} queries"
    if shots is not None and shots < drawn_shots:
        title += f" (first {shots} of its {drawn_shots} shots used)"
    return title


def episode_state(source: SegmentationSource, fold: int = 0, split: str = "test", ways: int = 1, shots: int = 1,
                  seed: int = 1234, index: int = 0, queries: int = 1, size: int | None = None) -> dict:
    """Everything the episode browser shows, as plain data.

    Returns a dict: classes (the split's global ids), class_ids (N,) and class_names of the
    ways, support_ids (N x K image ids), query_ids (Q,), item (the episode's tensors) and
    query_labels_stored (Q, H, W): the queries' labels as the dataset stores them (global ids),
    to compare with item["query_labels"], the episode-local ground truth.
    """
    classes = split_classes(fold, split, source.num_classes)
    episode, item = load_episode(source, classes, ways, shots, seed, index, queries, size)
    class_ids = item["class_ids"].tolist()
    stored = torch.stack([resize_pair(*source.load(i), size)[1] for i in episode.query])
    return {
        "fold": fold, "split": split, "ways": ways, "shots": shots, "seed": seed, "index": index,
        "classes": classes, "class_ids": class_ids,
        "class_names": [source.class_names[c - 1] for c in class_ids],
        "support_ids": episode.support, "query_ids": episode.query,
        "item": item, "query_labels_stored": stored,
    }


# ----------------------------------------------------------------------------- similarity maps

@torch.no_grad()
def encode_episode(model: PANet, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of an episode item: supports (N, K, C, h, w) and queries (Q, C, h, w), model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    s, q = model.encode(item["support_images"][None].to(device), item["query_images"][None].to(device))
    return s[0].cpu(), q[0].cpu()


def episode_iou(pred: torch.Tensor, target: torch.Tensor, n_ways: int) -> torch.Tensor:
    """IoU of each episode-local label [bg, way 1, ..., way N] over one episode's queries (Q, H, W).

    panet_lite's IoUMeter with the corrected counting (a way predicted but absent scores 0);
    NaN for a label neither predicted nor present.
    """
    meter = IoUMeter(n_ways, count_absent_fp=True)
    meter.update(pred, target, list(range(1, n_ways + 1)))
    return meter.class_iou()


@torch.no_grad()
def similarity_maps(model: PANet, item: dict, alpha: float = ALPHA, shots: int | None = None,
                    features: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """PANet's matching step for one episode, every intermediate kept.

    Uses the first `shots` supports of each way (all of them by default), so one episode drawn
    with 5 shots shows 1..5-shot prototypes for the same query. `features` are the episode's
    (support, query) features from `encode_episode`, to skip the encoder. Returns a dict:
      shot_fg, shot_bg (N, k, C)   masked average pool of each support (fg and bg masks)
      prototypes (1 + N, C)        [bg, way 1, ..., way N], as in `episode_prototypes`
      cosine (Q, 1 + N, h, w)      cos(F_q(x), p_j) at feature resolution
      scores (Q, 1 + N, h, w)      alpha * cosine: PANet's scores
      logits (Q, 1 + N, H, W)      scores upsampled to the image (bilinear)
      probs (Q, 1 + N, H, W)       softmax over j of the logits
      pred (Q, H, W)               argmax of the logits; alpha > 0 never changes it
      iou (1 + N,)                 episode_iou of pred against the query labels
      miou                         mean of the ways' IoUs (those that are defined)
    """
    support_feats, query_feats = features if features is not None else encode_episode(model, item)
    K = support_feats.shape[1]
    shots = K if shots is None else shots
    if not 1 <= shots <= K:
        raise ValueError(f"shots must be in 1..{K} for this episode, got {shots}")
    feats = support_feats[:, :shots]
    fg, bg = item["support_fg"][:, :shots], item["support_bg"][:, :shots]
    prototypes = episode_prototypes(feats[None], fg[None], bg[None])[0]  # (1 + N, C)
    cosine = prototype_scores(query_feats[None], prototypes[None], alpha=1.0)[0]  # (Q, 1 + N, h, w)
    scores = alpha * cosine
    logits = upsample_scores(scores, tuple(item["query_labels"].shape[-2:]))
    pred = class_argmax(logits, dim=1)
    N = prototypes.shape[0] - 1
    iou = episode_iou(pred, item["query_labels"], N)
    return {
        "alpha": alpha, "shots": shots,
        "shot_fg": masked_average_pool(feats, fg), "shot_bg": masked_average_pool(feats, bg),
        "prototypes": prototypes, "cosine": cosine, "scores": scores, "logits": logits,
        "probs": logits.softmax(dim=1), "pred": pred, "iou": iou,
        "miou": iou[1:].nanmean().item(),
    }


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
    cosine = upsample_scores(maps["cosine"][query:query + 1], tuple(label.shape))[0]  # (1 + N, H, W)
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


# ----------------------------------------------------------------------------- prototype projection

def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean (C,), the first two principal directions (C, 2) and their explained variance ratios (2,)
    of `points` (P, C), by SVD; each direction's sign makes its largest coordinate positive (deterministic)."""
    mean = points.mean(dim=0)
    _, s, vh = torch.linalg.svd(points - mean, full_matrices=False)
    basis = vh[:2].T  # (C, 2)
    flip = basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)).sign()
    return mean, basis * flip, (s[:2] ** 2) / (s ** 2).sum()


@torch.no_grad()
def project_features(model: PANet, item: dict, shots: int | None = None, normalize: bool = True,
                     features: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Query pixel features and the episode's prototypes in one 2-D PCA plane.

    Query features are upsampled to the image (as masked average pooling does for supports);
    every pixel not labelled 255 becomes a point. With `normalize` every vector is scaled to unit
    length first, the geometry cosine matching sees. The PCA is fitted on the pixels only.
    Returns points (P, 2), labels (P,) episode-local, prototypes (1 + N, 2),
    shot_prototypes (N, k, 2) (each shot's fg pool), explained (2,) and the basis (C, 2).
    """
    maps = similarity_maps(model, item, shots=shots, features=features)
    _, query_feats = features if features is not None else encode_episode(model, item)
    H, W = item["query_labels"].shape[-2:]
    up = F.interpolate(query_feats, size=(H, W), mode="bilinear", align_corners=False)  # (Q, C, H, W)
    pixels = up.permute(0, 2, 3, 1).reshape(-1, up.shape[1])  # (Q*H*W, C)
    labels = item["query_labels"].reshape(-1)
    keep = labels != IGNORE
    pixels, labels = pixels[keep], labels[keep]
    protos, shot_fg = maps["prototypes"], maps["shot_fg"]
    if normalize:
        pixels, protos, shot_fg = (F.normalize(t, dim=-1) for t in (pixels, protos, shot_fg))
    mean, basis, explained = pca_2d(pixels)
    return {
        "points": (pixels - mean) @ basis, "labels": labels, "prototypes": (protos - mean) @ basis,
        "shot_prototypes": (shot_fg - mean) @ basis, "explained": explained, "basis": basis,
        "normalize": normalize, "shots": maps["shots"],
    }


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


# ----------------------------------------------------------------------------- widgets

def _slider(cls, description: str, value, lo, hi, step=1, **kw):
    return cls(value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
               style={"description_width": "initial"}, layout=widgets.Layout(width="230px"), **kw)


class _View:
    """Shared plumbing: controls -> compute() -> .state -> figure() -> .output.

    The figure is drawn once the view is shown (`display(view)` or `view.ui`) and redrawn on
    every change after that; `.state` is recomputed on every change either way.
    """

    controls: list

    def _start(self, controls: list) -> None:
        self.controls = controls
        self.output = widgets.Output()
        self._ui = widgets.VBox([widgets.HBox(controls, layout=widgets.Layout(flex_flow="row wrap")), self.output])
        self._shown = False
        for control in controls:
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def ui(self) -> widgets.VBox:
        """The controls above the figure, as one widget to display."""
        if not self._shown:
            self._shown = True
            self.render()
        return self._ui

    def _on_change(self, change=None) -> None:
        if not getattr(self, "_busy", False):  # a control that compute() itself adjusts changes nothing twice
            self.update()

    def update(self) -> dict:
        """Recompute from the controls' values (and redraw if shown); returns the new state."""
        self._busy = True
        try:
            self.compute()
        finally:
            self._busy = False
        if self._shown:
            self.render()
        return self.state

    def compute(self) -> dict:
        raise NotImplementedError

    def figure(self):
        raise NotImplementedError

    def render(self) -> None:
        """Draw `figure()` of the current state into `.output`, as one PNG.

        The PNG is set as the Output's content directly rather than displayed inside `with
        self.output:`, whose capture (message-id switching and clear_output) once left nbconvert
        waiting for a reply until its cell timeout when a widget was displayed.
        """
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
        plt.close(fig)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": repr(fig)}},)

    def _ipython_display_(self) -> None:
        display(self.ui)


class EpisodeBrowser(_View):
    """Browse PANet episodes: fold, held-out or training classes, ways, shots, seed and episode index.

    `state` is `episode_state(...)` of the current controls (episode ids, class ids and names,
    the episode's tensors and the queries' stored labels).
    """

    def __init__(self, source: SegmentationSource, fold: int = 0, split: str = "test", ways: int = 1,
                 shots: int = 1, seed: int = 1234, index: int = 0, queries: int = 1, size: int | None = None) -> None:
        self.source, self.queries, self.size = source, queries, size
        self.fold = _slider(widgets.IntSlider, "fold", fold, 0, 3)
        self.split = widgets.ToggleButtons(options=[("held-out classes", "test"), ("training classes", "train")],
                                           value=split, style={"button_width": "150px"})
        self.ways = _slider(widgets.IntSlider, "ways (N)", ways, 1, MAX_WAYS)
        self.shots = _slider(widgets.IntSlider, "shots (K)", shots, 1, MAX_SHOTS)
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.index = _slider(widgets.IntSlider, "episode", index, 0, 99)
        self._start([self.fold, self.split, self.ways, self.shots, self.seed, self.index])

    def compute(self) -> dict:
        self.state = episode_state(self.source, self.fold.value, self.split.value, self.ways.value, self.shots.value,
                                   self.seed.value, self.index.value, self.queries, self.size)
        return self.state

    def figure(self):
        return plot_episode(self.state)


class _EncodedEpisodeView(_View):
    """A view of one episode drawn with `max_shots` shots and encoded once: controls for the seed,
    the episode index, the ways and the shots used (the first k, so the query stays while k changes).
    Episodes come from the fold's held-out classes (`split="test"`) or its training classes."""

    def _episode_controls(self, model: PANet, source: SegmentationSource, fold: int, ways: int, shots: int,
                          seed: int, index: int, max_shots: int, size: int | None, split: str = "test",
                          queries: int = 1, max_ways: int = 3) -> list:
        self.model, self.source, self.fold, self.max_shots, self.size = model, source, fold, max_shots, size
        self.classes, self.queries = split_classes(fold, split, source.num_classes), queries
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.index = _slider(widgets.IntSlider, "episode", index, 0, 99)
        self.ways = _slider(widgets.IntSlider, "ways (N)", ways, 1, max_ways)
        self.shots = _slider(widgets.IntSlider, "shots (K)", shots, 1, max_shots)
        self._drawn: tuple | None = None
        self._encoded: dict = {}
        return [self.seed, self.index, self.ways, self.shots]

    def episode(self, model: PANet | None = None):
        """(Episode, item, features) of the current seed / index / ways, drawn once and encoded once
        per model (`self.model` by default)."""
        model = self.model if model is None else model
        key = (self.seed.value, self.index.value, self.ways.value)
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = (key, *load_episode(self.source, self.classes, self.ways.value, self.max_shots,
                                              self.seed.value, self.index.value, self.queries, self.size))
            self._encoded = {}
        if id(model) not in self._encoded:
            self._encoded[id(model)] = encode_episode(model, self._drawn[2])
        return self._drawn[1], self._drawn[2], self._encoded[id(model)]

    def title(self) -> str:
        """`episode_title` of the episode shown: the draw it comes from and the shots used."""
        return episode_title(self.seed.value, self.index.value, self.ways.value, self.max_shots, self.shots.value,
                             self.queries)


class SimilarityMapWidget(_EncodedEpisodeView):
    """PANet's matching, live: pick an episode (seed, index), the number of ways, the number of
    shots and alpha; see every prototype's similarity map over the query, the prediction and its IoU.

    Episodes of the fold's held-out classes are drawn with `max_shots` shots; the shots slider
    uses the first k of them, so the query stays the same while you change k. Features are
    computed once per episode: moving alpha or shots only reruns the matching.
    `state` is `similarity_maps(...)` plus "episode" (image ids) and "class_ids".
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 alpha: float = ALPHA, seed: int = 1234, index: int = 0, max_shots: int = MAX_SHOTS,
                 size: int | None = None) -> None:
        controls = self._episode_controls(model, source, fold, ways, shots, seed, index, max_shots, size)
        self.alpha = _slider(widgets.FloatLogSlider, "alpha", alpha, -1, 2, step=0.05, base=10,
                             readout_format=".3g")
        self._start(controls + [self.alpha])

    def compute(self) -> dict:
        episode, item, features = self.episode()
        self.item = item
        self.state = similarity_maps(self.model, item, self.alpha.value, self.shots.value, features)
        self.state |= {"episode": episode, "class_ids": item["class_ids"].tolist()}
        return self.state

    def figure(self):
        names = [self.source.class_names[c - 1] for c in self.state["class_ids"]]
        fig = plot_similarity(self.state, self.item, names)
        # The IoU of this one episode (episode_iou), as in the prediction panel; with several ways, their mean.
        n_ways = len(self.state["class_ids"])
        what = "IoU" if n_ways == 1 else f"mean IoU of the {n_ways} ways"
        fig.suptitle(f"{self.title()}: {what} {self.state['miou']:.2f}", fontsize=10, y=1.0, va="bottom")
        return fig


class PrototypeProjection(_EncodedEpisodeView):
    """Query pixel features and the prototypes in a 2-D PCA plane, coloured by the ground truth.

    Controls: seed, episode index, ways, shots (first k of a `max_shots` draw, as in
    SimilarityMapWidget) and whether to normalise features to unit length (what cosine sees).
    `state` is `project_features(...)` plus "class_ids".
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 seed: int = 1234, index: int = 0, normalize: bool = True, max_shots: int = MAX_SHOTS,
                 size: int | None = None) -> None:
        controls = self._episode_controls(model, source, fold, ways, shots, seed, index, max_shots, size)
        self.normalize = widgets.Checkbox(value=normalize, description="unit length (cosine view)", indent=False)
        self._start(controls + [self.normalize])

    def compute(self) -> dict:
        _, self.item, features = self.episode()
        self.state = project_features(self.model, self.item, self.shots.value, self.normalize.value, features)
        self.state["class_ids"] = self.item["class_ids"].tolist()
        return self.state

    def figure(self):
        names = [self.source.class_names[c - 1] for c in self.state["class_ids"]]
        fig, ax = plt.subplots(figsize=(5.6, 4.8))
        plot_projection(self.state, names, ax=ax)
        fig.tight_layout()
        return fig


# ----------------------------------------------------------------------------- one query pixel

def pixel_cosine(maps: dict, item: dict, y: int, x: int, query: int = 0) -> dict:
    """What PANet's matching sees at one query pixel (y, x) of `similarity_maps(...)`.

    The cosine maps live at feature resolution; a pixel's values are their bilinear upsampling,
    the same that turns scores into logits (upsampling is linear, so the logit of prototype j at
    the pixel is alpha times its upsampled cosine, and the argmax of either is the prediction).
    Returns cosine, logits and probs (1 + N,) over [bg, way 1, ..., way N], pred (the label
    predicted there) and label (the ground truth there: 0, a way, or 255).
    """
    H, W = item["query_labels"].shape[-2:]
    if not (0 <= y < H and 0 <= x < W):
        raise ValueError(f"pixel (y={y}, x={x}) is outside the {H}x{W} query")
    cosine = upsample_scores(maps["cosine"][query:query + 1], (H, W))[0, :, y, x]
    logits = maps["logits"][query, :, y, x]
    return {"y": y, "x": x, "query": query, "cosine": cosine, "logits": logits, "probs": logits.softmax(dim=0),
            "pred": int(maps["pred"][query, y, x]), "label": int(item["query_labels"][query, y, x])}


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


class PixelCosineWidget(_EncodedEpisodeView):
    """Pick a query pixel with two sliders and see its cosine to every prototype of the episode.

    Episode controls as in SimilarityMapWidget; `state` is `pixel_cosine(...)` of the current
    pixel plus "maps" (the episode's `similarity_maps`) and "class_ids".
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 seed: int = 1234, index: int = 0, y: int | None = None, x: int | None = None,
                 max_shots: int = MAX_SHOTS, size: int | None = None) -> None:
        controls = self._episode_controls(model, source, fold, ways, shots, seed, index, max_shots, size)
        H, W = self.episode()[1]["query_labels"].shape[-2:]
        self.y = _slider(widgets.IntSlider, "pixel y (row)", H // 2 if y is None else y, 0, H - 1)
        self.x = _slider(widgets.IntSlider, "pixel x (column)", W // 2 if x is None else x, 0, W - 1)
        self._start(controls + [self.y, self.x])

    def compute(self) -> dict:
        _, self.item, features = self.episode()
        maps = similarity_maps(self.model, self.item, shots=self.shots.value, features=features)
        self.state = pixel_cosine(maps, self.item, self.y.value, self.x.value)
        self.state |= {"maps": maps, "class_ids": self.item["class_ids"].tolist()}
        return self.state

    def figure(self):
        names = [self.source.class_names[c - 1] for c in self.state["class_ids"]]
        fig = plot_pixel_cosine(self.state["maps"], self.item, self.state, names)
        fig.suptitle(self.title(), fontsize=10)
        return fig


# ----------------------------------------------------------------------------- PAR, step by step

DROPPED_SCORE = -100.0  # below any alpha * cosine (>= -alpha): the way never wins the argmax


@torch.no_grad()
def alignment_steps(item: dict, features: tuple[torch.Tensor, torch.Tensor], shots: int | None = None,
                    drop_ways: Sequence[int] = ()) -> dict:
    """PAR on one episode, every step kept: the forward matching, the query's prediction at feature
    resolution, the query prototypes, each support re-segmented and its loss term.

    `features` are (support, query) features from `encode_episode`; the first `shots` supports of
    each way are used. `drop_ways` (0-based) are forced out of the query prediction (their score
    set to DROPPED_SCORE everywhere, as happens when a way loses every pixel early in training),
    so that PAR skips them. Returns a dict: query_scores (Q, 1 + N, h, w), query_pred (Q, h, w),
    query_prototypes (1 + N, C), present (N,), logits (N, k, 2, H, W), target (N, k, H, W),
    terms (N, k), loss (the terms kept, summed, over N k) and package_loss (`alignment_loss` on the
    same inputs: always equal to loss).
    """
    support_feats, query_feats = features
    K = support_feats.shape[1] if shots is None else shots
    s, fg, bg = support_feats[None, :, :K], item["support_fg"][None, :, :K], item["support_bg"][None, :, :K]
    q = query_feats[None]
    N = s.shape[1]
    scores = prototype_scores(q, episode_prototypes(s, fg, bg))  # (1, Q, 1 + N, h, w)
    for w in drop_ways:
        if not 0 <= w < N:
            raise ValueError(f"drop_ways holds way index {w}, outside 0..{N - 1}")
        scores[:, :, 1 + w] = DROPPED_SCORE
    parts = {k: v[0] for k, v in alignment_terms(s, q, scores, fg, bg).items()}
    loss = (parts["terms"] * parts["present"][:, None]).sum() / (N * K)
    return parts | {"query_scores": scores[0], "query_pred": scores[0].argmax(dim=1), "shots": K,
                    "loss": loss.item(), "package_loss": alignment_loss(s, q, scores, fg, bg).item(),
                    "dropped": sorted(set(drop_ways))}


def alignment_summary(steps: dict, class_names: Sequence[str] | None = None) -> str:
    """The loss as a sum of its terms, one way per line, e.g. for a figure's title."""
    terms, present = steps["terms"], steps["present"]
    N, K = terms.shape
    names = list(class_names) if class_names else [f"way {w + 1}" for w in range(N)]
    lines = []
    for w in range(N):
        if present[w]:
            lines.append(f"way {w + 1} ({names[w]}): " + " + ".join(f"{t:.3f}" for t in terms[w].tolist()))
        else:
            why = "forced out" if w in steps["dropped"] else "not in the query prediction"
            lines.append(f"way {w + 1} ({names[w]}): skipped ({why})")
    kept = int(present.sum()) * K
    lines.append(f"PAR loss = (sum of the {kept} terms kept) / (N K = {N} x {K}) = {steps['loss']:.4f}")
    return "\n".join(lines)


def plot_alignment(steps: dict, item: dict, way: int = 0, class_names: Sequence[str] | None = None,
                   size: float = 2.0):
    """Top: each query's ground truth and its prediction at feature resolution (the regions the query
    prototypes average). Below, one row per shot of way `way` (0-based): the support and its mask,
    the PAR target (white: ignored), the re-segmentation by [query bg, query way] and the foreground
    probability, titled with the shot's loss term. Returns the figure."""
    N, K = steps["terms"].shape
    Q = steps["query_pred"].shape[0]
    names = list(class_names) if class_names else [f"way {w + 1}" for w in range(N)]
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
    fig.suptitle(alignment_summary(steps, names), fontsize=9, family="monospace")
    return fig


class AlignmentWidget(_EncodedEpisodeView):
    """PAR step by step on one training episode: pick the episode, its ways and shots, the way to
    show, and force that way out of the query prediction to see the skipped-way case and the
    N K divisor that stays.

    Episodes are drawn from the fold's training classes (PAR is a training loss) with `queries`
    queries; `state` is `alignment_steps(...)` plus "way" (0-based) and "class_ids".
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 2, shots: int = 1,
                 seed: int = 1234, index: int = 0, way: int = 1, drop: bool = False, queries: int = 1,
                 max_shots: int = 3, split: str = "train", size: int | None = None) -> None:
        controls = self._episode_controls(model, source, fold, ways, shots, seed, index, max_shots, size,
                                          split=split, queries=queries)
        self.way = _slider(widgets.IntSlider, "way to show", way, 1, ways)
        self.drop = widgets.Checkbox(value=drop, description="force this way out of the query prediction",
                                     indent=False, layout=widgets.Layout(width="320px"))
        self._start(controls + [self.way, self.drop])

    def compute(self) -> dict:
        _, self.item, features = self.episode()
        N = self.ways.value
        self.way.max = N  # fewer ways: the slider follows (and clamps its value)
        way = self.way.value - 1
        self.state = alignment_steps(self.item, features, self.shots.value, [way] if self.drop.value else [])
        self.state |= {"way": way, "class_ids": self.item["class_ids"].tolist()}
        return self.state

    def figure(self):
        names = [self.source.class_names[c - 1] for c in self.state["class_ids"]]
        return plot_alignment(self.state, self.item, self.state["way"], names)


# ----------------------------------------------------------------------------- models side by side

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


class ModelSwapWidget(_EncodedEpisodeView):
    """The same test episode under several models (e.g. untrained, trained without PAR, trained
    with PAR): a toggle picks the model whose prediction is shown; every model's IoU is drawn.

    `models` maps a name to a PANet; `state` holds "model" (the chosen name), "maps" (name ->
    `similarity_maps`), "miou" (name -> the episode's mean IoU of its ways) and "class_ids".
    """

    def __init__(self, models: dict, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 seed: int = 1234, index: int = 0, model: str | None = None, max_shots: int = MAX_SHOTS,
                 size: int | None = None) -> None:
        if not models:
            raise ValueError("give at least one model, as {name: PANet}")
        self.models = dict(models)
        chosen = next(iter(self.models)) if model is None else model
        if chosen not in self.models:
            raise ValueError(f"model {chosen!r} is not one of {list(self.models)}")
        controls = self._episode_controls(self.models[chosen], source, fold, ways, shots, seed, index, max_shots, size)
        self.choice = widgets.ToggleButtons(options=list(self.models), value=chosen, description="model",
                                            style={"button_width": "auto"})
        self._start([self.choice] + controls)

    def compute(self) -> dict:
        maps = {}
        for name, model in self.models.items():
            episode, self.item, features = self.episode(model)
            maps[name] = similarity_maps(model, self.item, shots=self.shots.value, features=features)
        self.state = {"model": self.choice.value, "maps": maps, "miou": {n: m["miou"] for n, m in maps.items()},
                      "episode": episode, "class_ids": self.item["class_ids"].tolist()}
        return self.state

    def figure(self):
        names = [self.source.class_names[c - 1] for c in self.state["class_ids"]]
        fig = plot_model_swap(self.state, self.item, names)
        fig.suptitle(self.title(), fontsize=10)
        return fig


# ----------------------------------------------------------------------------- SSP's self-support matching

SSP_STAGES = ("support", "self-support", "refined")  # the matchings whose predictions ssp_steps keeps


@torch.no_grad()
def ssp_steps(item: dict, features: tuple[torch.Tensor, torch.Tensor], shots: int | None = None,
              refine: bool = False, query: int = 0) -> dict:
    """SSP's matching (chapter 9) on query `query` of a 1-way episode, every step kept.

    `features` are (support, query) features from `encode_episode`, of any encoder: this is SSP's
    test-time matching, whatever the encoder was trained with. The first `shots` supports are pooled
    as SSP pools them (mask brought down to the features) and averaged. Returns a dict:
      fg, bg (C,)                   the support prototypes
      match                         `ssp.ssp_match`'s output (first, second[, third] scores (1, 2, h, w), ...)
      fg_mask, bg_mask (h, w)       the confident query pixels the self-support prototypes average
      bg_fit (h, w)                 cos(F(x), the adaptive background prototype of pixel x)
      stages                        ("support", "self-support"[, "refined"]): the matchings in order
      probs, preds, iou             per stage: P(fg) (H, W) at image size, the prediction (H, W), the way's IoU
    The last stage is SSP's prediction: the one `PANet(method="ssp", refine=refine)` makes.
    """
    support_feats, query_feats = features
    N, K = support_feats.shape[:2]
    if N != 1:
        raise ValueError(f"SSP matches 1-way episodes, this one has {N} ways")
    shots = K if shots is None else shots
    if not 1 <= shots <= K:
        raise ValueError(f"shots must be in 1..{K} for this episode, got {shots}")
    feats = support_feats[0, :shots]
    fg = downsampled_mask_pool(feats, item["support_fg"][0, :shots]).mean(0)
    bg = downsampled_mask_pool(feats, item["support_bg"][0, :shots]).mean(0)
    q = query_feats[query:query + 1]
    match = ssp_match(q, fg[None], bg[None], refine, SSP_SCALE)
    scores = {"support": match["first"], "self-support": match["second"]}
    if refine:
        scores["refined"] = match["scores"]
    label = item["query_labels"][query]
    probs, preds, iou = {}, {}, {}
    for stage, sc in scores.items():
        logits = upsample_scores(sc, tuple(label.shape), align_corners=True)[0]  # SSP's upsampling
        probs[stage], preds[stage] = logits.softmax(dim=0)[1], logits.argmax(dim=0)
        iou[stage] = episode_iou(preds[stage][None], label[None], 1)[1].item()
    ss = match["self_support"]
    bg_local = 0.3 * ss["bg"][..., None, None] + 0.7 * ss["bg_local"]  # the background prototype of each pixel
    return {"fg": fg, "bg": bg, "match": match, "shots": shots, "refine": refine,
            "fg_mask": ss["fg_mask"][0], "bg_mask": ss["bg_mask"][0],
            "bg_fit": F.cosine_similarity(q, bg_local, dim=1)[0], "stages": tuple(scores),
            "probs": probs, "preds": preds, "iou": iou}


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


class SSPStepsWidget(_EncodedEpisodeView):
    """SSP's self-support matching on one 1-way test episode: pick the episode and the shots, switch
    the refinement step on and off, and see which query pixels support the query and how each
    matching's prediction changes. Any encoder works (SSP's matching needs no training of its own).

    `state` is `ssp_steps(...)` plus "class_ids"; `self.model` supplies the features.
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, shots: int = 1, seed: int = 1234,
                 index: int = 0, refine: bool = False, max_shots: int = MAX_SHOTS, size: int | None = None) -> None:
        controls = self._episode_controls(model, source, fold, 1, shots, seed, index, max_shots, size, max_ways=1)
        self.refine = widgets.Checkbox(value=refine, description="refine: a second self-support step",
                                       indent=False, layout=widgets.Layout(width="300px"))
        self._start([c for c in controls if c is not self.ways] + [self.refine])

    def compute(self) -> dict:
        _, self.item, features = self.episode()
        self.state = ssp_steps(self.item, features, self.shots.value, self.refine.value)
        self.state["class_ids"] = self.item["class_ids"].tolist()
        return self.state

    def figure(self):
        fig = plot_ssp_steps(self.state, self.item, self.source.class_names[self.state["class_ids"][0] - 1])
        fig.suptitle(self.title(), fontsize=10)
        return fig


# ----------------------------------------------------------------------------- the metric, episode by episode

METERS = {"faithful": False, "corrected": True}  # name -> IoUMeter's count_absent_fp


@torch.no_grad()
def episode_counts(model: PANet, source: SegmentationSource, classes: Sequence[int], ways: int = 1, shots: int = 1,
                   episodes: int = 100, seed: int = 1234, size: int | None = None, batch_size: int = 25) -> dict:
    """Predict `episodes` test episodes (one query each, the sampler's stream `seed`: with seed 1234
    the episodes of `evaluate`'s first run) and keep each episode's own TP, FP and FN per global
    class under both meters. Returns {"faithful": (3, E, C + 1), "corrected": (3, E, C + 1)}
    (rows TP, FP, FN; column 0 is background)."""
    dataset = EpisodeDataset(source, classes, episodes, ways, shots, 1, seed=seed, size=size)
    device = next(model.parameters()).device
    model.eval()
    counts = {name: torch.zeros(3, episodes, source.num_classes + 1, dtype=torch.float64) for name in METERS}
    e = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        pred = predict(model, batch, device).cpu()
        for b in range(pred.shape[0]):
            for name, absent in METERS.items():
                meter = IoUMeter(source.num_classes, count_absent_fp=absent)
                meter.update(pred[b], batch["query_labels"][b], batch["class_ids"][b])
                counts[name][:, e] = torch.stack([meter.tp, meter.fp, meter.fn])
            e += 1
    return counts


def _iou(tp_fp_fn: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = tp_fp_fn
    union = tp + fp + fn
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(union, float("nan")))


def metric_curves(counts: torch.Tensor, classes: Sequence[int]) -> dict:
    """After each number of episodes n = 1..E, from one meter's per-episode counts (3, E, C + 1):
      accumulated_class (E, c)    TP, FP, FN summed over episodes 1..n, then IoU (PANet's metric)
      per_episode_class (E, c)    each episode's own IoU of the class, averaged over the episodes
                                  1..n that recorded it
      accumulated, per_episode (E,)  their means over the classes defined so far
    for the `classes` given (c of them); NaN where a class has no episode yet."""
    classes = list(classes)
    accumulated = _iou(counts.cumsum(dim=1))[:, classes]
    single = _iou(counts)[:, classes]  # (E, c): NaN where the episode recorded nothing for the class
    seen = (~single.isnan()).cumsum(dim=0)
    per_episode = torch.where(seen > 0, single.nan_to_num().cumsum(dim=0) / seen.clamp_min(1),
                              torch.full_like(single, float("nan")))
    return {"accumulated_class": accumulated, "per_episode_class": per_episode,
            "accumulated": accumulated.nanmean(dim=1), "per_episode": per_episode.nanmean(dim=1)}


def plot_metric(state: dict, class_names: Sequence[str]):
    """Left: both averages against the number of episodes, for the chosen meter (the other meter's
    accumulated mIoU faint), a line at n. Right: each class's IoU after n episodes, both ways.
    Returns the figure."""
    n, meter = state["episodes"], state["meter"]
    curves, other = state["curves"][meter], state["curves"][next(m for m in METERS if m != meter)]
    E = len(curves["accumulated"])
    x = torch.arange(1, E + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), width_ratios=(1.3, 1), layout="constrained")
    ax = axes[0]
    ax.plot(x, 100 * curves["accumulated"], color=WAY_COLORS[1], linewidth=2, label="accumulated (PANet's mIoU)")
    ax.plot(x, 100 * curves["per_episode"], color=WAY_COLORS[0], linewidth=2, linestyle="--",
            label="mean of per-episode IoUs")
    ax.plot(x, 100 * other["accumulated"], color=WAY_COLORS[1], linewidth=1, alpha=0.35,
            label=f"accumulated, {'corrected' if meter == 'faithful' else 'faithful'} meter")
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


class MetricWidget(_View):
    """PANet's metric as the episodes come in: per-episode IoU against IoU accumulated over episodes,
    the faithful meter against the corrected one on N-way episodes, and the number of episodes.

    Each ways setting predicts `episodes` test episodes once (cached); moving the other controls
    only re-reads the counts. `state` holds ways, shots, episodes (n), meter, curves
    (meter -> `metric_curves`) and, after n episodes, accumulated_miou and per_episode_miou.
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 episodes: int = 100, n: int | None = None, meter: str = "faithful", seed: int = 1234,
                 size: int | None = None) -> None:
        if meter not in METERS:
            raise ValueError(f"meter must be one of {list(METERS)}, got {meter!r}")
        self.model, self.source, self.shots, self.total, self.seed, self.size = model, source, shots, episodes, seed, size
        self.classes = fold_classes(fold, source.num_classes)
        self.ways = _slider(widgets.IntSlider, "ways (N)", ways, 1, 3)
        self.episodes = _slider(widgets.IntSlider, "episodes", episodes if n is None else n, 1, episodes)
        self.meter = widgets.ToggleButtons(options=list(METERS), value=meter, description="meter",
                                           style={"button_width": "90px"})
        self._counts: dict = {}
        self._start([self.ways, self.episodes, self.meter])

    def compute(self) -> dict:
        ways = self.ways.value
        if ways not in self._counts:
            counts = episode_counts(self.model, self.source, self.classes, ways, self.shots, self.total, self.seed,
                                    self.size)
            self._counts[ways] = {name: metric_curves(c, self.classes) for name, c in counts.items()}
        curves, n = self._counts[ways], self.episodes.value
        chosen = curves[self.meter.value]
        self.state = {"ways": ways, "shots": self.shots, "episodes": n, "meter": self.meter.value, "curves": curves,
                      "accumulated_miou": chosen["accumulated"][n - 1].item(),
                      "per_episode_miou": chosen["per_episode"][n - 1].item()}
        return self.state

    def figure(self):
        return plot_metric(self.state, [self.source.class_names[c - 1] for c in self.classes])
