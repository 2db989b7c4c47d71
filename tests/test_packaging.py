"""environment.yml and pyproject.toml list the same dependencies; CI runs the README's command; the
data/ definition files are found by an editable install and travel in a wheel, datasets never."""
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_deps = {_name(d) for d in project["dependencies"] + extras["course"] + extras["test"]}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    conda_pip = {_name(l.strip()[2:]) for l in lines[start + 1:] if l.strip().startswith("- ")}
    assert conda_pip == pip_deps


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


DATA_FILES = {"folds.json", "pascal5i_reference_counts.json", *(f"hsnet/pascal/val/fold{f}.txt" for f in range(4))}
LOADER_CHECK = (
    "from panet_lite import data, episodes, pascal; "
    "print(data.data_file('folds.json')); "
    "print(len(episodes.hsnet_pairs(3))); "
    "print(','.join(data.PASCAL5I.class_names[c - 1] for c in data.fold_classes(2))); "
    "print(pascal.reference_counts()['trainaug']['images'])"
)


def _run_loader_check(cwd: Path, path_first: Path | None = None) -> list[str]:
    """Import panet_lite in a fresh interpreter, away from the checkout, and read both data files."""
    prefix = "" if path_first is None else f"import sys; sys.path.insert(0, {str(path_first)!r}); "
    code = prefix + LOADER_CHECK
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_installed_package_reads_data_folder(tmp_path):
    """The editable install (what `make` sets up) reads the checkout's data/, not a copy."""
    assert _run_loader_check(tmp_path) == [str(ROOT / "data" / "folds.json"), "346",
                                           "diningtable,dog,horse,motorbike,person", "10582"]


def test_wheel_carries_the_definition_files_only(tmp_path):
    """A wheel holds data/'s JSON files and HSNet's lists as panet_lite/_data, nothing of a downloaded dataset,
    and works."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for item in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / item, tree / item)
    shutil.copytree(ROOT / "panet_lite", tree / "panet_lite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data", tree / "data", ignore=lambda folder, names: [  # what `prepare` put there
        n for n in names if (Path(folder) == ROOT / "data" and n in ("pascal", "coco")) or n.endswith((".tar", ".zip"))])
    (tree / "data" / "pascal" / "VOCdevkit").mkdir(parents=True)  # as if `prepare` had run
    (tree / "data" / "pascal" / "VOCdevkit" / "panet_lite_index.json").write_text("{}")
    (tree / "data" / "stray.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("panet_lite-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    assert {n for n in names if not n.startswith(("panet_lite/", "panet_lite-"))} == set()
    assert {n for n in names if n.startswith("panet_lite/_data/")} == {f"panet_lite/_data/{f}" for f in DATA_FILES}
    site = tmp_path / "site"
    assert _run_loader_check(tmp_path, path_first=site) == [str(site / "panet_lite" / "_data" / "folds.json"), "346",
                                                            "diningtable,dog,horse,motorbike,person", "10582"]


def test_gitignore_ignores_what_prepare_writes_under_data_only():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    for committed in ("data/README.md", *(f"data/{f}" for f in DATA_FILES)):
        assert not ignored(committed), committed
    for downloaded in ("data/pascal/VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg", "data/pascal/SBD/cls/x.mat",
                       "data/pascal/VOCtrainval_11-May-2012.tar", "data/coco/train2014.zip",
                       "data/coco/panet_lite_lists/train2014/class1.txt", "data/VOCdevkit/VOC2012/x.png"):
        assert ignored(downloaded), downloaded


def test_the_command_line_needs_no_course_extra():
    # `pip install panet_lite` without [course] must run prepare / train / test / reproduce.
    code = ("import sys; import panet_lite, panet_lite.cli, panet_lite.reproduce, panet_lite.pascal, panet_lite.coco; "
            "panet_lite.cli.build_parser(); "
            "print(sorted(m for m in ('ipywidgets', 'seaborn', 'jupyterlab', 'ipykernel', 'nbconvert') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
