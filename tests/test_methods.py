"""MLC's baseline and SSP as options of PANet: their forward passes and training losses against
references written here the way their authors structure them (per shot, per image), their recipes,
checkpoints, the command line and the table beside their published numbers."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from panet_lite.data import IGNORE, train_classes
from panet_lite.model import METHODS, PANet
from panet_lite.paper import LATER_RESULTS
from panet_lite.reproduce import markdown, summarize
from panet_lite.ssp import ssp_match
from panet_lite.synthetic import SyntheticFewShot
from panet_lite.train import METHOD_DEFAULTS, TrainConfig, build_optimizer, load_model, train


def ref_pool(feature, mask):
    """MLC's and SSP's masked_average_pooling, as in their code: (C, h, w) and (H, W) -> (C,)."""
    m = F.interpolate(mask[None, None], size=feature.shape[-2:], mode="bilinear", align_corners=True)[0]
    return (feature * m).sum(dim=(1, 2)) / (m.sum() + 1e-5)


def ref_similarity(feature, fg, bg):
    """Their similarity_func: 10 * [cos(F, bg), cos(F, fg)], (C, h, w) -> (2, h, w)."""
    return 10.0 * torch.stack([F.cosine_similarity(feature, bg[:, None, None], dim=0),
                               F.cosine_similarity(feature, fg[:, None, None], dim=0)])


def ref_up(scores, size):
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=True)[0]


def episode(B=2, N=1, K=3, Q=1, H=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (B, N, K, H, H), generator=g)  # 0 bg, 1 fg, 2 a 255 border
    fg = (labels == 1).double()
    bg = (labels == 0).double()  # 255 in neither, as MLC and SSP build their support masks
    query_labels = torch.randint(0, 2, (B, Q, H, H), generator=g)
    query_labels[:, :, :3] = IGNORE
    return (torch.randn(B, N, K, 3, H, H, generator=g, dtype=torch.float64), fg, bg,
            torch.randn(B, Q, 3, H, H, generator=g, dtype=torch.float64), query_labels)


def model(method, refine=False):
    torch.manual_seed(0)
    return PANet("small", method=method, refine=refine).double()


def test_mlc_forward_is_their_baseline_per_shot_and_way():
    net = model("mlc").eval()
    s_img, fg, bg, q_img, _ = episode(N=2, K=2, Q=2)
    with torch.no_grad():
        out = net(s_img, fg, bg, q_img).logits
        s_feat, q_feat = net.encode(s_img, q_img)
    B, N, K = fg.shape[:3]
    for b in range(B):
        fgs = [torch.stack([ref_pool(s_feat[b, n, k], fg[b, n, k]) for k in range(K)]).mean(0) for n in range(N)]
        bg_p = torch.stack([ref_pool(s_feat[b, n, k], bg[b, n, k]) for n in range(N) for k in range(K)]).mean(0)
        for q in range(q_img.shape[1]):
            cos = [F.cosine_similarity(q_feat[b, q], p[:, None, None], dim=0) for p in [bg_p, *fgs]]
            expected = ref_up(10.0 * torch.stack(cos), q_img.shape[-2:])
            torch.testing.assert_close(out[b, q], expected, rtol=1e-10, atol=1e-10)
    assert net.alpha == 10.0 and not net.align and not net.borders_are_background


@pytest.mark.parametrize("refine", [False, True])
def test_ssp_forward_and_training_loss_follow_their_code(refine):
    net = model("ssp", refine).train()
    s_img, fg, bg, q_img, q_lab = episode()
    out = net(s_img, fg, bg, q_img, q_lab)
    s_feat, q_feat = net.encode(s_img, q_img)
    H = q_img.shape[-2:]
    B, _, K = fg.shape[:3]
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    for b in range(B):
        fgs = [ref_pool(s_feat[b, 0, k], fg[b, 0, k]) for k in range(K)]
        bgs = [ref_pool(s_feat[b, 0, k], bg[b, 0, k]) for k in range(K)]
        match = ssp_match(q_feat[b], torch.stack(fgs).mean(0)[None], torch.stack(bgs).mean(0)[None], refine)
        torch.testing.assert_close(out.logits[b], ref_up(match["scores"][0], H)[None], rtol=1e-10, atol=1e-10)
    # The auxiliary loss as SSP's train.py sums it over the batch: CE(self_out) + 0.2 CE(supp_out)
    # (+ CE(out_1) with refine), each a mean over the batch's non-ignored pixels.
    self_out = torch.stack([ref_up(ref_similarity(q_feat[b, 0], ref_pool(q_feat[b, 0], (q_lab[b, 0] == 1).double()),
                                                  ref_pool(q_feat[b, 0], (q_lab[b, 0] == 0).double())), H)
                            for b in range(B)])
    supp_out, supp_target = [], []
    for k in range(K):  # their supports come shot by shot, each batch of B images after the other
        for b in range(B):
            f, m = s_feat[b, 0, k], fg[b, 0, k]
            supp_out.append(ref_up(ref_similarity(f, ref_pool(f, m), ref_pool(f, bg[b, 0, k])), H))
            t = torch.full(m.shape, IGNORE, dtype=torch.long)
            t[m == 1], t[bg[b, 0, k] == 1] = 1, 0
            supp_target.append(t)
    expected = ce(self_out, q_lab[:, 0]) + 0.2 * ce(torch.stack(supp_out), torch.stack(supp_target))
    if refine:
        out_1 = torch.stack([ref_up(ssp_match(q_feat[b], torch.stack([ref_pool(s_feat[b, 0, k], fg[b, 0, k])
                                                                      for k in range(K)]).mean(0)[None],
                                              torch.stack([ref_pool(s_feat[b, 0, k], bg[b, 0, k])
                                                           for k in range(K)]).mean(0)[None], True)["second"][0], H)
                             for b in range(B)])
        expected = expected + ce(out_1, q_lab[:, 0])
    torch.testing.assert_close(out.aux_loss, expected, rtol=1e-10, atol=1e-10)
    assert out.align_loss.item() == 0.0
    out.aux_loss.backward()  # the self-matching losses train the encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert net.eval()(s_img, fg, bg, q_img).aux_loss.item() == 0.0  # no labels needed to test


def test_as_method_shares_the_encoder_and_matches_as_a_model_built_with_that_method():
    panet = model("panet").eval()
    s_img, fg, bg, q_img, _ = episode(K=2)
    for method, refine in (("mlc", False), ("ssp", False), ("ssp", True)):
        other = panet.as_method(method, refine)
        built = model(method, refine).eval()  # the same seed: the same encoder weights
        with torch.no_grad():
            torch.testing.assert_close(other(s_img, fg, bg, q_img).logits, built(s_img, fg, bg, q_img).logits,
                                       rtol=0, atol=0)
        assert other.encoder is panet.encoder and (other.method, other.refine, other.alpha) == (method, refine, 10.0)
        assert other.init_args == built.init_args and not other.align
    assert (panet.method, panet.alpha, panet.align, panet.refine) == ("panet", 20.0, True, False)  # unchanged
    other = panet.as_method("ssp")
    other.encoder.train()
    assert panet.encoder.training  # one encoder, one mode
    other.extra = torch.nn.Linear(1, 1)  # a module assigned to one model is not the other's
    assert "extra" not in dict(panet.named_children())
    with pytest.raises(ValueError, match="--refine is a step of SSP's matching"):
        panet.as_method("mlc", refine=True)
    with pytest.raises(ValueError, match="unknown method"):
        panet.as_method("fss")


def test_misuse_says_what_to_do():
    s_img, fg, bg, q_img, q_lab = episode(N=2)
    with pytest.raises(ValueError, match="SSP matches 1-way episodes.*--method panet or mlc"):
        model("ssp").eval()(s_img, fg, bg, q_img)
    s_img, fg, bg, q_img, q_lab = episode()
    with pytest.raises(ValueError, match="pass query_labels"):
        model("ssp").train()(s_img, fg, bg, q_img)
    with pytest.raises(ValueError, match="PANet's training loss; --method mlc trains without it"):
        PANet("small", method="mlc", align=True)
    with pytest.raises(ValueError, match="--refine is a step of SSP's matching"):
        PANet("small", refine=True)
    with pytest.raises(ValueError, match="unknown method 'fss'; choose one of panet, mlc, ssp"):
        PANet("small", method="fss")
    with pytest.raises(ValueError, match=r"TrainConfig.for_method\('ssp'\)"):
        TrainConfig(method="ssp")
    with pytest.raises(ValueError, match="deep-stem ResNet-50 weights are not in torchvision"):
        TrainConfig.for_method("mlc") and PANet("resnet50-deepstem", pretrained=True, method="mlc")


def test_recipes_and_the_frozen_parameters():
    cfg = TrainConfig.for_method("ssp", steps=10)
    assert (cfg.backbone, cfg.align, cfg.batch_size, cfg.milestones, cfg.size, cfg.steps) == (
        "resnet50-deepstem", False, 4, (2000, 4000), 473, 10)
    assert set(METHOD_DEFAULTS) == set(METHODS) - {"panet"}
    net = PANet("resnet50-deepstem", method="ssp")
    opt = build_optimizer(net, cfg)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    frozen = [*net.encoder.conv1.parameters(), *net.encoder.layer1.parameters()]
    assert frozen and not any(id(p) in trainable for p in frozen)


@pytest.fixture(scope="module")
def source():
    return SyntheticFewShot("trainaug", 120, size=40)


@pytest.mark.parametrize("method", ["mlc", "ssp"])
def test_training_logs_resumes_and_checkpoints_the_method(method, source, tmp_path, monkeypatch):
    import panet_lite.train as training

    cfg = TrainConfig.for_method(method, backbone="small", pretrained=False, steps=4, size=None, batch_size=2,
                                 milestones=(3,), lr=0.01, device="cpu", log_every=2, checkpoint_every=2)
    seen = []
    real = training.EpisodeDataset
    monkeypatch.setattr(training, "EpisodeDataset", lambda *a, **k: seen.append(a[9]) or real(*a, **k))
    straight, history = train(source, train_classes(0), cfg, out=tmp_path / "a", progress=False)
    assert seen == [False]  # their supports leave the 255 borders out, as their code does
    assert ("aux_loss" in history[-1]) == (method == "ssp") and history[-1]["align_loss"] == 0.0
    train(source, train_classes(0), replace(cfg, steps=2),
          out=tmp_path / "b", progress=False)
    resumed, _ = train(source, train_classes(0), cfg, out=tmp_path / "b", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    loaded = load_model(tmp_path / "a" / "checkpoint.pt")
    assert (loaded.method, loaded.alpha, loaded.align) == (method, 10.0, False)


def test_a_checkpoint_from_before_methods_loads_as_panet(tmp_path):
    from panet_lite.train import model_from_checkpoint

    old = PANet("small")
    args = {k: v for k, v in old.init_args.items() if k not in ("method", "refine")}
    loaded = model_from_checkpoint({"model": old.state_dict(), "model_args": args})
    assert (loaded.method, loaded.alpha, loaded.align) == ("panet", 20.0, True)


def test_the_command_line_applies_a_methods_recipe_to_the_flags_not_given(monkeypatch, tmp_path, capsys):
    import panet_lite.cli as cli

    got = {}

    def fake_train(source, classes, cfg, out=None, **kwargs):
        got["cfg"], got["out"] = cfg, out

    monkeypatch.setattr("panet_lite.train.train", fake_train)
    monkeypatch.setattr("panet_lite.sources.open_source", lambda *a, **k: None)
    base = ["train", "--dataset", "synthetic", "--fold", "0", "--method", "ssp", "--pretrained", "false"]
    assert cli.main(base + ["--batch-size", "2", "--no-flip"]) == 0
    cfg = got["cfg"]
    assert (cfg.method, cfg.backbone, cfg.align, cfg.batch_size, cfg.steps, cfg.size, cfg.flip) == (
        "ssp", "resnet50-deepstem", False, 2, 6000, 473, False)
    assert str(got["out"]).startswith("runs/synthetic-ssp/")
    assert cli.main(base + ["--align"]) == 2
    assert "(--align) is PANet's training loss; --method ssp trains without it" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "synthetic", "--fold", "0", "--refine"]) == 2
    assert "--refine is a step of SSP's matching" in capsys.readouterr().err


def test_the_table_of_a_later_method_sets_its_published_numbers_and_test_beside():
    rows = [{"fold": 0, "shots": s, "miou": 0.5, "miou_std": 0.01, "fb_iou": 0.7, "dataset": "pascal5i",
             "train_config": {"method": "ssp"}, "eval_config": {"protocol": "faithful"}} for s in (1, 5)]
    table = summarize("pascal5i", rows)
    published = {r.shots: r for r in LATER_RESULTS if r.method == "SSP" and r.dataset == "pascal5i"}
    for s in table["settings"]:
        assert s["paper_miou"][0] == published[s["shots"]].folds[0]
        assert s["paper_mean"] == published[s["shots"]].mean and s["paper_fb_iou"] is None
    md = markdown(json.loads(json.dumps(table)))
    assert "Results of SSP (--method ssp) on pascal5i under our faithful protocol" in md
    assert "MLC's test" in md and f"50.0 ± 1.0 ({published[1].folds[0]:.1f}, {50 - published[1].folds[0]:+.1f})" in md
