"""Chapter 10's foundation-model numbers: each row says where it was read, and the checked figures are the ones
read there (see the sources in panet_lite/paper.py)."""
import re

import pytest

from panet_lite.paper import FOUNDATION_RESULTS, TESTS, FoundationResult, foundation_markdown


def _row(method: str, dataset: str, shots: int = 1) -> FoundationResult:
    rows = [r for r in FOUNDATION_RESULTS if (r.method, r.dataset, r.shots) == (method, dataset, shots)]
    assert len(rows) == 1, (method, dataset, shots)
    return rows[0]


@pytest.mark.parametrize("r", FOUNDATION_RESULTS, ids=lambda r: f"{r.method}-{r.dataset}-{r.shots}")
def test_every_row_names_where_it_was_read(r):
    # a URL, or an owner/name repository path
    assert re.search(r"https?://\S+|\b[\w.-]+/[\w.-]+ [\w./{}-]+", r.source), r.source
    if not r.checked:
        assert "NOT CHECKED" in r.source


@pytest.mark.parametrize("r", FOUNDATION_RESULTS, ids=lambda r: f"{r.method}-{r.dataset}-{r.shots}")
def test_row_values_are_plausible(r):
    assert 0 < r.mean < 100
    assert r.ways >= 1 and r.shots >= 1
    assert r.dataset in {"pascal5i", "coco20i", "lvis92i"}
    assert r.backbones and r.test and r.venue
    assert 2023 <= r.year <= 2026


def test_test_keys_are_valid_where_used():
    for r in FOUNDATION_RESULTS:
        # a short description is allowed; a bare key-like word must be a key of TESTS
        if re.fullmatch(r"[a-z0-9-]+", r.test):
            assert r.test in TESTS, r.test


def test_rows_unique_by_method_dataset_shots():
    keys = [(r.method, r.dataset, r.shots) for r in FOUNDATION_RESULTS]
    assert len(keys) == len(set(keys))


def test_markdown_has_header_and_one_line_per_row():
    md = foundation_markdown()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(FOUNDATION_RESULTS)
    assert "history, not a ranking" in md
    for r in FOUNDATION_RESULTS:
        assert sum(r.method in line and f"{r.mean:.1f}" in line for line in table) == 1
    unchecked = [line for line in table if "NOT CHECKED" in line]
    assert len(unchecked) == sum(not r.checked for r in FOUNDATION_RESULTS)


def test_training_free_flags():
    for method in ("Matcher", "GF-SAM", "INSID3"):
        assert all(not r.trains for r in FOUNDATION_RESULTS if r.method == method)
    assert all(r.trains for r in FOUNDATION_RESULTS if r.method == "VRP-SAM")
    assert all("SAM" not in r.backbones.replace("no SAM", "") for r in FOUNDATION_RESULTS if r.method == "INSID3")


def test_matcher_figures_read_in_its_abstract():
    coco, lvis = _row("Matcher", "coco20i"), _row("Matcher", "lvis92i")
    assert coco.checked and coco.mean == 52.7 and "2305.13310" in coco.source
    assert lvis.checked and lvis.mean == 33.0


def test_gfsam_coco_figure_matches_its_abstract_and_official_logs():
    r = _row("GF-SAM", "coco20i")
    assert r.checked and r.mean == 58.7 and "2410.06964" in r.source
    folds = (56.62, 61.44, 59.63, 57.12)  # the official logs' per-fold mIoU, outputs/coco/fold{0..3}.txt
    assert round(sum(folds) / 4, 1) == r.mean


def test_gfsam_pascal_is_our_mean_of_the_official_logs_not_the_paper():
    r = _row("GF-SAM", "pascal5i")
    assert not r.checked
    folds = (71.12, 75.70, 69.17, 73.25)  # outputs/pascal/fold{0..3}.txt
    assert round(sum(folds) / 4, 1) == r.mean == 72.3


def test_third_party_only_figures_are_not_marked_checked():
    for method, dataset, mean in (("INSID3", "coco20i", 57.6), ("VRP-SAM", "pascal5i", 71.9),
                                  ("VRP-SAM", "coco20i", 53.9)):
        r = _row(method, dataset)
        assert r.mean == mean and not r.checked
        assert "third-party" in r.source


def test_rows_are_frozen():
    with pytest.raises(AttributeError):
        FOUNDATION_RESULTS[0].mean = 0.0  # type: ignore[misc]
