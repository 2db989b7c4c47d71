"""The figures' encodings: a prediction's pixels coloured by what they are, ground truth as outlines."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from panet_lite.viz import (OUTCOME_COLORS, WAY_COLORS, ground_truth, outcome, outcome_handles,  # noqa: E402
                            plot_support_kinds, support_annotation)


def test_outcome_colours_each_pixel_by_what_it_is():
    fig, ax = plt.subplots()
    image = torch.zeros(3, 2, 3, dtype=torch.uint8)
    target = torch.tensor([[1, 1, 0], [2, 255, 0]])
    pred = torch.tensor([[1, 0, 1], [1, 1, 0]])
    outcome(ax, image, pred, target)
    rgba = np.asarray(ax.get_images()[-1].get_array())
    tp, fp, fn = (np.array(to_rgb(OUTCOME_COLORS[k])) for k in ("true positive", "false positive", "false negative"))
    assert np.allclose(rgba[0, 0, :3], tp) and np.allclose(rgba[0, 1, :3], fn) and np.allclose(rgba[0, 2, :3], fp)
    assert np.allclose(rgba[1, 0, :3], fp)  # way 1 predicted on way 2's object: a false positive
    assert rgba[1, 1, 3] == 0 and rgba[1, 2, 3] == 0  # a 255 pixel and a true negative stay clear
    assert [h.get_label() for h in outcome_handles()] == list(OUTCOME_COLORS)
    plt.close(fig)


def test_ground_truth_outlines_each_way_present():
    fig, ax = plt.subplots()
    label = torch.zeros(12, 12, dtype=torch.long)
    label[2:6, 2:6] = 1
    label[7:11, 7:11] = 2
    ground_truth(ax, torch.zeros(3, 12, 12, dtype=torch.uint8), label, n_ways=3)
    assert len(ax.collections) == 2  # ways 1 and 2 outlined; way 3 is absent
    plt.close(fig)


def test_a_support_annotation_tints_foreground_keeps_background_and_fades_the_rest():
    fig, ax = plt.subplots()
    fg = torch.tensor([[1.0, 0.0, 0.0]])
    bg = torch.tensor([[0.0, 1.0, 0.0]])
    support_annotation(ax, torch.zeros(3, 1, 3, dtype=torch.uint8), fg, bg, way=1)
    rgba = np.asarray(ax.get_images()[-1].get_array())
    assert tuple(rgba[0, 0, :3]) == to_rgb(WAY_COLORS[1]) and rgba[0, 0, 3] > 0.5  # foreground, way 2's colour
    assert rgba[0, 1, 3] == 0  # background: the image as it is
    assert tuple(rgba[0, 2, :3]) == (1.0, 1.0, 1.0) and rgba[0, 2, 3] > 0.5  # neither: faded to white
    plt.close(fig)


def test_support_kinds_figure_has_a_panel_per_episode_and_kind():
    item = {"support_images": torch.zeros(1, 1, 3, 4, 4), "support_fg": torch.zeros(1, 1, 4, 4),
            "support_bg": torch.ones(1, 1, 4, 4)}
    fig = plot_support_kinds({"dense": [item, item], "bbox": [item, item], "scribble": [item, item]})
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "dense\nfg 0.0%, bg 100.0%"
    plt.close(fig)
