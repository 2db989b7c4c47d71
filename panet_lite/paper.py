"""The published numbers (mIoU and FB-IoU in %): PANet's (VGG-16), one figure filed under PANet that is not
in its paper, and, for comparison, those of later methods with the test each was measured under. The one
source of truth for every table. Every number says where it was read; what we could not check says so."""
from __future__ import annotations

from dataclasses import dataclass

PAPER_URL = "https://arxiv.org/abs/1908.06391"


def authors_issue(number: int) -> str:
    """A thread of the authors' repository in which they answered (kaixin96/PANet)."""
    return f"https://github.com/kaixin96/PANet/issues/{number}"


@dataclass(frozen=True)
class PaperResult:
    dataset: str  # "pascal5i" or "coco20i"
    ways: int
    shots: int
    backbone: str
    folds: tuple[float, ...] | None  # per-fold mIoU, where the paper gives them
    mean: float
    fb_iou: float | None
    source: str  # where each number of the row was read, and how directly
    in_paper: bool = True  # False: a number filed under PANet elsewhere, not one of PANet's paper


# Where the rows were read. We could read the paper's abstract (the two PASCAL-5i means) but not its tables;
# the other numbers were checked against the places named, which quote the paper.
_PASCAL = ("means: the paper's abstract (https://arxiv.org/abs/1908.06391); folds: the paper's per-fold table as "
           "quoted in the 'PANet' row of github.com/rezazad68/fewshot-segmentation's README (not read in the paper "
           "itself); FB-IoU: Papers with Code's PANet page, 'PANet (VGG-16)' "
           "(https://paperswithcode.com/paper/panet-few-shot-image-semantic-segmentation)")
_COCO = ("Papers with Code's PANet page, 'PANet (VGG-16)' "
         "(https://paperswithcode.com/paper/panet-few-shot-image-semantic-segmentation); not read in the paper itself")
_COCO_2WAY = ("not PANet's paper, whose backbone is VGG-16 and whose COCO-20i results are 1-way: Papers with "
              "Code's 'COCO-20i (2-way 1-shot)' leaderboard files 18.0 under 'PANet (ResNet-50)' (archived at "
              "https://paperswithcode2.com/paper/113165). Most likely a later paper's ResNet-50 re-implementation of "
              "PANet, such as the 'PANet*' baseline of PPNet (https://arxiv.org/abs/2007.06309, ECCV 2020), which "
              "reports 2-way COCO-20i results; we could not read the table it comes from")

PAPER_RESULTS = (
    PaperResult("pascal5i", 1, 1, "vgg16", (42.3, 58.0, 51.1, 41.2), 48.1, 66.5, _PASCAL),
    PaperResult("pascal5i", 1, 5, "vgg16", (51.8, 64.6, 59.8, 46.5), 55.7, 70.7, _PASCAL),
    PaperResult("coco20i", 1, 1, "vgg16", None, 20.9, 59.2, _COCO),
    PaperResult("coco20i", 1, 5, "vgg16", None, 29.7, 63.5, _COCO),
    PaperResult("coco20i", 2, 1, "resnet50", None, 18.0, None, _COCO_2WAY, in_paper=False),
)

# The paper's ablation of PAR: PASCAL-5i 1-way mean mIoU over the 4 folds, VGG-16, each model trained
# with or without the alignment loss and tested with PANet's protocol; shots -> (without PAR, with PAR).
# "With PAR" is PANet itself, the means of PAPER_RESULTS (the abstract). NOT CHECKED: the "without PAR"
# numbers were typed from memory of the paper's ablation table; we could not read that table or a quote of it.
PAR_ABLATION = {1: (47.2, 48.1), 5: (54.9, 55.7)}

# The paper's weak-annotation test: PASCAL-5i 1-way mean mIoU over the 4 folds, VGG-16, models trained on
# dense masks and tested with other support annotations; support -> {shots: mean}. "dense" is PANet itself
# (the abstract). NOT CHECKED: the scribble and bbox numbers were typed from memory of the paper's table; we
# could not read that table or a quote of it. The scribbles were the authors' own generated set; ours
# (`supports.scribble`) are other scribbles.
WEAK_SUPPORTS = {"dense": {1: 48.1, 5: 55.7}, "scribble": {1: 44.8, 5: 54.6}, "bbox": {1: 45.1, 5: 52.8}}

# The authors' own words, in their repository's issues (read there):
# - #3: after submission they re-ran all experiments; PASCAL-5i fold 0 1-shot gave 0.4158 (published: 42.3),
#   and 5-shot results are more stable than 1-shot ones.
# - #22: a gap of less than 0.5 mIoU from the paper could come from randomness alone.
# - #16: the 1-way 1-shot VOC task trains in about 3 hours on a GTX Titan X.
# - #30 (labelled bug, open): their meter underestimates false positives in N-way episodes when the query
#   does not hold every class of the episode (`IoUMeter(count_absent_fp=True)` counts them).
FOLD0_1SHOT_RERUN = 41.58
NOISE_LEVEL = 0.5
HOURS_PER_1SHOT_MODEL = 3  # on a GTX Titan X, VOC 1-way 1-shot; the authors gave no figure for 5-shot models

# Every number outside the tables above, with where it was read; "NOT CHECKED" where we could not check it.
READ_FROM = {
    "PAR_ABLATION": "NOT CHECKED: the paper's PAR ablation (without PAR); 'with PAR' = the abstract's means",
    "WEAK_SUPPORTS": "NOT CHECKED: the paper's weak-annotation table (scribble, bbox); 'dense' = the abstract's means",
    "FOLD0_1SHOT_RERUN": f"the authors, {authors_issue(3)}: 0.4158",
    "NOISE_LEVEL": f"the authors, {authors_issue(22)}: a gap under 0.5 mIoU could be due to randomness",
    "HOURS_PER_1SHOT_MODEL": f"the authors, {authors_issue(16)}: about 3 hours on a GTX Titan X, VOC 1-way 1-shot",
    "metric_bug": f"the authors, {authors_issue(30)} (labelled bug): false positives undercounted in N-way episodes",
}


def paper_result(dataset: str, ways: int = 1, shots: int = 1) -> PaperResult:
    """The published row for a setting (`in_paper` says whether it is PANet's paper's); KeyError with the
    available settings if there is none."""
    for r in PAPER_RESULTS:
        if (r.dataset, r.ways, r.shots) == (dataset, ways, shots):
            return r
    have = ", ".join(f"{r.dataset} {r.ways}-way {r.shots}-shot" for r in PAPER_RESULTS)
    raise KeyError(f"the paper reports no {dataset} {ways}-way {shots}-shot result (it has: {have})")


def markdown_table() -> str:
    """The published table as Markdown, e.g. for the README and the reproduction notebook: each row with
    where it was read (numbered notes under the table); the row that is not PANet's paper says so."""
    notes: list[str] = []
    lines = ["| setting | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU | read from |",
             "|---|---|---|---|---|---|---|---|"]
    for r in PAPER_RESULTS:
        name = f"{'PASCAL-5i' if r.dataset == 'pascal5i' else 'COCO-20i'} {r.ways}-way {r.shots}-shot"
        name += ", ResNet-50" if r.backbone == "resnet50" else ""
        name += "" if r.in_paper else " (not in PANet's paper)"
        folds = [f"{v:.1f}" for v in r.folds] if r.folds else [""] * 4
        fb = f"{r.fb_iou:.1f}" if r.fb_iou is not None else ""
        if r.source not in notes:
            notes.append(r.source)
        lines.append(f"| {name} | " + " | ".join(folds) + f" | {r.mean:.1f} | {fb} | [{notes.index(r.source) + 1}] |")
    return "\n".join(lines + [""] + [f"- [{i}] {note}" for i, note in enumerate(notes, 1)])


# ----------------------------------------------------------------------------- later methods

# The tests published numbers were measured under. PANet's own is `protocol="faithful"`; HSNet's is
# `protocol="hsnet"`. The others are described, not implemented.
TESTS = {
    "panet": "PANet's test: trainaug images of the fold's classes, 5 runs x 1,000 episodes (seeds 1234 + r), 417 px",
    "hsnet": "HSNet's test: its fixed val lists, one run of 1,000 episodes (numpy seed 0), 400 px",
    "hsnet-coco": "HSNet's COCO-20i test: its own preprocessed masks, interleaved folds (class 4k + i + 1 in fold i), "
                  "one run of 1,000 episodes, seed 0, 400 px",
    "mlc": "MLC's test: val images with an object of at least 2 x 32 x 32 px, random query, class and distinct "
           "supports (each at least 2 x 32 x 32 px), original size, 1,000 episodes (COCO: 4,000) for each of 5 "
           "seeds, averaged; the model is the best of its training snapshots on that same val set",
}


@dataclass(frozen=True)
class LaterResult:
    method: str
    dataset: str  # "pascal5i" or "coco20i"
    ways: int
    shots: int
    backbone: str
    folds: tuple[float, ...]
    mean: float
    test: str  # a key of TESTS
    source: str  # where the number was read (checked there)


_MLC = "github.com/LiheYoung/MiningFSS (README, 'Performance'): MLC's baseline"
_SSP = "github.com/fanq15/SSP (README, 'Pascal VOC' and 'MS COCO'); SSP's code is built on MLC's"
LATER_RESULTS = (
    LaterResult("MLC baseline", "pascal5i", 1, 1, "resnet50", (54.9, 66.5, 61.7, 48.3), 57.9, "mlc", _MLC),
    LaterResult("MLC baseline", "pascal5i", 1, 5, "resnet50", (61.6, 70.3, 70.5, 56.4), 64.7, "mlc", _MLC),
    LaterResult("SSP", "pascal5i", 1, 1, "resnet50", (61.4, 67.8, 66.5, 50.9), 61.7, "mlc", _SSP),
    LaterResult("SSP", "pascal5i", 1, 5, "resnet50", (67.5, 72.3, 75.2, 62.1), 69.3, "mlc", _SSP),
    # SSP reports COCO-20i under two tests: its own (MLC's) and HSNet's; the numbers differ by several points.
    LaterResult("SSP", "coco20i", 1, 1, "resnet50", (46.4, 35.2, 27.3, 25.4), 33.6, "mlc", _SSP),
    LaterResult("SSP", "coco20i", 1, 5, "resnet50", (53.9, 42.0, 36.0, 33.7), 41.4, "mlc", _SSP),
    LaterResult("SSP", "coco20i", 1, 1, "resnet50", (35.5, 39.6, 37.9, 36.7), 37.4, "hsnet-coco", _SSP),
    LaterResult("SSP", "coco20i", 1, 5, "resnet50", (40.6, 47.0, 45.1, 43.9), 44.1, "hsnet-coco", _SSP),
)


def later_results(dataset: str, ways: int = 1, shots: int | None = None) -> list[LaterResult]:
    """The later methods' published rows for a dataset (and shot count, if given)."""
    return [r for r in LATER_RESULTS if r.dataset == dataset and r.ways == ways and shots in (None, r.shots)]


def later_markdown(dataset: str, ways: int = 1) -> str:
    """Later methods' published rows as Markdown, each with the test it was measured under."""
    rows = later_results(dataset, ways)
    if not rows:
        return ""
    lines = ["| method | setting | backbone | fold 0 | fold 1 | fold 2 | fold 3 | mean | test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        folds = " | ".join(f"{v:.1f}" for v in r.folds)
        lines.append(f"| {r.method} | {r.ways}-way {r.shots}-shot | {r.backbone} | {folds} | {r.mean:.1f} | {r.test} |")
    used = sorted({r.test for r in rows})
    lines += [""] + [f"- `{t}`: {TESTS[t]}" for t in used]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the lineage

@dataclass(frozen=True)
class LineageEntry:
    method: str
    year: int
    change: str  # what it changed, in one line
    backbone: str | None
    one_shot: float | None  # PASCAL-5i 1-way mean mIoU, where we could read it
    five_shot: float | None
    read_from: str  # where the numbers were read, and how directly


_ABSTRACT = "the paper's abstract"


def _means(method: str) -> tuple[float, float]:
    """PASCAL-5i 1-shot and 5-shot means of PANet or of a method in LATER_RESULTS, from those tables."""
    if method == "PANet":
        return paper_result("pascal5i", 1, 1).mean, paper_result("pascal5i", 1, 5).mean
    means = {r.shots: r.mean for r in LATER_RESULTS if r.method == method and r.dataset == "pascal5i"}
    return means[1], means[5]


LINEAGE = (
    LineageEntry("OSLSM", 2017, "the first PASCAL-5i benchmark; a conditioning branch turns the masked support "
                 "image into the weights of a classifier for the query", None, 40.8, 43.9,
                 "implied by CANet's abstract (55.4 - 14.6, 57.1 - 13.2)"),
    LineageEntry("co-FCN", 2018, "conditional FCN: support features with their mask are pooled and concatenated to "
                 "the query's features", None, None, None, "not read: see the co-FCN and PANet papers"),
    LineageEntry("SG-One", 2018, "masked average pooling of support features into one guidance vector; cosine "
                 "similarity guides the query's segmentation", None, 46.3, 47.1,
                 "implied by PANet's abstract (48.1 - 1.8, 55.7 - 8.6: the state of the art it surpassed)"),
    LineageEntry("CANet", 2019, "dense comparison of support and query features, then iterative refinement "
                 "with a learned head", "resnet50", 55.4, 57.1, _ABSTRACT),
    LineageEntry("PANet", 2019, "no learned head: prototypes by masked average pooling, cosine matching, and "
                 "prototype alignment (PAR) in training", "vgg16", *_means("PANet"), _ABSTRACT),
    LineageEntry("PFENet", 2020, "a training-free prior mask from high-level features and a multi-scale feature "
                 "enrichment module", "resnet50", 60.8, 61.9,
                 "as listed in the comparison table of chunbolang/DCP's README"),
    LineageEntry("HSNet", 2021, "multi-layer 4-D correlations between support and query features, squeezed by "
                 "center-pivot 4-D convolutions; its fixed test lists became the common test", "resnet50", 64.0, 69.5,
                 "as listed in the comparison table of chunbolang/BAM's README"),
    LineageEntry("MLC baseline", 2021, "PANet-style matching on ResNet-50 without its last stage, no final ReLU, "
                 "frozen BatchNorm: a strong prototype baseline", "resnet50", *_means("MLC baseline"), _MLC),
    LineageEntry("SSP", 2022, "self-support matching: prototypes of the query's own confident pixels refine the "
                 "support prototypes", "resnet50", *_means("SSP"), _SSP),
)


def lineage_markdown() -> str:
    """The lineage as Markdown: each method, what it changed, and its PASCAL-5i numbers with their source.
    The numbers come from different tests and backbones (see TESTS): read them as history, not as a ranking."""
    lines = ["| method | year | what it changed | backbone | 1-shot | 5-shot | numbers read from |",
             "|---|---|---|---|---|---|---|"]
    for e in LINEAGE:
        cells = [f"{v:.1f}" if v is not None else "" for v in (e.one_shot, e.five_shot)]
        lines.append(f"| {e.method} | {e.year} | {e.change} | {e.backbone or ''} | {cells[0]} | {cells[1]} | "
                     f"{e.read_from} |")
    return "\n".join(lines)


# ---- frozen foundation models (chapter 10)

@dataclass(frozen=True)
class FoundationResult:
    method: str
    year: int
    venue: str
    dataset: str  # "pascal5i", "coco20i" or "lvis92i"
    ways: int
    shots: int
    backbones: str  # the foundation models used, e.g. "DINOv2 ViT-L/14 + SAM ViT-H"
    trains: bool  # False: training-free, every weight frozen
    mean: float  # mean mIoU over the folds, %
    test: str  # a key of TESTS when it is exactly that test, else a short description
    source: str  # where the number was read, and how directly
    checked: bool  # False: not read in the paper or the official README; `source` says what was read instead


_MATCHER = ("the paper's abstract (https://arxiv.org/abs/2305.13310), read as reproduced on "
            "https://huggingface.co/papers/2305.13310 (the stored arXiv HTML has the abstract's numbers stripped); "
            "backbones: the config header of a log in the official repo, aim-uofa/Matcher output/pascal/fold0/log.txt "
            "(a part-segmentation run: dinov2_vitl14, sam_vit_h)")
_GFSAM = ("the paper's abstract (https://arxiv.org/abs/2410.06964; read on nips.cc/virtual/2024/poster/93949 and in "
          "the official project page ANDYZAQ/GF-SAM index.html), which gives 58.7 on COCO-20i without a shot count; "
          "1-shot confirmed by the official logs ANDYZAQ/GF-SAM outputs/coco/fold{0..3}.txt (nshot 1, folds 56.62, "
          "61.44, 59.63, 57.12: mean 58.70)")
_GFSAM_PASCAL = ("NOT CHECKED in the paper (its results table is an image on the project page, not read): mean computed "
                 "by us from the official logs ANDYZAQ/GF-SAM outputs/pascal/fold{0..3}.txt (nshot 1; folds 71.12, "
                 "75.70, 69.17, 73.25: 72.31)")
_INSID3 = ("NOT CHECKED: neither the official README (visinf/INSID3 README.md) nor the stored arXiv abstract "
           "(https://arxiv.org/abs/2603.28480) gives a COCO-20i number; 57.6 read only on a third-party leaderboard "
           "(https://www.wizwand.com/paper/69cb557f0636e5bf4afca3f2: 'COCO-20i, mIoU (Mean)'), which does not say "
           "the shot count; 1-shot assumed from the paper's one-example setting")
_VRPSAM = ("NOT CHECKED: the official README (syp2ysy/VRP-SAM README.md) and the arXiv abstract "
           "(https://arxiv.org/abs/2402.17726) give no numbers; read only on a third-party leaderboard "
           "(https://www.wizwand.com/paper/68fa72bb1e209131cea58370), which does not say shots, backbone or "
           "reference annotation; 1-shot with mask references assumed")

FOUNDATION_RESULTS = (
    FoundationResult("Matcher", 2024, "ICLR", "coco20i", 1, 1, "DINOv2 ViT-L/14 + SAM ViT-H", False, 52.7,
                     "not stated where read; the README credits HSNet's code", _MATCHER, True),
    FoundationResult("Matcher", 2024, "ICLR", "lvis92i", 1, 1, "DINOv2 ViT-L/14 + SAM ViT-H", False, 33.0,
                     "LVIS-92i, a benchmark the Matcher paper proposes", _MATCHER, True),
    FoundationResult("GF-SAM", 2024, "NeurIPS", "coco20i", 1, 1, "DINOv2 ViT-L/14 + SAM ViT-H", False, 58.7,
                     "1,000 episodes per fold at 1024 px (the official logs)", _GFSAM, True),
    FoundationResult("GF-SAM", 2024, "NeurIPS", "pascal5i", 1, 1, "DINOv2 ViT-L/14 + SAM ViT-H", False, 72.3,
                     "1,000 episodes per fold at 1024 px, seed 0 (the official logs)", _GFSAM_PASCAL, False),
    FoundationResult("INSID3", 2026, "CVPR", "coco20i", 1, 1, "DINOv3 ViT-L/16 (no SAM)", False, 57.6,
                     "not read", _INSID3, False),
    FoundationResult("VRP-SAM", 2024, "CVPR", "pascal5i", 1, 1,
                     "SAM + a trained VRP encoder on VGG-16/ResNet-50/ResNet-101 features", True, 71.9,
                     "not read", _VRPSAM, False),
    FoundationResult("VRP-SAM", 2024, "CVPR", "coco20i", 1, 1,
                     "SAM + a trained VRP encoder on VGG-16/ResNet-50/ResNet-101 features", True, 53.9,
                     "not read", _VRPSAM, False),
)

_DATASET_NAMES = {"pascal5i": "PASCAL-5i", "coco20i": "COCO-20i", "lvis92i": "LVIS-92i"}


def foundation_markdown() -> str:
    """The foundation-model rows as Markdown, each with where it was read (numbered notes under the table);
    unchecked numbers say so in their cell."""
    notes: list[str] = []
    lines = ["| method | year | frozen / trained | setting | mIoU | test | read from |", "|---|---|---|---|---|---|---|"]
    for r in FOUNDATION_RESULTS:
        what = f"{r.backbones}; " + ("nothing trained" if not r.trains else "prompt encoder trained on base classes")
        setting = f"{_DATASET_NAMES[r.dataset]} {r.ways}-way {r.shots}-shot"
        mean = f"{r.mean:.1f}" + ("" if r.checked else " (NOT CHECKED)")
        if r.source not in notes:
            notes.append(r.source)
        test = TESTS.get(r.test, r.test)
        lines.append(f"| {r.method} | {r.year} ({r.venue}) | {what} | {setting} | {mean} | {test} | "
                     f"[{notes.index(r.source) + 1}] |")
    note = ("Each method was tested its own way (other episode lists, image sizes and backbones than PANet's "
            "`TESTS['panet']`): these numbers are history, not a ranking.")
    return "\n".join(lines + ["", note, ""] + [f"- [{i}] {n}" for i, n in enumerate(notes, 1)])
