"""Interactive views for the chapters: thin ipywidgets layers over plain functions that tests call.

Every view follows one pattern. A plain function computes plain data from an episode
(`episode_state`, `similarity_maps`, `project_features`); another draws that data as a
matplotlib figure (`viz.plot_episode`, and here `plot_similarity`, `plot_projection`). The widget classes
only wire controls to them: changing a control calls `compute()`, which stores the result in
`.state`, then `render()`, which draws `.figure()` into `.output`. Show a view with
`display(view)` (or just `view` as a cell's last line); call `view.figure()` for the same
picture as a static figure, e.g. for a notebook read on GitHub, where widgets do not render.

The episodes come from `EpisodeDataset`, i.e. from PANet's sampler: episode `index` of the
stream `seed` is the one the sampler draws after episodes 0..index-1.
"""
from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display

from .data import IGNORE, SegmentationSource, fold_classes, train_classes
from .episodes import EpisodeDataset, resize_pair
from .matching import ALPHA, prototype_scores, upsample_scores
from .metrics import IoUMeter
from .model import PANet
from .pooling import episode_prototypes, masked_average_pool
# The figures live in viz, the plotting home; plot_episode is re-exported for the widget's users.
from .viz import (BACKGROUND_COLOR, WAY_COLORS, ground_truth, outcome, outcome_handles, outline,  # noqa: F401
                  plot_episode, support_panel)

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
    pred = logits.argmax(dim=1)
    N = prototypes.shape[0] - 1
    iou = episode_iou(pred, item["query_labels"], N)
    return {
        "alpha": alpha, "shots": shots,
        "shot_fg": masked_average_pool(feats, fg), "shot_bg": masked_average_pool(feats, bg),
        "prototypes": prototypes, "cosine": cosine, "scores": scores, "logits": logits,
        "probs": logits.softmax(dim=1), "pred": pred, "iou": iou,
        "miou": iou[1:].nanmean().item(),
    }


def plot_similarity(maps: dict, item: dict, class_names: Sequence[str] | None = None, query: int = 0,
                    size: float = 1.8):
    """The supports used (top), then for one query: the ground truth and the prediction (left),
    each prototype's cosine map (middle row) and softmax probability at the chosen alpha (bottom
    row), with the ground-truth outlines drawn on every map. Returns the figure."""
    N = maps["prototypes"].shape[0] - 1
    k = maps["shots"]
    names = list(class_names) if class_names else [f"way {w + 1}" for w in range(N)]
    cols = N + 2
    n_thumbs = max(N * k, cols)
    width = size * cols + 1.0
    top_h, bottom_h = 0.8 * width / n_thumbs + 0.3, 2.3 * size  # inches: thumbnails fit the width
    fig = plt.figure(figsize=(width, top_h + bottom_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(top_h, bottom_h))
    s_axes = top.subplots(1, n_thumbs, squeeze=False)[0]
    for ax in s_axes:
        ax.axis("off")
    for w in range(N):
        for j in range(k):
            support_panel(s_axes[w * k + j], item["support_images"][w, j], item["support_fg"][w, j], w, N,
                           f"way {w + 1}, shot {j + 1}" if N * k <= 8 else f"w{w + 1} s{j + 1}")
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
    ax.legend(fontsize=7, markerscale=1.0, loc="best", framealpha=0.8)
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
        self.compute()

    @property
    def ui(self) -> widgets.VBox:
        """The controls above the figure, as one widget to display."""
        if not self._shown:
            self._shown = True
            self.render()
        return self._ui

    def _on_change(self, change=None) -> None:
        self.update()

    def update(self) -> dict:
        """Recompute from the controls' values (and redraw if shown); returns the new state."""
        self.compute()
        if self._shown:
            self.render()
        return self.state

    def compute(self) -> dict:
        raise NotImplementedError

    def figure(self):
        raise NotImplementedError

    def render(self) -> None:
        """Draw `figure()` of the current state into `.output`."""
        fig = self.figure()
        with self.output:
            self.output.clear_output(wait=True)
            display(fig)
        plt.close(fig)

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
                                           value=split, style={"button_width": "120px"})
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
    """A view of one test episode drawn with `max_shots` shots and encoded once: controls for the seed,
    the episode index, the ways and the shots used (the first k, so the query stays while k changes)."""

    def _episode_controls(self, model: PANet, source: SegmentationSource, fold: int, ways: int, shots: int,
                          seed: int, index: int, max_shots: int, size: int | None) -> list:
        self.model, self.source, self.fold, self.max_shots, self.size = model, source, fold, max_shots, size
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.index = _slider(widgets.IntSlider, "episode", index, 0, 99)
        self.ways = _slider(widgets.IntSlider, "ways (N)", ways, 1, 3)
        self.shots = _slider(widgets.IntSlider, "shots (K)", shots, 1, max_shots)
        self._cache: tuple | None = None
        return [self.seed, self.index, self.ways, self.shots]

    def episode(self):
        """(Episode, item, features) of the current seed / index / ways, encoded once and cached."""
        key = (self.seed.value, self.index.value, self.ways.value)
        if self._cache is None or self._cache[0] != key:
            episode, item = load_episode(self.source, fold_classes(self.fold, self.source.num_classes), self.ways.value,
                                         self.max_shots, self.seed.value, self.index.value, size=self.size)
            self._cache = (key, episode, item, encode_episode(self.model, item))
        return self._cache[1:]


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
        fig.suptitle(f"seed {self.seed.value}, episode {self.index.value}: {what} {self.state['miou']:.2f}",
                     fontsize=10, y=1.0, va="bottom")
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
