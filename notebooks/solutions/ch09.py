"""Solution to the exercise of chapter 9 (SSP's self-support prototypes)."""

FG_THRESHOLD, BG_THRESHOLD, TOP_K = 0.7, 0.6, 12


def my_self_support(features, scores):
    """features (C, h, w) of one query; scores (2, h, w) [bg, fg] of the first matching.
    -> (fg, bg): the means of the features whose P(fg) > 0.7 and whose P(bg) > 0.6, each falling
    back on its 12 most probable pixels when no pixel passes."""
    probs = scores.softmax(dim=0).flatten(1)  # (2, h*w)
    feats = features.flatten(1)  # (C, h*w)

    def mean_of_confident(p, threshold):
        chosen = (p > threshold).nonzero().squeeze(1)
        if chosen.numel() == 0:
            chosen = p.topk(min(TOP_K, p.numel())).indices
        return feats[:, chosen].mean(dim=1)

    return mean_of_confident(probs[1], FG_THRESHOLD), mean_of_confident(probs[0], BG_THRESHOLD)
