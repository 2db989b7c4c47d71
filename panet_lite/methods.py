"""Methods: what a few-shot segmenter does between the encoder's features and its logits.

A method is one object in `METHODS`. It says how masks pool features into prototypes, how the
query is matched with them (and at which cosine scale), how the scores reach the image, whether
a support's 255 borders count as its background, which training losses it adds to the query's
cross-entropy (a named dict, summed with their weights), the recipe it trains with, where its
published numbers are, the tag of its run folders, whether it trains at all, and the steps a
widget shows of it. The model, the training loop, `reproduce`, the CLI, the course helpers and
the widgets ask the method; none of them branches on its name. A new method is a new entry here.

PANet (Wang et al., ICCV 2019) is the first entry. MLC's baseline (Yang et al., ICCV 2021) and
SSP's self-support matching (Fan et al., ECCV 2022) change a few of its choices and add nothing
learned. This module sits below `model` and `train` and imports neither.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F

from .alignment import alignment_loss, support_target
from .data import IGNORE
from .matching import ALPHA, prototype_scores, upsample_scores
from .paper import LATER_RESULTS, TESTS, WEAK_SUPPORTS, paper_result
from .pooling import downsampled_mask_pool, episode_prototypes, masked_average_pool
from .ssp import SSP_SCALE, ssp_match, two_way_scores


class PANetOutput(NamedTuple):
    """What a model returns: logits (B, Q, 1 + N, H, W), [bg, way 1, ..., way N] scores at image size;
    losses, the method's training losses beside the query's cross-entropy by name (empty in eval
    mode), unweighted; weights, the method's weight of each (PAR's is TrainConfig.align_weight)."""

    logits: torch.Tensor
    losses: Mapping[str, torch.Tensor] = {}
    weights: Mapping[str, float] = {}

    @property
    def align_loss(self) -> torch.Tensor:
        """PANet's prototype alignment loss (PAR); zero in eval mode, with align=False, or for other methods."""
        return self.losses.get(ALIGN, self.logits.new_zeros(()))

    @property
    def aux_loss(self) -> torch.Tensor:
        """The weighted sum of the method's losses other than PAR (SSP's self-matching losses); zero if none."""
        total = self.logits.new_zeros(())
        for name, value in self.losses.items():
            if name != ALIGN:
                total = total + self.weights.get(name, 1.0) * value
        return total


ALIGN = "align"  # the name of PAR among a method's losses: its weight is TrainConfig.align_weight


class Method:
    """PANet's matching; other methods subclass it and change what they change.

    Attributes (the chapter 9 table reads them): name (the --method value), title (the name its
    paper uses), summary (for --help), scale (the cosine's factor), pooling and extra_loss (in words), align_corners (of
    the scores' bilinear upsampling), borders_are_background (a support's 255 borders count as its
    background, as in PANet's code), switches (the boolean options it accepts: "align", "refine"),
    loss_weights, recipe (TrainConfig fields its published runs used, where they differ from
    PANet's), run_tag (suffix of its run folders; None for PANet's), trains, max_ways (None: any),
    published_test (a key of paper.TESTS: the test its published numbers come from) and steps (the
    stages of its matching that `steps()` returns and the widgets show).
    """

    name = "panet"
    title = "PANet"
    summary = "PANet's prototypes, cosine x 20, prototype alignment (PAR) in training"
    scale = ALPHA
    pooling = "features upsampled to the mask (late fusion)"
    align_corners = False
    borders_are_background = True
    extra_loss = "prototype alignment (PAR)"
    switches: tuple[str, ...] = (ALIGN,)
    loss_weights: Mapping[str, float] = {ALIGN: 1.0}
    recipe: Mapping[str, object] = {}
    run_tag: str | None = None
    trains = True
    max_ways: int | None = None
    published_test = "panet"
    steps: tuple[str, ...] = ("support prototypes", "cosine", "prediction")

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.title}>"

    # -- options

    def check(self, align: bool | None = None, refine: bool = False) -> bool:
        """Refuse the switches this method does not have; returns `align` resolved (None: on if it has PAR)."""
        align = (ALIGN in self.switches) if align is None else align
        if align and ALIGN not in self.switches:
            raise ValueError(f"prototype alignment (--align) is PANet's training loss; --method {self.name} trains "
                             f"without it: "
                             f"pass --align false, or build the config with TrainConfig.for_method({self.name!r}), "
                             f"which sets that method's recipe")
        if refine and "refine" not in self.switches:
            raise ValueError(f"--refine is a step of SSP's matching; --method {self.name} has no such step: "
                             f"use it with --method ssp")
        return align

    def check_ways(self, ways: int) -> None:
        if self.max_ways is not None and ways > self.max_ways:
            others = " or ".join(n for n, m in METHODS.items() if m.max_ways is None)
            raise ValueError(f"{self.title} matches {self.max_ways}-way episodes, got {ways} ways: use --ways "
                             f"{self.max_ways}, or --method {others}")

    # -- the matching

    def pool(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Prototypes (..., C) of features (..., C, h, w) under masks (..., H, W)."""
        return masked_average_pool(features, masks)

    def upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upsample_scores(scores, size, self.align_corners)

    def match(self, support_feats: torch.Tensor, query_feats: torch.Tensor, support_fg: torch.Tensor,
              support_bg: torch.Tensor, scale: float, refine: bool = False) -> tuple[torch.Tensor, dict]:
        """Scores (B, Q, 1 + N, h, w) at feature resolution, and the steps that led to them (a dict:
        "prototypes" (B, 1 + N, C) for PANet, SSP's stages for SSP). Features: supports (B, N, K, C, h, w),
        queries (B, Q, C, h, w); masks (B, N, K, H, W)."""
        prototypes = episode_prototypes(support_feats, support_fg, support_bg, self.pool)  # (B, 1+N, C)
        return prototype_scores(query_feats, prototypes, scale), {"prototypes": prototypes}

    def losses(self, support_feats, query_feats, support_fg, support_bg, scores, steps, query_labels, size,
               scale: float, align: bool, refine: bool) -> dict[str, torch.Tensor]:
        """The training losses beside the query's cross-entropy, by name, unweighted."""
        if not align:
            return {}
        return {ALIGN: alignment_loss(support_feats, query_feats, scores, support_fg, support_bg)}

    def loss_names(self, align: bool, refine: bool) -> tuple[str, ...]:
        """The names `losses` returns under these switches (the training log's columns)."""
        return (ALIGN,) if align else ()

    # -- published numbers

    def published_result(self, dataset: str, ways: int, shots: int):
        """The published row of a setting (paper.PaperResult for PANet, paper.LaterResult for the others),
        or None if there is none."""
        try:
            return paper_result(dataset, ways, shots)
        except KeyError:
            return None

    def published_weak(self, support: str, dataset: str, ways: int, shots: int) -> float | None:
        """The published mean with weak support annotations (PANet's paper tests boxes on PASCAL-5i 1-way)."""
        if (dataset, ways) != ("pascal5i", 1):
            return None
        return WEAK_SUPPORTS.get(support, {}).get(shots)

    @property
    def published_test_description(self) -> str:
        return TESTS[self.published_test]


class MLC(Method):
    """MLC's baseline (Yang et al., ICCV 2021): PANet's matching with the mask brought down to the features,
    cosine x 10, corners aligned, borders left out, no PAR."""

    name = "mlc"
    title = "MLC baseline"
    summary = "MLC's baseline (cosine x 10, masks pooled at feature size, no PAR)"
    scale = SSP_SCALE
    pooling = "mask downsampled to the features"
    align_corners = True
    borders_are_background = False
    extra_loss = "none"
    switches = ()
    loss_weights = {}
    # MLC's and SSP's published recipe (their code: SGD lr 1e-3, momentum 0.9, weight decay 5e-4 as
    # PANet's; batches of 4 episodes, the lr divided by 10 after 1/3 and 2/3 of training, 473 px crops,
    # frozen BatchNorm, the deep-stem ResNet-50). We resize to 473 x 473 instead of cropping. A method's
    # recipe fills the flags not given on the command line, as a test protocol's defaults do.
    recipe = {"backbone": "resnet50-deepstem", "align": False, "batch_size": 4, "steps": 6_000,
              "milestones": (2_000, 4_000), "size": 473}
    run_tag = "mlc"
    published_test = "mlc"

    def pool(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return downsampled_mask_pool(features, masks)

    def published_result(self, dataset: str, ways: int, shots: int):
        rows = [r for r in LATER_RESULTS if (r.method, r.dataset, r.ways, r.shots, r.test)
                == (self.title, dataset, ways, shots, self.published_test)]
        return rows[0] if rows else None

    def published_weak(self, support: str, dataset: str, ways: int, shots: int) -> float | None:
        return None


SUPPORT_SELF_WEIGHT = 0.2  # SSP's weight of the supports' self-matching loss


class SSP(MLC):
    """SSP (Fan et al., ECCV 2022) on 1-way episodes: MLC's pooling and scale, then self-support matching
    (ssp.py); in training, the self-matching losses of SSP's code: each query and each support against
    its own ground-truth prototypes, plus, with `refine`, the loss of the first self-support step."""

    name = "ssp"
    title = "SSP"
    summary = "SSP's self-support matching (1-way)"
    extra_loss = "query and supports each matched to their own ground-truth prototypes (weights 1, 0.2)"
    switches = ("refine",)
    loss_weights = {"query_self": 1.0, "support_self": SUPPORT_SELF_WEIGHT, "before_refine": 1.0}
    run_tag = "ssp"
    max_ways = 1
    steps = ("support", "self-support", "refined")

    def match(self, support_feats, query_feats, support_fg, support_bg, scale, refine=False):
        B, N, K = support_fg.shape[:3]
        Q = query_feats.shape[1]
        self.check_ways(N)
        feats_k = support_feats[:, 0]  # (B, K, C, h, w)
        fg_k, bg_k = self.pool(feats_k, support_fg[:, 0]), self.pool(feats_k, support_bg[:, 0])  # (B, K, C)
        queries = query_feats.flatten(0, 1)  # (B*Q, C, h, w); every query of an episode uses its prototypes
        steps = ssp_match(queries, fg_k.mean(1).repeat_interleave(Q, 0), bg_k.mean(1).repeat_interleave(Q, 0),
                          refine, scale)
        steps["support_prototypes"] = (fg_k, bg_k)
        return steps["scores"].unflatten(0, (B, Q)), steps  # (B, Q, 2, h, w)

    def losses(self, support_feats, query_feats, support_fg, support_bg, scores, steps, query_labels, size,
               scale, align, refine):
        if query_labels is None:
            raise ValueError("SSP's training loss matches the query with its own ground truth: pass query_labels")
        queries = query_feats.flatten(0, 1)
        labels = query_labels.flatten(0, 1)  # (B*Q, H, W): 0 bg, 1 fg, 255 ignored
        q_fg, q_bg = self.pool(queries, (labels == 1).float()), self.pool(queries, (labels == 0).float())
        self_logits = self.upsample(two_way_scores(queries, q_fg, q_bg, scale), size)
        fg_k, bg_k = steps["support_prototypes"]
        supp_logits = self.upsample(two_way_scores(support_feats[:, 0].flatten(0, 1), fg_k.flatten(0, 1),
                                                   bg_k.flatten(0, 1), scale), size)
        target = support_target(support_fg[:, 0].flatten(0, 1), support_bg[:, 0].flatten(0, 1))
        out = {"query_self": F.cross_entropy(self_logits, labels, ignore_index=IGNORE),
               "support_self": F.cross_entropy(supp_logits, target, ignore_index=IGNORE)}
        if refine:  # SSP's code also supervises the prediction before refinement
            out["before_refine"] = F.cross_entropy(self.upsample(steps["second"], size), labels, ignore_index=IGNORE)
        return out

    def loss_names(self, align, refine):
        return ("query_self", "support_self") + (("before_refine",) if refine else ())


METHODS: dict[str, Method] = {m.name: m for m in (Method(), MLC(), SSP())}


def get_method(name: str) -> Method:
    """The registered method called `name`, or one clear error listing them."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def methods_help() -> str:
    """--method's help, from the registry."""
    with_recipe = [n for n, m in METHODS.items() if m.recipe]
    return ("; ".join(f"{n}: {m.summary}" for n, m in METHODS.items())
            + f". {' and '.join(with_recipe)} bring their recipe (METHOD_DEFAULTS) for the flags not given")
