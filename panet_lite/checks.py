"""Exercise checkers: call one with your function; it prints one deterministic [PASS]/[FAIL] line.

Every checker runs your function on a few hand-made cases, each harder than the last (a plain
case, then the corner the exercise is about: an empty mask, a skipped way, a milestone step...),
and checks each result in stages: first its type and shape, then what must hold whatever the
numbers (no NaN, masks that do not overlap, sorted lists...), then the values against
panet_lite's own functions. When the values are wrong, it recomputes the case with each usual
mistake and, if yours matches one, says which: "this is what ... gives". `MISTAKES` holds those
wrong versions, so the tests can prove that every diagnosis fires.
"""
from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .alignment import alignment_loss
from .data import IGNORE
from .episodes import episode_labels, support_masks
from .matching import ALPHA, prototype_scores
from .metrics import IoUMeter
from .pooling import EPS, episode_prototypes, masked_average_pool
from .ssp import TOP_K, self_support_prototypes
from .train import step_losses


def _report(name: str, ok: bool, detail: str) -> bool:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    return ok


@dataclass
class Case:
    """One input to an exercise: a phrase that names it in messages, the arguments, the expected result."""

    label: str
    args: tuple
    expected: torch.Tensor


@dataclass
class Exercise:
    """What a checker knows about one exercise.

    `as_tensor` turns the learner's return value into a tensor (or raises TypeError with a
    message); `shape_hints` are (test(got_shape, expected_shape), advice) for wrong shapes;
    `rules` are (test(got, case) -> True if fine, message) checked before the values; `mistakes`
    are (description, wrong function with the exercise's signature).
    """

    name: str
    what: str
    as_tensor: Callable = torch.as_tensor
    shape_hints: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    mistakes: list = field(default_factory=list)
    rtol: float = 1e-5
    atol: float = 1e-6


def _close(a: torch.Tensor, b: torch.Tensor, ex: Exercise) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    return bool(torch.allclose(a.nan_to_num(-7.0), b.nan_to_num(-7.0), rtol=ex.rtol, atol=ex.atol)
                and torch.equal(a.isnan(), b.isnan()))


def _which_mistake(ex: Exercise, case: Case, got: torch.Tensor) -> str | None:
    """The first usual mistake that gives exactly `got` on this case, if any."""
    for description, wrong in ex.mistakes:
        try:
            with warnings.catch_warnings():  # a mistake's own warnings (e.g. torch's on the scheduler) are not yours
                warnings.simplefilter("ignore")
                theirs = ex.as_tensor(wrong(*case.args))
        except Exception:
            continue
        if _close(got, theirs, ex):
            return description
    return None


def _run(ex: Exercise, fn: Callable, cases: Sequence[Case]) -> bool:
    for case in cases:
        on = f"on {case.label}"
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in case.args)  # the learner's copies
        try:
            got = ex.as_tensor(fn(*args))
        except NotImplementedError:
            return _report(ex.name, False, "not implemented yet: replace the `raise NotImplementedError` with your code")
        except TypeError as exc:
            return _report(ex.name, False, f"{on}: {exc}")
        except Exception as exc:  # a learner's bug: say what went wrong, don't crash the notebook
            return _report(ex.name, False, f"{on}: raised {type(exc).__name__}: {exc}")
        changed = next((i for i, (a, b) in enumerate(zip(args, case.args))
                        if isinstance(b, torch.Tensor) and not torch.equal(a, b)), None)
        if changed is not None:
            return _report(ex.name, False, f"{on}: your function changed its input (argument {changed + 1}) in place; "
                                           f"work on a copy (e.g. label.clone()): the caller still needs it")
        expected = case.expected
        # Stage 1: shape.
        if tuple(got.shape) != tuple(expected.shape):
            hint = next((advice for test, advice in ex.shape_hints if test(tuple(got.shape), tuple(expected.shape))),
                        ex.what)
            return _report(ex.name, False, f"{on}: shape {tuple(got.shape)}, expected {tuple(expected.shape)} ({hint})")
        # Stage 2: what must hold whatever the values: the exercise's rules, then no NaN or inf (NaN only
        # where panet_lite's answer has one).
        for test, message in ex.rules:
            if not test(got, case):
                mistake = _which_mistake(ex, case, got)
                return _report(ex.name, False, f"{on}: {message}" + (f"; this is what {mistake} gives" if mistake else ""))
        g = got.double()
        if g.isinf().any() or (g.isnan() & ~expected.double().isnan()).any():
            return _report(ex.name, False, f"{on}: the result holds NaN or inf")
        # Stage 3: values, and which usual mistake gives yours.
        if not _close(got, expected, ex):
            mistake = _which_mistake(ex, case, got)
            if mistake:
                return _report(ex.name, False, f"{on}: this is what {mistake} gives")
            g, e = got.double(), expected.double()
            both = ~g.isnan() & ~e.isnan()
            err = (g[both] - e[both]).abs().max().item() if both.any() else float("nan")
            detail = f"values differ from panet_lite's by up to {err:.3g}" if g.isnan().equal(e.isnan()) else \
                "NaN in other places than panet_lite's"
            return _report(ex.name, False, f"{on}: {detail} ({ex.what})")
    return _report(ex.name, True, f"shape, rules and values match panet_lite on {len(cases)} cases "
                                  f"({', '.join(c.label for c in cases)})")


def _features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mask(seed: int, *shape: int, p: float = 0.6) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > p).float()


def _up(features: torch.Tensor, size, mode: str = "bilinear", align_corners: bool | None = False) -> torch.Tensor:
    kw = {} if mode == "nearest" else {"align_corners": align_corners}
    return F.interpolate(features[None], size=tuple(size), mode=mode, **kw)[0]


def _vector_hints():
    return [(lambda g, e: len(g) == 2 and 1 in g and max(g) == e[0], "return a vector (C,): squeeze the extra axis"),
            (lambda g, e: len(g) == 3 and g[0] == e[0], "sum over the pixels too: one number per channel")]


# ----------------------------------------------------------------------------- chapter 1

MISTAKES: dict[str, list] = {}

def _remap_in_place(label: torch.Tensor, classes) -> torch.Tensor:
    out = torch.where(torch.isin(label, torch.tensor(list(classes))) | (label == IGNORE), label, 0)
    for w, c in enumerate(classes):
        out[out == c] = w + 1
    return out


def _others_dropped_by_id(label: torch.Tensor, classes) -> torch.Tensor:
    out = label.clone()
    for w, c in enumerate(classes):
        out[label == c] = w + 1
    out[(out > len(classes)) & (out != IGNORE)] = 0
    return out


MISTAKES["episode_labels"] = [
    ("turning the 255 borders into background (keep 255: those pixels are ignored, not background)",
     lambda label, classes: episode_labels(torch.where(label == IGNORE, 0, label), classes)),
    ("remapping in place, one way after another (a class whose id equals an earlier way's number is relabelled "
     "twice: test the original label, write into a new tensor)", _remap_in_place),
    ("setting to 0 the labels above N after remapping (a class outside the episode whose id is at most N keeps "
     "its id: test membership in episode_classes)", _others_dropped_by_id),
    ("numbering the ways in sorted class order (way w is episode_classes[w], in the order given)",
     lambda label, classes: episode_labels(label, sorted(classes))),
    ("keeping the global ids of classes outside the episode (they become background, 0)",
     lambda label, classes: torch.where(torch.isin(label, torch.tensor(list(classes))) | (label == IGNORE),
                                        episode_labels(label, classes), label)),
    ("labelling way w as w instead of w + 1 (0 is the background)",
     lambda label, classes: torch.where(torch.isin(label, torch.tensor(list(classes))),
                                        episode_labels(label, classes) - 1, episode_labels(label, classes))),
]


def check_episode_labels(fn: Callable) -> bool:
    """fn(label (H, W), episode_classes) -> episode-local labels (H, W)."""
    ex = Exercise("episode labels", "0 bg, w+1 for way w, 255 kept, other classes -> 0",
                  rules=[(lambda got, case: set(got.unique().tolist()) <= {0, IGNORE, *range(1, len(case.args[1]) + 1)},
                          "labels must be 0, 1..N or 255 only: a class outside the episode becomes background (0)")],
                  mistakes=MISTAKES["episode_labels"])
    one = torch.tensor([[0, 3, 3, 0], [0, 3, 0, 0]])
    two = torch.tensor([[0, 3, 5, 255], [7, 7, 3, 0], [12, 255, 7, 0]])
    # Fold 0 of PASCAL-5i holds classes 1-5: class ids equal way numbers, a remap done in place one
    # way after another relabels a pixel twice, and class 2, outside the episode, is not above N.
    fold0 = torch.tensor([[1, 1, 2, 255, 5], [3, 1, 2, 255, 5], [0, 3, 3, 4, 5], [255, 0, 2, 1, 0]])
    return _run(ex, fn, [Case("a 1-way label", (one, [3]), episode_labels(one, [3])),
                         Case("a 2-way label with ways [7, 3], another class and 255 borders", (two, [7, 3]),
                              episode_labels(two, [7, 3])),
                         Case("a 3-way fold-0 label with ways [5, 3, 1] and class 2 outside the episode",
                              (fold0, [5, 3, 1]), episode_labels(fold0, [5, 3, 1]))])


def _pair(result, what: str = "(fg, bg), two masks of the label's shape") -> torch.Tensor:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(f"return the pair {what}")
    return torch.stack([torch.as_tensor(m).float() for m in result])


MISTAKES["support_masks"] = [
    ("taking the first way's class whatever class_id says (fg is label == class_id)",
     lambda label, c, classes: support_masks(label, classes[0], classes)),
    ("taking every pixel but the way's class as background (PANet's background excludes every episode class)",
     lambda label, c, classes: ((label == c).float(), (label != c).float())),
    ("leaving the 255 borders out of the background (in PANet's faithful masks they count as background)",
     lambda label, c, classes: support_masks(label, c, classes, ignore_is_background=False)),
    ("taking only label 0 as background (pixels of classes outside the episode are background too)",
     lambda label, c, classes: ((label == c).float(), (label == 0).float())),
]


def check_support_masks(fn: Callable) -> bool:
    """fn(label (H, W), class_id, episode_classes) -> (fg, bg), float 0/1, PANet's (faithful) rule."""
    ex = Exercise("support masks", "fg = the way's class, bg = no episode class", as_tensor=_pair,
                  rules=[(lambda got, case: bool(((got == 0) | (got == 1)).all()), "masks must hold 0 and 1 only"),
                         (lambda got, case: not bool((got[0] * got[1]).any()), "a pixel is in both fg and bg")],
                  mistakes=MISTAKES["support_masks"])
    label = torch.tensor([[0, 3, 3, 255], [7, 7, 3, 0], [12, 0, 255, 7]])
    cases = [Case("a 1-way support", (label, 3, [3]), _pair(support_masks(label, 3, [3]))),
             Case("way 1 of a 2-way episode [3, 7], with 255 borders and class 12 outside the episode",
                  (label, 3, [3, 7]), _pair(support_masks(label, 3, [3, 7])))]
    # Each way in turn of a fold-0 episode (ids 1-5, ways not ascending, class 2 outside it), then an
    # object that fills its image but for the 255 border (an empty background, but for PANet's borders).
    fold0 = torch.tensor([[0, 5, 5, 255, 2], [3, 3, 5, 255, 2], [1, 1, 0, 4, 0], [255, 1, 3, 0, 12]])
    for w, c in enumerate([5, 3, 1]):
        cases.append(Case(f"way {w + 1} (class {c}) of a 3-way fold-0 episode [5, 3, 1]", (fold0, c, [5, 3, 1]),
                          _pair(support_masks(fold0, c, [5, 3, 1]))))
    full = torch.full((4, 5), 2)
    full[0] = IGNORE
    cases.append(Case("way 2 of [4, 2], its object filling the image but for a 255 border", (full, 2, [4, 2]),
                      _pair(support_masks(full, 2, [4, 2]))))
    return _run(ex, fn, cases)


# ----------------------------------------------------------------------------- chapter 2

MISTAKES["masked_average_pool"] = [
    ("dividing by every pixel (H x W) instead of the mask's area",
     lambda f, m: (_up(f, m.shape) * m).sum(dim=(1, 2)) / m.numel()),
    ("averaging the features over the whole image, ignoring the mask",
     lambda f, m: _up(f, m.shape).mean(dim=(1, 2))),
    ("shrinking the mask to the features' size (PANet grows the features to the mask's size, bilinearly)",
     lambda f, m: (f * (s := _up(m[None], f.shape[-2:])[0])).sum(dim=(1, 2)) / (s.sum() + EPS)),
    ("upsampling with align_corners=True (PANet uses PyTorch's default, False)",
     lambda f, m: (_up(f, m.shape, align_corners=True) * m).sum(dim=(1, 2)) / (m.sum() + EPS)),
    ("upsampling with mode='nearest' (PANet's is bilinear)",
     lambda f, m: (_up(f, m.shape, mode="nearest") * m).sum(dim=(1, 2)) / (m.sum() + EPS)),
]


def check_masked_average_pool(fn: Callable) -> bool:
    """fn(features (C, h, w), mask (H, W)) -> (C,)."""
    ex = Exercise("masked average pooling", "features upsampled to the mask, then averaged over it",
                  shape_hints=_vector_hints(), mistakes=MISTAKES["masked_average_pool"],
                  rules=[(lambda got, case: bool(case.args[1].any()) or bool(torch.isfinite(got).all()),
                          "the result holds NaN or inf: an empty mask divides by zero; add PANet's 1e-5 to the "
                          "mask's area")])
    cases = []
    for label, feats, mask in (("a 16-channel 4x5 map and a 32x40 mask", _features(0, 16, 4, 5), _mask(1, 32, 40)),
                               ("an odd 33x41 mask", _features(12, 8, 5, 6), _mask(13, 33, 41)),
                               ("an empty mask", _features(14, 8, 4, 4), torch.zeros(32, 32))):
        cases.append(Case(label, (feats, mask), masked_average_pool(feats, mask)))
    return _run(ex, fn, cases)


def _shot_pixels_pooled(feats, fg, bg):
    """Foreground prototypes from all shots' pixels pooled together (not the mean of per-shot prototypes)."""
    N, K = fg.shape[:2]
    protos = []
    for w in range(N):
        up = torch.stack([_up(feats[w, k], fg.shape[-2:]) for k in range(K)])  # (K, C, H, W)
        protos.append((up * fg[w][:, None]).sum(dim=(0, 2, 3)) / (fg[w].sum() + EPS))
    bg_proto = episode_prototypes(feats[None], fg[None], bg[None])[0, 0]
    return torch.stack([bg_proto, *protos])


MISTAKES["prototypes"] = [
    ("putting the background last (the order is [bg, way 1, ..., way N])",
     lambda f, fg, bg: episode_prototypes(f[None], fg[None], bg[None])[0].roll(-1, dims=0)),
    ("pooling all shots' pixels together (PANet averages the K per-shot prototypes)", _shot_pixels_pooled),
    ("taking the background of way 1's supports only (it averages the background pools of all N x K supports)",
     lambda f, fg, bg: torch.cat([masked_average_pool(f[0], bg[0]).mean(dim=0, keepdim=True),
                                  masked_average_pool(f, fg).mean(dim=1)])),
]


def check_prototypes(fn: Callable) -> bool:
    """fn(support_features (N, K, C, h, w), fg (N, K, H, W), bg (N, K, H, W)) -> (1 + N, C)."""
    ex = Exercise("episode prototypes", "[bg, way 1, ..., way N]",
                  shape_hints=[(lambda g, e: g == (e[0] - 1, e[1]), "add the background prototype as row 0"),
                               (lambda g, e: len(g) == 3, "average over the shots: one prototype per way")],
                  mistakes=MISTAKES["prototypes"])
    cases = []
    for label, (f, fg, bg) in (
            ("a 3-way 2-shot episode", (_features(2, 3, 2, 8, 4, 4), _mask(3, 3, 2, 32, 32), _mask(4, 3, 2, 32, 32))),
            ("a 2-way 3-shot episode whose shots have masks of very different sizes",
             (_features(5, 2, 3, 8, 4, 4), torch.stack([torch.stack([_mask(6 + k, 32, 32, p=0.2 + 0.35 * k)
                                                                     for k in range(3)])] * 2),
              _mask(9, 2, 3, 32, 32))),
            ("a 2-way 2-shot episode with an empty shot (its object cropped away) and a full one",
             _empty_and_full_shots())):
        cases.append(Case(label, (f, fg, bg), episode_prototypes(f[None], fg[None], bg[None])[0]))
    return _run(ex, fn, cases)


def _empty_and_full_shots():
    """Way 1's second shot has an empty mask (it still counts: PANet averages its zero vector in);
    way 2's first shot is all object, so its background mask is empty."""
    f, fg = _features(15, 2, 2, 8, 4, 4), _mask(16, 2, 2, 32, 32)
    fg[0, 1] = 0
    fg[1, 0] = 1
    return f, fg, (1 - fg) * _mask(17, 2, 2, 32, 32, p=0.2)


# ----------------------------------------------------------------------------- chapter 3

MISTAKES["prototype_scores"] = [
    ("forgetting alpha (multiply the cosine by alpha)",
     lambda q, p, a: prototype_scores(q[None, None], p[None], 1.0)[0, 0]),
    ("a dot product of unnormalised vectors (normalise features and prototypes to unit length)",
     lambda q, p, a: a * torch.einsum("chw,jc->jhw", q, p)),
    ("normalising the features only (the prototypes too)",
     lambda q, p, a: a * torch.einsum("chw,jc->jhw", F.normalize(q, dim=0, eps=1e-8), p)),
    ("normalising the prototypes only (the features too)",
     lambda q, p, a: a * torch.einsum("chw,jc->jhw", q, F.normalize(p, dim=1, eps=1e-8))),
    ("minus alpha times the Euclidean distance (PANet's scores are cosines)",
     lambda q, p, a: -a * (q[None] - p[:, :, None, None]).norm(dim=1)),
]


def check_prototype_scores(fn: Callable) -> bool:
    """fn(query_features (C, h, w), prototypes (J, C), alpha) -> (J, h, w)."""
    ex = Exercise("prototype scores", "alpha * cosine similarity",
                  shape_hints=[(lambda g, e: g == (e[1], e[2], e[0]), "put the prototype axis first: (J, h, w)")],
                  rules=[(lambda got, case: bool((got.abs() <= case.args[2] * (1 + 1e-4)).all()),
                          "a score is larger than alpha: a cosine lies in [-1, 1]")],
                  mistakes=MISTAKES["prototype_scores"])
    feats, protos = _features(5, 8, 6, 7), _features(6, 3, 8) * 3
    holed = feats.clone()
    holed[:, 2, 3] = 0  # a pixel whose feature is the zero vector (after a ReLU, it happens)
    cases = [Case("8 channels, 3 prototypes", (feats, protos, ALPHA),
                  prototype_scores(feats[None, None], protos[None], ALPHA)[0, 0]),
             Case("a pixel whose feature is all zeros", (holed, protos, ALPHA),
                  prototype_scores(holed[None, None], protos[None], ALPHA)[0, 0]),
             Case("MLC's scale, alpha = 10", (feats, protos, 10.0),
                  prototype_scores(feats[None, None], protos[None], 10.0)[0, 0])]
    return _run(ex, fn, cases)


# ----------------------------------------------------------------------------- chapter 4

def par_reference(support_features, query_features, query_scores, support_fg, support_bg, *, skip: bool = True,
                  divisor: str = "NK", pooled: bool = True, pair: bool = True, ignore: bool = True) -> torch.Tensor:
    """PAR for one episode, written as loops from the specification; the keywords switch on the usual
    mistakes (`skip=False`: absent ways not skipped; `divisor`: "NK", "kept" (ways kept x K) or
    "none"; `pooled=False`: one prototype per query, averaged; `pair=False`: each support scored
    against all 1 + N query prototypes; `ignore=False`: pixels of neither mask taken as background)."""
    N, K = support_fg.shape[:2]
    H, W = support_fg.shape[-2:]
    pred = query_scores.argmax(dim=1)  # (Q, h, w)
    J = query_scores.shape[1]
    if pooled:
        protos = torch.stack([(query_features * (pred == j)[:, None]).sum(dim=(0, 2, 3)) / ((pred == j).sum() + EPS)
                              for j in range(J)])
    else:
        protos = torch.stack([torch.stack([(query_features[q] * (pred[q] == j)).sum(dim=(1, 2))
                                           / ((pred[q] == j).sum() + EPS) for j in range(J)])
                              for q in range(len(pred))]).mean(dim=0)
    loss, kept = query_features.new_zeros(()), 0
    for w in range(N):
        if skip and not (pred == 1 + w).any():
            continue
        kept += 1
        labels = [0, 1 + w] if pair else list(range(J))
        for k in range(K):
            cos = F.cosine_similarity(support_features[w, k][None], protos[labels][:, :, None, None], dim=1)
            logits = F.interpolate(ALPHA * cos[None], size=(H, W), mode="bilinear", align_corners=False)
            target = torch.full((H, W), IGNORE if ignore else 0, dtype=torch.long)
            target[support_fg[w, k] == 1] = 1 if pair else 1 + w
            target[support_bg[w, k] == 1] = 0
            if (target != IGNORE).any():
                loss = loss + F.cross_entropy(logits, target[None], ignore_index=IGNORE)
    denominator = {"NK": N * K, "kept": max(kept, 1) * K, "none": 1}[divisor]
    return loss / denominator


MISTAKES["alignment_loss"] = [
    ("dividing by the ways kept times K (the divisor stays N K when a way is skipped)",
     lambda *a: par_reference(*a, divisor="kept")),
    ("keeping a way that the query prediction missed (skip it: its 'prototype' is the zero vector)",
     lambda *a: par_reference(*a, skip=False)),
    ("forgetting the 1 / (N K)", lambda *a: par_reference(*a, divisor="none")),
    ("one query prototype per query, averaged (pool all queries' pixels into one prototype per label)",
     lambda *a: par_reference(*a, pooled=False)),
    ("scoring each support against all 1 + N query prototypes (it meets [query bg, query way w] only)",
     lambda *a: par_reference(*a, pair=False)),
    ("taking the pixels of neither mask as background (they are ignored, 255)",
     lambda *a: par_reference(*a, ignore=False)),
]


def check_alignment_loss(fn: Callable) -> bool:
    """fn(support_features (N, K, C, h, w), query_features (Q, C, h, w), query_scores (Q, 1+N, h, w),
    fg (N, K, H, W), bg (N, K, H, W)) -> scalar, for one episode.

    Four cases: a 2-way 2-shot episode with 2 queries whose prediction holds no background (the
    query's background prototype is 0 / (0 + 1e-5), the zero vector), the same episode with way 2
    forced out of the query prediction (skipped, the divisor stays N K), a 1-way episode whose only
    way is absent (nothing to align: 0), and the episode with some background predicted and way 2
    in the second query only (kept: presence is judged over all queries)."""
    ex = Exercise("alignment loss", "PAR for one episode",
                  shape_hints=[(lambda g, e: len(g) > 0, "return a scalar: sum the terms into one number")],
                  mistakes=MISTAKES["alignment_loss"], rtol=1e-4, atol=1e-6)
    s, q = _features(7, 2, 2, 8, 4, 4), _features(8, 2, 8, 4, 4)
    fg = _mask(9, 2, 2, 32, 32)
    bg = _mask(10, 2, 2, 32, 32) * (1 - fg)  # some pixels in neither mask (the other way's object)
    protos = episode_prototypes(s[None], fg[None], bg[None])
    scores = prototype_scores(q[None], protos)[0]  # (Q, 3, h, w)
    scores[:, 1, :2] += 5.0  # make sure both ways win some pixels
    scores[:, 2, 2:] += 5.0
    missed = scores.clone()
    missed[:, 2] = -100.0  # way 2 wins no pixel
    lone = scores[:, :2].clone()
    lone[:, 1] = -100.0
    # Above, no query pixel is predicted as background (its prototype is 0 / (0 + 1e-5) = the zero vector);
    # here the first column of each query is, and way 2 wins pixels of the second query only (it is kept).
    second = scores.clone()
    second[:, 0, :, 0] += 50.0
    second[0, 2] = -100.0
    cases = []
    for label, args in (("a 2-way 2-shot episode with 2 queries", (s, q, scores, fg, bg)),
                        ("the same episode with way 2 absent from the query prediction", (s, q, missed, fg, bg)),
                        ("a 1-way episode whose way is absent from the query prediction",
                         (s[:1], q, lone, fg[:1], bg[:1])),
                        ("the episode with some background predicted and way 2 in the second query only",
                         (s, q, second, fg, bg))):
        a = (args[0][None], args[1][None], args[2][None], args[3][None], args[4][None])
        cases.append(Case(label, args, alignment_loss(*a)))
    return _run(ex, fn, cases)


# ----------------------------------------------------------------------------- chapter 5

def _lr_table(fn: Callable, steps: Sequence[int], base: float, milestones: Sequence[int], gamma: float):
    return torch.tensor([float(fn(s, base, tuple(milestones), gamma)) for s in steps], dtype=torch.float64)


def scheduler_lrs(steps: Sequence[int], base: float, milestones: Sequence[int], gamma: float) -> torch.Tensor:
    """The rate the update at each 0-based step uses, read from torch's MultiStepLR stepped once per
    iteration after optimizer.step(), exactly as `panet_lite.train.train` drives it."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma)
    wanted, out = set(steps), {}
    for step in range(max(steps) + 1):
        if step in wanted:
            out[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return torch.tensor([out[s] for s in steps], dtype=torch.float64)


MISTAKES["learning_rate"] = [
    ("decaying one step early (the update at step m, counted from 0, is the first at the lower rate)",
     lambda s, b, ms, g: b * g ** bisect.bisect_right(ms, s + 1)),
    ("decaying one step late (the update at step m, counted from 0, already uses the lower rate)",
     lambda s, b, ms, g: b * g ** bisect.bisect_left(ms, s)),
    ("multiplying by gamma once, whatever the number of milestones passed (it compounds: gamma ** passed)",
     lambda s, b, ms, g: b * (g if bisect.bisect_right(ms, s) else 1.0)),
    ("decaying every `milestones[0]` steps (that is StepLR; MultiStepLR decays at the listed steps only)",
     lambda s, b, ms, g: b * g ** (s // ms[0])),
]


def check_learning_rate(fn: Callable) -> bool:
    """fn(step, base_lr, milestones, gamma) -> the learning rate of the update at `step` (0-based)."""
    ex = Exercise("learning-rate schedule", "base_lr x gamma ** (milestones passed), stepped per iteration",
                  as_tensor=lambda t: t, rules=[(lambda got, case: bool((got > 0).all()), "a rate must be positive")],
                  mistakes=[(d, (lambda w: lambda steps, b, ms, g: _lr_table(w, steps, b, ms, g))(m))
                            for d, m in MISTAKES["learning_rate"]], rtol=1e-9, atol=0.0)
    paper = ([0, 1, 9_999, 10_000, 10_001, 19_999, 20_000, 29_999], 1e-3, (10_000, 20_000), 0.1)
    course = ([0, 479, 480, 481, 599], 0.01, (480,), 0.1)
    long = ([0, 99, 100, 130, 299, 300, 500], 0.1, (100, 300), 0.5)

    def wrapped(steps, base, milestones, gamma):
        return _lr_table(fn, steps, base, milestones, gamma)

    cases = [Case(f"the {name} schedule (milestones {ms}, gamma {g})", (st, b, ms, g), scheduler_lrs(st, b, ms, g))
             for name, (st, b, ms, g) in (("paper's", paper), ("course's", course), ("two-milestone", long))]
    return _run(ex, wrapped, cases)


def reference_training_step(model, optimizer, scheduler, batch: dict, align_weight: float = 1.0) -> torch.Tensor:
    """One step of `panet_lite.train.train`'s loop (one process, PANet): the forward pass in training
    mode, the query's cross-entropy (255 ignored, averaged over all labelled pixels of the batch)
    plus align_weight x PAR, then zero_grad, backward, the optimizer's step and the scheduler's.
    Returns the step's loss (before the update)."""
    out = model(batch["support_images"], batch["support_fg"], batch["support_bg"], batch["query_images"])
    loss, _ = step_losses(out, batch["query_labels"], align_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def _step_variant(model, optimizer, scheduler, batch, *, zero_grad: str = "before", par: float = 1.0,
                  halve: bool = False, scheduler_first: bool = False, per_query: bool = False) -> torch.Tensor:
    """`reference_training_step` with the switches of the usual mistakes."""
    out = model(batch["support_images"], batch["support_fg"], batch["support_bg"], batch["query_images"])
    logits, labels = out.logits.flatten(0, 1), batch["query_labels"].flatten(0, 1)
    if per_query:
        seg = torch.stack([F.cross_entropy(x[None], y[None], ignore_index=IGNORE)
                           for x, y in zip(logits, labels)]).mean()
    else:
        seg = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    loss = seg + par * out.align_loss
    if halve:
        loss = loss / 2
    if zero_grad == "before":
        optimizer.zero_grad()
    loss.backward()
    if zero_grad == "between":
        optimizer.zero_grad()
    if scheduler_first:
        scheduler.step()
    optimizer.step()
    if not scheduler_first:
        scheduler.step()
    return loss


MISTAKES["training_step"] = [
    ("forgetting optimizer.zero_grad() (each step's gradients add to the last ones)",
     lambda *a: _step_variant(*a, zero_grad="never")),
    ("zeroing the gradients between backward() and step() (the update then moves nothing but the momentum)",
     lambda *a: _step_variant(*a, zero_grad="between")),
    ("leaving PAR out of the loss (L = L_seg + lambda L_PAR, lambda = 1)", lambda *a: _step_variant(*a, par=0.0)),
    ("averaging the two losses, (L_seg + L_PAR) / 2 (they are added: lambda = 1)",
     lambda *a: _step_variant(*a, halve=True)),
    ("stepping the scheduler before the optimizer (the update at step 0 uses the base rate)",
     lambda *a: _step_variant(*a, scheduler_first=True)),
    ("averaging each query's own cross-entropy (PANet's is one mean over all labelled pixels of the batch)",
     lambda *a: _step_variant(*a, per_query=True)),
]

# Episode shapes of the training-step cases: (episodes per batch B, ways N, shots K, queries Q).
_STEP_CASES = {"the paper's shape: 1 episode of 1-way 1-shot, 1 query": (1, 1, 1, 1),
               "2 episodes of 2-way 2-shot with 2 queries each, 255 borders in the queries": (2, 2, 2, 2)}


def _tiny_panet(seed: int):
    """A PANet whose encoder is three small convolutions (stride 8), in float64 and training mode:
    a step costs milliseconds and gives the same numbers on every CPU to far below the tolerance."""
    from torch import nn

    from .model import PANet

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the learner's global random state is left as it was
        model = PANet("small", pretrained=False)
    model.encoder = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 2, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.double().train()


def _step_batch(g: torch.Generator, B: int, N: int, K: int, Q: int, size: int = 24) -> dict:
    fg = (torch.rand(B, N, K, size, size, generator=g) > 0.6).double()
    other = (torch.rand(B, N, K, size, size, generator=g) > 0.8).double() * (1 - fg)  # another way's object
    labels = torch.randint(0, N + 1, (B, Q, size, size), generator=g)
    border = torch.rand(B, Q, size, size, generator=g) < torch.linspace(0.05, 0.5, Q).view(1, Q, 1, 1)
    labels[border] = IGNORE  # the queries have more or fewer ignored pixels: per-query means differ
    return {"support_images": torch.randn(B, N, K, 3, size, size, generator=g, dtype=torch.float64),
            "support_fg": fg, "support_bg": 1 - fg - other,
            "query_images": torch.randn(B, Q, 3, size, size, generator=g, dtype=torch.float64),
            "query_labels": labels}


def _run_steps(step: Callable, shape: tuple, steps: int = 3) -> torch.Tensor:
    """`steps` calls of step(model, optimizer, scheduler, batch) on a fresh tiny PANet, with SGD
    (momentum 0.9, weight decay 5e-4) and the rate x 0.1 after the first update; returns the losses
    the step returned, then every weight after the last step, as one vector."""
    model = _tiny_panet(7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], 0.1)
    g = torch.Generator().manual_seed(8)
    losses = []
    for _ in range(steps):
        loss = step(model, optimizer, scheduler, _step_batch(g, *shape))
        if loss is None:
            raise TypeError("return the step's loss (a number, or the 0-dim loss tensor)")
        losses.append(float(loss.detach() if isinstance(loss, torch.Tensor) else loss))
    return torch.cat([torch.tensor(losses, dtype=torch.float64),
                      torch.cat([p.detach().flatten() for p in model.parameters()]).double()])


def check_training_step(fn: Callable) -> bool:
    """fn(model, optimizer, scheduler, batch) -> the step's loss: one training step of PANet, as
    `panet_lite.train.train` takes it. `model` is in training mode; `batch` is a collated batch of
    EpisodeDataset items (support_images, support_fg, support_bg, query_images, query_labels).

    The checker runs 3 steps of your function on a tiny PANet (three convolutions, float64) from
    fixed weights and batches, and compares the losses it returns and the weights after the third
    step with `reference_training_step`'s. The rate drops after the first update, so the order of
    the optimizer's and the scheduler's steps shows."""
    ex = Exercise("training step", "L_seg (255 ignored) + 1 x PAR; zero_grad, backward, optimizer step, "
                                   "scheduler step", as_tensor=lambda t: t,
                  mistakes=[(d, (lambda w: lambda shape: _run_steps(w, shape))(m))
                            for d, m in MISTAKES["training_step"]], rtol=1e-5, atol=1e-7)

    def wrapped(shape):
        return _run_steps(fn, shape)

    cases = [Case(label, (shape,), _run_steps(reference_training_step, shape)) for label, shape in _STEP_CASES.items()]
    return _run(ex, wrapped, cases)


# ----------------------------------------------------------------------------- chapter 6

def _episode_iou_mean(episodes, num_classes):
    per = [[] for _ in range(num_classes + 1)]
    for pred, target, ids in episodes:
        m = IoUMeter(num_classes)
        m.update(pred, target, ids)
        for c, v in enumerate(m.class_iou().tolist()):
            if v == v:
                per[c].append(v)
    return torch.tensor([sum(v) / len(v) if v else float("nan") for v in per], dtype=torch.float64)


def _meter_iou(episodes, num_classes, count_absent_fp=False, skip_ignore=True):
    m = IoUMeter(num_classes, count_absent_fp=count_absent_fp)
    for pred, target, ids in episodes:
        if not skip_ignore:  # score the 255 pixels as background: their predictions become false positives
            target = torch.where(target == IGNORE, 0, target)
        m.update(pred, target, ids)
    return m.class_iou()


MISTAKES["class_iou"] = [
    ("averaging per-episode IoUs (PANet sums TP, FP and FN over the episodes, then divides once)", _episode_iou_mean),
    ("scoring the pixels whose ground truth is 255 (leave them out of TP, FP and FN)",
     lambda e, n: _meter_iou(e, n, skip_ignore=False)),
    ("recording labels absent from a query's ground truth (the corrected meter; PANet's records a label only "
     "where the ground truth holds it)", lambda e, n: _meter_iou(e, n, count_absent_fp=True)),
]


def check_class_iou(fn: Callable) -> bool:
    """fn(list of (pred (H, W), target (H, W), class_ids) episodes, num_classes) -> IoU per global id."""
    ex = Exercise("class IoU", "TP, FP, FN summed over episodes, then IoU per class; NaN where nothing was recorded",
                  as_tensor=lambda t: torch.as_tensor(t).double(),
                  shape_hints=[(lambda g, e: g == (e[0] - 1,), "one value per global id 0..num_classes, "
                                                               "background (0) included")],
                  rules=[(lambda got, case: bool(got.isnan()[case.expected.isnan()].all()),
                          "a class with nothing recorded must be NaN, not a number (it has no IoU)")],
                  mistakes=MISTAKES["class_iou"])
    g = torch.Generator().manual_seed(11)
    episodes = []
    for _ in range(12):
        ids = (torch.randperm(6, generator=g)[:2] + 1).tolist()
        target = torch.randint(0, 3, (10, 10), generator=g)
        if torch.rand(1, generator=g) < 0.5:
            target[target == 2] = 1  # way 2 absent from this query
        target[torch.rand(10, 10, generator=g) < 0.1] = IGNORE
        episodes.append((torch.randint(0, 3, (10, 10), generator=g), target, ids))
    return _run(ex, fn, [Case("12 two-way episodes, some with a way absent from the query", (episodes, 8),
                              _meter_iou(episodes, 8))])


# ----------------------------------------------------------------------------- chapter 7

def _read_lists(voc, split: str, classes, mode: str | None = None, listed: bool = True) -> list[list[str]]:
    voc = Path(voc)
    if listed:
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    else:
        ids = [p.stem for p in (voc / "SegmentationClassAug").glob("*.png")]
    present = {}
    for image_id in ids:
        mask = Image.open(voc / "SegmentationClassAug" / f"{image_id}.png")
        present[image_id] = set(np.unique(np.array(mask.convert(mode) if mode else mask)).tolist())
    return [sorted(i for i in ids if c in present[i]) for c in classes]


def _as_lists(result, classes) -> list[list[str]]:
    if isinstance(result, dict):
        raise TypeError("return a list with one list per class, in the order of `classes` (not a dict)")
    if not isinstance(result, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in result):
        raise TypeError("return a list of lists of image ids, one list per class")
    if len(result) != len(classes):
        raise TypeError(f"{len(result)} lists for {len(classes)} classes: one list per class, in the order given")
    return [list(map(str, r)) for r in result]


MISTAKES["class_lists"] = [
    ("reading the PNG as grey levels (read its palette indices: np.array(Image.open(path)), no convert)",
     lambda voc, split, classes: _read_lists(voc, split, classes, mode="L")),
    ("every mask in SegmentationClassAug (only the images listed in ImageSets/Segmentation/<split>.txt belong to "
     "the split)", lambda voc, split, classes: _read_lists(voc, split, classes, listed=False)),
    ("the classes in sorted order (one list per class in the order of `classes`)",
     lambda voc, split, classes: _read_lists(voc, split, sorted(classes))),
]


def check_class_lists(fn: Callable, voc) -> bool:
    """fn(voc_dir, split, classes) -> for each class, the sorted ids of the split's images whose mask holds it.

    `voc` is a VOC2012 folder (e.g. from `synthetic.write_voc_tree`); the expected lists are the
    ones `prepare` wrote there, ImageSets/Segmentation/<split>/class<c>.txt."""
    name = "class lists"
    voc = Path(voc)
    cases = [("trainaug", [1, 2, 3, 4, 5]), ("val", [7, 2, 19, 11])]
    for split, classes in cases:
        on = f"on split {split!r}, classes {classes}"
        try:
            got = _as_lists(fn(voc, split, classes), classes)
        except NotImplementedError:
            return _report(name, False, "not implemented yet: replace the `raise NotImplementedError` with your code")
        except TypeError as exc:
            return _report(name, False, f"{on}: {exc}")
        except Exception as exc:
            return _report(name, False, f"{on}: raised {type(exc).__name__}: {exc}")
        expected = [(voc / "ImageSets" / "Segmentation" / split / f"class{c}.txt").read_text().split() for c in classes]
        if any(lst != sorted(lst) for lst in got):
            return _report(name, False, f"{on}: a list is not sorted (PANet's lists are sorted image ids)")
        if any(len(set(lst)) != len(lst) for lst in got):
            return _report(name, False, f"{on}: an image appears twice in one list")
        if got != expected:
            for description, wrong in MISTAKES["class_lists"]:
                if got == wrong(voc, split, classes):
                    return _report(name, False, f"{on}: this is what {description} gives")
            bad = next(i for i in range(len(classes)) if got[i] != expected[i])
            if len(got[bad]) != len(expected[bad]):
                return _report(name, False, f"{on}: class {classes[bad]} has {len(got[bad])} images, the prepared "
                                            f"list {len(expected[bad])}")
            first = next(j for j in range(len(got[bad])) if got[bad][j] != expected[bad][j])
            return _report(name, False, f"{on}: class {classes[bad]} has as many images as the prepared list, but "
                                        f"{got[bad][first]!r} where it has {expected[bad][first]!r} (image ids, "
                                        f"as in <split>.txt)")
    return _report(name, True, f"sorted, one per class in the order given, equal to the prepared lists on "
                               f"{len(cases)} cases")


# ----------------------------------------------------------------------------- chapter 8

def _summary(result) -> torch.Tensor:
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise TypeError("return (fold_means, fold_stds, mean): two lists with one value per fold, and one number")
    means, stds, mean = result
    return torch.cat([torch.as_tensor(means, dtype=torch.float64).flatten(),
                      torch.as_tensor(stds, dtype=torch.float64).flatten(),
                      torch.as_tensor(mean, dtype=torch.float64).flatten()])


def _fold_summary(runs: dict, ddof: int = 0, across: bool = False):
    t = torch.tensor([runs[f] for f in sorted(runs)], dtype=torch.float64)  # (folds, runs)
    means = t.mean(dim=1)
    stds = t.std(dim=1, correction=ddof)
    if across:
        stds = means.std(correction=0).expand(len(means))
    return means.tolist(), stds.tolist(), means.mean().item()


MISTAKES["fold_summary"] = [
    ("the sample std (ddof = 1; the authors use np.std, the population std, ddof = 0)",
     lambda runs: _fold_summary(runs, ddof=1)),
    ("the std of the fold means (the ± of a fold is the std over its 5 runs)",
     lambda runs: _fold_summary(runs, across=True)),
]


def check_fold_summary(fn: Callable) -> bool:
    """fn({fold: [mIoU of each run]}) -> (fold means, fold stds over runs, mean over folds)."""
    ex = Exercise("fold summary", "per fold: mean and population std over the runs; then the mean of the folds",
                  as_tensor=_summary, mistakes=[(d, w) for d, w in MISTAKES["fold_summary"]], rtol=1e-9, atol=1e-9,
                  rules=[(lambda got, case: bool((got[len(case.args[0]):2 * len(case.args[0])] >= 0).all()),
                          "a std is never negative")])
    paper_like = {0: [42.1, 41.6, 42.5, 42.0, 41.9], 1: [53.0, 53.3, 52.8, 53.1, 52.9],
                  2: [51.4, 51.0, 51.3, 50.9, 51.2], 3: [41.3, 41.8, 41.5, 41.0, 41.6]}
    one_fold = {2: [10.0, 20.0, 30.0, 40.0, 50.0]}
    return _run(ex, fn, [Case("four folds of five runs", (paper_like,), _summary(_fold_summary(paper_like))),
                         Case("one fold whose runs spread widely", (one_fold,), _summary(_fold_summary(one_fold)))])


TABLE_REPORTS = {
    "a": "fold 0, 1-shot: 41.6 ± 0.4 where the paper has 42.3.",
    "b": "5-shot below 1-shot on all four folds (mean 44.9 against 48.0), each std under 0.6.",
    "c": "every fold's std over its 5 runs is 0.0, to one decimal.",
    "d": "fold 1 is about 11 points above fold 0 in both rows.",
    "e": "the 1-shot mean is 49.8 with fold stds of 0.3 to 0.7; our run of the same code on another GPU gave 48.2.",
}
TABLE_VERDICTS = {
    "a": (False, "noise: the authors' own rerun of fold 0 1-shot gave 41.58 (kaixin96/PANet#3), 0.7 below their "
                 "published 42.3"),
    "b": (True, "a bug: five support prototypes averaged are steadier than one; 5-shot below 1-shot on every "
                "fold points at the shot averaging (or a 5-shot model tested with 1 shot)"),
    "c": (True, "a bug: 5 runs of 1,000 episodes drawn with seeds 1234..1238 differ by tenths of a point; a std of "
                "0.0 means every run drew the same episodes (the seed is not advanced per run)"),
    "d": (False, "expected: folds differ a lot, in the paper too (fold 1, with bus, car, cat, chair and cow, is the "
                 "easiest); compare each fold with its own paper number"),
    "e": (False, "not a bug by itself: 1.6 points between two runs is more than the test's std, but retraining moves "
                 "a model more than the test episodes do (nondeterministic GPU kernels); train more seeds before "
                 "calling it a bug"),
}


def check_table_diagnosis(suspects) -> bool:
    """suspects: the letters of the reports in TABLE_REPORTS that point to a bug rather than noise.

    A wrong set is told how many of its five verdicts are wrong, not which; a right one reads
    every report's explanation."""
    name = "reading a results table"
    if suspects is None or (isinstance(suspects, (set, list, tuple, str)) and not suspects):
        return _report(name, False, "not answered yet: set `suspects` to the letters you suspect, e.g. {'a'}")
    letters = {str(s).strip().lower() for s in (suspects if not isinstance(suspects, str) else suspects.split(","))}
    unknown = letters - set(TABLE_REPORTS)
    if unknown:
        return _report(name, False, f"unknown report(s) {sorted(unknown)}: choose among {sorted(TABLE_REPORTS)}")
    bugs = {k for k, (bug, _) in TABLE_VERDICTS.items() if bug}
    if letters == bugs:
        return _report(name, True, "; ".join(f"{k}: {TABLE_VERDICTS[k][1]}" for k in sorted(TABLE_REPORTS)))
    # How many verdicts are wrong, never which: naming them would hand out the answer on the first try.
    wrong = len(letters ^ bugs)
    return _report(name, False, f"{wrong} of your {len(TABLE_REPORTS)} verdicts {'is' if wrong == 1 else 'are'} "
                                f"wrong: flagged reports that are noise or expected, or bugs left unflagged; read "
                                f"the reports again and try another set")


# ----------------------------------------------------------------------------- chapter 9

def self_support_reference(features, scores, *, fg_threshold: float = 0.7, bg_threshold: float = 0.6,
                           softmax: bool = True, fallback: bool = True, weighted: bool = False):
    """SSP's global self-support prototypes of one query, with switches for the usual mistakes:
    features (C, h, w), scores (2, h, w) [bg, fg] -> (fg (C,), bg (C,))."""
    prob = (scores.softmax(dim=0) if softmax else scores).flatten(1)  # (2, h*w)
    feats = features.flatten(1)  # (C, h*w)
    out = []
    for channel, threshold in ((1, fg_threshold), (0, bg_threshold)):
        p = prob[channel]
        chosen = p > threshold
        if fallback and not chosen.any():
            chosen = torch.zeros_like(chosen)
            chosen[p.topk(min(TOP_K, p.numel())).indices] = True
        weights = chosen.to(feats.dtype) * (p if weighted else 1.0)
        out.append((feats * weights).sum(dim=1) / weights.sum())
    return tuple(out)


MISTAKES["self_support"] = [
    ("swapping the thresholds (foreground is P(fg) > 0.7, background P(bg) > 0.6)",
     lambda f, s: self_support_reference(f, s, fg_threshold=0.6, bg_threshold=0.7)),
    ("thresholding the scores instead of their softmax (the thresholds are probabilities)",
     lambda f, s: self_support_reference(f, s, softmax=False)),
    ("weighting the confident pixels by their probability (SSP takes their plain mean)",
     lambda f, s: self_support_reference(f, s, weighted=True)),
]


def check_self_support(fn: Callable) -> bool:
    """fn(features (C, h, w), scores (2, h, w) [bg, fg]) -> (fg (C,), bg (C,)): SSP's self-support
    prototypes, the means of the query features whose P(fg) > 0.7 and whose P(bg) > 0.6, each
    falling back on its 12 most probable pixels when no pixel passes.

    Four cases: a query with confident pixels of both kinds, one where no pixel is confident
    foreground (the fallback), one where none is confident of either, and one with only 3
    confident foreground pixels (no fallback: it is for when none passes)."""
    ex = Exercise("self-support prototypes", "means of the confident query features",
                  as_tensor=lambda r: _pair(r, "(fg, bg), two prototypes of C channels"),
                  shape_hints=[(lambda g, e: len(g) == 3 and g[:2] == e[:2],
                                "average over the chosen pixels: one vector of C per prototype")],
                  rules=[(lambda got, case: not bool(got.isnan().any()),
                          "a prototype is NaN: when no pixel passes its threshold, average the 12 most probable "
                          "pixels instead (the mean of nothing is 0 / 0)")],
                  mistakes=MISTAKES["self_support"], rtol=1e-5, atol=1e-6)
    feats = _features(21, 6, 5, 6)
    confident = _features(22, 2, 5, 6) * 2.0
    confident[1, :2] += 3.0  # the top rows are surely foreground
    gap = torch.rand(5, 6, generator=torch.Generator().manual_seed(23))  # distinct values: no ties in the top 12
    # The background scores vary, so that ranking pixels by the raw foreground score is not ranking them by P(fg).
    base = _features(24, 5, 6) * 2.0
    unsure_fg = torch.stack([base, base + 3.8 * gap - 3.0])  # fg - bg in (-3, 0.8): P(fg) < 0.69 everywhere
    unsure = torch.stack([base, base + 0.6 * gap - 0.3])  # P within 0.43..0.57: nothing confident
    few = unsure_fg.clone()
    few[1, 0, :3] += 5.0  # three confident foreground pixels: fewer than 12, but no fallback
    cases = []
    for label, scores in (("a query with confident pixels of both kinds", confident),
                          ("a query with no confident foreground pixel (P(fg) below 0.7 everywhere)", unsure_fg),
                          ("a query with no confident pixel at all (P between 0.43 and 0.57)", unsure),
                          ("a query with only 3 confident foreground pixels", few)):
        ref = self_support_prototypes(feats[None], scores[None])
        cases.append(Case(label, (feats, scores), torch.stack([ref["fg"][0], ref["bg"][0]])))
    return _run(ex, fn, cases)


# ----------------------------------------------------------------------------- chapter 10

def _nearest_cells(mask: torch.Tensor, patch: int) -> torch.Tensor:
    H, W = mask.shape
    return F.interpolate(mask[None, None], size=(H // patch, W // patch), mode="nearest")[0, 0]


MISTAKES["patch_coverage"] = [
    ("nearest downsampling (it keeps one pixel of each patch, not the share of its area)", _nearest_cells),
    ("bilinear downsampling without antialiasing (it reads a few pixels near each patch's centre)",
     lambda m, p: F.interpolate(m[None, None], size=(m.shape[0] // p, m.shape[1] // p), mode="bilinear",
                                align_corners=False)[0, 0]),
    ("reshaping to (h, w, patch, patch) directly (rows of different patches get mixed: split each side "
     "into (cells, patch) first)",
     lambda m, p: m.reshape(m.shape[0] // p, m.shape[1] // p, p, p).mean(dim=(2, 3))),
    ("counting the pixels instead of their share (divide by patch x patch)",
     lambda m, p: m.unflatten(0, (m.shape[0] // p, p)).unflatten(2, (m.shape[1] // p, p)).sum(dim=(1, 3))),
]


def check_patch_coverage(fn: Callable) -> bool:
    """fn(mask (H, W) float 0/1, patch) -> (H / patch, W / patch): the share of each patch inside the mask."""
    from .foundation import patch_coverage

    ex = Exercise("patch coverage", "the mean of the mask over each patch's pixels", mistakes=MISTAKES["patch_coverage"],
                  shape_hints=[(lambda g, e: g == e[::-1], "rows first: (H / patch, W / patch)"),
                               (lambda g, e: len(g) == 4, "average over the two within-patch dimensions")],
                  rules=[(lambda got, case: bool(((got >= 0) & (got <= 1)).all()),
                          "a share of a patch lies in [0, 1]")])
    half = torch.zeros(28, 42)
    half[:, :21] = 1  # the left half: the middle column of patches is half covered
    cases = [Case(label, (mask, patch), patch_coverage(mask, patch)) for label, mask, patch in (
        ("a 28x42 mask covering its left half, 14-px patches", half, 14),
        ("a random 42x28 mask, 14-px patches", _mask(3, 42, 28, p=0.5), 14),
        ("a random 12x20 mask, 4-px patches", _mask(4, 12, 20, p=0.3), 4))]
    return _run(ex, fn, cases)
