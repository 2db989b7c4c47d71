"""Solutions to the exercises of chapter 2 (masked average pooling)."""
import torch
import torch.nn.functional as F


def my_masked_average_pool(features, mask):
    """features (C, h, w), mask (H, W) float 0/1 -> (C,): upsample the features to the mask, then average."""
    up = F.interpolate(features[None], size=mask.shape, mode="bilinear", align_corners=False)[0]  # (C, H, W)
    return (up * mask).sum(dim=(1, 2)) / (mask.sum() + 1e-5)


def my_prototypes(support_features, fg, bg):
    """support_features (N, K, C, h, w), fg and bg (N, K, H, W) -> (1 + N, C): [bg, way 1, ..., way N]."""
    N, K = fg.shape[:2]
    fg_pools = torch.stack([torch.stack([my_masked_average_pool(support_features[w, k], fg[w, k])
                                         for k in range(K)]) for w in range(N)])  # (N, K, C)
    bg_pools = torch.stack([torch.stack([my_masked_average_pool(support_features[w, k], bg[w, k])
                                         for k in range(K)]) for w in range(N)])
    fg_protos = fg_pools.mean(dim=1)  # mean over shots: (N, C)
    bg_proto = bg_pools.mean(dim=(0, 1))  # one background for the episode: (C,)
    return torch.cat([bg_proto[None], fg_protos])
