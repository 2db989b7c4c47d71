"""The command line end to end, offline: train, resume, test, reproduce, and one clear line on bad input.

The data is the embedded dataset exported as a prepared PASCAL VOC tree (`write_voc_tree`), so
every command reads it through the same `PascalVOC` source as the real data; 48 px images and the
small encoder keep the whole file well under a minute and a half on 2 CPU cores.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from panet_lite import reproduce
from panet_lite.cli import COMMANDS, main
from panet_lite.paper import paper_result
from panet_lite.pascal import PascalVOC
from panet_lite.synthetic import write_voc_tree


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    """A prepared VOC tree: 200 trainaug images (every class in >= 6, enough for 5-shot) and 150 val."""
    root = tmp_path_factory.mktemp("voc")
    write_voc_tree(root, n_train=200, n_val=150, size=48)
    # If the embedded dataset changes, these say which count above to raise.
    assert min(map(len, PascalVOC(root, "trainaug").class_lists(range(1, 21)))) >= 6, "raise n_train"
    assert min(map(len, PascalVOC(root, "val").class_lists(range(1, 6)))) >= 2, "raise n_val"
    return root


def data_args(root, shots=1):
    return ["--dataset", "pascal5i", "--root", str(root), "--fold", "0", "--shots", str(shots),
            "--size", "48", "--device", "cpu"]


def train_args(root, out, steps, shots=1):
    return ["train", *data_args(root, shots), "--steps", str(steps), "--backbone", "small", "--pretrained", "false",
            "--out", str(out), "--checkpoint-every", "3", "--log-every", "2"]


@pytest.fixture(scope="module")
def trained(voc_root, tmp_path_factory):
    """A finished 6-step run directory (never modified by the tests that use it)."""
    run = tmp_path_factory.mktemp("run")
    assert main(train_args(voc_root, run, 6)) == 0
    return run


def log_steps(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_help_lists_every_command_with_one_line(capsys):
    env = {**os.environ, "COLUMNS": "200"}  # no wrapping, so each description stays on its command's line
    out = subprocess.run([sys.executable, "-m", "panet_lite", "--help"], capture_output=True, text=True, env=env,
                         check=True).stdout
    for name, description in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(description)}$", out, re.MULTILINE), (name, out)
    # The flags exist on the commands that need them.
    for command, flags in {"train": ["--root", "--fold", "--shots", "--ways", "--steps", "--size", "--device",
                                     "--out"],
                           "test": ["--checkpoint", "--protocol", "--runs", "--episodes", "--size", "--device",
                                    "--json", "--notrain"],
                           "reproduce": ["--dataset", "--root", "--folds", "--shot-list", "--size", "--device"]}.items():
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        usage = capsys.readouterr().out
        assert all(flag in usage for flag in flags), (command, usage)


def test_train_checkpoints_logs_and_resumes_to_the_same_weights(voc_root, tmp_path, capsys):
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(train_args(voc_root, run, 6)) == 0
    assert f"checkpoint: {run}/checkpoint.pt" in capsys.readouterr().out
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config", "history"}
    assert ckpt["config"]["shots"] == 1 and ckpt["config"]["size"] == 48 and ckpt["config"]["backbone"] == "small"
    assert log_steps(run) == [2, 4, 6]

    # Asking for 10 steps continues from step 6: the log goes on at 8 and 10, not from 2 again.
    assert main(train_args(voc_root, run, 10)) == 0
    assert log_steps(run) == [2, 4, 6, 8, 10]
    assert main(train_args(voc_root, straight, 10)) == 0
    resumed = torch.load(run / "checkpoint.pt", weights_only=False)
    direct = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == direct["step"] == 10
    assert resumed["model"].keys() == direct["model"].keys()
    for name, weight in direct["model"].items():
        assert torch.equal(resumed["model"][name], weight), name  # bit for bit


def test_resume_refuses_another_recipe_or_fewer_steps(voc_root, trained, capsys):
    before = (trained / "checkpoint.pt").stat().st_mtime_ns
    assert main(train_args(voc_root, trained, 6, shots=5)) == 2
    assert "another recipe (shots: 1 -> 5)" in one_error_line(capsys)
    assert main(train_args(voc_root, trained, 4)) == 2
    assert "past the 4 steps" in one_error_line(capsys)
    assert (trained / "checkpoint.pt").stat().st_mtime_ns == before


def test_test_prints_the_result_as_json_on_the_last_line(voc_root, trained, capsys):
    args = ["test", *data_args(voc_root), "--checkpoint", str(trained / "checkpoint.pt"), "--runs", "2",
            "--episodes", "5", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "faithful protocol, fold 0, 1-way 1-shot, 2 x 5 episodes"
    result = json.loads(out[-1])  # strict JSON: a class no episode drew is null, not NaN
    assert {"miou", "miou_std", "fb_iou", "class_iou"} <= set(result)
    assert set(result["class_iou"]) == {"1", "2", "3", "4", "5"}
    assert [r["seed"] for r in result["runs"]] == [1234, 1235]
    assert 0 <= result["fb_iou"] <= 1
    assert result["miou"] is None or 0 <= result["miou"] <= 1  # None: 5 episodes missed a class


def test_standard_protocol_saves_its_episodes(voc_root, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default episodes file goes to runs/ under the working directory
    args = ["test", *data_args(voc_root), "--checkpoint", str(trained / "checkpoint.pt"), "--protocol",
            "standard", "--runs", "1", "--episodes", "4"]
    assert main(args) == 0
    path = tmp_path / "runs" / "pascal5i" / "episodes-standard-fold0-1shot.json"
    assert f"episodes saved to {path.relative_to(tmp_path)}" in capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["classes"] == [1, 2, 3, 4, 5] and saved["shots"] == 1 and len(saved["runs"]) == 1
    episodes = saved["runs"][0]
    assert len(episodes) == 4
    assert all(i.startswith("val-") for ep in episodes for i in ep["query"] + ep["support"][0])  # VOC val


def test_reproduce_writes_the_table_beside_the_paper_and_skips_done_work(voc_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "table"

    def reproduce_args(shot_list="1,5", episodes=15):
        return ["reproduce", "--dataset", "pascal5i", "--root", str(voc_root), "--folds", "0", "--shot-list",
                shot_list, "--steps", "4", "--size", "48", "--device", "cpu", "--backbone", "small",
                "--pretrained", "false", "--runs", "1", "--episodes", str(episodes), "--out", str(out)]

    args = reproduce_args()
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "table.json").read_text())
    md = (out / "table.md").read_text()
    assert md.strip() in printed
    assert [s["shots"] for s in table["settings"]] == [1, 5]
    for setting, shots in zip(table["settings"], (1, 5)):
        paper = paper_result("pascal5i", 1, shots)
        ours = setting["miou"]["0"]
        assert setting["paper_miou"]["0"] == paper.folds[0] and setting["paper_mean"] == paper.mean
        # Our fold-0 cell holds the paper's number and the difference, both from panet_lite.paper.
        assert f"{ours:.1f} ± 0.0 ({paper.folds[0]:.1f}, {ours - paper.folds[0]:+.1f})" in md
        assert f"({paper.fb_iou:.1f}, {setting['mean_fb_iou'] - paper.fb_iou:+.1f})" in md
    for shots in (1, 5):
        d = out / f"fold0-1way-{shots}shot"
        assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == 4
        assert json.loads((d / "results-faithful.json").read_text())["train_config"]["shots"] == shots

    # A rerun finds every model trained and tested: nothing is trained or tested again.
    def must_not_run(*args, **kwargs):
        raise AssertionError("done work was redone")

    monkeypatch.setattr(reproduce, "train", must_not_run)
    monkeypatch.setattr(reproduce, "evaluate", must_not_run)
    assert main(args) == 0
    assert (out / "table.md").read_text() == md

    # Other test settings: the trained model is tested again, not retrained.
    monkeypatch.undo()
    d = out / "fold0-1way-1shot"
    trained_at = (d / "checkpoint.pt").stat().st_mtime_ns
    assert main(reproduce_args(shot_list="1", episodes=16)) == 0
    assert json.loads((d / "results-faithful.json").read_text())["eval_config"]["episodes"] == 16
    assert (d / "checkpoint.pt").stat().st_mtime_ns == trained_at


@pytest.mark.parametrize("case", ["missing root", "unprepared root", "missing checkpoint", "no checkpoint",
                                  "another dataset's option"])
def test_bad_input_exits_2_with_one_clear_line(case, voc_root, tmp_path, capsys):
    checkpoint = ["--checkpoint", str(tmp_path / "nope.pt")]
    args = {
        "missing root": ["test", "--dataset", "pascal5i", "--fold", "0", *checkpoint],
        "unprepared root": ["train", "--dataset", "pascal5i", "--root", str(tmp_path), "--fold", "0"],
        "missing checkpoint": ["test", *data_args(voc_root), *checkpoint],
        "no checkpoint": ["test", *data_args(voc_root)],
        "another dataset's option": ["test", *data_args(voc_root), "--notrain", "--synthetic-size", "40"],
    }[case]
    expected = {
        "missing root": "--root is required for pascal5i",
        "unprepared root": f"PASCAL VOC is not prepared in {tmp_path}",
        "missing checkpoint": f"checkpoint not found: {tmp_path / 'nope.pt'}",
        "no checkpoint": "give --checkpoint RUN/checkpoint.pt, or --notrain",
        "another dataset's option": "--synthetic-size applies to --dataset synthetic only, not pascal5i",
    }[case]
    assert main(args) == 2
    assert expected in one_error_line(capsys)


def test_notrain_offline_falls_back_to_random_weights_with_one_warning(voc_root, tmp_path):
    # No cached weights, and every download refused at once (as offline, but fast and certain).
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "no_proxy": "", "NO_PROXY": ""}
    env.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    args = ["test", *data_args(voc_root), "--notrain", "--runs", "1", "--episodes", "2", "--json"]
    done = subprocess.run([sys.executable, "-m", "panet_lite", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: could not download VGG16_Weights"), done.stderr
    assert "fb_iou" in json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- prepare's count check

@pytest.fixture
def small_tree(tmp_path):
    """The small VOC + SBD scenario of test_pascal: far fewer images than the real dataset."""
    import fakedata

    return fakedata.make_pascal_trees(tmp_path / "pascal")


def test_prepare_help_explains_the_count_flags(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--check-only" in usage and "data/pascal5i_reference_counts.json" in usage
    assert "--no-check-counts" in usage and "partial SBD download" in usage


def error_after_progress(capsys) -> str:
    """The one error line that ends stderr after prepare's progress bars, and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("masks:")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_prepare_pascal_fails_plainly_when_counts_differ(small_tree, capsys):
    assert main(["prepare", "pascal", "--root", str(small_tree), "--no-download"]) == 2
    line = error_after_progress(capsys)
    assert "do not match the reference counts (data/pascal5i_reference_counts.json)" in line
    assert "trainaug total (trainaug.txt): expected 10,582 images, found 6" in line
    assert "partial or damaged SBD download" in line and "--no-check-counts" in line


def test_prepare_pascal_no_check_counts_and_check_only(small_tree, capsys):
    assert main(["prepare", "pascal", "--root", str(small_tree), "--no-download", "--no-check-counts"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts_checked"] is False and report["trainaug"] == 6
    lists = small_tree / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "trainaug" / "class3.txt").write_text("")  # cut short: check-only must not rebuild it
    assert main(["prepare", "pascal", "--root", str(small_tree), "--check-only"]) == 2
    line = one_error_line(capsys)
    assert "trainaug class 3 bird (trainaug/class3.txt): expected 698 images, found 0" in line
    assert f"run `python -m panet_lite prepare pascal --root {small_tree}` (it rebuilds lists" in line
    assert (lists / "trainaug" / "class3.txt").read_text() == ""


@pytest.mark.parametrize("args, expected", [
    (["prepare", "coco", "--root", "ROOT", "--check-only"], "apply to `prepare pascal` only"),
    (["prepare", "pascal", "--root", "ROOT", "--check-only"], "PASCAL VOC is not prepared in ROOT"),
])
def test_prepare_check_only_misuse_is_one_line(args, expected, tmp_path, capsys):
    assert main([str(tmp_path) if a == "ROOT" else a for a in args]) == 2
    assert expected.replace("ROOT", str(tmp_path)) in one_error_line(capsys)


@pytest.mark.parametrize("args, expected", [
    (["prepare", "coco", "--coco-url", "train=http://mirror/t.zip"],
     "no COCO archive is called 'train'; choose one of annotations, train2014, val2014"),
    (["prepare", "coco", "--coco-url", "http://mirror/val2014.zip"], "write NAME=URL"),
    (["prepare", "coco", "--voc-url", "http://mirror/voc.tar"], "COCO's mirrors go in --coco-url NAME=URL"),
    (["prepare", "pascal", "--coco-url", "val2014=http://mirror/v.zip"], "PASCAL's mirrors go in --voc-url"),
])
def test_mirror_url_misuse_is_one_line(args, expected, tmp_path, capsys):
    assert main([*args, "--root", str(tmp_path)]) == 2
    assert expected in one_error_line(capsys)


def test_prepare_passes_mirror_urls_on(tmp_path, monkeypatch, capsys):
    from panet_lite import coco, pascal

    seen = {}
    monkeypatch.setattr(pascal, "prepare_pascal", lambda root, **kw: seen.setdefault("pascal", kw) and {})
    monkeypatch.setattr(coco, "prepare_coco", lambda root, **kw: seen.setdefault("coco", kw) and {})
    assert main(["prepare", "pascal", "--root", str(tmp_path), "--voc-url", "http://m/voc.tar",
                 "--sbd-url", "http://m/benchmark.tgz"]) == 0
    assert (seen["pascal"]["voc_url"], seen["pascal"]["sbd_url"]) == ("http://m/voc.tar", "http://m/benchmark.tgz")
    assert main(["prepare", "coco", "--root", str(tmp_path), "--coco-url", "val2014=http://m/v.zip",
                 "--coco-url", "annotations=http://m/a.zip"]) == 0
    assert seen["coco"]["urls"] == {"val2014": "http://m/v.zip", "annotations": "http://m/a.zip"}
    # A mirror keeps the official checksum: a file that differs from the official one is refused.
    assert coco._archive_sources(seen["coco"]["urls"])["val2014"] == ("http://m/v.zip", coco.COCO_ARCHIVES["val2014"][1])


def test_check_only_and_no_check_counts_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "pascal", "--root", str(tmp_path), "--check-only", "--no-check-counts"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_reproduce_ways_trains_and_tests_n_way_models_and_finds_the_published_2_way_row(voc_root, tmp_path):
    out = tmp_path / "two-way"
    assert main(["reproduce", "--dataset", "pascal5i", "--root", str(voc_root), "--folds", "0", "--shot-list", "1",
                 "--ways", "2", "--steps", "2", "--size", "48", "--device", "cpu", "--backbone", "small",
                 "--pretrained", "false", "--runs", "1", "--episodes", "4", "--out", str(out)]) == 0
    row = json.loads((out / "fold0-2way-1shot" / "results-faithful.json").read_text())
    assert row["ways"] == 2 and row["train_config"]["ways"] == 2 and row["eval_config"]["ways"] == 2
    (setting,) = json.loads((out / "table.json").read_text())["settings"]
    assert setting["ways"] == 2 and setting["paper_mean"] is None  # the paper has no PASCAL-5i 2-way row
    # COCO-20i 2-way 1-shot (ResNet-50) is Papers with Code's entry filed under PANet, not the paper's: the
    # table sets it beside ours and says where it comes from.
    fake = [{"fold": f, "shots": 1, "miou": 0.2, "miou_std": 0.0, "fb_iou": 0.5} for f in range(4)]
    table = reproduce.summarize("coco20i", fake, ways=2)
    (coco,) = table["settings"]
    assert coco["paper_mean"] == paper_result("coco20i", 2, 1).mean == 18.0
    assert "Papers with Code's entry filed under PANet, not a number of PANet's paper" in reproduce.title(table)


def test_a_table_of_synthetic_runs_is_a_pipeline_check_without_paper_numbers():
    rows = [{"fold": f, "shots": 1, "miou": 0.5, "miou_std": 0.01, "fb_iou": 0.7} for f in range(4)]
    check = reproduce.summarize("synthetic", rows)
    assert check["kind"] == reproduce.PIPELINE_CHECK
    assert not any(k.startswith("paper") for s in check["settings"] for k in s)
    assert "not a reproduction" in reproduce.title(check)
    real = reproduce.summarize("pascal5i", rows)
    assert real["kind"] == reproduce.REPRODUCTION and real["settings"][0]["paper_mean"] == 48.1
    assert reproduce.summarize("pascal5i", rows, compare=False)["kind"] == reproduce.PIPELINE_CHECK


def subcommand_parsers():
    from panet_lite.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


def test_every_option_of_every_command_explains_itself():
    parsers = subcommand_parsers()
    assert set(parsers) == set(COMMANDS)
    for name, p in parsers.items():
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip()
            assert len(text) >= 10, (name, action.option_strings, action.help)  # an explanation, not a default
    # Each config field's help is the one declared beside it, so `--help` and the code cannot drift apart.
    from dataclasses import fields

    from panet_lite.train import TrainConfig

    train_help = {a.dest: a.help for a in parsers["train"]._actions}
    for f in fields(TrainConfig):
        assert train_help[f.name].startswith(f.metadata["help"].replace("%", "%%")), f.name


def test_training_and_test_seeds_are_separate_options():
    from panet_lite.cli import build_parser
    from panet_lite.demo import DemoConfig
    from panet_lite.evaluate import EvalConfig
    from panet_lite.options import pick
    from panet_lite.train import TrainConfig

    parser = build_parser()
    # A new training seed keeps the faithful protocol's test episodes (seed 1234, runs 1234 + r) ...
    args = parser.parse_args(["reproduce", "--dataset", "synthetic", "--seed", "7"])
    assert pick(args, TrainConfig).seed == 7 and pick(args, EvalConfig).seed == 1234
    # ... and the test seed moves only the test sampler.
    args = parser.parse_args(["reproduce", "--dataset", "synthetic", "--test-seed", "99"])
    assert pick(args, TrainConfig).seed == 1234 and pick(args, EvalConfig).seed == 99
    args = parser.parse_args(["test", "--dataset", "synthetic", "--fold", "0", "--notrain", "--test-seed", "5"])
    assert pick(args, EvalConfig).seed == 5
    with pytest.raises(SystemExit):  # `test` trains nothing, so it has no training seed to set
        parser.parse_args(["test", "--dataset", "synthetic", "--fold", "0", "--notrain", "--seed", "5"])
    args = parser.parse_args(["demo", "--seed", "3", "--test-seed", "4"])
    assert (pick(args, DemoConfig).seed, pick(args, DemoConfig).test_seed) == (3, 4)


def test_a_config_field_without_help_cannot_become_a_flag():
    import argparse
    from dataclasses import dataclass

    from panet_lite.options import add_options, option

    @dataclass
    class Config:
        explained: int = option(1, "an option with its help")
        silent: int = 2

    with pytest.raises(TypeError, match="Config.silent has no help"):
        add_options(argparse.ArgumentParser(), Config)
    parser = argparse.ArgumentParser()
    add_options(parser, Config, skip=("silent",))
    assert parser.parse_args(["--explained", "3"]).explained == 3


@pytest.mark.parametrize("argv, steps, flip", [
    (["--steps", "3"], 3, True),
    (["--steps=3"], 3, True),
    (["--steps", "6000", "--no-flip"], 6000, False),  # typed, even where it equals the recipe's value
    ([], 6_000, True),  # not typed: MLC's recipe
])
def test_a_method_recipe_fills_exactly_the_flags_argparse_did_not_read(argv, steps, flip):
    from panet_lite.cli import _train_config, parse

    args = parse(["train", "--dataset", "synthetic", "--fold", "0", "--method", "mlc", *argv])
    config = _train_config(args)
    assert (config.steps, config.flip, config.batch_size, config.backbone) == (steps, flip, 4, "resnet50-deepstem")
    assert ("steps" in args.given) == bool(argv) and ("flip" in args.given) == ("--no-flip" in argv)


def test_a_protocol_fills_the_test_flags_not_given():
    from panet_lite.cli import _eval_config, parse

    config = _eval_config(parse(["test", "--dataset", "synthetic", "--fold", "0", "--protocol", "hsnet",
                                 "--test-seed", "5"]))
    assert (config.seed, config.runs, config.episodes, config.size) == (5, 1, 1000, 400)


@pytest.mark.parametrize("argv, train_batch, test_batch", [
    ([], 1, "auto"), (["--method", "mlc"], 4, "auto"), (["--batch-size", "2"], 2, 2)])
def test_reproduce_s_test_batches_as_it_picks_unless_a_batch_size_is_given(argv, train_batch, test_batch):
    from panet_lite.cli import _reproduce_configs, parse

    train_cfg, eval_cfg = _reproduce_configs(parse(["reproduce", "--dataset", "synthetic", *argv]))
    assert (train_cfg.batch_size, eval_cfg.batch_size) == (train_batch, test_batch)
