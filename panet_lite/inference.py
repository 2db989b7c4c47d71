"""PANet on your own images: supports with masks and queries in, one label map per query out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalize
from .episodes import resize_pair
from .evaluate import class_argmax
from .model import PANet


def _image_tensor(image, what: str) -> torch.Tensor:
    """A PIL image or an (H, W, 3) uint8 array as a (3, H, W) uint8 tensor."""
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{what} must be an H x W x 3 uint8 array or a PIL image, got shape {array.shape} "
                         f"dtype {array.dtype}")
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a copy: PIL arrays are read-only


def _mask_tensor(mask, size: tuple[int, int], what: str) -> torch.Tensor:
    """A 0/1 (or bool) H x W mask, PIL or array, as an (H, W) int64 tensor; its size must be the image's."""
    array = np.asarray(mask.convert("L") if hasattr(mask, "convert") else mask)
    if array.ndim != 2 or tuple(array.shape) != tuple(size):
        raise ValueError(f"{what} must be an H x W mask of its image's size {size[0]} x {size[1]}, got shape "
                         f"{array.shape}")
    values = set(np.unique(array).tolist())
    if not values <= {0, 1, True, False}:
        raise ValueError(f"{what} must hold 0 (background) and 1 (the object) only, got values "
                         f"{sorted(values)[:6]}; e.g. pass (mask > 0)")
    if 1 not in values:
        raise ValueError(f"{what} is empty: it must mark at least one pixel of the object")
    return torch.from_numpy(array.astype(np.int64))


@torch.no_grad()
def segment(model: PANet, support_images: Sequence[Sequence], support_masks: Sequence[Sequence],
            query_images: Sequence, size: int | None = 417) -> list[torch.Tensor]:
    """Segment the queries with the classes the supports show.

    support_images[w][k] is shot k of way w: an H x W x 3 uint8 array or a PIL image, of any size;
    support_masks[w][k] its H x W mask (0 background, 1 the object of way w). Every way has the same
    number of shots. query_images is a list of images. Images are resized to size x size (None keeps
    them, then all must share one size), the model predicts, and its scores are resized back to each
    query's own size. Returns one (H, W) int64 label map per query: 0 background, w + 1 way w.
    """
    if not support_images or len(support_images) != len(support_masks):
        raise ValueError(f"give one list of support images and one of masks per way; got {len(support_images)} "
                         f"image lists and {len(support_masks)} mask lists")
    shots = {len(images) for images in support_images}
    if len(shots) != 1 or 0 in shots:
        raise ValueError(f"every way needs the same number (at least 1) of support images; got "
                         f"{[len(images) for images in support_images]}")
    if not query_images:
        raise ValueError("give at least one query image")
    images, fg = [], []
    for w, (way_images, way_masks) in enumerate(zip(support_images, support_masks)):
        if len(way_masks) != len(way_images):
            raise ValueError(f"way {w} has {len(way_images)} support images but {len(way_masks)} masks")
        for k, (image, mask) in enumerate(zip(way_images, way_masks)):
            picture = _image_tensor(image, f"support image [{w}][{k}]")
            label = _mask_tensor(mask, picture.shape[1:], f"support mask [{w}][{k}]")
            picture, label = resize_pair(picture, label, size)
            images.append(picture)
            fg.append(label)
    queries = [_image_tensor(image, f"query image [{q}]") for q, image in enumerate(query_images)]
    originals = [tuple(q.shape[1:]) for q in queries]
    queries = [resize_pair(q, torch.zeros(q.shape[1:], dtype=torch.long), size)[0] for q in queries]
    sizes = {tuple(t.shape[1:]) for t in images + queries}
    if len(sizes) != 1:
        raise ValueError(f"with size=None all images must share one size, got {sorted(sizes)}")
    N, K = len(support_images), shots.pop()
    device = next(model.parameters()).device
    stats = model.input_stats  # the encoder's (mean, std)
    s_imgs = normalize(torch.stack(images), stats).unflatten(0, (N, K))[None].to(device)  # (1, N, K, 3, h, w)
    s_fg = torch.stack(fg).float().unflatten(0, (N, K))[None].to(device)  # (1, N, K, h, w)
    q_imgs = normalize(torch.stack(queries), stats)[None].to(device)  # (1, Q, 3, h, w)
    model.eval()
    logits = model(s_imgs, s_fg, 1 - s_fg, q_imgs).logits[0].float()  # (Q, 1 + N, h, w)
    full = [F.interpolate(logits[q:q + 1], size=original, mode="bilinear", align_corners=False)[0]
            for q, original in enumerate(originals)]
    return [class_argmax(scores, dim=0).cpu() for scores in full]
