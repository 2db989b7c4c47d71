"""PANet's forward pass and alignment loss equal a loop-based re-derivation of the method (docs/protocol.md), in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from panet_lite import PANet
from panet_lite.encoders import VGG16Encoder, load_vgg16_weights, recompute_pieces
from panet_lite.pooling import masked_average_pool


def reference_panet(model, s_img, s_fg, s_bg, q_img):
    """Straight from the method's definition, one episode, one way, one shot, one pixel at a time."""
    B, N, K = s_fg.shape[:3]
    Q = q_img.shape[1]
    H, W = q_img.shape[-2:]
    all_logits, align_total = [], 0.0
    for b in range(B):
        s_feat = [[model.encoder(s_img[b, w, k][None])[0] for k in range(K)] for w in range(N)]
        q_feat = [model.encoder(q_img[b, q][None])[0] for q in range(Q)]

        def pool(feat, mask):
            up = F.interpolate(feat[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
            num = torch.zeros(feat.shape[0], dtype=feat.dtype)
            for y in range(mask.shape[0]):
                for x in range(mask.shape[1]):
                    num = num + up[:, y, x] * mask[y, x]
            return num / (mask.sum() + 1e-5)

        def cos20(v, p):
            return 20 * (v @ p) / (max(v.norm().item(), 1e-8) * max(p.norm().item(), 1e-8))

        def score_map(feat, protos):
            C, h, w = feat.shape
            out = torch.zeros(len(protos), h, w, dtype=feat.dtype)
            for j, p in enumerate(protos):
                for y in range(h):
                    for x in range(w):
                        out[j, y, x] = cos20(feat[:, y, x], p)
            return out

        fg_protos = [sum(pool(s_feat[w][k], s_fg[b, w, k]) for k in range(K)) / K for w in range(N)]
        bg_proto = sum(sum(pool(s_feat[w][k], s_bg[b, w, k]) for k in range(K)) / K for w in range(N)) / N
        protos = [bg_proto] + fg_protos
        scores = [score_map(f, protos) for f in q_feat]
        all_logits.append(torch.stack([F.interpolate(s[None], size=(H, W), mode="bilinear",
                                                     align_corners=False)[0] for s in scores]))
        # Alignment: query prototypes from the argmax masks at feature resolution, pooled over queries.
        C = q_feat[0].shape[0]
        q_protos = []
        for j in range(1 + N):
            num, den = torch.zeros(C, dtype=q_feat[0].dtype), 0.0
            for f, s in zip(q_feat, scores):
                m = (s.argmax(0) == j).to(f.dtype)
                num = num + (f * m).sum(dim=(1, 2))
                den = den + m.sum()
            q_protos.append(num / (den + 1e-5))
        loss = 0.0
        for w in range(N):
            if not any((s.argmax(0) == w + 1).any() for s in scores):
                continue
            for k in range(K):
                sm = score_map(s_feat[w][k], [q_protos[0], q_protos[w + 1]])
                up = F.interpolate(sm[None], size=(H, W), mode="bilinear", align_corners=False)[0]
                total, count = 0.0, 0
                for y in range(H):
                    for x in range(W):
                        target = 0 if s_bg[b, w, k, y, x] == 1 else (1 if s_fg[b, w, k, y, x] == 1 else None)
                        if target is None:
                            continue
                        total = total - torch.log_softmax(up[:, y, x], 0)[target]
                        count += 1
                loss = loss + total / count / K / N
        align_total = align_total + loss
    return torch.stack(all_logits), align_total / B


def tiny_episode(B=2, N=2, K=2, Q=2, H=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_img = torch.randn(B, N, K, 3, H, H, generator=g, dtype=torch.float64)
    q_img = torch.randn(B, Q, 3, H, H, generator=g, dtype=torch.float64)
    label = torch.randint(0, 4, (B, N, K, H, H), generator=g)  # 0 bg, 1/2 the ways, 3 = "255"
    ways = torch.arange(1, N + 1).view(1, N, 1, 1, 1)
    s_fg = (label == ways).double()
    s_bg = ((label == 0) | (label == 3)).double()  # 255 counts as background (faithful)
    return s_img, s_fg, s_bg, q_img


@pytest.mark.parametrize("backbone", ["small", "vgg16"])
def test_forward_and_alignment_match_loop_reference(backbone):
    torch.manual_seed(0)
    model = PANet(backbone, pretrained=False).double().train()
    s_img, s_fg, s_bg, q_img = tiny_episode(H=24 if backbone == "small" else 17)
    out = model(s_img, s_fg, s_bg, q_img)
    with torch.no_grad():
        ref_logits, ref_align = reference_panet(model, s_img, s_fg, s_bg, q_img)
    assert out.logits.shape == (2, 2, 3) + q_img.shape[-2:]
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-9, atol=1e-9)
    assert float(ref_align) > 0
    torch.testing.assert_close(out.align_loss.detach(), torch.as_tensor(ref_align, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


def test_alignment_skips_ways_absent_from_the_query_prediction():
    torch.manual_seed(1)
    model = PANet("small", pretrained=False).double().train()
    s_img, s_fg, s_bg, q_img = tiny_episode(B=1, N=2, K=1, Q=1)
    # A huge alpha on a model whose way-2 prototype is never the argmax: force by zeroing its mask.
    s_fg[:, 1] = 0  # way 2's prototype becomes the zero vector: cosine 0, never wins over +/- scores
    out = model(s_img, s_fg, s_bg, q_img)
    ref_logits, ref_align = reference_panet(model, s_img, s_fg, s_bg, q_img)
    torch.testing.assert_close(out.align_loss.detach(), torch.as_tensor(ref_align, dtype=torch.float64))


def test_eval_mode_and_align_false_give_zero_alignment_loss_and_same_logits():
    torch.manual_seed(0)
    model = PANet("small", pretrained=False).double()
    ep = tiny_episode()
    train_out = model.train()(*ep)
    eval_out = model.eval()(*ep)
    assert eval_out.align_loss.item() == 0.0 and train_out.align_loss.item() > 0
    torch.testing.assert_close(train_out.logits, eval_out.logits)
    model.align = False
    assert model.train()(*ep).align_loss.item() == 0.0


def test_gradient_reaches_encoder_through_both_losses():
    torch.manual_seed(0)
    model = PANet("small", pretrained=False).train()
    s_img, s_fg, s_bg, q_img = (t.float() for t in tiny_episode())
    out = model(s_img, s_fg, s_bg, q_img)
    out.align_loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_masked_average_pool_hand_computed():
    feat = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert masked_average_pool(feat, mask).item() == pytest.approx(3 / (2 + 1e-5))
    assert masked_average_pool(feat, torch.zeros(1, 2, 2)).item() == 0.0  # empty mask: 0, not NaN


@pytest.mark.parametrize("feature_size, mask_size", [((12, 12), (96, 96)), ((7, 9), (50, 61)), ((5, 5), (5, 5))])
def test_masked_average_pool_equals_pooling_the_upsampled_features(feature_size, mask_size):
    """The pool never builds the upsampled features; it must equal doing so, gradient included."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 16, *feature_size, generator=gen, dtype=torch.float64, requires_grad=True)
    masks = (torch.rand(2, 3, *mask_size, generator=gen) < 0.3).double()
    masks[0, 0] = 0  # an empty mask: the 1e-5 guard gives a zero prototype
    up = F.interpolate(feats.flatten(0, 1), size=mask_size, mode="bilinear", align_corners=False)
    up = up.unflatten(0, (2, 3))  # (2, 3, 16, H, W)
    direct = (up * masks[:, :, None]).sum((-2, -1)) / (masks[:, :, None].sum((-2, -1)) + 1e-5)
    pooled = masked_average_pool(feats, masks)
    torch.testing.assert_close(pooled, direct, rtol=1e-12, atol=1e-12)
    assert pooled[0, 0].abs().max() == 0
    g_direct, = torch.autograd.grad(direct.square().sum(), feats)
    g_pooled, = torch.autograd.grad(pooled.square().sum(), feats)
    torch.testing.assert_close(g_pooled, g_direct, rtol=1e-12, atol=1e-12)


def test_vgg16_encoder_layout_and_output_stride():
    enc = VGG16Encoder()
    params = list(enc.parameters())
    assert len(params) == 26
    from torchvision.models import vgg16

    tv = vgg16(weights=None).state_dict()
    assert [p.shape for p in params] == [t.shape for t in list(tv.values())[:26]]
    assert enc(torch.zeros(1, 3, 417, 417)).shape == (1, 512, 53, 53)
    assert not isinstance(list(enc.children())[-1], torch.nn.ReLU)  # conv5_3 is not rectified


def test_vgg16_weights_copy_by_position_and_forward_matches_manual_vgg(tmp_path):
    from torchvision.models import vgg16

    tv = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    enc = VGG16Encoder()
    assert load_vgg16_weights(enc, path)
    convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    for p, t in zip(enc.parameters(), [x for c in convs for x in (c.weight, c.bias)]):
        assert torch.equal(p, t)
    x = torch.randn(1, 3, 33, 33)
    y, i = x, 0
    for block, n in enumerate((2, 2, 3, 3, 3)):
        for _ in range(n):
            d = 2 if block == 4 else 1
            y = F.conv2d(y, convs[i].weight, convs[i].bias, padding=d, dilation=d)
            i += 1
            if i < 13:
                y = F.relu(y)
        if block < 4:
            y = F.max_pool2d(y, 3, stride=2 if block < 3 else 1, padding=1)
    torch.testing.assert_close(enc(x), y)


def test_pretrained_offline_warns_once_and_keeps_random_init(monkeypatch):
    import warnings

    from torchvision.models import VGG16_Weights

    from panet_lite import encoders

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    monkeypatch.setattr(encoders, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PANet("vgg16", pretrained=True)
        PANet("vgg16", pretrained=True)
    msgs = [w for w in caught if issubclass(w.category, encoders.PretrainedWeightsUnavailable)]
    assert len(msgs) == 1 and "pretrained='path/to/file.pth'" in str(msgs[0].message)


def test_resnet50_is_stride_8_with_selectable_layer():
    for layer, channels in (("layer3", 1024), ("layer4", 2048)):
        model = PANet("resnet50", pretrained=False, resnet_layer=layer).eval()
        assert model.encoder(torch.zeros(1, 3, 65, 65)).shape == (1, channels, 9, 9)
    with pytest.raises(ValueError, match="layer"):
        PANet("resnet50", resnet_layer="layer2")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="vgg16"):
        PANet("alexnet")


def test_cosine_matches_torch_cosine_similarity():
    from panet_lite.matching import prototype_scores

    f = torch.randn(2, 3, 8, 5, 4, dtype=torch.float64)
    p = torch.randn(2, 4, 8, dtype=torch.float64)
    ours = prototype_scores(f, p)
    ref = 20 * F.cosine_similarity(f[:, :, None], p[:, None, :, :, None, None], dim=3, eps=1e-8)
    torch.testing.assert_close(ours, ref)
    assert math.isclose(prototype_scores(f, p, alpha=1.0).abs().max().item(), ours.abs().max().item() / 20)


@pytest.mark.parametrize("backbone", ["vgg16", "small"])
def test_recompute_gives_the_same_losses_and_gradients(backbone):
    """Activation checkpointing keeps fewer activations, never other numbers."""
    torch.manual_seed(0)
    model = PANet(backbone).double().train()
    s_img, s_fg, s_bg, q_img = tiny_episode(B=1, N=2, K=2, Q=1, H=33)[:4]
    grads = []
    for recompute in (False, True):
        model.recompute = recompute
        model.zero_grad()
        out = model(s_img, s_fg, s_bg, q_img)
        (out.logits.square().mean() + out.align_loss).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert out.align_loss.item() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    pieces = recompute_pieces(model.encoder)
    assert sum(len(p) for p in pieces) == len(model.encoder) and all(isinstance(p[0], torch.nn.Conv2d) for p in pieces)


def test_recompute_is_refused_where_the_encoder_cannot_be_cut():
    from panet_lite.train import TrainConfig

    with pytest.raises(ValueError, match="--recompute works with the vgg16 and small encoders, not resnet50"):
        TrainConfig(backbone="resnet50", recompute=True)
    model = PANet("resnet50").train()
    model.recompute = True
    with pytest.raises(ValueError, match="recompute needs one of the vgg16, small encoders"):
        model(*[t.float() for t in tiny_episode(B=1, N=1, K=1, Q=1, H=33)[:4]])
