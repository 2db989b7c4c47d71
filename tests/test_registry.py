"""A method is one registered object: the package's layering (methods.py below model.py and train.py,
no import cycle), no module but methods.py branching on a method's name, and a method registered
at run time reaching the model, training, the run folders, the course helpers and the command line."""
import ast
from pathlib import Path

import pytest
import torch

import panet_lite
from panet_lite import cli, methods
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
    with pytest.raises(ValueError, match="is not trained: evaluate it with `test --notrain --method cos10`"):
        TrainConfig(method="cos10", align=False)
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
    assert methods.run_folder("coco", "panet") == "runs/coco"
