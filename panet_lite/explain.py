"""What the course's widgets show, computed as plain data: episodes, similarity maps, one pixel's
cosines, PAR step by step, SSP step by step, the metric episode by episode.

Each function takes an episode (an `EpisodeDataset` item) or a model and returns tensors and
numbers in a dict; `viz` draws them and `widgets` wires them to controls. Nothing here needs
ipywidgets, IPython or matplotlib: tests and scripts call these directly.

A model is shown through its own matching: `similarity_maps` asks `model.matching` (its method
object, see methods.py) how to pool the supports, how to match the query, at which scale
(`model.alpha`) and how to upsample, so an MLC- or SSP-trained model is seen as it predicts.
`ssp_steps` runs SSP's matching (the registry's "ssp" method) on any encoder's features.

The episodes come from `EpisodeDataset`, i.e. from PANet's sampler: episode `index` of the
stream `seed` is the one the sampler draws after episodes 0..index-1 (see `episode_title`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .alignment import alignment_loss, alignment_terms
from .data import IGNORE, IMAGENET_STATS, SegmentationSource, Stats, fold_classes, train_classes
from .episodes import EpisodeDataset, resize_pair
from .evaluate import class_argmax, predict
from .matching import prototype_scores
from .methods import get_method
from .metrics import IoUMeter
from .model import PANet
from .pooling import episode_prototypes
from .ssp import ssp_match


# ----------------------------------------------------------------------------- episodes

def split_classes(fold: int, split: str = "test", n_classes: int = 20) -> list[int]:
    """The global class ids episodes are drawn from: the fold's held-out classes ("test") or the others ("train")."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    return fold_classes(fold, n_classes) if split == "test" else train_classes(fold, n_classes)


def load_episode(source: SegmentationSource, classes: Sequence[int], ways: int = 1, shots: int = 1,
                 seed: int = 1234, index: int = 0, queries: int = 1, size: int | None = None,
                 stats: Stats = IMAGENET_STATS):
    """Episode `index` of the sampler's stream `seed`, as (Episode of image ids, EpisodeDataset item).

    The item holds support_images (N, K, 3, H, W), support_fg/support_bg (N, K, H, W),
    query_images (Q, 3, H, W), query_labels (Q, H, W) and class_ids (N,), unbatched. The images
    are normalised with `stats`: the encoder's (`model.input_stats`) when a model will encode them.
    """
    dataset = EpisodeDataset(source, classes, index + 1, ways, shots, queries, seed=seed, size=size, stats=stats)
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
def similarity_maps(model: PANet, item: dict, alpha: float | None = None, shots: int | None = None,
                    features: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """The model's matching step for one episode, every intermediate kept, as its method does it.

    The method is `model.matching`: its pooling makes the prototypes, its `match` the scores and its
    upsampling the logits, so a model trained with MLC or SSP is shown through its own matching
    (with all shots and `alpha` None, the logits are the model's own). `alpha` is the cosine scale,
    `model.alpha` by default (PANet's 20, MLC's and SSP's 10).

    Uses the first `shots` supports of each way (all of them by default), so one episode drawn
    with 5 shots shows 1..5-shot prototypes for the same query. `features` are the episode's
    (support, query) features from `encode_episode`, to skip the encoder. Returns a dict:
      method                       the method object that matched (`model.matching`)
      shot_fg, shot_bg (N, k, C)   each support pooled by the method (fg and bg masks)
      prototypes (1 + N, C)        [bg, way 1, ..., way N], as in `episode_prototypes` with that pooling
      cosine (Q, 1 + N, h, w)      cos(F_q(x), p_j) at feature resolution
      scores (Q, 1 + N, h, w)      the method's scores: alpha * cosine for PANet and MLC, the
                                   self-support matching's for SSP
      logits (Q, 1 + N, H, W)      scores upsampled to the image (bilinear, the method's corners)
      probs (Q, 1 + N, H, W)       softmax over j of the logits
      pred (Q, H, W)               argmax of the logits; alpha > 0 never changes PANet's
      iou (1 + N,)                 episode_iou of pred against the query labels
      miou                         mean of the ways' IoUs (those that are defined)
    """
    method = model.matching
    alpha = model.alpha if alpha is None else alpha
    support_feats, query_feats = features if features is not None else encode_episode(model, item)
    K = support_feats.shape[1]
    shots = K if shots is None else shots
    if not 1 <= shots <= K:
        raise ValueError(f"shots must be in 1..{K} for this episode, got {shots}")
    feats = support_feats[:, :shots]
    fg, bg = item["support_fg"][:, :shots], item["support_bg"][:, :shots]
    prototypes = episode_prototypes(feats[None], fg[None], bg[None], method.pool)[0]  # (1 + N, C)
    cosine = prototype_scores(query_feats[None], prototypes[None], alpha=1.0)[0]  # (Q, 1 + N, h, w)
    scores = method.match(feats[None], query_feats[None], fg[None], bg[None], alpha, model.refine)[0][0]
    logits = method.upsample(scores, tuple(item["query_labels"].shape[-2:]))
    pred = class_argmax(logits, dim=1)
    N = prototypes.shape[0] - 1
    iou = episode_iou(pred, item["query_labels"], N)
    return {
        "method": method, "alpha": alpha, "shots": shots,
        "shot_fg": method.pool(feats, fg), "shot_bg": method.pool(feats, bg),
        "prototypes": prototypes, "cosine": cosine, "scores": scores, "logits": logits,
        "probs": logits.softmax(dim=1), "pred": pred, "iou": iou,
        "miou": iou[1:].nanmean().item(),
    }


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


# ----------------------------------------------------------------------------- one query pixel

def pixel_cosine(maps: dict, item: dict, y: int, x: int, query: int = 0) -> dict:
    """What the matching sees at one query pixel (y, x) of `similarity_maps(...)`.

    The cosine maps live at feature resolution; a pixel's values are their bilinear upsampling by
    the method (`maps["method"].upsample`), the same that turns scores into logits (upsampling is
    linear, so where the scores are alpha * cosine, PANet's and MLC's, the logit of prototype j at
    the pixel is alpha times its upsampled cosine, and the argmax of either is the prediction).
    Returns cosine, logits and probs (1 + N,) over [bg, way 1, ..., way N], pred (the label
    predicted there) and label (the ground truth there: 0, a way, or 255).
    """
    H, W = item["query_labels"].shape[-2:]
    if not (0 <= y < H and 0 <= x < W):
        raise ValueError(f"pixel (y={y}, x={x}) is outside the {H}x{W} query")
    cosine = maps["method"].upsample(maps["cosine"][query:query + 1], (H, W))[0, :, y, x]
    logits = maps["logits"][query, :, y, x]
    return {"y": y, "x": x, "query": query, "cosine": cosine, "logits": logits, "probs": logits.softmax(dim=0),
            "pred": int(maps["pred"][query, y, x]), "label": int(item["query_labels"][query, y, x])}


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


# ----------------------------------------------------------------------------- SSP's self-support matching

SSP_STAGES = get_method("ssp").steps  # the matchings whose predictions ssp_steps keeps, in order


@torch.no_grad()
def ssp_steps(item: dict, features: tuple[torch.Tensor, torch.Tensor], shots: int | None = None,
              refine: bool = False, query: int = 0) -> dict:
    """SSP's matching (chapter 9) on query `query` of a 1-way episode, every step kept.

    `features` are (support, query) features from `encode_episode`, of any encoder: this is SSP's
    test-time matching, whatever the encoder was trained with. SSP's pooling, scale and upsampling
    are the registry's SSP method's (`get_method("ssp")`). The first `shots` supports are pooled
    as SSP pools them (mask brought down to the features) and averaged. Returns a dict:
      fg, bg (C,)                   the support prototypes
      match                         `ssp.ssp_match`'s output (first, second[, third] scores (1, 2, h, w), ...)
      fg_mask, bg_mask (h, w)       the confident query pixels the self-support prototypes average
      bg_fit (h, w)                 cos(F(x), the adaptive background prototype of pixel x)
      stages                        SSP_STAGES ("support", "self-support"[, "refined"]): the matchings in order
      probs, preds, iou             per stage: P(fg) (H, W) at image size, the prediction (H, W), the way's IoU
    The last stage is SSP's prediction: the one `PANet(method="ssp", refine=refine)` makes.
    """
    ssp = get_method("ssp")
    support_feats, query_feats = features
    N, K = support_feats.shape[:2]
    if ssp.max_ways is not None and N > ssp.max_ways:
        raise ValueError(f"{ssp.title} matches {ssp.max_ways}-way episodes, this one has {N} ways")
    shots = K if shots is None else shots
    if not 1 <= shots <= K:
        raise ValueError(f"shots must be in 1..{K} for this episode, got {shots}")
    feats = support_feats[0, :shots]
    fg = ssp.pool(feats, item["support_fg"][0, :shots]).mean(0)
    bg = ssp.pool(feats, item["support_bg"][0, :shots]).mean(0)
    q = query_feats[query:query + 1]
    match = ssp_match(q, fg[None], bg[None], refine, ssp.scale)
    # support matching, one self-support step, and with `refine` the refined scores (SSP's prediction)
    scores = dict(zip(ssp.steps[:3 if refine else 2], (match["first"], match["second"], match["scores"])))
    label = item["query_labels"][query]
    probs, preds, iou = {}, {}, {}
    for stage, sc in scores.items():
        logits = ssp.upsample(sc, tuple(label.shape))[0]
        probs[stage], preds[stage] = logits.softmax(dim=0)[1], logits.argmax(dim=0)
        iou[stage] = episode_iou(preds[stage][None], label[None], 1)[1].item()
    ss = match["self_support"]
    bg_local = 0.3 * ss["bg"][..., None, None] + 0.7 * ss["bg_local"]  # the background prototype of each pixel
    return {"fg": fg, "bg": bg, "match": match, "shots": shots, "refine": refine,
            "fg_mask": ss["fg_mask"][0], "bg_mask": ss["bg_mask"][0],
            "bg_fit": F.cosine_similarity(q, bg_local, dim=1)[0], "stages": tuple(scores),
            "probs": probs, "preds": preds, "iou": iou}


# ----------------------------------------------------------------------------- the metric, episode by episode

METERS = {"faithful": False, "corrected": True}  # name -> IoUMeter's count_absent_fp


@torch.no_grad()
def episode_counts(model: PANet, source: SegmentationSource, classes: Sequence[int], ways: int = 1, shots: int = 1,
                   episodes: int = 100, seed: int = 1234, size: int | None = None, batch_size: int = 25) -> dict:
    """Predict `episodes` test episodes (one query each, the sampler's stream `seed`: with seed 1234
    the episodes of `evaluate`'s first run) and keep each episode's own TP, FP and FN per global
    class under both meters. Returns {"faithful": (3, E, C + 1), "corrected": (3, E, C + 1)}
    (rows TP, FP, FN; column 0 is background)."""
    dataset = EpisodeDataset(source, classes, episodes, ways, shots, 1, seed=seed, size=size, stats=model.input_stats)
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
