"""A method is one registered object: the package's layering (methods.py below model.py and train.py,
no import cycle), no module but methods.py branching on a method's name, and a method registered
at run time reaching the model, training, the run folders, the course helpers and the command line."""
import ast
from pathlib import Path

import pytest
import torch

import panet_lite
from panet_lite import cli
from panet_lite.course import course_model_config, course_run_name
from panet_lite.data import train_classes
from panet_lite.methods import METHODS, Method, get_method
from panet_lite.model import PANet
from panet_lite.reproduce import runs_folder
from panet_lite.synthetic import SyntheticFewShot
from panet_lite.train import TrainConfig, train

PACKAGE = Path(panet_lite.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body, lazily or not)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("panet_lite."):
                found.add(node.module.split(".")[1])
        graph[path.stem] = found - {path.stem}
    return graph


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_methods_sit_below_model_and_train_and_the_top_level_imports_have_no_cycle():
    graph = package_imports()
    assert {"model", "train"} & reachable(graph, "methods") == set()
    assert "methods" in graph["model"] and "methods" in graph["train"]
    # Module-level imports only (what runs at import time) must form no cycle.
    top = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        top[path.stem] = {n.module.split(".")[0] for n in tree.body
                          if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module} - {path.stem}
    cycles = [m for m in top if m in reachable(top, m)]
    assert cycles == [], f"import cycles through {cycles}"


def test_no_module_but_methods_branches_on_a_method_name():
    names = set(METHODS)
    hits = []
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("methods", "paper"):  # paper.TESTS names published tests after their methods
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            consts = []
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] for c in ast.walk(c)]
            elif isinstance(node, ast.Dict):
                consts = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Subscript):
                consts = [node.slice]
            hits += [f"{path.name}:{node.lineno}" for c in consts
                     if isinstance(c, ast.Constant) and c.value in names]
    assert hits == []


class Cos10(Method):
    """A method a learner might add: PANet's matching at scale 10, no PAR, its own run folders."""

    name = "cos10"
    title = "PANet x 10"
    summary = "PANet's matching with cosine x 10 and no PAR"
    scale = 10.0
    switches = ()
    loss_weights = {}
    run_tag = "cos10"


@pytest.fixture
def cos10(monkeypatch):
    monkeypatch.setitem(METHODS, "cos10", Cos10())
    return METHODS["cos10"]


def test_a_method_registered_at_run_time_reaches_the_model_training_folders_and_cli(cos10, tmp_path, monkeypatch):
    torch.manual_seed(0)
    new = PANet("small", method="cos10").double().eval()
    ref = PANet("small", alpha=10.0, align=False).double().eval()
    ref.load_state_dict(new.state_dict())
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 2, 1, 3, 40, 40, generator=g, dtype=torch.float64)
    fg = (torch.rand(1, 2, 1, 40, 40, generator=g) > 0.5).double()
    q = torch.randn(1, 1, 3, 40, 40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(new(s, fg, 1 - fg, q).logits, ref(s, fg, 1 - fg, q).logits, rtol=0, atol=0)
    assert new.matching is cos10 and new.alpha == 10.0 and new.align is False
    with pytest.raises(ValueError, match="--method cos10 trains without it"):
        PANet("small", method="cos10", align=True)

    assert runs_folder("synthetic", "cos10") == "runs/synthetic-cos10"
    assert course_run_name(course_model_config(method="cos10", steps=5)).endswith("-cos10-5")
    cfg = TrainConfig(method="cos10", align=False, backbone="small", pretrained=False, steps=2, size=None,
                      device="cpu", log_every=1, milestones=(1,))
    _, history = train(SyntheticFewShot("trainaug", 60, size=40), train_classes(0), cfg, out=tmp_path / "run",
                       progress=False)
    assert [r["step"] for r in history] == [1, 2] and history[-1]["align_loss"] == 0.0

    got = {}
    monkeypatch.setattr("panet_lite.train.train", lambda *a, **k: got.update(cfg=a[2], out=k["out"]))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "synthetic", "--fold", "0", "--method", "cos10", "--backbone", "small",
                     "--no-align", "--steps", "1"]) == 0
    assert got["cfg"].method == "cos10" and str(got["out"]).startswith("runs/synthetic-cos10/")


def test_an_untrained_method_is_refused_by_training_and_unknown_names_name_the_choices(cos10, monkeypatch):
    monkeypatch.setattr(cos10, "trains", False, raising=False)
    with pytest.raises(ValueError, match="is not trained: test it as it is with `test --notrain --method cos10`"):
        train(SyntheticFewShot("trainaug", 60, size=40), train_classes(0), TrainConfig(method="cos10", align=False))
    with pytest.raises(ValueError, match="dinov2_vits14 is a frozen DINOv2 ViT-S/14: its features are never "
                                         "trained; test them as they are with `test --notrain"):
        train(SyntheticFewShot("trainaug", 60, size=40), train_classes(0), TrainConfig(backbone="dinov2_vits14"))
    with pytest.raises(ValueError, match="unknown method 'fss'; choose one of panet, mlc, ssp, cos10"):
        get_method("fss")


def test_the_registry_holds_what_the_course_quotes():
    assert list(METHODS) == ["panet", "mlc", "ssp"]
    assert [METHODS[m].scale for m in METHODS] == [20.0, 10.0, 10.0]
    assert [METHODS[m].run_tag for m in METHODS] == [None, "mlc", "ssp"]
    assert METHODS["ssp"].recipe == METHODS["mlc"].recipe and METHODS["panet"].recipe == {}
    assert METHODS["panet"].published_result("pascal5i", 1, 1).mean == 48.1
    assert METHODS["ssp"].published_result("pascal5i", 1, 5).mean == 69.3
    assert METHODS["mlc"].published_result("coco20i", 1, 1) is None  # MLC's README gives no COCO row
    assert METHODS["panet"].published_weak("bbox", "pascal5i", 1, 1) is not None
    assert METHODS["mlc"].published_weak("bbox", "pascal5i", 1, 1) is None
    assert runs_folder("coco", "panet") == "runs/coco"


# ----------------------------------------------------------------------------- encoders

from dataclasses import replace as _replace  # noqa: E402

from panet_lite import encoders, evaluate as evaluating, inference  # noqa: E402
from panet_lite import train as training  # noqa: E402
from panet_lite.data import IMAGENET_STATS, fold_classes  # noqa: E402
from panet_lite.encoders import ENCODERS, EncoderSpec, encoder_spec  # noqa: E402
from panet_lite.episodes import EpisodeDataset  # noqa: E402
from panet_lite.evaluate import EvalConfig  # noqa: E402


def test_each_encoder_declares_the_statistics_and_sizes_of_its_weights():
    import timm
    from torchvision.models import ResNet50_Weights, VGG16_Weights

    for name, enum in (("vgg16", VGG16_Weights), ("resnet50", ResNet50_Weights)):
        weights = enum.IMAGENET1K_V1
        spec = ENCODERS[name]
        assert f"({weights.meta['_file_size']:.0f} MB)" in spec.weights
        assert list(spec.mean) == weights.transforms().mean and list(spec.std) == weights.transforms().std
    for name in encoders.FROZEN_BACKBONES:
        cfg = timm.models.get_pretrained_cfg(ENCODERS[name].weights.split()[1])
        assert (ENCODERS[name].mean, ENCODERS[name].std) == (tuple(cfg.mean), tuple(cfg.std))
    assert tuple(encoders.BACKBONES) == ("vgg16", "resnet50", "resnet50-deepstem", "small")
    assert tuple(encoders.FROZEN_BACKBONES) == ("dinov2_vits14", "dinov2_vitb14")
    assert tuple(encoders.RECOMPUTE_BACKBONES) == ("vgg16", "small")
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'; choose one of vgg16, resnet50"):
        encoder_spec("vgg19")


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "resnet50-deepstem", "small", "dinov2_vits14"])
@torch.no_grad()
def test_each_encoder_s_stride_and_smallest_input_are_what_it_computes(name):
    spec = ENCODERS[name]
    encoder = spec.build(False, "layer3").eval()
    for side, cells in ((spec.min_size, 2), (spec.min_size - 1, 1), (4 * spec.stride, 4)):
        assert encoder(torch.zeros(1, 3, side, side)).shape[-2:] == (cells, cells), (name, side)
    model = PANet(name)
    with pytest.raises(ValueError, match=f"too small for the stride-{spec.stride} encoder: use at least "
                                         f"{spec.min_size} pixels"):
        model.encode(torch.zeros(1, 1, 1, 3, spec.min_size - 1, 40), torch.zeros(1, 1, 3, spec.min_size - 1, 40))


UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] images, unchanged


@pytest.fixture
def unit_small(monkeypatch):
    """An encoder registered at run time whose inputs are [0, 1] images (another mean and std)."""
    monkeypatch.setitem(ENCODERS, "small-unit", _replace(ENCODERS["small"], mean=UNIT[0], std=UNIT[1]))
    return "small-unit"


def test_the_data_pipeline_normalises_with_the_encoder_s_statistics(unit_small, monkeypatch):
    source = SyntheticFewShot("val", 200, size=32)
    plain = EpisodeDataset(source, fold_classes(0), 1, seed=3)[0]
    unit = EpisodeDataset(source, fold_classes(0), 1, seed=3, stats=UNIT)[0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET_STATS)
    torch.testing.assert_close(plain["query_images"], (unit["query_images"] - mean) / std, rtol=1e-6, atol=1e-6)
    assert unit["query_images"].min() >= 0 and unit["query_images"].max() <= 1

    model = PANet(unit_small)
    assert model.input_stats == UNIT and PANet("small").input_stats == IMAGENET_STATS
    seen = []
    real = EpisodeDataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("stats"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluating, "EpisodeDataset", spy)
    monkeypatch.setattr(training, "EpisodeDataset", spy)
    evaluating.evaluate(model, source, fold_classes(0), EvalConfig(runs=1, episodes=2, size=32, device="cpu"),
                        progress=False)
    cfg = TrainConfig(backbone=unit_small, pretrained=False, steps=1, size=32, device="cpu", milestones=(1,))
    train(SyntheticFewShot("trainaug", 200, size=32), train_classes(0), cfg, progress=False)
    assert seen == [UNIT, UNIT]

    used = []
    monkeypatch.setattr(inference, "normalize", lambda images, stats: used.append(stats) or images.float() / 255)
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[8:24, 8:24] = 1
    inference.segment(model, [[image]], [[mask.numpy()]], [image], size=32)
    assert used == [UNIT, UNIT]


def test_models_with_different_input_statistics_are_not_tested_together(unit_small):
    models = {"imagenet": PANet("small"), "unit": PANet(unit_small)}
    with pytest.raises(ValueError, match="normalise their images with different statistics"):
        evaluating.evaluate(models, SyntheticFewShot("val", 200, size=32), fold_classes(0),
                            EvalConfig(runs=1, episodes=1, size=32, device="cpu"), progress=False)


def test_an_encoder_spec_is_what_the_model_asks(unit_small):
    assert isinstance(PANet(unit_small).encoder_spec, EncoderSpec)
    assert PANet("dinov2_vits14").encoder_spec.stride == 14


def test_the_views_draw_their_episode_with_the_model_s_statistics(unit_small):
    from panet_lite.explain import episode_counts, load_episode
    from panet_lite.widgets import ModelSwapWidget

    source = SyntheticFewShot("val", 200, size=32)
    _, item = load_episode(source, fold_classes(0), stats=UNIT)
    assert item["query_images"].min() >= 0 and item["query_images"].max() <= 1
    counts = episode_counts(PANet(unit_small), source, fold_classes(0), episodes=2, size=32)
    assert counts["faithful"].shape[1] == 2
    with pytest.raises(ValueError, match="normalise their images with different statistics"):
        ModelSwapWidget({"a": PANet("small"), "b": PANet(unit_small)}, source)
