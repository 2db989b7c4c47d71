"""Solutions to the exercises of chapter 3 (prototype matching)."""
import torch


def my_prototype_scores(query_features, prototypes, alpha):
    """query_features (C, h, w), prototypes (J, C), alpha -> (J, h, w): alpha * cosine similarity."""
    f = query_features / query_features.norm(dim=0, keepdim=True).clamp_min(1e-8)  # unit length per pixel
    p = prototypes / prototypes.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return alpha * torch.einsum("jc,chw->jhw", p, f)
