"""Solutions to the exercises of chapter 4 (prototype alignment regularisation)."""
import torch
import torch.nn.functional as F

IGNORE = 255
EPS = 1e-5
ALPHA = 20.0


def my_alignment_loss(support_features, query_features, query_scores, support_fg, support_bg):
    """PAR for one episode. support_features (N, K, C, h, w); query_features (Q, C, h, w);
    query_scores (Q, 1 + N, h, w) before upsampling; support_fg, support_bg (N, K, H, W). -> scalar."""
    N, K = support_fg.shape[:2]
    H, W = support_fg.shape[-2:]
    J = query_scores.shape[1]
    pred = query_scores.argmax(dim=1)  # (Q, h, w): the query prediction at feature resolution
    protos, areas = [], []
    for j in range(J):  # query prototypes, pooled over all queries
        mask = (pred == j).to(query_features.dtype)[:, None]  # (Q, 1, h, w)
        areas.append(mask.sum())
        protos.append((query_features * mask).sum(dim=(0, 2, 3)) / (mask.sum() + EPS))  # (C,)
    loss = query_features.new_zeros(())
    for way in range(N):
        if areas[1 + way] == 0:
            continue  # the query prediction never chose this way
        pair = torch.stack([protos[0], protos[1 + way]])  # (2, C)
        for shot in range(K):
            cos = F.cosine_similarity(support_features[way, shot][None], pair[:, :, None, None], dim=1)  # (2, h, w)
            logits = F.interpolate(ALPHA * cos[None], size=(H, W), mode="bilinear", align_corners=False)
            target = torch.full((1, H, W), IGNORE, dtype=torch.long)
            target[0][support_fg[way, shot] == 1] = 1
            target[0][support_bg[way, shot] == 1] = 0
            if (target != IGNORE).any():  # an all-ignored support adds nothing (cross-entropy would be NaN)
                loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE) / (N * K)
    return loss
