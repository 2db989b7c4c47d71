"""Self-support matching (SSP; Fan et al., ECCV 2022): the query's own confident pixels refine the
support prototypes of a 1-way episode.

PANet labels each query pixel by its nearest support prototype. SSP notices that an object is
more similar to itself than to another instance of its class, so it matches twice: a first
matching with the support prototypes gives a rough query prediction; the query features where
that prediction is confident become *self-support* prototypes; the second matching uses a mix of
the two. As in the authors' code (`SSP_MatchingNet.SSP_func` and `forward`):

- scores are `scale * [cos(F, bg), cos(F, fg)]` with scale 10 (PANet's alpha is 20);
- confident pixels: foreground probability > 0.7, background probability > 0.6 (softmax of the
  scores); if none passes, the 12 most probable pixels;
- the self-support foreground prototype is the mean of the confident foreground features, and the
  foreground prototype of the second matching is 0.5 * support + 0.5 * self-support;
- the background gets a global self-support prototype (the mean of the confident background
  features) and an *adaptive* one per pixel: for query pixel x, the confident background features
  averaged with weights softmax_j(2 cos(F(x), F(b_j))); the second matching uses
  0.3 * global + 0.7 * adaptive, a different background prototype at every pixel;
- `refine` runs the self-support step once more on the second prediction and blends prototypes
  (0.5 support + 0.2 first + 0.3 second) and scores (0.7 third + 0.3 second).

Everything here works at feature resolution on features (B, C, h, w) and prototypes (B, C);
the model upsamples the returned scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSP_SCALE = 10.0
FG_THRESHOLD, BG_THRESHOLD, TOP_K = 0.7, 0.6, 12
LOCAL_TEMPERATURE = 2.0  # the 2.0 in softmax(2 cos) of the adaptive background prototype


def two_way_scores(features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, scale: float = SSP_SCALE) -> torch.Tensor:
    """scale * [cos(F, bg), cos(F, fg)]: (B, 2, h, w). Prototypes are (B, C) or per pixel (B, C, h, w)."""
    def expand(p: torch.Tensor) -> torch.Tensor:
        return p[..., None, None] if p.dim() == 2 else p

    return scale * torch.stack([F.cosine_similarity(features, expand(bg), dim=1),
                                F.cosine_similarity(features, expand(fg), dim=1)], dim=1)


def _confident(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the pixels whose probability exceeds `threshold`, or of the TOP_K most probable."""
    chosen = (prob > threshold).nonzero().squeeze(1)
    return chosen if chosen.numel() > 0 else prob.topk(min(TOP_K, prob.numel())).indices


def self_support_prototypes(features: torch.Tensor, scores: torch.Tensor) -> dict:
    """The query's own prototypes from its confident pixels under `scores` (B, 2, h, w) [bg, fg].

    Returns fg (B, C) and bg (B, C): means of the confident foreground / background features;
    bg_local (B, C, h, w): for every pixel, the confident background features weighted by the
    softmax of 2 x their cosine to that pixel; fg_mask, bg_mask (B, h, w): which pixels were used.
    """
    B, C, h, w = features.shape
    probs = scores.softmax(dim=1).flatten(2)  # (B, 2, h*w)
    fgs, bgs, locals_, fg_masks, bg_masks = [], [], [], [], []
    for b in range(B):
        feats = features[b].flatten(1)  # (C, h*w)
        fg_idx, bg_idx = _confident(probs[b, 1], FG_THRESHOLD), _confident(probs[b, 0], BG_THRESHOLD)
        fg_feats, bg_feats = feats[:, fg_idx], feats[:, bg_idx]
        fgs.append(fg_feats.mean(dim=1))
        bgs.append(bg_feats.mean(dim=1))
        unit = F.normalize(feats, dim=0)
        weights = (LOCAL_TEMPERATURE * unit.T @ F.normalize(bg_feats, dim=0)).softmax(dim=1)  # (h*w, n_bg)
        locals_.append((weights @ bg_feats.T).T.reshape(C, h, w))
        for masks, idx in ((fg_masks, fg_idx), (bg_masks, bg_idx)):
            m = torch.zeros(h * w, dtype=torch.bool, device=features.device)
            m[idx] = True
            masks.append(m.view(h, w))
    return {"fg": torch.stack(fgs), "bg": torch.stack(bgs), "bg_local": torch.stack(locals_),
            "fg_mask": torch.stack(fg_masks), "bg_mask": torch.stack(bg_masks)}


def ssp_match(features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, refine: bool = False,
              scale: float = SSP_SCALE) -> dict:
    """SSP's matching of query features (B, C, h, w) with support prototypes fg, bg (B, C).

    Returns scores (B, 2, h, w), the prediction's scores ([bg, fg], before upsampling), and the
    steps: first (the plain support matching), second (after one self-support step), third (after
    refinement, if `refine`), and the prototypes used.
    """
    first = two_way_scores(features, fg, bg, scale)
    ss1 = self_support_prototypes(features, first)
    fg1 = 0.5 * fg + 0.5 * ss1["fg"]
    bg1 = 0.3 * ss1["bg"][..., None, None] + 0.7 * ss1["bg_local"]
    second = two_way_scores(features, fg1, bg1, scale)
    out = {"first": first, "second": second, "self_support": ss1, "fg_1": fg1, "bg_1": bg1, "scores": second}
    if refine:
        ss2 = self_support_prototypes(features, second)
        fg2 = 0.5 * fg + 0.5 * ss2["fg"]
        bg2 = 0.3 * ss2["bg"][..., None, None] + 0.7 * ss2["bg_local"]
        fg2 = 0.5 * fg + 0.2 * fg1 + 0.3 * fg2
        bg2 = 0.5 * bg[..., None, None] + 0.2 * bg1 + 0.3 * bg2
        third = two_way_scores(features, fg2, bg2, scale)
        out |= {"third": third, "self_support_2": ss2, "fg_2": fg2, "bg_2": bg2, "scores": 0.7 * third + 0.3 * second}
    return out
