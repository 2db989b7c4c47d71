"""Interactive views for the chapters: thin ipywidgets layers over plain functions that tests call.

Every view follows one pattern. A function of `explain` computes plain data from an episode or a
model (`explain.episode_state`, `explain.similarity_maps`, `explain.project_features`, ...);
a function of `viz` draws that data as a matplotlib figure (`viz.plot_episode`,
`viz.plot_similarity`, `viz.plot_projection`, ...). The widget classes here only wire controls
to them: changing a control calls `compute()`, which stores the result in `.state`, then
`render()`, which draws `.figure()` into `.output`. Show a view with `display(view)` (or just
`view` as a cell's last line); call `view.figure()` for the same picture as a static figure,
e.g. for a notebook read on GitHub, where widgets do not render. This module holds the classes
only; import the computations from `explain` and the figures from `viz`.

A model is shown through its own matching (`explain.similarity_maps` asks `model.matching`), so
`ModelSwapWidget` shows a model trained with MLC or SSP as it predicts.

The episodes come from `EpisodeDataset`, i.e. from PANet's sampler: episode `index` of the
stream `seed` is the one the sampler draws after episodes 0..index-1. Which images it holds
depends on the ways and shots it is drawn with, so a view draws with `max_shots` shots (the shots
slider uses the first k) and its title names the draw: "1-way 5-shot episode 0, seed 1234" is
episode 0 of `evaluate`'s first run with 1 way, 5 shots and test seed 1234, not its 1-shot episode 0.
"""
from __future__ import annotations

import base64
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from .data import SegmentationSource, fold_classes
from .explain import (METERS, alignment_steps, alignment_summary, encode_episode, episode_counts, episode_state,
                      episode_title, load_episode, metric_curves, pixel_cosine, project_features, similarity_maps,
                      split_classes, ssp_steps)
from .model import PANet
from .viz import (WAY_COLORS, plot_alignment, plot_episode, plot_metric, plot_model_swap, plot_pixel_cosine,
                  plot_projection, plot_similarity, plot_ssp_steps)

MAX_WAYS = len(WAY_COLORS)  # the ways slider's limit: one colour per way
MAX_SHOTS = 5


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
                                              self.seed.value, self.index.value, self.queries, self.size,
                                              self.model.input_stats))
            self._encoded = {}
        if id(model) not in self._encoded:
            self._encoded[id(model)] = encode_episode(model, self._drawn[2])
        return self._drawn[1], self._drawn[2], self._encoded[id(model)]

    def title(self) -> str:
        """`episode_title` of the episode shown: the draw it comes from and the shots used."""
        return episode_title(self.seed.value, self.index.value, self.ways.value, self.max_shots, self.shots.value,
                             self.queries)


class SimilarityMapWidget(_EncodedEpisodeView):
    """The model's matching, live: pick an episode (seed, index), the number of ways, the number of
    shots and alpha (the model's own scale by default: PANet's 20); see every prototype's similarity
    map over the query, the prediction and its IoU.

    Episodes of the fold's held-out classes are drawn with `max_shots` shots; the shots slider
    uses the first k of them, so the query stays the same while you change k. Features are
    computed once per episode: moving alpha or shots only reruns the matching.
    `state` is `similarity_maps(...)` plus "episode" (image ids) and "class_ids". `note` is a line
    under the title of every figure, e.g. which weights the encoder has.
    """

    def __init__(self, model: PANet, source: SegmentationSource, fold: int = 0, ways: int = 1, shots: int = 1,
                 alpha: float | None = None, seed: int = 1234, index: int = 0, max_shots: int = MAX_SHOTS,
                 size: int | None = None, note: str | None = None) -> None:
        self.note = note
        controls = self._episode_controls(model, source, fold, ways, shots, seed, index, max_shots, size)
        alpha = model.alpha if alpha is None else alpha
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
        note = f"\n{self.note}" if self.note else ""
        fig.suptitle(f"{self.title()}: {what} {self.state['miou']:.2f}{note}", fontsize=10, y=1.0, va="bottom")
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
        return plot_alignment(self.state, self.item, self.state["way"], alignment_summary(self.state, names))


class ModelSwapWidget(_EncodedEpisodeView):
    """The same test episode under several models (e.g. untrained, trained without PAR, trained
    with PAR): a toggle picks the model whose prediction is shown; every model's IoU is drawn.

    `models` maps a name to a PANet, each shown through its own matching (`model.matching`: a model
    trained with MLC or SSP predicts here as it does in `evaluate`). `state` holds "model" (the chosen
    name), "maps" (name -> `similarity_maps`), "miou" (name -> the episode's mean IoU of its ways)
    and "class_ids".
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
        if len({m.input_stats for m in self.models.values()}) > 1:  # one drawn episode is shown to every model
            raise ValueError("these models' encoders normalise their images with different statistics "
                             "(ENCODERS[...].stats): show them in separate widgets")
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
