"""Every exercise checker rejects wrong answers written the way learners write them, beyond its own
`MISTAKES` list, and accepts the reference solution.

Each entry of WRONG is (what the learner did, their function). They are plausible slips, not
contrived ones: a remap done in place one way after another, the first way's class used whatever
`class_id` says, an alpha hard-coded to 20, a fallback taken on raw scores... A checker passes a
wrong answer only when its cases miss the situation the slip gets wrong, so every entry here names
a situation a real episode has (ids that collide with way numbers, ways out of ascending order, the
second way's support, an empty shot, a query that predicts no background...).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from panet_lite import checks
from panet_lite.synthetic import write_voc_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))

IGNORE, EPS = 255, 1e-5


def _up(f, size, mode="bilinear"):
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(f[None], size=tuple(size), mode=mode, **kw)[0]


# ----------------------------------------------------------------------------- chapter 1: episode labels

def labels_remapped_in_place(label, classes):
    out = label.clone()
    out[~torch.isin(label, torch.tensor(list(classes))) & (label != IGNORE)] = 0
    for w, c in enumerate(classes):
        out[out == c] = w + 1  # a class id equal to an earlier way's number is remapped twice
    return out


def labels_others_dropped_by_id(label, classes):
    out = label.clone()
    for w, c in enumerate(classes):
        out[label == c] = w + 1
    out[(out > len(classes)) & (out != IGNORE)] = 0  # a class outside the episode whose id is <= N survives
    return out


def labels_written_into_the_input(label, classes):
    others = ~torch.isin(label, torch.tensor(list(classes))) & (label != IGNORE)
    ways = [label == c for c in classes]
    for w, where in enumerate(ways):
        label[where] = w + 1  # right values, but the caller's label is overwritten
    label[others] = 0
    return label


def labels_ways_counted_from_one_twice(label, classes):
    out = torch.where(label == IGNORE, IGNORE, 0)
    for w, c in enumerate(classes, start=1):
        out[label == c] = w + 1
    return out


def labels_first_way_only(label, classes):
    out = torch.where(label == IGNORE, IGNORE, 0)
    out[label == classes[0]] = 1
    return out


# ----------------------------------------------------------------------------- chapter 1: support masks

def masks_of_the_first_way(label, class_id, classes):
    fg = label == classes[0]  # whatever class_id says
    bg = ~torch.isin(label, torch.tensor(list(classes)))
    return fg.float(), bg.float()


def masks_two_ways_hard_coded(label, class_id, classes):
    fg = label == class_id
    bg = (label != classes[0]) & (label != classes[-1])  # right for 1 and 2 ways only
    return fg.float(), bg.float()


def masks_written_into_the_input(label, class_id, classes):
    for c in classes:
        if c != class_id:
            label[label == c] = -1  # mark the other ways... in the caller's label
    fg = label == class_id
    bg = (label != class_id) & (label != -1)
    return fg.float(), bg.float()


def masks_swapped(label, class_id, classes):
    fg = label == class_id
    bg = ~torch.isin(label, torch.tensor(list(classes)))
    return bg.float(), fg.float()


def masks_borders_as_foreground(label, class_id, classes):
    fg = (label == class_id) | (label == IGNORE)  # "the border belongs to the object"
    bg = ~torch.isin(label, torch.tensor(list(classes))) & (label != IGNORE)
    return fg.float(), bg.float()


def masks_way_numbers_for_ids(label, class_id, classes):
    fg = label == class_id
    bg = ~torch.isin(label, torch.arange(1, len(classes) + 1))  # way numbers where class ids belong
    return fg.float(), bg.float()


# ----------------------------------------------------------------------------- chapter 2

def pool_by_indexing(f, m):
    return _up(f, m.shape)[:, m.bool()].mean(dim=1)  # NaN on an empty mask


def pool_plus_one(f, m):
    return (_up(f, m.shape) * m).sum(dim=(1, 2)) / (m.sum() + 1)


def pool_bicubic(f, m):
    return (_up(f, m.shape, "bicubic") * m).sum(dim=(1, 2)) / (m.sum() + EPS)


def pool_times_eight(f, m):
    up = F.interpolate(f[None], scale_factor=8, mode="bilinear", align_corners=False)[0]  # stride 8 assumed exact
    return (up * m).sum(dim=(1, 2)) / (m.sum() + EPS)


def pool_no_division(f, m):
    return (_up(f, m.shape) * m).sum(dim=(1, 2))


def _pools(f, masks):
    N, K = masks.shape[:2]
    return torch.stack([torch.stack([(_up(f[w, k], masks.shape[-2:]) * masks[w, k]).sum(dim=(1, 2))
                                     / (masks[w, k].sum() + EPS) for k in range(K)]) for w in range(N)])


def protos_skipping_empty_shots(f, fg, bg):
    fg_pools = _pools(f, fg)
    nonempty = (fg.sum(dim=(2, 3)) > 0).float()  # (N, K)
    fg_protos = (fg_pools * nonempty[..., None]).sum(dim=1) / nonempty.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.cat([_pools(f, bg).mean(dim=(0, 1))[None], fg_protos])


def protos_background_pixels_pooled(f, fg, bg):
    N, K = bg.shape[:2]
    up = torch.stack([torch.stack([_up(f[w, k], bg.shape[-2:]) for k in range(K)]) for w in range(N)])
    bg_proto = (up * bg[:, :, None]).sum(dim=(0, 1, 3, 4)) / (bg.sum() + EPS)
    return torch.cat([bg_proto[None], _pools(f, fg).mean(dim=1)])


def protos_background_from_not_fg(f, fg, bg):
    return torch.cat([_pools(f, 1 - fg).mean(dim=(0, 1))[None], _pools(f, fg).mean(dim=1)])


def protos_normalised(f, fg, bg):
    p = torch.cat([_pools(f, bg).mean(dim=(0, 1))[None], _pools(f, fg).mean(dim=1)])
    return F.normalize(p, dim=1)  # "cosine comes next anyway"


def protos_summed_over_shots(f, fg, bg):
    return torch.cat([_pools(f, bg).mean(dim=(0, 1))[None], _pools(f, fg).sum(dim=1)])


# ----------------------------------------------------------------------------- chapter 3

def scores_alpha_hard_coded(q, p, alpha):
    return 20.0 * torch.einsum("jc,chw->jhw", F.normalize(p, dim=1), F.normalize(q, dim=0))


def scores_softmax_over_prototypes(q, p, alpha):
    return (alpha * torch.einsum("jc,chw->jhw", F.normalize(p, dim=1), F.normalize(q, dim=0))).softmax(dim=0)


def scores_normalised_over_rows(q, p, alpha):
    return alpha * torch.einsum("jc,chw->jhw", F.normalize(p, dim=1), F.normalize(q, dim=1))


def scores_without_clamp(q, p, alpha):
    return alpha * torch.einsum("jc,chw->jhw", p / p.norm(dim=1, keepdim=True), q / q.norm(dim=0, keepdim=True))


def scores_divided_by_alpha(q, p, alpha):
    return torch.einsum("jc,chw->jhw", F.normalize(p, dim=1), F.normalize(q, dim=0)) / alpha


# ----------------------------------------------------------------------------- chapter 4

def _par(s, q, scores, fg, bg, *, soft=False, first_query=False, pixel_mean=False, alpha=20.0, eps=EPS):
    N, K = fg.shape[:2]
    H, W = fg.shape[-2:]
    J = scores.shape[1]
    if soft:
        masks = scores.softmax(dim=1)  # (Q, J, h, w)
    else:
        masks = F.one_hot(scores.argmax(dim=1), J).permute(0, 3, 1, 2).to(q.dtype)
    area = masks.sum(dim=(0, 2, 3))
    protos = torch.einsum("qchw,qjhw->jc", q, masks) / (area[:, None] + eps)
    present = masks[0].sum(dim=(1, 2)) if first_query else area
    total, pixels, loss = 0.0, 0, q.new_zeros(())
    for w in range(N):
        if present[1 + w] == 0:
            continue
        pair = torch.stack([protos[0], protos[1 + w]])
        for k in range(K):
            cos = F.cosine_similarity(s[w, k][None], pair[:, :, None, None], dim=1)
            logits = F.interpolate(alpha * cos[None], size=(H, W), mode="bilinear", align_corners=False)
            target = torch.full((1, H, W), IGNORE, dtype=torch.long)
            target[0][fg[w, k] == 1] = 1
            target[0][bg[w, k] == 1] = 0
            if pixel_mean:
                total = total + F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
                pixels += int((target != IGNORE).sum())
            elif (target != IGNORE).any():
                loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE) / (N * K)
    return total / max(pixels, 1) if pixel_mean else loss


WRONG_PAR = {
    "query prototypes from the softmax probabilities instead of the argmax prediction": dict(soft=True),
    "a way kept or skipped by the first query's prediction only": dict(first_query=True),
    "one mean over all supports' labelled pixels (each support's mean, then / (N K))": dict(pixel_mean=True),
    "no alpha in the supports' cosine": dict(alpha=1.0),
    "no 1e-5 in the query prototypes' division (0 / 0 where the query predicts no background)": dict(eps=0.0),
}


# ----------------------------------------------------------------------------- chapter 5

WRONG_LR = {
    "gamma hard-coded as 0.1": lambda s, b, ms, g: b * 0.1 ** sum(m <= s for m in ms),
    "gamma times the milestones passed (not gamma to their power)":
        lambda s, b, ms, g: b * (g * sum(m <= s for m in ms) or 1.0),
    "gamma ** len(milestones) once the first milestone is passed":
        lambda s, b, ms, g: b * (g ** len(ms) if s >= ms[0] else 1.0),
    "the last milestone only": lambda s, b, ms, g: b * (g if s >= ms[-1] else 1.0),
}


def _step(model, optimizer, scheduler, batch, *, zero_grad=True, par=1.0, par_item=False, sched=True,
          first_query=False, sched_first=False):
    out = model(batch["support_images"], batch["support_fg"], batch["support_bg"], batch["query_images"])
    logits, labels = out.logits, batch["query_labels"]
    if first_query:
        logits, labels = logits[:, :1], labels[:, :1]
    seg = F.cross_entropy(logits.flatten(0, 1), labels.flatten(0, 1), ignore_index=IGNORE)
    loss = seg + par * (out.align_loss.item() if par_item else out.align_loss)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if sched_first:
        scheduler.step()
    optimizer.step()
    if sched and not sched_first:
        scheduler.step()
    return loss


WRONG_STEP = {
    "the scheduler never stepped": dict(sched=False),
    "PAR added as a number (out.align_loss.item(): no gradient flows from it)": dict(par_item=True),
    "the segmentation loss of the first query only": dict(first_query=True),
    "PAR with weight 0.1": dict(par=0.1),
}


# ----------------------------------------------------------------------------- chapter 6

def _iou(tp, fp, fn):
    union = tp + fp + fn
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(union, float("nan")))


def _class_iou(episodes, n, *, sort_ids=False, record_pred=False, local=False, precision=False):
    tp, fp, fn = (torch.zeros(n + 1, dtype=torch.float64) for _ in range(3))
    for pred, target, ids in episodes:
        ids = sorted(ids) if sort_ids else list(ids)
        valid = target != IGNORE
        for j, c in enumerate([0] + ids):
            c = j if local else c
            truth, predicted = target == j, (pred == j) & valid
            if not (predicted.any() if record_pred else truth.any()):
                continue
            tp[c] += (predicted & truth).sum()
            fp[c] += (predicted & ~truth).sum()
            fn[c] += 0 if precision else (truth & ~predicted).sum()
    return _iou(tp, fp, fn)


WRONG_IOU = {
    "the ways' ids sorted (way w is class_ids[w], in the order given)": dict(sort_ids=True),
    "a label recorded where the prediction holds it (PANet: where the ground truth does)": dict(record_pred=True),
    "episode-local labels used as global ids": dict(local=True),
    "TP / (TP + FP), the precision": dict(precision=True),
}


# ----------------------------------------------------------------------------- chapter 7

def _lists(voc, split, classes, *, as_set=False, suffix=False, split_as=None, folder="SegmentationClassAug"):
    voc = Path(voc)
    ids = (voc / "ImageSets" / "Segmentation" / f"{split_as or split}.txt").read_text().split()
    present = {i: set(np.unique(np.array(Image.open(voc / folder / f"{i}.png"))).tolist()) for i in ids}
    out = []
    for c in classes:
        members = {i for i in ids if c in present[i]} if as_set else sorted(i for i in ids if c in present[i])
        out.append([f"{i}.png" for i in members] if suffix else list(members))
    return out


WRONG_LISTS = {
    "a set per class, in no particular order": dict(as_set=True),
    "file names ('2007_000032.png') instead of image ids": dict(suffix=True),
    "the trainaug split whatever `split` says": dict(split_as="trainaug"),
    "masks read from SegmentationClass (VOC's own masks, not the augmented set)":
        dict(folder="SegmentationClass"),
}


# ----------------------------------------------------------------------------- chapter 8

def _summary(runs, *, variance=False, pooled=False, rounded=False):
    folds = sorted(runs)
    t = torch.tensor([runs[f] for f in folds], dtype=torch.float64)
    means = t.mean(dim=1)
    stds = t.var(dim=1, correction=0) if variance else t.std(dim=1, correction=0)
    if pooled:
        stds = t.flatten().std(correction=0).expand(len(folds))
    if rounded:
        means = torch.round(means * 10) / 10
    return means.tolist(), stds.tolist(), means.mean().item()


WRONG_SUMMARY = {
    "the variance instead of the std": dict(variance=True),
    "the std of all runs of all folds together": dict(pooled=True),
    "the fold means rounded to one decimal before the overall mean": dict(rounded=True),
}

WRONG_SUSPECTS = {"only b": {"b"}, "a, b and c": {"a", "b", "c"}, "c and e": {"c", "e"},
                  "everything": {"a", "b", "c", "d", "e"}, "d": "d"}


# ----------------------------------------------------------------------------- chapter 9

def _ssp(features, scores, *, raw_topk=False, at_least_k=False, sigmoid=False, bg_not_fg=False):
    prob = torch.sigmoid(scores[1] - 0 * scores[0]).flatten() if sigmoid else scores.softmax(dim=0)[1].flatten()
    prob_bg = 1 - prob
    feats = features.flatten(1)
    raw = scores[1].flatten()

    def mean(p, rank, threshold):
        chosen = (p > threshold).nonzero().squeeze(1)
        if chosen.numel() == 0 or (at_least_k and chosen.numel() < 12):
            chosen = rank.topk(12).indices
        return feats[:, chosen].mean(dim=1)

    fg = mean(prob, raw if raw_topk else prob, 0.7)
    if bg_not_fg:
        return fg, feats[:, prob <= 0.7].mean(dim=1)
    return fg, mean(prob_bg, -raw if raw_topk else prob_bg, 0.6)


WRONG_SSP = {
    "the fallback's 12 pixels ranked by the raw foreground score, not by P(fg)": dict(raw_topk=True),
    "the fallback taken whenever fewer than 12 pixels pass (SSP: only when none does)": dict(at_least_k=True),
    "P(fg) as the sigmoid of the foreground score alone": dict(sigmoid=True),
    "the background as every pixel that is not confident foreground": dict(bg_not_fg=True),
}


def _wrapped(fn, **kw):
    return lambda *a: fn(*a, **kw)


def _cells(m, p):
    return m.unflatten(0, (m.shape[0] // p, p)).unflatten(2, (m.shape[1] // p, p))


WRONG_COVERAGE = {
    "rows and columns swapped (a transposed result)": lambda m, p: _cells(m, p).mean(dim=(1, 3)).T,
    "avg_pool2d with stride 1 (overlapping windows)": lambda m, p: F.avg_pool2d(m[None, None], p, stride=1)[0, 0],
    "the largest pixel of each patch (touched or not)": lambda m, p: _cells(m, p).amax(dim=(1, 3)),
    "the whole mask's share on every patch": lambda m, p: torch.full((m.shape[0] // p, m.shape[1] // p),
                                                                     m.mean().item()),
    "the count floor-divided by the patch's area": lambda m, p: _cells(m, p).sum(dim=(1, 3)) // (p * p),
}

WRONG = {
    "episode_labels": [("a remap done in place, one way after another", labels_remapped_in_place),
                       ("classes outside the episode dropped by id > N", labels_others_dropped_by_id),
                       ("the caller's label overwritten in place", labels_written_into_the_input),
                       ("ways counted from 1 and then + 1", labels_ways_counted_from_one_twice),
                       ("the first way only", labels_first_way_only)],
    "support_masks": [("the first way's class whatever class_id says", masks_of_the_first_way),
                      ("two ways hard-coded (classes[0], classes[-1])", masks_two_ways_hard_coded),
                      ("the caller's label overwritten in place", masks_written_into_the_input),
                      ("(bg, fg) returned swapped", masks_swapped),
                      ("255 borders taken as foreground", masks_borders_as_foreground),
                      ("way numbers used as class ids for the background", masks_way_numbers_for_ids)],
    "masked_average_pool": [("a mean over the mask's pixels by boolean indexing", pool_by_indexing),
                            ("+ 1 instead of + 1e-5 in the divisor", pool_plus_one),
                            ("bicubic upsampling", pool_bicubic),
                            ("upsampling by a factor 8 instead of to the mask's size", pool_times_eight),
                            ("no division at all", pool_no_division)],
    "prototypes": [("shots with an empty mask left out of the average", protos_skipping_empty_shots),
                   ("the background's pixels pooled over all supports", protos_background_pixels_pooled),
                   ("the background taken as 1 - fg", protos_background_from_not_fg),
                   ("prototypes normalised to unit length", protos_normalised),
                   ("shots summed, not averaged", protos_summed_over_shots)],
    "prototype_scores": [("alpha hard-coded as 20", scores_alpha_hard_coded),
                         ("a softmax over the prototypes", scores_softmax_over_prototypes),
                         ("the features normalised over a spatial axis", scores_normalised_over_rows),
                         ("no clamp on the norms (0 / 0 at an all-zero pixel)", scores_without_clamp),
                         ("the cosine divided by alpha", scores_divided_by_alpha)],
    "alignment_loss": [(d, _wrapped(_par, **kw)) for d, kw in WRONG_PAR.items()],
    "learning_rate": list(WRONG_LR.items()),
    "training_step": [(d, _wrapped(_step, **kw)) for d, kw in WRONG_STEP.items()],
    "class_iou": [(d, _wrapped(_class_iou, **kw)) for d, kw in WRONG_IOU.items()],
    "fold_summary": [(d, _wrapped(_summary, **kw)) for d, kw in WRONG_SUMMARY.items()],
    "self_support": [(d, _wrapped(_ssp, **kw)) for d, kw in WRONG_SSP.items()],
    "patch_coverage": list(WRONG_COVERAGE.items()),
}

CHECKERS = {"episode_labels": "check_episode_labels", "support_masks": "check_support_masks",
            "masked_average_pool": "check_masked_average_pool", "prototypes": "check_prototypes",
            "prototype_scores": "check_prototype_scores", "alignment_loss": "check_alignment_loss",
            "learning_rate": "check_learning_rate", "training_step": "check_training_step",
            "class_iou": "check_class_iou", "fold_summary": "check_fold_summary",
            "self_support": "check_self_support", "patch_coverage": "check_patch_coverage"}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc_tree(tmp_path_factory.mktemp("voc"), n_train=60, n_val=30, size=32)


def _line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[0]


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("exercise, description", [(k, d) for k, v in WRONG.items() for d, _ in v])
def test_a_wrong_answer_is_rejected(exercise, description, capsys):
    wrong = dict(WRONG[exercise])[description]
    assert getattr(checks, CHECKERS[exercise])(wrong) is False, f"{exercise}: '{description}' passed"
    assert _line(capsys).startswith("[FAIL]")


@pytest.mark.parametrize("description", list(WRONG_LISTS))
def test_a_wrong_class_list_is_rejected(description, voc, capsys):
    assert checks.check_class_lists(_wrapped(_lists, **WRONG_LISTS[description]), voc) is False, description
    assert _line(capsys).startswith("[FAIL]")


@pytest.mark.parametrize("description", list(WRONG_SUSPECTS))
def test_a_wrong_table_diagnosis_is_rejected(description, capsys):
    assert checks.check_table_diagnosis(WRONG_SUSPECTS[description]) is False
    assert _line(capsys).startswith("[FAIL]")


def test_every_checker_has_three_wrong_answers_beyond_its_mistakes():
    assert set(WRONG) == set(CHECKERS)
    for exercise, answers in WRONG.items():
        assert len(answers) >= 3, exercise
    assert len(WRONG_LISTS) >= 3 and len(WRONG_SUSPECTS) >= 3


def test_the_reference_solutions_are_accepted(voc, capsys):
    from solutions import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09

    assert checks.check_episode_labels(ch01.my_episode_labels)
    assert checks.check_support_masks(ch01.my_support_masks)
    assert checks.check_masked_average_pool(ch02.my_masked_average_pool)
    assert checks.check_prototypes(ch02.my_prototypes)
    assert checks.check_prototype_scores(ch03.my_prototype_scores)
    assert checks.check_alignment_loss(ch04.my_alignment_loss)
    assert checks.check_learning_rate(ch05.my_learning_rate)
    assert checks.check_training_step(ch05.my_training_step)
    assert checks.check_class_iou(ch06.my_class_iou)
    assert checks.check_class_lists(ch07.my_class_lists, voc)
    assert checks.check_fold_summary(ch08.my_fold_summary)
    assert checks.check_table_diagnosis(ch08.suspects)
    assert checks.check_self_support(ch09.my_self_support)
    assert all(line.startswith("[PASS]") for line in capsys.readouterr().out.strip().splitlines())
