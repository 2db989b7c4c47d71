"""Every exercise's reference solution (notebooks/solutions/chNN.py) passes its checker."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))

from panet_lite import checks  # noqa: E402
from panet_lite.synthetic import write_voc_tree  # noqa: E402


def test_ch01_solutions():
    from solutions import ch01

    assert checks.check_episode_labels(ch01.my_episode_labels)
    assert checks.check_support_masks(ch01.my_support_masks)


def test_ch02_solutions():
    from solutions import ch02

    assert checks.check_masked_average_pool(ch02.my_masked_average_pool)
    assert checks.check_prototypes(ch02.my_prototypes)


def test_ch03_solutions():
    from solutions import ch03

    assert checks.check_prototype_scores(ch03.my_prototype_scores)


def test_ch04_solutions():
    from solutions import ch04

    assert checks.check_alignment_loss(ch04.my_alignment_loss)


def test_ch05_solutions():
    from solutions import ch05

    assert checks.check_learning_rate(ch05.my_learning_rate)
    assert checks.check_training_step(ch05.my_training_step)


def test_ch06_solutions():
    from solutions import ch06

    assert checks.check_class_iou(ch06.my_class_iou)


def test_ch07_solutions(tmp_path):
    from solutions import ch07

    assert checks.check_class_lists(ch07.my_class_lists, write_voc_tree(tmp_path, n_train=60, n_val=30, size=32))


def test_ch08_solutions():
    from solutions import ch08

    assert checks.check_fold_summary(ch08.my_fold_summary)
    assert checks.check_table_diagnosis(ch08.suspects)


def test_ch09_solutions():
    from solutions import ch09

    assert checks.check_self_support(ch09.my_self_support)


def test_ch10_solutions():
    from solutions import ch10

    assert checks.check_patch_coverage(ch10.my_patch_coverage)
