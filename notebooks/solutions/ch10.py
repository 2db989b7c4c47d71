"""Solution to the exercise of chapter 10 (how much of each patch a mask covers)."""


def my_patch_coverage(mask, patch):
    """mask (H, W) float 0/1, H and W multiples of patch -> (H // patch, W // patch) fractions in [0, 1]."""
    H, W = mask.shape
    return mask.unflatten(0, (H // patch, patch)).unflatten(2, (W // patch, patch)).mean(dim=(1, 3))
