"""`python -m panet_lite demo`: a readable report and, with --json, one JSON object on the last line."""
import json

import pytest

from panet_lite.cli import main


def test_demo_json_report(capsys):
    # A short run: the full demo (600 steps of 8 episodes, the figures in the README) takes minutes.
    assert main(["demo", "--steps", "20", "--test-episodes", "10", "--n-images", "200", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert {"miou", "miou_untrained", "fb_iou", "seconds"} <= set(report)
    assert 0 <= report["miou"] <= 1 and 0 <= report["miou_untrained"] <= 1
    assert report["test_classes"] == [1, 2, 3, 4, 5]
    assert any("mIoU (unseen classes)" in line for line in out)


def test_demo_rejects_a_bad_fold(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--fold", "7", "--steps", "1"])
    assert exit_.value.code == 2
    assert "argument --fold: invalid choice: 7 (choose from 0, 1, 2, 3)" in capsys.readouterr().err
