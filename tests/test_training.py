"""Training resumes exactly; evaluation and the demo produce their figures; the paper table is one source."""
import json
from dataclasses import replace

import pytest
import torch

from panet_lite.data import fold_classes, train_classes
from panet_lite.evaluate import EvalConfig, class_argmax, evaluate
from panet_lite.paper import PAPER_RESULTS, PAR_ABLATION, markdown_table, paper_result
from panet_lite.synthetic import SyntheticFewShot
from panet_lite.train import TrainConfig, load_model, train


def small_config(steps):
    return TrainConfig(backbone="small", pretrained=False, steps=steps, lr=0.01, milestones=(4,), size=None,
                       device="cpu", log_every=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def source():
    return SyntheticFewShot("trainaug", 200, size=40)


def test_resume_gives_the_same_weights_as_one_straight_run(source, tmp_path):
    straight, hist = train(source, train_classes(0), small_config(8), out=tmp_path / "a", progress=False)
    train(source, train_classes(0), small_config(5), out=tmp_path / "b", progress=False)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 5 and set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config", "history"}
    resumed, hist_b = train(source, train_classes(0), small_config(8), out=tmp_path / "b", progress=False)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert [h["step"] for h in hist_b] == [2, 4, 5, 6, 8]  # the interrupted run logged its last step too
    assert [h["loss"] for h in hist_b][-1] == pytest.approx(hist[-1]["loss"])
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 8
    # A finished run loads instead of training again.
    loaded = load_model(tmp_path / "a" / "checkpoint.pt")
    assert not loaded.training
    for p, q in zip(straight.parameters(), loaded.parameters()):
        assert torch.equal(p, q)


def test_recompute_trains_to_the_same_weights_and_resumes_a_run_without_it(source, tmp_path):
    # Recomputing image by image convolves batches of one instead of the whole batch, whose kernels round
    # differently; in float64 that difference stays at round-off's size (~1e-15 of the weights), so 1e-9 of
    # each tensor's largest weight is a wide margin on any CPU, and far below what a step changes.
    def config(steps, **kw):
        return replace(small_config(steps), dtype="float64", **kw)

    plain, _ = train(source, train_classes(0), config(4), out=tmp_path / "a", progress=False)
    train(source, train_classes(0), config(2), out=tmp_path / "b", progress=False)
    # --recompute says how to run, not what is trained: it may resume a run started without it.
    recomputed, _ = train(source, train_classes(0), config(4, recompute=True), out=tmp_path / "b", progress=False)
    for p, q in zip(plain.parameters(), recomputed.parameters()):
        assert p.dtype == torch.float64 and (p - q).abs().max() <= 1e-9 * p.abs().max()


def test_a_finished_run_is_loaded_without_drawing_an_episode(source, tmp_path, monkeypatch):
    import panet_lite.train as training

    trained, history = train(source, train_classes(0), small_config(4), out=tmp_path, progress=False)

    def no_episodes(*args, **kwargs):
        raise AssertionError("a finished run drew its training episodes again")

    monkeypatch.setattr(training, "EpisodeDataset", no_episodes)
    again, history_again = train(source, train_classes(0), small_config(4), out=tmp_path, progress=False)
    assert not again.training and history_again == history
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), again.parameters()))


def test_checkpoints_store_the_model_arguments(source, tmp_path):
    from panet_lite.model import PANet
    from panet_lite.train import load_checkpoint

    model = PANet("small", alpha=7.0)  # a cosine scale TrainConfig does not name
    train(source, train_classes(0), small_config(2), out=tmp_path, model=model, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["model_args"] == {"backbone": "small", "align": True, "alpha": 7.0, "resnet_layer": "layer3",
                                  "method": "panet", "refine": False}
    loaded = load_model(tmp_path / "checkpoint.pt")
    assert (loaded.backbone, loaded.alpha) == ("small", 7.0)
    # A bare state dict reads as {"model": it}; anything else is refused plainly.
    torch.save(PANet("small").state_dict(), tmp_path / "weights.pt")
    assert load_checkpoint(tmp_path / "weights.pt").keys() == {"model"}
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a panet_lite checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_lr_schedule_steps_per_iteration(source):
    cfg = small_config(6)
    _, hist = train(source, train_classes(0), cfg, progress=False)
    assert [round(h["lr"], 6) for h in hist] == [0.01, 0.001, 0.001]


def test_evaluation_runs_seeds_and_batching_do_not_change_the_result(source):
    torch.manual_seed(0)
    from panet_lite import PANet

    model = PANet("small").eval()
    # A batch of 4 convolves with other kernels than a batch of 1: in float32 a pixel whose two best
    # logits tie to round-off may flip and move an IoU by 1/(its union). In float64 the logits agree to
    # ~1e-15 and the labels, so the pixel counts and IoUs, are the same to the last bit.
    one = evaluate(model, source, fold_classes(1), EvalConfig(runs=2, episodes=6, size=None, batch_size=1,
                                                              dtype="float64"), progress=False)
    many = evaluate(model, source, fold_classes(1), EvalConfig(runs=2, episodes=6, size=None, batch_size=4,
                                                               dtype="float64"), progress=False)
    assert json.dumps(one.runs) == json.dumps(many.runs)
    assert [r["seed"] for r in one.runs] == [1234, 1235]
    assert one.miou == pytest.approx(sum(r["miou"] for r in one.runs) / 2, nan_ok=True)
    assert set(one.class_iou) == set(fold_classes(1))


def test_models_tested_together_get_what_each_gets_alone(source):
    from panet_lite import PANet

    models = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        models[seed] = PANet("small").eval()
    cfg = EvalConfig(runs=2, episodes=5, size=None, batch_size=2, support="scribble")
    together = evaluate(models, source, fold_classes(2), cfg, progress=False)
    assert set(together) == {0, 1}
    for seed, model in models.items():
        alone = evaluate(model, source, fold_classes(2), cfg, progress=False)
        assert json.dumps(together[seed].runs) == json.dumps(alone.runs)  # every run's numbers (NaN: unseen)
    assert json.dumps(together[0].runs) != json.dumps(together[1].runs)  # two models, two results
    with pytest.raises(ValueError, match="test PANet apart from MLC and SSP"):
        evaluate({"panet": models[0], "mlc": models[0].as_method("mlc")}, source, fold_classes(2), cfg,
                 progress=False)
    with pytest.raises(ValueError, match="the mapping is empty"):
        evaluate({}, source, fold_classes(2), cfg, progress=False)


def test_a_compiled_encoder_tests_to_the_same_result(source, tmp_path, monkeypatch):
    from panet_lite import PANet

    # Inductor's own cache, fresh: one shared with a run on other CPU kernels (ATEN_CPU_CAPABILITY=default)
    # reused a precompiled header without vector types, and the generated C++ failed to compile.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    torch.manual_seed(0)
    model = PANet("small").eval()
    # Fused kernels round differently: in float32 a pixel whose two best logits tie to round-off may flip
    # and move an IoU by 1/(its union). In float64 the logits agree to ~1e-15 and the labels are the same.
    cfg = EvalConfig(runs=1, episodes=6, size=None, device="cpu", dtype="float64")
    eager = evaluate(model, source, fold_classes(0), cfg, progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = evaluate(model, source, fold_classes(0), replace(cfg, compile=True), progress=False)
    assert json.dumps(compiled.runs) == json.dumps(eager.runs)  # six episodes leave some classes unseen (NaN)
    assert sum(v == v for v in eager.class_iou.values()) >= 2
    assert model.state_dict().keys() == state.keys()  # compiled in place, the weights keep their names


def test_paper_table_is_the_published_one():
    assert paper_result("pascal5i", 1, 1).folds == (42.3, 58.0, 51.1, 41.2)
    assert paper_result("pascal5i", 1, 5).mean == 55.7
    assert paper_result("coco20i", 2, 1).backbone == "resnet50"
    for r in PAPER_RESULTS:
        if r.folds:
            assert abs(sum(r.folds) / 4 - r.mean) < 0.06  # the published means agree with their folds
    assert "| PASCAL-5i 1-way 1-shot | 42.3 | 58.0 | 51.1 | 41.2 | 48.1 | 66.5 |" in markdown_table()
    with pytest.raises(KeyError, match="pascal5i 1-way 1-shot"):
        paper_result("pascal5i", 3, 1)
    for shots, (without, with_par) in PAR_ABLATION.items():  # the ablation's PAR row is PANet's own
        assert with_par == paper_result("pascal5i", 1, shots).mean and without < with_par


@pytest.mark.parametrize("shape, dim", [((3, 2, 4, 7, 5), 2), ((4, 9, 6), 0), ((2, 3, 5, 5), 1)])
def test_class_argmax_is_argmax_with_the_first_maximum_on_ties(shape, dim):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, shape, generator=generator).float()  # few values: ties everywhere
    labels = class_argmax(logits, dim)
    assert torch.equal(labels, logits.argmax(dim=dim))
    # by hand: the first index along `dim` that reaches the maximum
    is_max = (logits == logits.amax(dim=dim, keepdim=True)).movedim(dim, -1).reshape(-1, shape[dim])
    expected = torch.stack([row.nonzero()[0, 0] for row in is_max]).reshape(labels.shape)
    assert torch.equal(labels, expected)


def test_workers_auto_loads_in_the_main_process_on_cpu_and_with_a_share_of_the_cores_on_cuda(monkeypatch):
    from panet_lite import runtime

    monkeypatch.setattr(runtime, "cpu_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("PANET_LITE_SHARED_BY", raising=False)
    assert runtime.loader_options("auto", torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert runtime.loader_options("auto", torch.device("cuda")) == {
        "num_workers": 8, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's 4 processes on this machine: 4 cores each
    assert runtime.loader_options("auto", torch.device("cuda"))["num_workers"] == 4
    monkeypatch.setenv("PANET_LITE_SHARED_BY", "16")  # reproduce --gpus' jobs side by side: at least one each
    assert runtime.loader_options("auto", torch.device("cuda"))["num_workers"] == 1
    assert runtime.loader_options(3, torch.device("cpu"))["num_workers"] == 3
    assert TrainConfig().workers == "auto" and EvalConfig().workers == "auto"


def test_the_test_batches_episodes_on_cuda_only_where_queries_share_a_size():
    from panet_lite.runtime import AUTO_TEST_BATCH, test_batch_size

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert EvalConfig().batch_size == "auto" and AUTO_TEST_BATCH == 8
    assert test_batch_size("auto", cuda, per_query=False) == 8
    assert test_batch_size("auto", cpu, per_query=False) == 1
    assert test_batch_size("auto", cuda, per_query=True) == 1  # standard protocol: each query at its own size
    assert test_batch_size(3, cuda, per_query=False) == 3


def test_the_same_weights_and_numbers_whatever_the_number_of_workers(source, tmp_path):
    runs = {}
    for workers in (0, 2):  # each episode is a function of its index: worker processes draw the same ones
        model, history = train(source, train_classes(0), replace(small_config(3), workers=workers, batch_size=2),
                               progress=False)
        result = evaluate(model, source, fold_classes(0), EvalConfig(runs=1, episodes=4, size=None, batch_size=2,
                                                                     workers=workers), progress=False)
        runs[workers] = model.state_dict(), history, result.runs
    for name, weight in runs[0][0].items():
        assert torch.equal(weight, runs[2][0][name]), name  # bit for bit
    assert [h["loss"] for h in runs[0][1]] == [h["loss"] for h in runs[2][1]]
    assert json.dumps(runs[0][2]) == json.dumps(runs[2][2])
