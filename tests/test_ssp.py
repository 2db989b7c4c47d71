"""Self-support matching against a pixel-by-pixel reference written from SSP's description."""
import math

import torch

from panet_lite.ssp import self_support_prototypes, ssp_match, two_way_scores


def _cos(a, b):
    return float(sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))))


def _reference(feats, fg, bg, scale=10.0):
    """One episode, lists of floats: first matching, confident pixels, self-support prototypes, second matching."""
    C, h, w = feats.shape
    pix = [feats[:, i, j].tolist() for i in range(h) for j in range(w)]

    def match(fg_at, bg_at):
        return [[scale * _cos(p, bg_at(n)), scale * _cos(p, fg_at(n))] for n, p in enumerate(pix)]

    first = match(lambda n: fg, lambda n: bg)
    p_fg = [math.exp(s[1]) / (math.exp(s[0]) + math.exp(s[1])) for s in first]
    p_bg = [1 - p for p in p_fg]

    def pick(prob, thr):
        chosen = [n for n, p in enumerate(prob) if p > thr]
        return chosen or sorted(range(len(prob)), key=lambda n: -prob[n])[:12]

    fg_idx, bg_idx = pick(p_fg, 0.7), pick(p_bg, 0.6)
    ss_fg = [sum(pix[n][c] for n in fg_idx) / len(fg_idx) for c in range(C)]
    ss_bg = [sum(pix[n][c] for n in bg_idx) / len(bg_idx) for c in range(C)]
    local = []
    for p in pix:
        e = [math.exp(2.0 * _cos(p, pix[m])) for m in bg_idx]
        local.append([sum(e[k] * pix[m][c] for k, m in enumerate(bg_idx)) / sum(e) for c in range(C)])
    fg1 = [0.5 * a + 0.5 * b for a, b in zip(fg, ss_fg)]
    bg1 = [[0.3 * ss_bg[c] + 0.7 * local[n][c] for c in range(C)] for n in range(len(pix))]
    second = match(lambda n: fg1, lambda n: bg1[n])
    return {"ss_fg": ss_fg, "ss_bg": ss_bg, "local": local, "second": second, "fg_idx": fg_idx, "bg_idx": bg_idx}


def test_ssp_matches_the_pixel_by_pixel_reference():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 6, 4, 5, generator=g, dtype=torch.float64)
    fg = feats[:, :, 1, 1] + 0.3 * torch.randn(2, 6, generator=g, dtype=torch.float64)  # near one pixel
    bg = feats[:, :, 3, 4] + 0.3 * torch.randn(2, 6, generator=g, dtype=torch.float64)
    out = ssp_match(feats, fg, bg)
    for b in range(2):
        ref = _reference(feats[b], fg[b].tolist(), bg[b].tolist())
        ss = out["self_support"]
        assert sorted(ss["fg_mask"][b].flatten().nonzero().squeeze(1).tolist()) == sorted(ref["fg_idx"])
        assert sorted(ss["bg_mask"][b].flatten().nonzero().squeeze(1).tolist()) == sorted(ref["bg_idx"])
        torch.testing.assert_close(ss["fg"][b], torch.tensor(ref["ss_fg"], dtype=torch.float64), rtol=0, atol=1e-10)
        torch.testing.assert_close(ss["bg"][b], torch.tensor(ref["ss_bg"], dtype=torch.float64), rtol=0, atol=1e-10)
        local = ss["bg_local"][b].flatten(1).T
        torch.testing.assert_close(local, torch.tensor(ref["local"], dtype=torch.float64), rtol=0, atol=1e-10)
        second = out["scores"][b].flatten(1).T
        torch.testing.assert_close(second, torch.tensor(ref["second"], dtype=torch.float64), rtol=0, atol=1e-10)


def test_unconfident_predictions_fall_back_to_the_top_12_pixels():
    feats = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    flat = torch.zeros(1, 2, 6, 6)  # p = 0.5 everywhere: no pixel passes 0.7 or 0.6
    flat[0, 1].view(-1)[:12] += torch.linspace(0.1, 0.2, 12)  # the 12 most foreground-probable pixels
    ss = self_support_prototypes(feats, flat)
    assert int(ss["fg_mask"].sum()) == 12 and int(ss["bg_mask"].sum()) == 12
    assert ss["fg_mask"][0].view(-1)[:12].all()
    torch.testing.assert_close(ss["fg"][0], feats[0].flatten(1)[:, :12].mean(dim=1))


def test_adaptive_background_is_a_weighted_mean_of_background_features():
    feats = torch.randn(1, 5, 4, 4, generator=torch.Generator().manual_seed(2))
    scores = two_way_scores(feats, feats[:, :, 0, 0], feats[:, :, 3, 3])
    ss = self_support_prototypes(feats, scores)
    bg_feats = feats[0].flatten(1)[:, ss["bg_mask"][0].flatten()]
    # Every pixel's adaptive prototype lies inside the box spanned by the confident background features.
    local = ss["bg_local"][0].flatten(1)
    assert (local >= bg_feats.min(dim=1, keepdim=True).values - 1e-6).all()
    assert (local <= bg_feats.max(dim=1, keepdim=True).values + 1e-6).all()
    # Two kinds of pixels, u (top half) and v (bottom half): the confident background is exactly the v
    # pixels, so the adaptive prototype is v at every pixel, whatever the weights.
    u, v = torch.tensor([1.0, 0.2, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.1, 1.0, 0.0, 0.3])
    halves = torch.stack([u] * 8 + [v] * 8, dim=1).view(1, 5, 4, 4)
    s = self_support_prototypes(halves, two_way_scores(halves, u[None], v[None]))
    assert s["bg_mask"][0].tolist() == [[False] * 4] * 2 + [[True] * 4] * 2
    torch.testing.assert_close(s["bg_local"][0], v[:, None, None].expand(5, 4, 4))
    torch.testing.assert_close(s["fg"][0], u)


def test_refinement_blends_prototypes_and_scores():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 6, 5, 5, generator=g)
    fg, bg = feats[:, :, 0, 0], feats[:, :, 4, 4]
    plain, refined = ssp_match(feats, fg, bg), ssp_match(feats, fg, bg, refine=True)
    torch.testing.assert_close(refined["second"], plain["second"])
    ss2 = self_support_prototypes(feats, plain["second"])
    fg2 = 0.5 * fg + 0.2 * plain["fg_1"] + 0.3 * (0.5 * fg + 0.5 * ss2["fg"])
    torch.testing.assert_close(refined["fg_2"], fg2)
    torch.testing.assert_close(refined["scores"], 0.7 * refined["third"] + 0.3 * plain["second"])
