"""The course's widgets: set their controls as a learner would, check what they compute."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from panet_lite import PANet, fold_classes, sample_episodes, train_classes  # noqa: E402
from panet_lite.episodes import episode_labels  # noqa: E402
from panet_lite.matching import upsample_scores  # noqa: E402
from panet_lite.synthetic import SyntheticFewShot  # noqa: E402
from panet_lite.widgets import (EpisodeBrowser, PrototypeProjection, SimilarityMapWidget, pca_2d,  # noqa: E402
                                similarity_maps)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source():
    return SyntheticFewShot("val", 160, size=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PANet("small").eval()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_episode_browser_follows_its_controls(source):
    browser = EpisodeBrowser(source, fold=0, ways=1, shots=1, seed=7)
    assert browser.ui.children[1] is browser.output and hasattr(browser, "_ipython_display_")
    s = browser.state
    assert len(s["class_ids"]) == 1 and s["class_ids"][0] in fold_classes(0)
    assert s["item"]["support_fg"].shape == (1, 1, 32, 32)

    browser.ways.value = 3  # the observe hook recomputes
    browser.shots.value = 2
    s = browser.state
    assert len(s["class_ids"]) == 3 and len(set(s["class_ids"])) == 3
    assert [len(row) for row in s["support_ids"]] == [2, 2, 2]
    assert s["item"]["support_images"].shape[:2] == (3, 2)
    assert s["class_names"] == [source.class_names[c - 1] for c in s["class_ids"]]
    # The episode is the sampler's: same ids as sample_episodes on the class lists.
    lists = source.class_lists(fold_classes(0))
    ep = sample_episodes(lists, 1, 3, 2, 1, seed=7)[0]
    assert s["support_ids"] == ep.support and s["query_ids"] == ep.query
    # Other classes become background, 255 stays: the ground truth is the relabelled stored label.
    assert torch.equal(s["item"]["query_labels"], episode_labels(s["query_labels_stored"], s["class_ids"]))
    assert set(s["item"]["query_labels"].unique().tolist()) <= {0, 1, 2, 3, 255}
    fig = browser.figure()
    assert len(fig.axes) == (3 + 1) * 3  # one row per way, one per query; max(K, 3) columns

    browser.split.value = "train"
    browser.fold.value = 2
    assert set(browser.state["class_ids"]) <= set(train_classes(2))
    browser.split.value = "test"
    assert set(browser.state["class_ids"]) <= set(fold_classes(2))
    before = browser.state["query_ids"]
    browser.index.value = 4
    assert browser.state["index"] == 4 and browser.state["query_ids"] != before


def test_similarity_maps_alpha_shots_and_prediction(model, source):
    widget = SimilarityMapWidget(model, source, fold=0, ways=1, shots=1, alpha=10.0, seed=3)
    features = widget._cache[-1]
    s10 = widget.state
    widget.alpha.value = 20.0
    s20 = widget.state
    assert widget._cache[-1] is features  # alpha reuses the encoded episode
    # alpha scales the maps exactly and never changes the argmax; it sharpens the softmax.
    assert torch.equal(s20["scores"], 2 * s10["scores"])
    assert torch.equal(s20["scores"], 20.0 * s20["cosine"])
    assert torch.equal(s20["pred"], s10["pred"])
    assert s20["probs"].max(dim=1).values.mean() > s10["probs"].max(dim=1).values.mean()
    # The prediction is the argmax of the upsampled maps; the IoU is computed on it.
    assert torch.equal(s20["logits"], upsample_scores(s20["scores"], (32, 32)))
    assert torch.equal(s20["pred"], s20["logits"].argmax(dim=1))
    target = widget.item["query_labels"]
    fg, gt = s20["pred"] == 1, target == 1
    valid = target != 255
    expected = (fg & gt).sum() / ((fg | gt) & valid).sum()
    assert s20["iou"][1].item() == pytest.approx(expected.item())

    widget.shots.value = 5
    s5 = widget.state
    assert s5["shot_fg"].shape[:2] == (1, 5)
    torch.testing.assert_close(s5["prototypes"][1], s5["shot_fg"][0].mean(dim=0))  # fg: mean of the shots
    torch.testing.assert_close(s5["prototypes"][0], s5["shot_bg"].mean(dim=(0, 1)))  # bg: mean of all pools
    # All shots at alpha 20 is exactly PANet's forward pass on the episode.
    item = widget.item
    logits = model(item["support_images"][None], item["support_fg"][None], item["support_bg"][None],
                   item["query_images"][None]).logits[0]
    torch.testing.assert_close(s5["logits"], logits, rtol=1e-4, atol=1e-4)
    # Shots change the prototypes, not the query.
    assert not torch.allclose(s5["prototypes"], s20["prototypes"])
    assert widget.state["episode"].query == s20["episode"].query

    widget.ways.value = 3
    s3 = widget.state
    assert s3["prototypes"].shape[0] == 4 and s3["cosine"].shape[1] == 4 and s3["iou"].shape == (4,)
    assert int(s3["pred"].max()) <= 3
    assert len(widget.figure().axes) >= 2 * 5  # maps: 2 rows x (query + bg + 3 ways)
    with pytest.raises(ValueError):
        similarity_maps(model, item, shots=6)


def test_prototype_projection(model, source):
    view = PrototypeProjection(model, source, fold=0, ways=2, shots=1, seed=5)
    s = view.state
    labels = view.item["query_labels"]
    assert s["points"].shape == ((labels != 255).sum().item(), 2)
    assert set(s["labels"].unique().tolist()) <= {0, 1, 2}
    assert s["prototypes"].shape == (3, 2)
    var = s["points"].var(dim=0)
    assert var[0] >= var[1]  # PCA orders its directions by variance
    torch.testing.assert_close(s["basis"].T @ s["basis"], torch.eye(2), rtol=0, atol=1e-5)
    view.shots.value = 3
    assert view.state["shot_prototypes"].shape == (2, 3, 2)
    view.normalize.value = False
    assert not view.state["normalize"]
    assert view.figure() is not None


def test_pca_is_deterministic_and_matches_centred_svd():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 3, 1, 1, 1, 1])
    mean, basis, explained = pca_2d(x)
    mean2, basis2, _ = pca_2d(x.clone())
    assert torch.equal(basis, basis2)
    assert basis[:, 0].abs().argmax() == 0 and basis[0, 0] > 0
    assert explained[0] > explained[1] > 0
