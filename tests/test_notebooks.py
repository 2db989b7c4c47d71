"""Every chapter is saved as a learner should get it: run once, top to bottom, in a fresh kernel.

nbval re-runs the notebooks and compares outputs; these checks catch what it cannot: a cell that
was never run (nothing to compare), cells run out of order, a saved error, saved widget state
(it goes stale: a reopened chapter shows "Error displaying widget: model not found"), and
checked cells whose output is floating-point round-off that differs from one CPU to another.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# A number like 9.5e-07 or 1.9e-06: the size of round-off, which another CPU's kernels change.
ROUND_OFF = re.compile(r"\d(\.\d+)?e-(0[5-9]|[1-9]\d)")


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def output_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text", out.get("data", {}).get("text/plain", ""))
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 9


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_after_one_clean_run(path):
    cells = code_cells(path)
    empty = [i for i, c in enumerate(cells) if not "".join(c["source"]).strip()]
    assert not empty, f"{path.name}: empty code cells {empty}; delete them"
    counts = [c["execution_count"] for c in cells]
    never_run = [i for i, n in enumerate(counts) if n is None]
    assert not never_run, f"{path.name}: code cells {never_run} were never run; Restart Kernel and Run All"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)}; Restart Kernel and Run All")
    errors = [i for i, c in enumerate(cells) for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{path.name}: code cells {errors} saved an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_saved_widget_state(path):
    assert "widgets" not in json.loads(path.read_text())["metadata"], (
        f"{path.name} carries saved widget state; execute with "
        f"--ExecutePreprocessor.store_widget_state=False (make notebooks does)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_print_no_round_off(path):
    bad = [i for i, c in enumerate(code_cells(path))
           if "NBVAL_CHECK_OUTPUT" in "".join(c["source"]) and ROUND_OFF.search(output_text(c))]
    assert not bad, (f"{path.name}: checked cells {bad} print round-off-sized numbers, which differ on "
                     f"another CPU; print a conclusion (e.g. 'matches to 1e-5: True') instead")


def test_the_checks_fire(tmp_path):
    """The checks above fail on a notebook with each fault."""
    def cell(n, source="x = 1", outputs=()):
        return {"cell_type": "code", "execution_count": n, "source": source, "outputs": list(outputs),
                "metadata": {}}

    def write(cells, metadata=None):
        p = tmp_path / "00_x.ipynb"
        p.write_text(json.dumps({"cells": cells, "metadata": metadata or {}}))
        return p

    with pytest.raises(AssertionError, match="never run"):
        test_saved_after_one_clean_run(write([cell(1), cell(None)]))
    with pytest.raises(AssertionError, match="not 1..2"):
        test_saved_after_one_clean_run(write([cell(2), cell(3)]))
    with pytest.raises(AssertionError, match="saved an error"):
        test_saved_after_one_clean_run(write([cell(1, outputs=[{"output_type": "error"}])]))
    with pytest.raises(AssertionError, match="widget state"):
        test_no_saved_widget_state(write([cell(1)], {"widgets": {}}))
    residual = {"output_type": "stream", "name": "stdout", "text": "max |difference| 9.5e-07\n"}
    with pytest.raises(AssertionError, match="round-off"):
        test_checked_cells_print_no_round_off(write([cell(1, "# NBVAL_CHECK_OUTPUT\nprint(d)", [residual])]))
    test_checked_cells_print_no_round_off(write([cell(1, "print(d)", [residual])]))  # unchecked: fine
