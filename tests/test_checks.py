"""The exercise checkers: they pass the reference solutions, and each usual mistake gets its own diagnosis."""
import re
import sys
from pathlib import Path

import pytest
import torch

from panet_lite import checks
from panet_lite.alignment import alignment_loss
from panet_lite.synthetic import write_voc_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))

CHECKERS = {"episode_labels": checks.check_episode_labels, "support_masks": checks.check_support_masks,
            "masked_average_pool": checks.check_masked_average_pool, "prototypes": checks.check_prototypes,
            "prototype_scores": checks.check_prototype_scores, "alignment_loss": checks.check_alignment_loss,
            "class_iou": checks.check_class_iou, "fold_summary": checks.check_fold_summary,
            "self_support": checks.check_self_support, "training_step": checks.check_training_step,
            "patch_coverage": checks.check_patch_coverage}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return write_voc_tree(root, n_train=60, n_val=30, size=32)


def _line(capsys) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 1
    return out[0]


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("exercise, description", [(k, d) for k, v in checks.MISTAKES.items()
                                                    if k in CHECKERS for d, _ in v])
def test_every_usual_mistake_gets_its_diagnosis(exercise, description, capsys):
    wrong = dict(checks.MISTAKES[exercise])[description]
    assert CHECKERS[exercise](wrong) is False
    line = _line(capsys)
    assert line.startswith("[FAIL]") and f"this is what {description} gives" in line, line


@pytest.mark.parametrize("description", [d for d, _ in checks.MISTAKES["learning_rate"]])
def test_learning_rate_mistakes(description, capsys):
    assert checks.check_learning_rate(dict(checks.MISTAKES["learning_rate"])[description]) is False
    assert description in _line(capsys)


@pytest.mark.parametrize("description", [d for d, _ in checks.MISTAKES["class_lists"]])
def test_class_list_mistakes(description, voc, capsys):
    assert checks.check_class_lists(dict(checks.MISTAKES["class_lists"])[description], voc) is False
    assert description in _line(capsys)


@pytest.mark.parametrize("checker", list(CHECKERS.values()) + [checks.check_learning_rate])
def test_not_implemented_and_crashing_functions_get_a_message(checker, capsys):
    def todo(*args):
        raise NotImplementedError

    def crash(*args):
        raise RuntimeError("boom")

    assert checker(todo) is False and "not implemented yet" in _line(capsys)
    assert checker(crash) is False and "raised RuntimeError: boom" in _line(capsys)


def test_staged_messages_name_shape_then_rules(capsys):
    assert not checks.check_prototype_scores(lambda q, p, a: checks.prototype_scores(q[None, None], p[None], a)[0, 0]
                                             .permute(1, 2, 0))
    assert "put the prototype axis first" in _line(capsys)
    assert not checks.check_masked_average_pool(lambda f, m: (f.mean(dim=(1, 2)))[:, None])
    assert "squeeze the extra axis" in _line(capsys)
    # No epsilon: right on every mask but the empty one, where it gives NaN.
    assert not checks.check_masked_average_pool(
        lambda f, m: (checks._up(f, m.shape) * m).sum(dim=(1, 2)) / m.sum())
    line = _line(capsys)
    assert "on an empty mask: the result holds NaN" in line and "add PANet's 1e-5" in line
    assert not checks.check_support_masks(lambda label, c, classes: (label == c, torch.ones_like(label)))
    assert "a pixel is in both fg and bg" in _line(capsys)
    assert not checks.check_class_iou(lambda e, n: torch.zeros(n + 1))
    assert "must be NaN" in _line(capsys)
    assert not checks.check_support_masks(lambda label, c, classes: label == c)
    assert "return the pair (fg, bg)" in _line(capsys)
    assert not checks.check_fold_summary(lambda runs: [1.0])
    assert "return (fold_means, fold_stds, mean)" in _line(capsys)


def test_par_reference_is_panet_lites_alignment_loss():
    g = torch.Generator().manual_seed(3)
    s, q = torch.randn(3, 2, 6, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    scores = torch.randn(2, 4, 4, 5, generator=g)
    scores[:, 3] = -100.0  # way 3 skipped
    fg = (torch.rand(3, 2, 16, 20, generator=g) > 0.6).float()
    bg = (torch.rand(3, 2, 16, 20, generator=g) > 0.5).float() * (1 - fg)
    ref = checks.par_reference(s, q, scores, fg, bg)
    torch.testing.assert_close(ref, alignment_loss(s[None], q[None], scores[None], fg[None], bg[None]),
                               rtol=1e-5, atol=1e-6)


def test_scheduler_lrs_follow_train_and_the_closed_form():
    lrs = checks.scheduler_lrs([0, 9, 10, 11, 20, 25], 1.0, (10, 20), 0.5)
    assert lrs.tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_table_diagnosis_counts_the_wrong_verdicts_and_never_names_them(capsys):
    assert not checks.check_table_diagnosis(set())
    assert "not answered yet" in _line(capsys)
    assert not checks.check_table_diagnosis("z")
    assert "unknown report" in _line(capsys)
    bugs = {k for k, (bug, _) in checks.TABLE_VERDICTS.items() if bug}
    for suspects in ({"a", "b"}, {"b"}, {"c", "e"}, set("abcde"), {"d"}, {"a", "b", "c"}):
        assert not checks.check_table_diagnosis(suspects)
        line = _line(capsys)
        assert f"{len(suspects ^ bugs)} of your 5 verdicts" in line, line
        # No verdict and no letter leaks: the line is the same whichever reports are wrong.
        for _, why in checks.TABLE_VERDICTS.values():
            assert why.split(": ", 1)[1][:25] not in line and why[-25:] not in line, line
        assert not re.search(r"(?<![\w'])[a-e](?![\w'])", line.split(": ", 1)[1]), line  # no report's letter
    assert checks.check_table_diagnosis("B, c")
    line = _line(capsys)
    assert all(f"{k}: {why}" in line for k, (_, why) in checks.TABLE_VERDICTS.items())


def test_the_same_count_gives_the_same_line(capsys):
    checks.check_table_diagnosis({"a", "b"})  # a wrong, c missed
    first = _line(capsys)
    checks.check_table_diagnosis({"d", "c"})  # d wrong, b missed
    assert _line(capsys) == first


def test_reference_training_step_is_trains_loop(tmp_path):
    """The training-step checker's reference takes the same steps as panet_lite.train.train."""
    from dataclasses import replace

    from panet_lite.course import course_model_config, course_sources
    from panet_lite.data import train_classes
    from panet_lite.episodes import EpisodeDataset
    from panet_lite.train import build_model, train
    from torch.utils.data import DataLoader

    source = course_sources()[0]
    cfg = replace(course_model_config(fold=0, steps=2), batch_size=2, channels_last=False)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    episodes = EpisodeDataset(source, train_classes(0), cfg.steps * cfg.batch_size, cfg.ways, cfg.shots, cfg.queries,
                              cfg.seed, cfg.size, cfg.flip, cfg.faithful)
    for batch in DataLoader(episodes, batch_size=cfg.batch_size):
        checks.reference_training_step(model, optimizer, scheduler, batch)
    theirs, _ = train(source, train_classes(0), cfg, progress=False)
    for p, q in zip(model.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the same operations in the same order: bit for bit


def test_a_function_that_changes_its_input_is_told_so(capsys):
    def overwrite(label, classes):
        out = checks.episode_labels(label, classes)
        label.zero_()
        return out

    assert not checks.check_episode_labels(overwrite)
    assert "changed its input (argument 1) in place" in _line(capsys)
