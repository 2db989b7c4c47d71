"""Exercise checkers: call one with your function; it prints one deterministic [PASS]/[FAIL] line."""
from __future__ import annotations

from typing import Callable

import torch

from .alignment import alignment_loss
from .episodes import episode_labels, support_masks
from .matching import prototype_scores
from .metrics import IoUMeter
from .pooling import episode_prototypes, masked_average_pool


def _report(name: str, ok: bool, detail: str) -> bool:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    return ok


def _compare(name: str, fn: Callable, args: tuple, expected: torch.Tensor, what: str) -> bool:
    try:
        got = fn(*args)
    except NotImplementedError:
        return _report(name, False, "not implemented yet: replace the `raise NotImplementedError` with your code")
    except Exception as exc:  # a learner's bug: say what went wrong, don't crash the notebook
        return _report(name, False, f"raised {type(exc).__name__}: {exc}")
    got = torch.as_tensor(got)
    if got.shape != expected.shape:
        return _report(name, False, f"shape {tuple(got.shape)}, expected {tuple(expected.shape)} ({what})")
    if not torch.allclose(got.double(), expected.double(), rtol=1e-5, atol=1e-6):
        err = (got.double() - expected.double()).abs().max().item()
        return _report(name, False, f"values differ from panet_lite's by up to {err:.3g} ({what})")
    return _report(name, True, f"matches panet_lite on shape {tuple(expected.shape)} ({what})")


def _features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mask(seed: int, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.6).float()


def check_masked_average_pool(fn: Callable) -> bool:
    """fn(features (C, h, w), mask (H, W)) -> (C,)."""
    feats, mask = _features(0, 16, 4, 5), _mask(1, 32, 40)
    return _compare("masked average pooling", fn, (feats, mask), masked_average_pool(feats, mask),
                    "features upsampled to the mask, then averaged over it")


def check_prototypes(fn: Callable) -> bool:
    """fn(support_features (N, K, C, h, w), fg (N, K, H, W), bg (N, K, H, W)) -> (1 + N, C)."""
    feats, fg, bg = _features(2, 3, 2, 8, 4, 4), _mask(3, 3, 2, 32, 32), _mask(4, 3, 2, 32, 32)
    expected = episode_prototypes(feats[None], fg[None], bg[None])[0]
    return _compare("episode prototypes", fn, (feats, fg, bg), expected, "[bg, way 1, ..., way N]")


def check_prototype_scores(fn: Callable) -> bool:
    """fn(query_features (C, h, w), prototypes (J, C), alpha) -> (J, h, w)."""
    feats, protos = _features(5, 8, 6, 7), _features(6, 3, 8)
    expected = prototype_scores(feats[None, None], protos[None], 20.0)[0, 0]
    return _compare("prototype scores", fn, (feats, protos, 20.0), expected, "alpha * cosine similarity")


def check_support_masks(fn: Callable) -> bool:
    """fn(label (H, W), class_id, episode_classes) -> (fg, bg), float 0/1, PANet's (faithful) rule."""
    label = torch.tensor([[0, 3, 3, 255], [7, 7, 3, 0], [12, 0, 255, 7]])
    fg, bg = support_masks(label, 3, [3, 7])
    return _compare("support masks", lambda *a: torch.stack([torch.as_tensor(m).float() for m in fn(*a)]),
                    (label, 3, [3, 7]), torch.stack([fg, bg]), "fg = the way's class, bg = no episode class")


def check_episode_labels(fn: Callable) -> bool:
    """fn(label (H, W), episode_classes) -> episode-local labels (H, W)."""
    label = torch.tensor([[0, 3, 5, 255], [7, 7, 3, 0]])
    return _compare("episode labels", fn, (label, [7, 3]), episode_labels(label, [7, 3]),
                    "0 bg, w+1 for way w, 255 kept, other classes -> 0")


def check_alignment_loss(fn: Callable) -> bool:
    """fn(support_features (N, K, C, h, w), query_features (Q, C, h, w), query_scores (Q, 1+N, h, w),
    fg (N, K, H, W), bg (N, K, H, W)) -> scalar, for one episode."""
    s, q = _features(7, 2, 2, 8, 4, 4), _features(8, 2, 8, 4, 4)
    fg, bg = _mask(9, 2, 2, 32, 32), _mask(10, 2, 2, 32, 32)
    bg = bg * (1 - fg)
    protos = episode_prototypes(s[None], fg[None], bg[None])
    scores = prototype_scores(q[None], protos)[0]
    expected = alignment_loss(s[None], q[None], scores[None], fg[None], bg[None])
    return _compare("alignment loss", fn, (s, q, scores, fg, bg), expected, "PAR for one 2-way 2-shot episode")


def check_class_iou(fn: Callable) -> bool:
    """fn(list of (pred (H, W), target (H, W), class_ids) episodes, num_classes) -> IoU per global id."""
    g = torch.Generator().manual_seed(11)
    episodes = []
    for _ in range(12):
        ids = (torch.randperm(6, generator=g)[:2] + 1).tolist()
        target = torch.randint(0, 3, (10, 10), generator=g)
        target[torch.rand(10, 10, generator=g) < 0.1] = 255
        episodes.append((torch.randint(0, 3, (10, 10), generator=g), target, ids))
    meter = IoUMeter(6)
    for pred, target, ids in episodes:
        meter.update(pred, target, ids)
    expected = torch.nan_to_num(meter.class_iou(), nan=-1.0)
    return _compare("class IoU", lambda *a: torch.nan_to_num(torch.as_tensor(fn(*a)).double(), nan=-1.0),
                    (episodes, 6), expected, "TP, FP, FN summed over episodes, then IoU per class")
