"""Reproduce the paper's table: train (or load) one model per fold and shot count, test, compare.

On the embedded dataset the same code is a *synthetic pipeline check*: its table carries no
paper numbers and says so in its title (`summarize(..., compare=False)`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .evaluate import EvalConfig, check_support, evaluate
from .methods import get_method
from .model import PANet
from .paper import foundation_markdown, later_markdown
from .sources import REGISTRY, benchmark, open_source, split_for
from .train import TrainConfig, recipe, train


REPRODUCTION = "reproduction"
PIPELINE_CHECK = "synthetic pipeline check"  # the kind of a table built without the paper's numbers
NO_TRAINING = "no training"  # the kind of a table of untrained models (reproduce --notrain)
HSNET_TEST = "HSNet's test"  # the kind of a table under --protocol hsnet: PANet's published numbers are another test's
FAITHFUL_TEST = "panet"  # the key of paper.TESTS that our faithful protocol implements (PANet's own test)


def runs_folder(dataset: str, method: str = "panet") -> str:
    """The default folder of a dataset's runs: runs/DATASET, or runs/DATASET-TAG for a method with a run
    tag (methods.py: MLC's and SSP's)."""
    tag = get_method(method).run_tag
    return f"runs/{dataset}" if tag is None else f"runs/{dataset}-{tag}"


def untrained_model(backbone: str, pretrained, method: str = "panet", refine: bool = False, seed: int = 0) -> PANet:
    """--notrain's model: the method's matching on the encoder's pretrained weights (True: downloaded, a
    path: a local copy); with pretrained False, random weights, the same draw for the same seed."""
    torch.manual_seed(seed)
    return PANet(backbone, pretrained=pretrained, method=method, refine=refine)


def untrained_features(backbone: str, pretrained) -> str:
    """What an untrained model matched on, as its report and its table say it."""
    if pretrained:
        return f"{backbone}'s pretrained features"
    return f"{backbone}'s RANDOM weights (--pretrained false): NOT a result, a check that the pipeline runs"


def run_dir(out: Path, fold: int, shots: int, ways: int = 1) -> Path:
    return Path(out) / f"fold{fold}-{ways}way-{shots}shot"


def standard_episodes_name(fold: int, shots: int, ways: int = 1) -> str:
    """The file the standard protocol saves its drawn episodes to (`test` and `reproduce` alike)."""
    setting = f"{shots}shot" if ways == 1 else f"{ways}way-{shots}shot"
    return f"episodes-standard-fold{fold}-{setting}.json"


def results_name(eval_cfg: EvalConfig) -> str:
    """The file of a cell's results: one per protocol and support annotation (dense keeps the old name)."""
    support = "" if eval_cfg.support == "dense" else f"-{eval_cfg.support}"
    return f"results-{eval_cfg.protocol}{support}.json"


def train_and_test(dataset: str, root, fold: int, shots: int, train_cfg: TrainConfig, eval_cfg: EvalConfig,
                   out: Path, progress: bool = True, options: Mapping | None = None, notrain: bool = False) -> dict:
    """One cell of the table: train (or resume, or load) the model of (fold, shots), then test it.
    With `notrain`, nothing is trained: the method's matching runs on the encoder's pretrained (or,
    with pretrained False, random) weights, `train_cfg.backbone`, `.pretrained`, `.method`, `.refine`.

    Returns the row written to `out/foldF-Nway-Kshot/results-PROTOCOL.json`. A row found there
    for the same training recipe, step count and test settings is returned without any work; a
    complete checkpoint is tested without training; an interrupted run resumes from its checkpoint.
    The standard protocol also saves its episodes (image ids) beside the results. `options` are
    the dataset's own (`sources.Dataset.options`, e.g. {"size": 64} for the embedded dataset).
    """
    bench = benchmark(dataset)
    d = run_dir(out, fold, shots, train_cfg.ways)
    train_cfg = replace(train_cfg, shots=shots)
    eval_cfg = replace(eval_cfg, shots=shots, ways=train_cfg.ways)
    if eval_cfg.protocol == "standard" and eval_cfg.save_episodes is None:
        eval_cfg = replace(eval_cfg, save_episodes=str(d / standard_episodes_name(fold, shots, train_cfg.ways)))
    results = d / results_name(eval_cfg)
    if results.is_file():
        row = json.loads(results.read_text())
        if _same_setting(row, train_cfg, eval_cfg, notrain):
            return row
    test_source = open_source(dataset, root, split_for(dataset, eval_cfg.protocol), options)
    check_support(test_source, eval_cfg.support)  # before training: boxes without instance masks fail now
    if notrain:
        model = untrained_model(train_cfg.backbone, train_cfg.pretrained, train_cfg.method, train_cfg.refine,
                                train_cfg.seed)
    else:
        source = open_source(dataset, root, split_for(dataset, "train"), options)
        model, _ = train(source, bench.train_classes(fold), train_cfg, out=d, progress=progress)  # or load, if done
    result = evaluate(model, test_source, bench.test_classes(fold), eval_cfg, progress=progress)
    row = {"dataset": dataset, "fold": fold, "shots": shots, "ways": train_cfg.ways, **result.as_dict(),
           "train_config": asdict(train_cfg), "eval_config": asdict(eval_cfg), "notrain": notrain}
    d.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(row, indent=1))
    return row


# Test settings that do not change the result (or only say where to write it).
_EVAL_RUN_ONLY = ("batch_size", "device", "workers", "save_episodes", "compile")


def _same_setting(row: dict, train_cfg: TrainConfig, eval_cfg: EvalConfig, notrain: bool = False) -> bool:
    """Whether a saved results row was produced by this recipe, step count and test protocol (with
    `notrain`: by the same encoder, weights, method and test, untrained)."""
    saved_train, saved_eval = row.get("train_config", {}), row.get("eval_config", {})
    now_train, now_eval = recipe(train_cfg), json.loads(json.dumps(asdict(eval_cfg)))
    if row.get("notrain", False) != notrain:
        return False
    if notrain:
        same_model = all(saved_train.get(k) == getattr(train_cfg, k)
                         for k in ("backbone", "pretrained", "method", "refine", "ways"))
        return same_model and all(saved_eval.get(k, v) == v for k, v in now_eval.items() if k not in _EVAL_RUN_ONLY)
    # A field the results file predates counts as unchanged (new fields default to the old behaviour).
    return (saved_train.get("steps") == train_cfg.steps
            and all(recipe(saved_train).get(k, v) == v for k, v in now_train.items())
            and all(saved_eval.get(k, v) == v for k, v in now_eval.items() if k not in _EVAL_RUN_ONLY))


def reproduce(dataset: str, root, out: str | Path, train_cfg: TrainConfig, eval_cfg: EvalConfig,
              folds: Sequence[int] = (0, 1, 2, 3), shots: Sequence[int] = (1, 5), progress: bool = True,
              options: Mapping | None = None, compare: bool | None = None,
              gpus: Sequence[int] | None = None, notrain: bool = False) -> dict:
    """Train and test every (fold, shots) model, then write `table.md` and `table.json` to `out`.
    With `notrain`, nothing is trained (see `train_and_test`) and the table says so.

    `compare` is passed to `summarize`: whether the table sets the paper's numbers beside ours.
    `gpus` (e.g. (0, 1, 2, 3)) runs the (fold, shots) jobs side by side, each in its own process on
    one of those GPUs, a GPU taking the next job when it is done; the table is the same as one
    after the other gives (each job is the same computation, on another device).
    """
    _check_ways(dataset, folds, train_cfg.ways)  # before any training: a 6-way test of 5 classes fails now
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(f, k) for k in shots for f in folds]
    if gpus:
        check_gpus(gpus)
        rows = _run_on_gpus(cells, list(gpus), dataset, root, train_cfg, eval_cfg, out, progress, options, notrain)
    else:
        rows = [train_and_test(dataset, root, f, k, train_cfg, eval_cfg, out, progress, options, notrain)
                for f, k in cells]
    table = summarize(dataset, rows, train_cfg.ways, compare)
    (out / "table.json").write_text(json.dumps(table, indent=1))
    (out / "table.md").write_text(markdown(table))
    return table


def _check_ways(dataset: str, folds: Sequence[int], ways: int) -> None:
    """Refuse, in one line, more ways than a fold has test classes (its training classes are more)."""
    bench = benchmark(dataset)
    for fold in folds:
        have = len(bench.test_classes(fold))
        if ways > have:
            raise ValueError(f"--ways {ways}: fold {fold} of {dataset} has {have} test classes, so its {ways}-way "
                             f"episodes cannot be drawn; use --ways {have} or fewer")


def check_gpus(gpus: Sequence[int]) -> None:
    """Refuse, in one line, GPU ids that this machine does not have (or that repeat)."""
    import torch

    count = torch.cuda.device_count()
    listed = ",".join(map(str, gpus))
    if count == 0:
        raise ValueError(f"--gpus {listed}: PyTorch sees no CUDA GPU on this machine; drop --gpus to run the jobs "
                         f"one after the other")
    missing = [g for g in gpus if not 0 <= g < count]
    if missing:
        raise ValueError(f"--gpus {listed}: there is no GPU {missing[0]}; this machine has {count} "
                         f"(--gpus {','.join(map(str, range(count)))})")
    twice = [g for g in set(gpus) if list(gpus).count(g) > 1]
    if twice:
        raise ValueError(f"--gpus {listed}: GPU {twice[0]} is listed twice; one job runs on a GPU at a time")


def cell_device(gpu: int) -> str:
    """The device a job on GPU `gpu` runs on."""
    return f"cuda:{gpu}"


def _run_on_gpus(cells, gpus, dataset, root, train_cfg, eval_cfg, out, progress, options, notrain=False
                 ) -> list[dict]:
    """Each (fold, shots) job in a fresh process on a free GPU of `gpus`; rows in the order of `cells`."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    pending, rows, errors, lock = list(cells), {}, [], threading.Lock()
    spawn = multiprocessing.get_context("spawn")  # a fresh process: its own CUDA context, nothing inherited
    # The jobs side by side share the CPU cores (their data, and the CPU's own kernels): as torchrun
    # does, each gets its share, not every core each (oversubscribed, 2 jobs on 2 cores ran 3x slower).
    cores_each = max(1, (os.cpu_count() or 1) // len(gpus))

    def serve(gpu: int) -> None:
        device = cell_device(gpu)
        while True:
            with lock:
                if not pending or errors:
                    return
                fold, shots = pending.pop(0)
            job = (dataset, root, fold, shots, replace(train_cfg, device=device), replace(eval_cfg, device=device),
                   out, False, options, notrain)
            try:  # a ProcessPoolExecutor's process, unlike a Pool's, may start DataLoader workers of its own
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    row = pool.submit(_job_sharing_cores, len(gpus), cores_each, *job).result()
            except Exception as exc:  # noqa: BLE001  (re-raised below, once every GPU has stopped)
                with lock:
                    errors.append(exc)
                return
            with lock:
                rows[fold, shots] = row
            if progress:
                print(f"fold {fold}, {shots}-shot on {device}: mIoU {100 * row['miou']:.1f}", flush=True)

    threads = [threading.Thread(target=serve, args=(gpu,)) for gpu in gpus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [rows[cell] for cell in cells]


def _job_sharing_cores(jobs: int, threads: int, *job) -> dict:
    """`train_and_test(*job)` in one of `jobs` job processes side by side, using `threads` CPU threads
    (and, with --workers auto, its share of the cores for data loading)."""
    import torch

    os.environ["PANET_LITE_SHARED_BY"] = str(jobs)
    torch.set_num_threads(threads)
    return train_and_test(*job)


def summarize(dataset: str, rows: list[dict], ways: int = 1, compare: bool | None = None) -> dict:
    """Per shot count: per-fold and mean mIoU / FB-IoU (in %), stds over runs, the paper's numbers.

    compare: set the paper's numbers beside ours (a reproduction). False makes the table a
    synthetic pipeline check (`kind` = PIPELINE_CHECK): no paper numbers at all, for runs on the
    embedded dataset, whose numbers say nothing about the paper's. None (the default) compares
    when the registry gives the dataset published rows (not "synthetic"); the embedded data
    exported as a PASCAL tree reads as "pascal5i", so a caller who knows it is synthetic passes False.
    """
    registered = REGISTRY.get(dataset)
    paper_rows = registered.paper if registered is not None else dataset  # which published rows to set beside
    hsnet = any(r.get("eval_config", {}).get("protocol") == "hsnet" for r in rows)
    compare = paper_rows is not None if compare is None else compare
    synthetic = not compare  # no published rows for this data at all: a pipeline check
    compare = compare and not hsnet  # the paper's numbers come from its own test, not HSNet's
    notrain = bool(rows) and rows[0].get("notrain", False)
    compare = compare and not notrain  # published numbers are those of trained models
    method = rows[0].get("train_config", {}).get("method", "panet") if rows else "panet"
    support = rows[0].get("eval_config", {}).get("support", "dense") if rows else "dense"
    settings = []
    for shots in sorted({r["shots"] for r in rows}):
        mine = sorted((r for r in rows if r["shots"] == shots), key=lambda r: r["fold"])
        folds = {r["fold"]: 100 * r["miou"] for r in mine}
        entry = {
            "shots": shots, "ways": ways,
            "miou": folds, "miou_std": {r["fold"]: 100 * r["miou_std"] for r in mine},
            "fb_iou": {r["fold"]: 100 * r["fb_iou"] for r in mine},
            "mean_miou": sum(folds.values()) / len(folds),
            "mean_fb_iou": sum(100 * r["fb_iou"] for r in mine) / len(mine),
        }
        if compare and support == "bbox":  # the paper's box row: a mean only
            weak = get_method(method).published_weak("bbox", paper_rows, ways, shots)
            entry |= {"paper_miou": {}, "paper_mean": weak, "paper_fb_iou": None}
        elif compare and support == "dense":
            paper = get_method(method).published_result(paper_rows or dataset, ways, shots)
            entry |= {"paper_miou": dict(enumerate(paper.folds)) if paper and paper.folds else {},
                      "paper_mean": paper.mean if paper else None,
                      "paper_fb_iou": getattr(paper, "fb_iou", None) if paper else None,
                      "paper_in_paper": getattr(paper, "in_paper", True)}  # False: not a number of PANet's paper
        settings.append(entry)
    kind = HSNET_TEST if hsnet and paper_rows is not None else REPRODUCTION if compare else PIPELINE_CHECK
    if notrain and not synthetic:
        kind = NO_TRAINING
    protocol = rows[0].get("eval_config", {}).get("protocol", "faithful") if rows else "faithful"
    table = {"dataset": dataset, "kind": kind, "method": method, "protocol": protocol, "support": support,
             "settings": settings}
    if notrain:  # which features were matched: a table of untrained models says so in its title
        saved = rows[0].get("train_config", {})
        table["notrain"] = {"backbone": saved.get("backbone"), "pretrained": saved.get("pretrained") not in (False, None)}
    return table


def title(table: dict) -> str:
    """The table's heading: a reproduction beside the paper, or a synthetic pipeline check; with the
    support annotation when it is not dense."""
    support = table.get("support", "dense")
    if support == "dense":
        return _title(table)
    said = SUPPORT_TITLES[support] if table.get("kind", REPRODUCTION) == REPRODUCTION else SUPPORT_TITLES["check"]
    return f"{_title(table)}. Supports: {said.format(support=support)}"


SUPPORT_TITLES = {
    "bbox": "the authors' boxes (--support bbox); the paper's box row gives means only",
    "scribble": "scribbles from our own generator (--support scribble); the paper's scribbles were another set, "
                "so its scribble numbers are not set beside",
    "check": "{support} (--support {support})",
}


def _title(table: dict) -> str:
    if table.get("notrain"):
        return _notrain_title(table)
    if table.get("kind") == HSNET_TEST:
        return (f"Results on {table['dataset']} under {HSNET_TEST} (its fixed val lists, one run of 1,000 episodes, "
                f"seed 0, 400 px; mIoU %). PANet's published numbers come from PANet's own test, so none "
                f"are set beside")
    if table.get("kind", REPRODUCTION) == PIPELINE_CHECK:
        entry = REGISTRY.get(table["dataset"])
        data = (f"the {entry.title}" if entry is not None and entry.prepare is None
                else f"synthetic data in {table['dataset']} format")
        return (f"{PIPELINE_CHECK.capitalize()} on {data} (not a reproduction, so no paper numbers; "
                f"mIoU %, mean ± std over runs)")
    method = get_method(table.get("method", "panet"))
    if method.published_test != FAITHFUL_TEST:
        return (f"Results of {method.title} (--method {method.name}) on {table['dataset']} under our "
                f"{table.get('protocol', 'faithful')} protocol "
                f"(mIoU %, mean ± std over runs; in brackets the published number and the difference). The "
                f"published numbers were measured under {method.published_test_description}: another test, so "
                f"the difference mixes the two tests with the two models")
    if any(s.get("paper_in_paper") is False for s in table.get("settings", ())):
        return (f"Results on {table['dataset']} (mIoU %, mean ± std over runs; in brackets the published number "
                f"and the difference: Papers with Code's entry filed under PANet, not a number of PANet's paper; "
                f"see `python -m panet_lite paper`)")
    return f"Results on {table['dataset']} (mIoU %, mean ± std over runs; paper and difference in brackets)"


def _notrain_title(table: dict) -> str:
    """A table of untrained models: which matching on which features, under which test; no published
    number beside (they are trained models'); random weights said to be no result."""
    setting, method = table["notrain"], get_method(table.get("method", "panet"))
    features = untrained_features(setting["backbone"], setting["pretrained"])
    where = (f"{PIPELINE_CHECK} on the embedded data" if table.get("kind") == PIPELINE_CHECK
             else table["dataset"])
    spread = "one run of 1,000 episodes" if table.get("protocol") == "hsnet" else "mean ± std over runs"
    return (f"No training: {method.title}'s matching on {features}; {where}, {table.get('protocol', 'faithful')} "
            f"protocol (mIoU %, {spread}). No published number is set beside: those are of trained models")


def markdown(table: dict) -> str:
    """The table as Markdown: each of our cells with the paper's number and the difference (ours -
    paper) beside it, or, for a synthetic pipeline check, ours alone."""
    lines = [title(table), "",
             "| setting | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU |", "|---|---|---|---|---|---|---|"]
    for s in table["settings"]:
        # int() keys: a table read back from table.json has its fold keys as strings.
        miou, std, paper = ({int(f): v for f, v in s.get(k, {}).items()} for k in ("miou", "miou_std", "paper_miou"))
        cells = []
        for f in range(4):
            if f not in miou:
                cells.append("")
                continue
            one_run = table.get("kind") == HSNET_TEST or (table.get("notrain") and table.get("protocol") == "hsnet")
            cell = f"{miou[f]:.1f}" if one_run else f"{miou[f]:.1f} ± {std[f]:.1f}"
            if f in paper:
                cell += f" ({paper[f]:.1f}, {miou[f] - paper[f]:+.1f})"
            cells.append(cell)
        mean = f"{s['mean_miou']:.1f}"
        if s.get("paper_mean") is not None:
            mean += f" ({s['paper_mean']:.1f}, {s['mean_miou'] - s['paper_mean']:+.1f})"
        fb = f"{s['mean_fb_iou']:.1f}"
        if s.get("paper_fb_iou") is not None:
            fb += f" ({s['paper_fb_iou']:.1f}, {s['mean_fb_iou'] - s['paper_fb_iou']:+.1f})"
        lines.append(f"| {s['ways']}-way {s['shots']}-shot | " + " | ".join(cells) + f" | {mean} | {fb} |")
    if table.get("kind") == HSNET_TEST:  # later methods' published numbers, each with the test it used
        later = later_markdown(table["dataset"], table["settings"][0]["ways"] if table["settings"] else 1)
        if later:
            lines += ["", "Published numbers of later methods, for comparison (not PANet; each measured under the "
                          "test named, which is not always HSNet's):", "", later]
    if table.get("kind") == NO_TRAINING:  # what later methods built on frozen foundation models published
        lines += ["", "Published results of later methods built on frozen foundation models, for orientation "
                      "(each under its own test; most also use SAM):", "", foundation_markdown()]
    return "\n".join(lines) + "\n"
