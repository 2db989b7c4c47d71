"""torchrun on CPU (gloo): DDP training equals one process with the same batch; `test` split across ranks
gives exactly the single-process numbers; misuse is one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from panet_lite import distributed
from panet_lite.cli import main

SETTING = ["--dataset", "synthetic", "--synthetic-size", "48", "--fold", "0", "--size", "none", "--device", "cpu"]
# A large lr, so a wrong gradient shows. Two processes sum the gradients in another order than one process:
# in float32 that round-off grows with the steps (measured on one CPU: up to 4e-4 of a tensor's largest
# weight after 5 steps), so the layouts are compared in float64, where it stays at round-off's own size
# (measured: 1e-15 of the largest weight after 5 steps). RTOL leaves a factor of 10^6 for other CPUs and
# thread counts, and is 10^6 times smaller than what one step moves the weights.
TRAIN = ["train", *SETTING, "--backbone", "small", "--pretrained", "false", "--batch-size", "4",
         "--lr", "0.05", "--log-every", "1", "--checkpoint-every", "2", "--dtype", "float64"]
RTOL = 1e-9


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "panet_lite", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def weights(run) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    """Every tensor of `a` equals `b`'s to RTOL of that tensor's largest weight (float64: see TRAIN)."""
    for name, tensor in a.items():
        assert tensor.dtype == torch.float64, name
        assert (tensor - b[name]).abs().max() <= RTOL * b[name].abs().max(), name


def assert_same_run(a, b, steps: int) -> None:
    ca, cb = weights(a), weights(b)
    assert ca["step"] == cb["step"] == steps
    assert_same_weights(ca["model"], cb["model"])
    la = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb):
        for key in ("loss", "seg_loss", "align_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=RTOL), (ra["step"], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process DDP run of 3 steps, resumed under torchrun to 5, and one process's runs of 3 and 5 steps."""
    base = tmp_path_factory.mktemp("ddp")
    ddp = torchrun([*TRAIN, "--steps", "3", "--out", str(base / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    three = weights(base / "ddp")
    resumed = torchrun([*TRAIN, "--steps", "5", "--out", str(base / "ddp")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for steps in (3, 5):
        assert main([*TRAIN, "--steps", str(steps), "--out", str(base / f"one{steps}")]) == 0
    return base, three, ddp.stdout + resumed.stdout


def test_ddp_training_equals_one_process_with_the_same_batch(runs):
    base, three, _ = runs
    one, five = weights(base / "one3")["model"], weights(base / "one5")["model"]
    assert_same_weights(three["model"], one)
    # Two more steps move the weights by far more than RTOL: the comparison above could fail.
    moved = max(((five[k] - one[k]).abs().max() / one[k].abs().max()).item() for k in one)
    assert moved > 1e3 * RTOL, moved


def test_ddp_resume_under_torchrun_equals_one_uninterrupted_process(runs):
    base, _, stdout = runs
    assert_same_run(base / "ddp", base / "one5", 5)
    assert stdout.count("checkpoint:") == 2  # rank 0 reports, once per command
    assert "(2 processes)" in stdout


def test_a_test_split_across_ranks_gives_exactly_the_single_process_numbers(runs, capsys):
    base, _, _ = runs
    test = ["test", *SETTING, "--checkpoint", str(base / "one5" / "checkpoint.pt"), "--runs", "2",
            "--episodes", "7", "--json", "--dtype", "float64"]  # float64: no label flips at round-off ties
    split = torchrun(test)
    assert split.returncode == 0, split.stderr[-3000:]
    lines = [line for line in split.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    assert main(test) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(lines[0]) == single


def test_a_batch_that_does_not_split_over_the_processes_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(distributed, "current", lambda: distributed.Ranks(0, 3))
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 4 does not split over 3 processes" in err[0] and "multiple of 3" in err[0]


def test_torchrun_on_cpu_without_gloo_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gloo" in err[0] and "run one process" in err[0]


def test_torchrun_with_more_processes_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="has 1 GPU\\(s\\): use --nproc_per_node 1 or fewer"):
        distributed.start("cuda")


def test_reproduce_under_torchrun_points_to_gpus(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["reproduce", "--dataset", "synthetic"]) != 0
    assert "--gpus 0,1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reproduce --gpus

REPRODUCE = ["reproduce", "--dataset", "synthetic", "--synthetic-size", "48", "--size", "none", "--folds", "0,1",
             "--shot-list", "1", "--backbone", "small", "--pretrained", "false", "--steps", "3", "--runs", "1",
             "--episodes", "6"]


@pytest.mark.parametrize("gpus, seen, message", [
    ("0", 0, "--gpus 0: PyTorch sees no CUDA GPU on this machine; drop --gpus"),
    ("0,2", 2, "--gpus 0,2: there is no GPU 2; this machine has 2 (--gpus 0,1)"),
    ("1,1", 2, "--gpus 1,1: GPU 1 is listed twice"),
])
def test_gpus_that_are_not_there_are_one_line(monkeypatch, tmp_path, capsys, gpus, seen, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: seen)
    assert main([*REPRODUCE, "--out", str(tmp_path / "runs"), "--gpus", gpus]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list((tmp_path / "runs").glob("fold*"))  # refused before any work


def test_gpus_and_device_together_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main([*REPRODUCE, "--gpus", "0,1", "--device", "cpu"]) != 0
    assert "--gpus picks each job's GPU: drop --device" in capsys.readouterr().err


def test_reproduce_on_gpus_runs_jobs_side_by_side_and_writes_the_same_table(monkeypatch, tmp_path, capsys):
    from panet_lite import reproduce

    # Two "GPUs" that are the CPU: the jobs still run in their own processes, two at a time.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(reproduce, "cell_device", lambda gpu: "cpu")
    assert main([*REPRODUCE, "--out", str(tmp_path / "side"), "--gpus", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert "fold 0, 1-shot on cpu" in printed and "fold 1, 1-shot on cpu" in printed
    monkeypatch.undo()
    assert main([*REPRODUCE, "--out", str(tmp_path / "serial")]) == 0
    side = json.loads((tmp_path / "side" / "table.json").read_text())
    serial = json.loads((tmp_path / "serial" / "table.json").read_text())
    assert side == serial
    for fold in (0, 1):
        assert torch.load(tmp_path / "side" / f"fold{fold}-1way-1shot" / "checkpoint.pt", weights_only=False)["step"] == 3
