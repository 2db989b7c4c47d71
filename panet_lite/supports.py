"""What a support is annotated with: dense masks, the authors' bounding boxes, or our scribbles.

PANet's weak-annotation experiment tests models trained on dense masks with cheaper support
annotations. `dense` is the mask itself. `bbox` is exactly the authors' box supports (see
`box_masks`). `scribble` is *our* generator: the authors tested on scribbles of a dataset of
generated strokes that cannot be obtained, so numbers measured with these scribbles are not
comparable to the paper's scribble row.

Our scribble, drawn with a seeded numpy generator (the same episode always gets the same strokes):
1. shrink the region (the class's pixels for the foreground; for the background, the pixels of
   none of the episode's classes, 255 borders left out) by the brush radius `r`, so a stroke stays
   inside it (a region thinner than that keeps its innermost pixels instead);
2. thin what remains to its skeleton (Zhang-Suen), at most 128 px a side (larger regions are
   thinned at a coarser scale, conservatively, and the path is drawn back at full size);
3. walk the skeleton from a random pixel, both ways, choosing at random at each fork, for at most
   half the image side;
4. draw the walked path with a round brush of radius `r` (about 1% of the image side, at least 1),
   clipped to the region.
The foreground gets one such stroke, the background `BG_STROKES`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .data import IGNORE

SUPPORTS = ("dense", "bbox", "scribble")
SUPPORT_HELP = ("support annotation at test time: dense masks; bbox, the authors' boxes (fg = the box of the "
                "class's largest instance, bg = outside all its instance boxes; needs instance masks); "
                "scribble, strokes from our own seeded generator (not the authors' scribbles: not comparable "
                "to the paper's scribble numbers)")
BG_STROKES = 2
THIN_SIDE = 128  # regions are thinned at most this many pixels a side


def box_masks(label: torch.Tensor, instances: torch.Tensor, class_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding-box support masks of a class, as the authors build them.

    label `(H, W)` class ids, instances `(H, W)` instance ids (0 bg, 255 borders). The class's
    instances are the instance ids on its pixels; fg = the box around the largest one (ties: the
    lowest id), bg = every pixel outside all of the class's instance boxes. Returns two `(H, W)`
    bool masks; raises ValueError if the class has no instance in the image.
    """
    on_class = torch.where(label == class_id, instances, torch.zeros_like(instances))  # (H, W)
    on_class[on_class == IGNORE] = 0
    area = torch.bincount(on_class.flatten().long(), minlength=2)[1:]  # area of instance 1, 2, ...
    if area.sum() == 0:
        raise ValueError(f"class {class_id} has no instance in this image")
    fg = torch.zeros(label.shape, dtype=torch.bool, device=label.device)
    bg = torch.ones(label.shape, dtype=torch.bool, device=label.device)
    for instance in (torch.nonzero(area).flatten() + 1).tolist():
        rows, cols = torch.nonzero(on_class == instance, as_tuple=True)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        bg[box] = False
        if instance == int(area.argmax()) + 1:
            fg[box] = True
    return fg, bg


# ----------------------------------------------------------------------------- our scribbles

def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Zhang-Suen's deletion rule of each of its two sub-steps, for all 256 neighbourhoods.

    A neighbourhood is coded as sum(p_i << (i - 2)) over p2..p9, the 8 neighbours clockwise from
    north. A pixel goes when it has 2..6 neighbours, exactly one 0 -> 1 transition around it, and
    (step 1) not all of N, E, S nor all of E, S, W; (step 2) not all of N, E, W nor all of N, S, W.
    """
    tables = np.zeros((2, 256), dtype=bool)
    for code in range(256):
        p = [(code >> i) & 1 for i in range(8)]  # p2..p9
        transitions = sum(1 for i in range(8) if not p[i] and p[(i + 1) % 8])
        n, e, s, w = p[0], p[2], p[4], p[6]
        if 2 <= sum(p) <= 6 and transitions == 1:
            tables[0, code] = not (n and e and s) and not (e and s and w)
            tables[1, code] = not (n and e and w) and not (n and s and w)
    return tables[0], tables[1]


_THINNING = _thinning_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a bool mask `(H, W)` to a one-pixel-wide, 8-connected skeleton."""
    img = np.pad(mask.astype(np.uint8), 1)
    H, W = mask.shape
    # p2..p9 as offsets into the padded image, clockwise from north.
    offsets = ((0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0))
    while True:
        changed = False
        for table in _THINNING:
            code = np.zeros((H, W), dtype=np.uint8)
            for bit, (dy, dx) in enumerate(offsets):
                code |= img[dy:dy + H, dx:dx + W] << bit
            delete = table[code] & (img[1:-1, 1:-1] == 1)
            if delete.any():
                img[1:-1, 1:-1][delete] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _walk(skeleton: np.ndarray, rng: np.random.Generator, length: int) -> list[tuple[int, int]]:
    """A path of at most `length` pixels along an 8-connected skeleton, from a random pixel, both ways."""
    points = np.argwhere(skeleton)
    start = tuple(points[rng.integers(len(points))])
    visited = {start}
    halves = []
    for _ in range(2):
        path, here = [], start
        while len(visited) < length:
            y, x = here
            steps = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                     if (dy or dx) and 0 <= y + dy < skeleton.shape[0] and 0 <= x + dx < skeleton.shape[1]
                     and skeleton[y + dy, x + dx] and (y + dy, x + dx) not in visited]
            if not steps:
                break
            here = steps[rng.integers(len(steps))]
            visited.add(here)
            path.append(here)
        halves.append(path)
    return halves[1][::-1] + [start] + halves[0]


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def brush_radius(height: int, width: int) -> int:
    """The scribble brush radius: about 1% of the image side, at least 1 pixel."""
    return max(1, round(min(height, width) / 100))


def scribble(region: np.ndarray, rng: np.random.Generator, radius: int, length: int) -> np.ndarray:
    """One stroke inside a bool region `(H, W)` (see the module's docstring); all False if the region is."""
    if not region.any():
        return np.zeros_like(region, dtype=bool)
    inner = ndimage.binary_erosion(region, _disk(radius), border_value=0)
    if not inner.any():  # thinner than the brush: its innermost pixels
        depth = ndimage.distance_transform_edt(region)
        inner = depth >= depth.max()
    scale = max(1, math.ceil(max(region.shape) / THIN_SIDE))
    if scale > 1:  # a coarse pixel is kept only if all of its fine pixels are inside
        H, W = region.shape
        pad = np.pad(inner, ((0, -H % scale), (0, -W % scale)))
        coarse = pad.reshape(pad.shape[0] // scale, scale, pad.shape[1] // scale, scale).all(axis=(1, 3))
        if coarse.any():
            path = np.array(_walk(thin(coarse), rng, max(2, length // scale))) * scale + scale // 2
            path = np.minimum(path, [H - 1, W - 1])
            return _draw(path, region, radius)
    return _draw(np.array(_walk(thin(inner), rng, length)), region, radius)


def _draw(path: np.ndarray, region: np.ndarray, radius: int) -> np.ndarray:
    """The polyline through `path` (P, 2) drawn with a round brush, clipped to the region."""
    step = int(np.abs(np.diff(path, axis=0)).max()) if len(path) > 1 else 1  # 1 at full scale, else the scale
    along = np.arange(max(step, 1)) / max(step, 1)  # points between neighbours, every pixel
    points = path[:-1, None, :] + np.diff(path, axis=0)[:, None, :] * along[None, :, None]
    points = np.concatenate([points.reshape(-1, 2), path[-1:]]).round().astype(int)
    line = np.zeros_like(region, dtype=bool)
    line[points[:, 0], points[:, 1]] = True
    return ndimage.binary_dilation(line, _disk(radius)) & region


def scribble_masks(label: torch.Tensor, class_id: int, episode_classes: Sequence[int],
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Our scribble supports of one support label `(H, W)`: one fg stroke on the class's pixels and
    `BG_STROKES` on the pixels of none of the episode's classes (255 borders excluded from both)."""
    lab = label.cpu().numpy()
    H, W = lab.shape
    radius, length = brush_radius(H, W), max(H, W) // 2
    fg = scribble(lab == class_id, rng, radius, length)
    background = ~np.isin(lab, list(episode_classes)) & (lab != IGNORE)
    bg = np.zeros_like(fg)
    for _ in range(BG_STROKES):
        bg |= scribble(background & ~bg, rng, radius, length)
    return torch.from_numpy(fg), torch.from_numpy(bg)


def resize_instances(instances: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """An instance map `(H, W)` resized by nearest neighbour, as its label is."""
    if size is None or tuple(instances.shape) == tuple(size):
        return instances
    return F.interpolate(instances[None, None].float(), size=size, mode="nearest")[0, 0].long()
