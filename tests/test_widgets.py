"""The course's widgets: set their controls as a learner would, check what they compute."""
import matplotlib

matplotlib.use("Agg")

import ast  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from panet_lite import EpisodeDataset, IoUMeter, PANet, fold_classes, sample_episodes, train_classes  # noqa: E402
from panet_lite.evaluate import EvalConfig, evaluate, predict  # noqa: E402
from panet_lite.episodes import episode_labels  # noqa: E402
from panet_lite.matching import upsample_scores  # noqa: E402
from panet_lite.methods import METHODS  # noqa: E402
from panet_lite.synthetic import SyntheticFewShot  # noqa: E402
from panet_lite.explain import (alignment_steps, encode_episode, load_episode, pca_2d, pixel_cosine,  # noqa: E402
                                similarity_maps, ssp_steps)
from panet_lite.widgets import (AlignmentWidget, EpisodeBrowser, MetricWidget, ModelSwapWidget,  # noqa: E402
                                PixelCosineWidget, PrototypeProjection, SimilarityMapWidget, SSPStepsWidget)


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
    # Shown, the Output holds exactly one PNG of the figure (set directly, no capture).
    (shown,) = browser.output.outputs
    assert shown["output_type"] == "display_data" and shown["data"]["image/png"].startswith("iVBOR")
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
    features = widget.episode()[2]
    s10 = widget.state
    widget.alpha.value = 20.0
    s20 = widget.state
    assert widget.episode()[2] is features  # alpha reuses the encoded episode
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


def test_pixel_cosine_follows_the_sliders_and_explains_the_prediction(model, source):
    view = PixelCosineWidget(model, source, fold=0, ways=2, shots=1, seed=4)
    assert (view.y.value, view.x.value) == (16, 16) and (view.y.max, view.x.max) == (31, 31)
    maps = view.state["maps"]
    seen = set()
    for y, x in [(0, 0), (5, 27), (31, 31), (16, 3)]:
        view.y.value, view.x.value = y, x
        s = view.state
        assert (s["y"], s["x"]) == (y, x)
        # The pixel's logits are alpha times its upsampled cosine (upsampling is linear), so the
        # largest cosine is the prediction there, and the probabilities are their softmax.
        torch.testing.assert_close(s["logits"], 20.0 * s["cosine"], rtol=1e-5, atol=1e-5)
        assert s["pred"] == int(s["cosine"].argmax()) == int(maps["pred"][0, y, x])
        torch.testing.assert_close(s["probs"], (20.0 * s["cosine"]).softmax(dim=0), rtol=1e-5, atol=1e-6)
        assert s["label"] == int(view.item["query_labels"][0, y, x])
        seen.add(tuple(s["cosine"].tolist()))
    assert len(seen) == 4  # every pixel has its own cosines
    # Before upsampling, the maps are plain cosines of the query's feature cells and the prototypes.
    support, query = encode_episode(model, view.item)
    proto = maps["prototypes"]
    direct = F.cosine_similarity(query[0][None], proto[:, :, None, None], dim=1)  # (1 + N, h, w)
    torch.testing.assert_close(maps["cosine"][0], direct, rtol=1e-5, atol=1e-5)
    view.ways.value = 3
    assert view.state["cosine"].shape == (4,)
    assert len(view.figure().axes) == 4
    with pytest.raises(ValueError, match="outside"):
        pixel_cosine(maps, view.item, 32, 0)


def _par_by_hand(item, features, shots, drop):
    """PAR written out from the specification: per way, per shot, skipping the ways absent from the
    query's argmax, the sum divided by N K."""
    support, query = features
    N = support.shape[0]
    fg, bg = item["support_fg"][:, :shots], item["support_bg"][:, :shots]
    fg_protos = [torch.stack([(F.interpolate(support[w, k][None], size=fg.shape[-2:], mode="bilinear")[0]
                               * fg[w, k]).sum(dim=(1, 2)) / (fg[w, k].sum() + 1e-5) for k in range(shots)]).mean(0)
                 for w in range(N)]
    bg_proto = torch.stack([(F.interpolate(support[w, k][None], size=bg.shape[-2:], mode="bilinear")[0]
                             * bg[w, k]).sum(dim=(1, 2)) / (bg[w, k].sum() + 1e-5)
                            for w in range(N) for k in range(shots)]).mean(0)
    protos = torch.stack([bg_proto, *fg_protos])
    scores = 20 * F.cosine_similarity(query[:, None], protos[None, :, :, None, None], dim=2)  # (Q, 1 + N, h, w)
    for w in drop:
        scores[:, 1 + w] = -100.0
    pred = scores.argmax(dim=1)
    loss = 0.0
    for w in range(N):
        region = pred == 1 + w
        if not region.any():
            continue
        pair = torch.stack([(query * (pred == j)[:, None]).sum(dim=(0, 2, 3)) / ((pred == j).sum() + 1e-5)
                            for j in (0, 1 + w)])
        for k in range(shots):
            cos = F.cosine_similarity(support[w, k][None], pair[:, :, None, None], dim=1)
            logits = F.interpolate(20 * cos[None], size=fg.shape[-2:], mode="bilinear")
            target = torch.full(fg.shape[-2:], 255)
            target[fg[w, k] == 1] = 1
            target[bg[w, k] == 1] = 0
            loss += F.cross_entropy(logits, target[None], ignore_index=255).item() / (N * shots)
    return loss


def test_alignment_widget_steps_skipped_way_and_divisor(model, source):
    view = AlignmentWidget(model, source, fold=0, ways=2, shots=2, seed=2, way=2, queries=2)
    s = view.state
    assert view.classes == train_classes(0) and set(s["class_ids"]) <= set(train_classes(0))
    assert s["logits"].shape == (2, 2, 2, 32, 32) and s["terms"].shape == (2, 2) and s["way"] == 1
    features = view.episode()[2]
    assert s["loss"] == pytest.approx(s["package_loss"], rel=1e-6)
    assert s["loss"] == pytest.approx(_par_by_hand(view.item, features, 2, []), rel=1e-4, abs=1e-6)
    # The widget's loss is the model's own align_loss in training mode, on the shots used.
    item = view.item
    out = model.train()(item["support_images"][None, :, :2], item["support_fg"][None, :, :2],
                        item["support_bg"][None, :, :2], item["query_images"][None])
    model.eval()
    assert out.align_loss.item() == pytest.approx(s["loss"], rel=1e-4, abs=1e-6)
    # The target: 1 on the support's foreground, 0 on its background, 255 elsewhere.
    fg, bg = item["support_fg"][1, 0], item["support_bg"][1, 0]
    t = s["target"][1, 0]
    assert torch.equal(t == 1, (fg == 1) & (bg != 1)) and torch.equal(t == 0, bg == 1)

    view.drop.value = True  # way 2 forced out of the query prediction: skipped, the divisor stays N K = 4
    d = view.state
    assert d["present"].tolist() == [True, False] and d["dropped"] == [1]
    assert int((d["query_pred"] == 2).sum()) == 0
    assert d["loss"] == pytest.approx(d["terms"][0].sum().item() / 4, rel=1e-6)
    assert d["loss"] == pytest.approx(d["package_loss"], rel=1e-6)
    assert d["loss"] == pytest.approx(_par_by_hand(view.item, features, 2, [1]), rel=1e-4, abs=1e-6)
    assert d["loss"] != pytest.approx(d["terms"][0].sum().item() / 2)  # not divided by the ways kept

    view.shots.value = 1
    assert view.state["terms"].shape == (2, 1)
    assert view.state["loss"] == pytest.approx(_par_by_hand(view.item, features, 1, [1]), rel=1e-4, abs=1e-6)
    view.ways.value = 1  # the way slider follows the ways, once
    assert (view.way.max, view.way.value, view.state["way"]) == (1, 1, 0)
    assert view.state["present"].tolist() == [False]  # the only way is forced out: nothing is aligned
    assert view.state["loss"] == 0.0
    assert len(view.figure().axes) == 4 * 2
    with pytest.raises(ValueError, match="outside"):
        alignment_steps(view.item, view.episode()[2], drop_ways=[3])


def test_model_swap_shows_each_models_prediction(model, source):
    torch.manual_seed(1)
    other = PANet("small").eval()
    view = ModelSwapWidget({"a": model, "b": other}, source, fold=0, ways=1, shots=1, seed=6)
    s = view.state
    assert s["model"] == "a" and set(s["maps"]) == {"a", "b"}
    for name, m in (("a", model), ("b", other)):
        ref = similarity_maps(m, view.item, shots=1)
        assert torch.equal(ref["pred"], s["maps"][name]["pred"])
        assert s["miou"][name] == pytest.approx(ref["miou"], nan_ok=True)
    assert not torch.equal(s["maps"]["a"]["pred"], s["maps"]["b"]["pred"])
    view.choice.value = "b"
    assert view.state["model"] == "b"
    assert torch.equal(view.state["maps"]["b"]["pred"], s["maps"]["b"]["pred"])  # same episode
    view.index.value = 3
    assert view.state["episode"].query != s["episode"].query
    assert view.figure() is not None
    with pytest.raises(ValueError, match="not one of"):
        ModelSwapWidget({"a": model}, source, model="c")


def test_titles_name_the_episode_each_view_shows(model, source):
    """A title names the draw its episode comes from: episode i of the N-way K-shot stream of a seed is the
    episode `evaluate` draws at i with that test seed, N ways and K shots (the stream does not depend on
    how many episodes are drawn). A view that draws 5 shots and uses 1 says so."""
    views = [SimilarityMapWidget(model, source, ways=2, shots=1, seed=7, index=3),
             PixelCosineWidget(model, source, ways=2, shots=1, seed=7, index=3),
             ModelSwapWidget({"m": model}, source, ways=2, shots=1, seed=7, index=3, max_shots=1),
             SSPStepsWidget(model, source, shots=2, seed=7, index=3, max_shots=2)]
    for view in views:
        N, K = view.ways.value, view.max_shots
        title = view.figure()._suptitle.get_text()
        assert title.startswith(f"{N}-way {K}-shot episode 3, seed 7"), title
        assert ("(first 1 of its 5 shots used)" in title) == (K == 5)
        drawn = EpisodeDataset(source, fold_classes(0), 10, N, K, 1, seed=7)
        assert view.episode()[0] == drawn.episodes[3]
        assert torch.equal(view.item["query_images"], drawn[3]["query_images"])
    # 5 shots drawn, 1 used: not the 1-shot stream's episode.
    assert views[0].episode()[0].query != EpisodeDataset(source, fold_classes(0), 4, 2, 1, 1, seed=7).episodes[3].query


def _ssp_by_hand(item, shots, feats_s, feats_q):
    """SSP's first and second matchings of a 1-way episode, written out pixel by pixel (small grids)."""
    def pool(f, m):  # mask brought down to the features, bilinear with aligned corners
        m = F.interpolate(m[None, None], size=f.shape[-2:], mode="bilinear", align_corners=True)[0]
        return (f * m).sum(dim=(1, 2)) / (m.sum() + 1e-5)

    fg = torch.stack([pool(feats_s[0, k], item["support_fg"][0, k]) for k in range(shots)]).mean(0)
    bg = torch.stack([pool(feats_s[0, k], item["support_bg"][0, k]) for k in range(shots)]).mean(0)
    q = feats_q[0]
    C, h, w = q.shape
    pixels = [q[:, y, x] for y in range(h) for x in range(w)]

    def scores(fg_at, bg_at):
        return torch.tensor([[10 * F.cosine_similarity(p, bg_at(i), dim=0), 10 * F.cosine_similarity(p, fg_at(i), dim=0)]
                             for i, p in enumerate(pixels)])  # (h*w, 2)

    first = scores(lambda i: fg, lambda i: bg)
    prob = first.softmax(dim=1)
    fg_idx = [i for i in range(h * w) if prob[i, 1] > 0.7] or prob[:, 1].topk(12).indices.tolist()
    bg_idx = [i for i in range(h * w) if prob[i, 0] > 0.6] or prob[:, 0].topk(12).indices.tolist()
    fg_self = torch.stack([pixels[i] for i in fg_idx]).mean(0)
    bg_feats = torch.stack([pixels[i] for i in bg_idx])
    bg_self = bg_feats.mean(0)

    def adaptive(i):
        weights = torch.stack([2 * F.cosine_similarity(pixels[i], b, dim=0) for b in bg_feats]).softmax(0)
        return 0.3 * bg_self + 0.7 * (weights[:, None] * bg_feats).sum(0)

    second = scores(lambda i: 0.5 * fg + 0.5 * fg_self, adaptive)
    return first.T.reshape(2, h, w), second.T.reshape(2, h, w), fg_idx, bg_idx


def test_ssp_steps_follow_ssp_and_the_widget_follows_its_controls(model, source):
    view = SSPStepsWidget(model, source, fold=0, shots=2, seed=3, max_shots=3)
    s = view.state
    assert view.classes == fold_classes(0) and len(s["class_ids"]) == 1 and view.ways not in view.controls
    feats_s, feats_q = view.episode()[2]
    first, second, fg_idx, bg_idx = _ssp_by_hand(view.item, 2, feats_s, feats_q)
    torch.testing.assert_close(s["match"]["first"][0], first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s["match"]["second"][0], second, rtol=1e-4, atol=1e-4)
    assert sorted(s["fg_mask"].flatten().nonzero().squeeze(1).tolist()) == sorted(fg_idx)
    assert sorted(s["bg_mask"].flatten().nonzero().squeeze(1).tolist()) == sorted(bg_idx)
    assert s["stages"] == ("support", "self-support") and s["shots"] == 2
    # The last stage is SSP's prediction: the model's own with method="ssp", on the shots used.
    item = view.item
    for refine in (False, True):
        view.refine.value = refine
        r = view.state
        ssp = model.as_method("ssp", refine)
        with torch.no_grad():
            logits = ssp(item["support_images"][None, :, :2], item["support_fg"][None, :, :2],
                         item["support_bg"][None, :, :2], item["query_images"][None]).logits[0, 0]
        last = r["stages"][-1]
        assert last == ("refined" if refine else "self-support")
        assert torch.equal(r["preds"][last], logits.argmax(dim=0))
        torch.testing.assert_close(r["probs"][last], logits.softmax(dim=0)[1])
        label = item["query_labels"][0]
        for stage in r["stages"]:
            pred, valid = r["preds"][stage], label != 255
            inter = ((pred == 1) & (label == 1) & valid).sum().item()
            union = (((pred == 1) | (label == 1)) & valid).sum().item()
            assert r["iou"][stage] == pytest.approx(inter / union)
        assert len(view.figure().axes) == 2 * (2 + len(r["stages"])) + 2  # + two colour bars
    view.shots.value = 1
    assert view.state["shots"] == 1
    view.index.value = 4
    assert not torch.equal(view.item["query_images"], item["query_images"])
    with pytest.raises(ValueError, match="SSP matches 1-way episodes"):
        ssp_steps(item, (torch.cat([feats_s, feats_s]), feats_q))
    with pytest.raises(ValueError, match="shots must be in 1..3"):
        ssp_steps(item, (feats_s, feats_q), shots=4)


def test_metric_widget_equals_evaluate_and_a_loop(model, source):
    view = MetricWidget(model, source, fold=0, ways=1, episodes=30)
    s = view.state
    run = evaluate(model, source, fold_classes(0), EvalConfig(runs=1, episodes=30, size=None, device="cpu"),
                   progress=False).runs[0]
    assert s["episodes"] == 30 and s["accumulated_miou"] == pytest.approx(run["miou"], rel=1e-9)

    # Per-episode IoU, then per class, then over classes, by a plain loop over the episodes.
    dataset = EpisodeDataset(source, fold_classes(0), 12, 2, 1, 1, seed=1234, size=None)
    view.ways.value, view.episodes.value = 2, 12
    for meter, absent in (("faithful", False), ("corrected", True)):
        view.meter.value = meter
        per_class = {c: [] for c in fold_classes(0)}
        total = IoUMeter(20, count_absent_fp=absent)
        for i in range(12):
            item = dataset[i]
            batch = {k: v[None] for k, v in item.items()}
            pred = predict(model, batch, torch.device("cpu"))[0]
            total.update(pred, item["query_labels"], item["class_ids"])
            one = IoUMeter(20, count_absent_fp=absent)
            one.update(pred, item["query_labels"], item["class_ids"])
            for c in item["class_ids"].tolist():
                if not one.class_iou()[c].isnan():
                    per_class[c].append(one.class_iou()[c].item())
        means = [sum(v) / len(v) for v in per_class.values() if v]
        assert view.state["per_episode_miou"] == pytest.approx(sum(means) / len(means), rel=1e-9)
        assert view.state["accumulated_miou"] == pytest.approx(total.class_iou()[fold_classes(0)].nanmean().item(),
                                                               rel=1e-9)
    # The corrected meter only adds false positives: no class IoU goes up.
    curves = view.state["curves"]
    f, c = curves["faithful"]["accumulated_class"], curves["corrected"]["accumulated_class"]
    both = ~f.isnan() & ~c.isnan()
    assert (c[both] <= f[both] + 1e-12).all()
    assert view.figure() is not None


def test_each_method_is_shown_through_its_own_matching(source):
    """similarity_maps asks the model's method: with all shots and the model's alpha, its logits are the
    model's own for every registered method (PANet's pooling and upsampling, MLC's, SSP's with and without
    refinement), and ModelSwapWidget shows each model's prediction as the model makes it."""
    _, item = load_episode(source, fold_classes(0), ways=1, shots=2, seed=8, index=1)
    item = {k: v.double() if v.is_floating_point() else v for k, v in item.items()}
    batch = [item[k][None] for k in ("support_images", "support_fg", "support_bg", "query_images")]
    models = {}
    for name, refine in [(name, False) for name in METHODS] + [("ssp", True)]:
        torch.manual_seed(0)
        model = PANet("small", method=name, refine=refine).double().eval()
        models[f"{name}{' refined' if refine else ''}"] = model
        maps = similarity_maps(model, item)
        with torch.no_grad():
            logits = model(*batch).logits[0]
        assert maps["method"] is model.matching and maps["alpha"] == model.alpha
        torch.testing.assert_close(maps["logits"], logits, rtol=0, atol=1e-12)
        assert torch.equal(maps["pred"], logits.argmax(dim=1))
        support_feats = encode_episode(model, item)[0]
        assert torch.equal(maps["shot_fg"], model.matching.pool(support_feats, item["support_fg"]))
    # Same encoder weights, different pooling, scale and upsampling: different logits.
    assert not torch.allclose(similarity_maps(models["panet"], item)["logits"],
                              similarity_maps(models["mlc"], item)["logits"])
    view = ModelSwapWidget({name: m.float() for name, m in models.items()}, source, fold=0, ways=1, shots=2,
                           seed=8, index=1, max_shots=2)
    episode = [view.item[k][None] for k in ("support_images", "support_fg", "support_bg", "query_images")]
    for name, model in models.items():
        with torch.no_grad():
            logits = model(*episode).logits[0]
        torch.testing.assert_close(view.state["maps"][name]["logits"], logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(view.state["maps"][name]["pred"], logits.argmax(dim=1))


def test_explain_imports_without_ipywidgets_ipython_or_matplotlib():
    code = ("import sys\n"
            "for m in ('ipywidgets', 'IPython', 'matplotlib'):\n"
            "    sys.modules[m] = None\n"
            "import panet_lite.explain as e\n"
            "assert callable(e.similarity_maps) and callable(e.ssp_steps)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_widgets_holds_the_widget_classes_only():
    """The computations live in explain, the figures in viz: every public top-level function of widgets.py is
    gone, only classes (and private helpers of the classes) remain; viz imports neither widgets nor ipywidgets."""
    import panet_lite.widgets as w

    tree = ast.parse(Path(w.__file__).read_text())
    public = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and not n.name.startswith("_")]
    assert public == []
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert {"SimilarityMapWidget", "ModelSwapWidget", "SSPStepsWidget", "MetricWidget"} <= set(classes)
    viz = ast.parse((Path(w.__file__).parent / "viz.py").read_text())
    imported = {a.name for n in ast.walk(viz) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(viz) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if "widgets" in m or "IPython" in m}
