"""Bad input and faults, one row each: the exit status, the words of the one-line message, the state on disk.

Each row of CASES is a command with one mistake a careful user could make: its status must be the
expected one and its stderr a single `error: ...` line (no traceback) holding every listed phrase.
The fault rows below the table kill, interrupt or double-start `train` and check what is left on
disk: weights equal to an uninterrupted run, no log step written twice, the second run refused.
Everything runs on the embedded dataset at 64 px with the small encoder (and on tiny generated
VOC / COCO trees for `prepare`), well under two minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

import fakedata as fd
from panet_lite.cli import main
from panet_lite.coco import prepare_coco

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-size", "64", "--device", "cpu"]
SMALL = ["--backbone", "small", "--pretrained", "false", "--size", "64"]
REPO = Path(__file__).resolve().parents[1]


def train_argv(out, *extra, steps=2, fold=0):
    return ["train", *SYNTHETIC, *SMALL, "--fold", str(fold), "--steps", str(steps), "--out", str(out), *extra]


def eval_argv(checkpoint, *extra, fold=0):
    return ["test", *SYNTHETIC, "--size", "64", "--runs", "1", "--episodes", "4", "--fold", str(fold),
            "--checkpoint", str(checkpoint), *extra]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A finished fold-0 run and the broken files the rows point at."""
    d = tmp_path_factory.mktemp("faults")
    assert main(train_argv(d / "run0")) == 0
    checkpoint = d / "run0" / "checkpoint.pt"
    (d / "text.pt").write_text("not a checkpoint\n")
    data = checkpoint.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save(torch.load(checkpoint, weights_only=False)["model"], d / "bare-small.pt")  # weights only
    (d / "a-file").write_text("x")
    (d / "corrupt-run").mkdir()
    (d / "corrupt-run" / "checkpoint.pt").write_text("junk")
    (d / "weights-only-run").mkdir()
    shutil.copy(d / "bare-small.pt", d / "weights-only-run" / "checkpoint.pt")
    return d


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """A small VOC + SBD tree in the real on-disk formats, not yet prepared."""
    return fd.make_pascal_trees(tmp_path_factory.mktemp("voc"))


@dataclass
class Case:
    argv: Callable[..., list[str]]  # (work, tmp_path) -> argv
    status: int
    words: tuple[str, ...]  # every one is in the error line
    setup: Callable[..., None] | None = None  # (work, tmp_path) -> None, before the command
    after: Callable[..., None] | None = None  # (work, tmp_path) -> None: the state on disk
    fixtures: tuple[str, ...] = field(default=())


def ck(w, t):
    return w / "run0" / "checkpoint.pt"


CASES = {
    # Counts below 1, named by their option, wherever they are declared.
    "train --steps 0": Case(lambda w, t: train_argv(t / "r", steps=0), 2, ("--steps must be at least 1, got 0",),
                            after=lambda w, t: not (t / "r").exists() or pytest.fail("a run folder was made")),
    "train --steps -3": Case(lambda w, t: train_argv(t / "r", steps=-3), 2, ("--steps must be at least 1, got -3",)),
    "train --ways 0": Case(lambda w, t: train_argv(t / "r", "--ways", "0"), 2, ("--ways must be at least 1",)),
    "train --shots 0": Case(lambda w, t: train_argv(t / "r", "--shots", "0"), 2, ("--shots must be at least 1",)),
    "train --queries 0": Case(lambda w, t: train_argv(t / "r", "--queries", "0"), 2, ("--queries must be at least 1",)),
    "train --batch-size 0": Case(lambda w, t: train_argv(t / "r", "--batch-size", "0"), 2,
                                 ("--batch-size must be at least 1",)),
    "train --checkpoint-every 0": Case(lambda w, t: train_argv(t / "r", "--checkpoint-every", "0"), 2,
                                       ("--checkpoint-every must be at least 1",)),
    "train --log-every 0": Case(lambda w, t: train_argv(t / "r", "--log-every", "0"), 2,
                                ("--log-every must be at least 1",)),
    "train --workers -1": Case(lambda w, t: train_argv(t / "r", "--workers", "-1"), 2,
                               ("--workers must be at least 0",)),
    "train --lr -0.1": Case(lambda w, t: train_argv(t / "r", "--lr", "-0.1"), 2, ("--lr must be at least 0",)),
    "train --lr nan": Case(lambda w, t: train_argv(t / "r", "--lr", "nan"), 2, ("--lr must be a finite number, got nan",)),
    "train --gamma inf": Case(lambda w, t: train_argv(t / "r", "--gamma", "inf"), 2,
                              ("--gamma must be a finite number, got inf",)),
    "train --seed -1": Case(lambda w, t: train_argv(t / "r", "--seed", "-1"), 2, ("--seed must be at least 0",)),
    "test --runs 0": Case(lambda w, t: eval_argv(ck(w, t), "--runs", "0"), 2, ("--runs must be at least 1",)),
    "test --episodes 0": Case(lambda w, t: eval_argv(ck(w, t), "--episodes", "0"), 2,
                              ("--episodes must be at least 1",)),
    "test --ways 0": Case(lambda w, t: eval_argv(ck(w, t), "--ways", "0"), 2, ("--ways must be at least 1",)),
    "test --shots 0": Case(lambda w, t: eval_argv(ck(w, t), "--shots", "0"), 2, ("--shots must be at least 1",)),
    "test --batch-size 0": Case(lambda w, t: eval_argv(ck(w, t), "--batch-size", "0"), 2,
                                ("--batch-size must be at least 1",)),
    "demo --steps 0": Case(lambda w, t: ["demo", "--steps", "0"], 2, ("--steps must be at least 1",)),
    "demo --threads 0": Case(lambda w, t: ["demo", "--threads", "0"], 2, ("--threads must be at least 1",)),
    "reproduce --folds 7": Case(lambda w, t: ["reproduce", *SYNTHETIC, "--folds", "7", "--out", str(t / "r")], 2,
                                ("argument --folds", "each 0..3, got '7'")),
    "reproduce --shot-list 0": Case(lambda w, t: ["reproduce", *SYNTHETIC, "--shot-list", "0", "--out", str(t)], 2,
                                    ("argument --shot-list", "each at least 1, got '0'")),
    # Flags are read as spelled out: an abbreviation is refused, naming the flag it would have meant.
    "train --step 3": Case(lambda w, t: train_argv(t / "r", "--method", "mlc", "--step", "3"), 2,
                           ("unrecognized arguments: --step 3", "did you mean --steps?", "spelled out in full"),
                           after=lambda w, t: not (t / "r").exists() or pytest.fail("a run folder was made")),
    "test --episode 3": Case(lambda w, t: eval_argv(ck(w, t), "--episode", "3"), 2,
                             ("unrecognized arguments: --episode 3", "did you mean --episodes")),
    "reproduce --shot 5": Case(lambda w, t: ["reproduce", *SYNTHETIC, "--shot", "5", "--out", str(t / "r")], 2,
                               ("unrecognized arguments: --shot 5", "did you mean --shot-list?")),
    "train --amp --dtype float64": Case(lambda w, t: train_argv(t / "r", "--amp", "--dtype", "float64"), 2,
                                        ("--amp computes in bfloat16 and --dtype float64", "drop one")),
    # Sizes the encoder cannot use (a 1 x 1 feature map trains to a constant loss of ln 2).
    "train --size 7": Case(lambda w, t: train_argv(t / "r", "--size", "7"), 2, ("--size must be at least 9, got 7",)),
    "test --support boxes": Case(lambda w, t: eval_argv(ck(w, t), "--support", "boxes"), 2,
                                 ("argument --support", "invalid choice: 'boxes'", "dense", "bbox", "scribble")),
    "test --size 7": Case(lambda w, t: eval_argv(ck(w, t), "--size", "7"), 2, ("--size must be at least 9",)),
    "demo --size 16": Case(lambda w, t: ["demo", "--size", "16"], 2, ("--size must be at least 32, got 16",)),
    "--synthetic-size 16": Case(lambda w, t: train_argv(t / "r", "--synthetic-size", "16"), 2,
                                ("at least 32 pixels", "got 16")),
    "--synthetic-size with pascal5i": Case(
        lambda w, t: ["test", "--dataset", "pascal5i", "--root", str(t), "--fold", "0", "--notrain",
                      "--synthetic-size", "40"], 2, ("--synthetic-size applies to --dataset synthetic only",)),
    # More ways or shots than the data holds.
    "test --ways 6": Case(lambda w, t: eval_argv(ck(w, t), "--ways", "6"), 2,
                          ("6-way episodes need at least 6 classes, got 5", "use --ways 5 or fewer")),
    "reproduce --ways 6": Case(lambda w, t: ["reproduce", *SYNTHETIC, "--ways", "6", "--out", str(t / "r")], 2,
                               ("--ways 6: fold 0 of synthetic has 5 test classes", "use --ways 5 or fewer")),
    "test --shots 999": Case(lambda w, t: eval_argv(ck(w, t), "--shots", "999"), 2,
                             ("images in this split", "999-shot episodes", "use fewer --shots")),
    # A checkpoint of another fold: its mIoU would be on classes it was trained on.
    "test a fold-0 model on fold 1": Case(lambda w, t: eval_argv(ck(w, t), fold=1), 2,
                                          ("was trained on classes [6, 7, 8, 9, 10], which fold 1 tests on",
                                           "it is the model of fold 0: test it with --fold 0",
                                           "--allow-seen-classes")),
    # Checkpoints that are not ones, from every command that loads them.
    "test --checkpoint a text file": Case(lambda w, t: eval_argv(w / "text.pt"), 2,
                                          ("text.pt is not a PyTorch file", "it is no checkpoint", "copy or download it again")),
    "test --checkpoint a truncated file": Case(lambda w, t: eval_argv(w / "truncated.pt"), 2,
                                               ("truncated.pt is not a readable PyTorch file", "cut short")),
    "test --checkpoint another backbone's weights": Case(
        lambda w, t: eval_argv(w / "bare-small.pt"), 2,
        ("bare-small.pt do not fit PANet(vgg16)", "state dict of another model", "checkpoint.pt written by `train`")),
    "test --checkpoint the run folder": Case(lambda w, t: eval_argv(w / "run0"), 2,
                                             ("is a folder; did you mean", "run0/checkpoint.pt")),
    "test --checkpoint missing": Case(lambda w, t: eval_argv(t / "nope.pt"), 2, ("checkpoint not found",)),
    "train resumes a corrupt checkpoint.pt": Case(
        lambda w, t: train_argv(w / "corrupt-run"), 2,
        ("cannot resume the run in", "checkpoint.pt is not a PyTorch file", "delete it to train this run from the start")),
    "train resumes a weights-only checkpoint.pt": Case(
        lambda w, t: train_argv(w / "weights-only-run"), 2, ("not a training checkpoint written by `train`",)),
    "train with another recipe in the run folder": Case(lambda w, t: train_argv(w / "run0", "--lr", "0.5"), 2,
                                                        ("trained with another recipe", "lr: 0.001 -> 0.5")),
    "--pretrained a text file": Case(
        lambda w, t: ["train", *SYNTHETIC, "--fold", "0", "--steps", "1", "--size", "64", "--pretrained",
                      str(w / "text.pt"), "--out", str(t / "r")], 2,
        ("--pretrained: ", "text.pt is not a PyTorch file", "vgg16-397923af.pth")),
    "--pretrained a missing file": Case(
        lambda w, t: ["train", *SYNTHETIC, "--fold", "0", "--steps", "1", "--pretrained", str(t / "no.pth"),
                      "--out", str(t / "r")], 2, ("pretrained weights file not found",)),
    "test --notrain --backbone small": Case(
        lambda w, t: ["test", *SYNTHETIC, "--fold", "0", "--notrain", "--backbone", "small"], 2,
        ("argument --backbone: invalid choice: 'small'",)),
    # Paths that cannot be written, found before any work.
    "train --out a regular file": Case(lambda w, t: train_argv(w / "a-file"), 2,
                                       ("run folder (--out)", "a-file is a file, not a folder")),
    "train --out inside a regular file": Case(lambda w, t: train_argv(w / "a-file" / "run"), 2,
                                              ("is inside the file", "a-file")),
    "test --save-episodes inside a regular file": Case(
        lambda w, t: eval_argv(ck(w, t), "--save-episodes", str(w / "a-file" / "episodes.json")), 2,
        ("--save-episodes", "is inside the file")),
    "test --save-episodes a folder": Case(lambda w, t: eval_argv(ck(w, t), "--save-episodes", str(t)), 2,
                                          ("--save-episodes", "is a folder; give a file path")),
    "train --device cuda without a GPU": Case(lambda w, t: train_argv(t / "r", "--device", "cuda"), 2,
                                              ("PyTorch sees no CUDA GPU", "--device cpu")),
    # Data that is missing or damaged, named with the smallest fix.
    "prepare: a JPEG cut in half": Case(
        lambda w, t: ["prepare", "pascal", "--root", str(t / "voc"), "--no-download", "--no-check-counts"], 2,
        ("unreadable image", "2008_000002.jpg", "image file is truncated", "SBD/train.txt lists 2008_000002",
         "tar -xf VOCtrainval_11-May-2012.tar", "VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg"),
        setup=lambda w, t: _damage_jpeg(t / "voc"), fixtures=("voc",)),
    "prepare: one image missing": Case(
        lambda w, t: ["prepare", "pascal", "--root", str(t / "voc"), "--no-download", "--no-check-counts"], 2,
        ("missing image", "2007_000063.jpg", "ImageSets/Segmentation/train.txt lists 2007_000063",
         "Restore that one file", "work already done is kept"),
        setup=lambda w, t: (t / "voc/VOCdevkit/VOC2012/JPEGImages/2007_000063.jpg").unlink(), fixtures=("voc",)),
    "prepare coco: a JPEG cut in half": Case(
        lambda w, t: ["prepare", "coco", "--root", str(t / "coco"), "--no-download"], 2,
        ("unreadable image", "COCO_train2014_000000000016.jpg", "image file is truncated", "train2014.zip"),
        setup=lambda w, t: _coco_with_a_cut_jpeg(t / "coco")),
    "prepare --root a regular file": Case(lambda w, t: ["prepare", "pascal", "--root", str(w / "a-file")], 2,
                                          ("data folder (--root)", "is a file, not a folder")),
    "train coco20i on a subset of the categories": Case(
        lambda w, t: ["train", "--dataset", "coco20i", "--root", str(t / "coco"), "--fold", "0", *SMALL,
                      "--steps", "1", "--out", str(t / "r")], 2,
        ("COCO-20i's folds need 80 classes", "has 6", "official annotations"),
        setup=lambda w, t: _subset_coco(t / "coco")),
}


def _damage_jpeg(voc: Path) -> None:
    """Cut one SBD-only image in half: its header (and so its size) still reads."""
    image = voc / "VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])


def _coco_with_a_cut_jpeg(root: Path) -> None:
    fd.make_coco_tree(root, "train2014", first_id=9)
    fd.make_coco_tree(root, "val2014", first_id=42)
    image = root / "train2014" / "COCO_train2014_000000000016.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])


def _subset_coco(root: Path) -> None:
    fd.make_coco_tree(root, "train2014", first_id=9)
    fd.make_coco_tree(root, "val2014", first_id=42)
    with pytest.warns(UserWarning, match="has 6 categories, not COCO 2014's 80"):
        prepare_coco(root, download=False, progress=False)  # prepared as it is, with a warning


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gets_one_clear_line(name, work, tmp_path, capsys, request):
    case = CASES[name]
    for fixture in case.fixtures:  # the case's own copy of a generated tree
        shutil.copytree(request.getfixturevalue(fixture), tmp_path / fixture)
    if case.setup:
        case.setup(work, tmp_path)
    argv = case.argv(work, tmp_path)
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # What is not the message: argparse's usage lines, progress bars (tqdm's "...%|"), warnings.
    lines = [line for line in err.strip().splitlines()
             if line.strip() and not line.startswith(("usage:", " ", "warning: ")) and "%|" not in line]
    assert status == case.status and len(lines) == 1 and "error: " in lines[0], err
    for words in case.words:
        assert words in lines[0], lines[0]
    if case.after:
        case.after(work, tmp_path)


def test_allow_seen_classes_measures_and_says_so(work, capsys):
    assert main(eval_argv(work / "run0" / "checkpoint.pt", "--allow-seen-classes", "--json", fold=1)) == 0
    out = capsys.readouterr().out
    assert "NOT a few-shot result: the checkpoint was trained on test classes [6, 7, 8, 9, 10]" in out
    assert json.loads(out.strip().splitlines()[-1])["seen_classes"] == [6, 7, 8, 9, 10]


# ----------------------------------------------------------------------------- faults while training

STEPS = 40


def _cli(argv: list[str], err: Path) -> subprocess.Popen:
    """`python -m panet_lite ...` in a child process with as many threads as this one (same numbers)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()))
    # Ctrl-C's default action restored: a shell's background job (`pytest ... &`) ignores SIGINT, and a child
    # inherits that, so Python would never raise KeyboardInterrupt in it.
    return subprocess.Popen([sys.executable, "-m", "panet_lite", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=err.open("w"), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _fault_run(out: Path) -> list[str]:
    return train_argv(out, "--checkpoint-every", "10", "--log-every", "1", steps=STEPS)


def _wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    log = run / "log.jsonl"
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if log.is_file() and sum(1 for _ in log.read_text().splitlines()) >= step:
            return
        assert process.poll() is None, "the run ended before the fault"
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {timeout} s")


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The weights of an uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(_fault_run(out)) == 0
    return torch.load(out / "checkpoint.pt", weights_only=False)["model"]


def _same_weights(run: Path, reference: dict) -> bool:
    weights = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    return all(torch.allclose(weights[k], reference[k], atol=0, rtol=0) for k in reference)


@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C"])
def test_a_stopped_run_resumes_to_the_same_weights_and_logs_each_step_once(stop, reference, tmp_path, capsys):
    run, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    process = _cli(_fault_run(run), stderr)
    _wait_for_step(run, 11, process)  # past the checkpoint at step 10
    # Frozen first (SIGSTOP cannot be caught), so the run cannot finish its last steps before the signal
    # lands, however busy the machine; the stop takes effect the moment it resumes.
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGKILL if stop == "kill -9" else signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    process.wait(timeout=60)
    err = stderr.read_text()
    if stop == "Ctrl-C":
        assert process.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("error: interrupted; rerun the same command to go on")
    else:
        assert process.returncode == -signal.SIGKILL
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert 10 <= saved < STEPS and max(_steps(run)) > saved  # steps past the checkpoint were logged
    assert main(_fault_run(run)) == 0
    assert _steps(run) == list(range(1, STEPS + 1))  # each step once, in order
    assert _same_weights(run, reference)


def test_a_second_train_on_the_same_folder_is_refused_while_the_first_runs(reference, tmp_path, capsys):
    run = tmp_path / "run"
    process = _cli(_fault_run(run), tmp_path / "stderr.txt")
    try:
        _wait_for_step(run, 2, process)
        assert main(_fault_run(run)) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{run} is in use by process {process.pid}" in line and "a `train` writing this run" in line
    finally:
        process.kill()
        process.wait(timeout=60)
    assert main(_fault_run(run)) == 0  # the lock died with its holder: the run resumes
    assert _steps(run) == list(range(1, STEPS + 1)) and _same_weights(run, reference)
    assert not (run / ".panet_lite.lock").exists()  # a finished holder removes its lock file
