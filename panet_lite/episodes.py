"""N-way K-shot episodes: the authors' sampler, draw for draw, and episodes as batched tensors."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data import IGNORE, IMAGENET_STATS, SegmentationSource, Stats, data_file, normalize_
from .files import DataError
from .supports import SUPPORTS, box_masks, resize_instances, scribble_masks


@dataclass(frozen=True)
class Episode:
    """Image ids of one episode. `ways` index into the class lists it was drawn from."""

    ways: list[int]  # (N,) indices into class_lists, in draw order
    support: list[list[str]]  # (N, K) image ids, way-major
    query: list[str]  # (Q,) image ids
    query_ways: list[int]  # (Q,) the way (0..N-1) each query was drawn for


def queries_per_way(rng: random.Random, n_ways: int, n_queries: int) -> list[int]:
    """How many of the Q queries each way gets: bincount of Q uniform draws (once per dataset)."""
    cnt = [0] * n_ways
    for w in rng.choices(range(n_ways), k=n_queries):
        cnt[w] += 1
    return cnt


def sample_episodes(class_lists: Sequence[Sequence[str]], n_episodes: int, n_ways: int, n_shots: int,
                    n_queries: int = 1, seed: int = 1234) -> list[Episode]:
    """Draw episodes exactly as the PANet authors' sampler does with `random.Random(seed)`.

    class_lists: for each class of the split (ascending class order), the ids of its images.
    For every episode: N distinct classes; for way i, K + cnt[i] distinct images of that class,
    the first K supports (draw order), the rest queries, taken from the last one backwards.
    """
    if n_ways > len(class_lists):
        raise ValueError(f"{n_ways}-way episodes need at least {n_ways} classes, got {len(class_lists)}; "
                         f"use --ways {len(class_lists)} or fewer")
    rng = random.Random(seed)
    cnt = queries_per_way(rng, n_ways, n_queries)
    for i, images in enumerate(class_lists):
        if len(images) < n_shots + max(cnt):
            raise ValueError(f"class list {i} has {len(images)} images; episodes need {n_shots + max(cnt)} "
                             f"({n_shots} shots + {max(cnt)} queries)")
    episodes = []
    for _ in range(n_episodes):
        ways = rng.sample(range(len(class_lists)), k=n_ways)
        support, query, query_ways = [], [], []
        for i, c in enumerate(ways):
            drawn = [class_lists[c][j] for j in rng.sample(range(len(class_lists[c])), k=n_shots + cnt[i])]
            support.append(drawn[:n_shots])
            queries = drawn[n_shots:][::-1]
            query += queries
            query_ways += [i] * len(queries)
        episodes.append(Episode(ways, support, query, query_ways))
    return episodes


# ----------------------------------------------------------------------------- HSNet's test episodes

HSNET_LIST = "hsnet/pascal/val/fold{fold}.txt"  # in data/: HSNet's PASCAL-5i test lists, unchanged
HSNET_EPISODES, HSNET_SEED, HSNET_SIZE = 1000, 0, 400


def hsnet_pairs(fold: int) -> list[tuple[str, int]]:
    """HSNet's fold list as (VOC val image id, class id 1..20) pairs, in file order."""
    if fold not in range(4):
        raise ValueError(f"fold must be in 0..3, got {fold}")
    pairs = []
    for line in data_file(HSNET_LIST.format(fold=fold)).read_text().splitlines():
        if line.strip():
            image_id, class_id = line.strip().split("__")
            pairs.append((image_id, int(class_id)))
    return pairs


def draw_hsnet_episodes(pairs: Sequence[tuple[str, int]], shots: int, episodes: int = HSNET_EPISODES,
                        seed: int = HSNET_SEED) -> list[tuple[str, list[str], int]]:
    """HSNet's test episodes over a list of (image id, class id) pairs, draw for draw.

    Episode i takes pair i mod len(pairs) as its query and class. One legacy numpy generator,
    seeded once, draws the supports of all episodes in order: per shot, one image of the class
    among the list's images of that class (`choice(..., 1, replace=False)`), drawn again while it
    is the query. Shots are drawn independently, so one episode may hold the same support twice
    (HSNet's quirk, kept). Returns (query id, [support ids], class id) per episode; reads no image.
    """
    if shots < 1 or episodes < 1:
        raise ValueError(f"shots and episodes must be at least 1, got {shots} and {episodes}")
    images_of: dict[int, list[str]] = {}
    for image_id, class_id in pairs:
        images_of.setdefault(class_id, []).append(image_id)
    rng = np.random.RandomState(seed)  # what HSNet's np.random.seed(0) drives
    drawn = []
    for i in range(episodes):
        query, class_id = pairs[i % len(pairs)]
        if set(images_of[class_id]) == {query}:
            raise ValueError(f"class {class_id} has no image but the query {query} in the list: no support to draw")
        supports: list[str] = []
        while len(supports) < shots:
            support = str(rng.choice(images_of[class_id], 1, replace=False)[0])
            if support != query:
                supports.append(support)
        drawn.append((query, supports, class_id))
    return drawn


def hsnet_episodes(fold: int, shots: int, episodes: int = HSNET_EPISODES,
                   seed: int = HSNET_SEED) -> list[tuple[str, list[str], int]]:
    """The test episodes of HSNet's PASCAL-5i protocol for one fold: (query id, [support ids], class id
    1..20) in episode order, from HSNet's fixed list (data/hsnet/pascal/val/foldF.txt); no image is read."""
    return draw_hsnet_episodes(hsnet_pairs(fold), shots, episodes, seed)


def as_episodes(drawn: Sequence[tuple[str, Sequence[str], int]], classes: Sequence[int]) -> list[Episode]:
    """1-way `Episode`s (ways index into `classes`) from (query, supports, class id) triples."""
    index = {c: i for i, c in enumerate(classes)}
    return [Episode([index[c]], [list(supports)], [query], [0]) for query, supports, c in drawn]


def support_masks(label: torch.Tensor, class_id: int, episode_classes: Sequence[int],
                  ignore_is_background: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary fg/bg masks (float) of one support label (H, W) for the way of `class_id`.

    fg = label == class_id; bg = pixels of none of the episode's classes. PANet (faithful)
    counts 255 borders as background; `ignore_is_background=False` leaves them out of both.
    """
    fg = label == class_id
    bg = label != IGNORE if not ignore_is_background else torch.ones_like(label, dtype=torch.bool)
    for c in episode_classes:  # a comparison per class: 10x faster than torch.isin for an episode's few
        bg &= label != c
    return fg.float(), bg.float()


def episode_labels(label: torch.Tensor, episode_classes: Sequence[int]) -> torch.Tensor:
    """Relabel a query's ground truth (..., H, W) to episode-local labels: 0 bg, w+1 way w, 255 kept."""
    out = (label == IGNORE).to(label.dtype).mul_(IGNORE)
    for w, c in enumerate(episode_classes):
        out.masked_fill_(label == c, w + 1)
    return out


def size_mismatch(sizes, what: str) -> str:
    """The error of images of several sizes where one batch needs one (e.g. --size none on VOC's images)."""
    shown = ", ".join(f"{h}x{w}" for h, w in sizes)
    return (f"{what} have {len(sizes)} sizes ({shown}), and an episode's images are encoded as one batch; "
            f"--size none keeps each image's own size: give a --size (the paper's: 417)")


def resize_pair(image: torch.Tensor, label: torch.Tensor, size: int | tuple[int, int] | None, pil: bool = False):
    """Resize an image (3, H, W) uint8 bilinearly with antialiasing and its label (H, W) by nearest neighbour.

    The authors resize PIL images with PIL's bilinear filter (torchvision's `Resize`); so does
    pil=True (HSNet's test too). The default is PyTorch's antialiased bilinear on uint8: PIL's
    filter in fixed point, at most one grey level from PIL's output (on VOC-size photos resized to
    417, on about 0.03% of the values of a landscape image and 2% of a portrait one; the same
    filter in float arithmetic, rounded, on 6%), the same bytes under PyTorch's plain and
    vectorised CPU kernels, and on an image laid out as it decodes (`files.read_rgb`'s
    channels_last strides) a third of PIL's time. The label keeps its dtype.
    """
    if size is None:
        return image, label
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image, label
    # nearest on uint8 directly; other integer labels through float (exact below 2**24)
    lab = label[None, None] if label.dtype == torch.uint8 else label[None, None].float()
    lab = F.interpolate(lab, size=size, mode="nearest")[0, 0].to(label.dtype)
    if pil:
        from PIL import Image

        resized = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size[::-1], Image.BILINEAR)
        return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1), lab
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return img[0], lab


class EpisodeDataset(Dataset):
    """Episodes as tensors, ready for `PANet`: one item per episode (collate with the default collate).

    source: where images come from; classes: the global class ids of the split (ascending);
    size: square side to resize to (None keeps the source's size; PANet uses 417);
    flip: random horizontal flip of every image (training); faithful: 255 borders count as
    support background (the authors' behaviour). `keep_query_size` also returns the query
    labels at their original size ("query_labels_full"), for the standard protocol (B = 1).
    `episodes` replaces the sampler with given episodes (e.g. `as_episodes(hsnet_episodes(...))`);
    `pil_resize` resizes images with PIL's bilinear filter (see `resize_pair`). `support` is what
    the supports are annotated with (`supports.SUPPORTS`): "dense" masks, "bbox" (the authors'
    boxes, from the source's instance masks) or "scribble" (our seeded strokes: the same episode
    index and seed always give the same strokes). `stats` are the (mean, std) the images are
    normalised with: the encoder's (`model.input_stats`, from encoders.ENCODERS), ImageNet's by default.
    """

    def __init__(self, source: SegmentationSource, classes: Sequence[int], n_episodes: int, n_ways: int = 1,
                 n_shots: int = 1, n_queries: int = 1, seed: int = 1234, size: int | None = None,
                 flip: bool = False, faithful: bool = True, keep_query_size: bool = False,
                 episodes: list[Episode] | None = None, pil_resize: bool = False, support: str = "dense",
                 stats: Stats = IMAGENET_STATS) -> None:
        if support not in SUPPORTS:
            raise ValueError(f"--support must be one of {', '.join(SUPPORTS)}, got {support!r}")
        if support == "bbox" and source.instances_missing():
            raise DataError(f"--support bbox: {source.instances_missing()}")
        self.source, self.classes, self.support = source, list(classes), support
        self.size, self.flip, self.faithful, self.keep_query_size = size, flip, faithful, keep_query_size
        self.pil_resize, self.stats = pil_resize, stats
        self.seed = seed
        if episodes is None:
            lists = source.class_lists(self.classes)
            needed = n_shots + -(-n_queries // n_ways)  # the most images one way can take
            short = [(c, len(ids)) for c, ids in zip(self.classes, lists) if len(ids) < needed]
            if short:
                c, n = short[0]
                raise ValueError(f"class {c} ({source.class_names[c - 1]}) has {n} images in this split, but "
                                 f"{n_shots}-shot episodes with {n_queries} queries need up to {needed} of one "
                                 f"class; use fewer --shots or --queries, or more data")
            episodes = sample_episodes(lists, n_episodes, n_ways, n_shots, n_queries, seed)
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(self, image_id: str, flip: bool, class_ids: Sequence[int]):
        """An image (uint8) and its label (uint8: sources label 0..255), resized and flipped."""
        image, label = self.source.load_for_classes(image_id, class_ids)
        image, label = resize_pair(image, label.to(torch.uint8), self.size, self.pil_resize)
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        return image, label

    def _instances(self, image_id: str, flip: bool, class_ids: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """A support's instance map, resized and flipped as its label is."""
        instances = resize_instances(self.source.load_instances(image_id, class_ids), size)
        return instances.flip(-1) if flip else instances

    def _support_masks(self, index: int, j: int, image_id: str, flip: bool, label: torch.Tensor,
                       class_id: int, class_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """fg and bg (float, `(H, W)`) of support j (way-major) of episode `index`, as `self.support` says."""
        if self.support == "dense":
            return support_masks(label, class_id, class_ids, ignore_is_background=self.faithful)
        if self.support == "bbox":
            try:
                fg, bg = box_masks(label, self._instances(image_id, flip, class_ids, label.shape), class_id)
            except ValueError as exc:
                raise DataError(f"support {image_id}: {exc} (its instance mask has no instance on the class's "
                                f"pixels); rebuild the instance masks with prepare") from None
        else:
            fg, bg = scribble_masks(label, class_id, class_ids, np.random.default_rng([self.seed, index, j]))
        return fg.float(), bg.float()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ep = self.episodes[index]
        class_ids = [self.classes[w] for w in ep.ways]
        # Flips come from a generator seeded by (seed, index): the same episode is the same tensor.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        ids = [i for shots in ep.support for i in shots] + ep.query
        flips = (torch.rand(len(ids), generator=gen) < 0.5).tolist() if self.flip else [False] * len(ids)
        loaded = [self._load(i, f, class_ids) for i, f in zip(ids, flips)]
        N, K = len(ep.support), len(ep.support[0])
        for what, part in (("supports", loaded[: N * K]), ("queries", loaded[N * K:])):  # --size none: own sizes
            sizes = {tuple(im.shape[-2:]) for im, _ in part}
            if len(sizes) > 1:
                raise ValueError(size_mismatch(sorted(sizes), f"episode {index}'s {what}"))
        s_imgs = torch.stack([im for im, _ in loaded[: N * K]]).unflatten(0, (N, K))
        fg, bg = [], []
        for j, (_, lab) in enumerate(loaded[: N * K]):
            f, b = self._support_masks(index, j, ids[j], flips[j], lab, class_ids[j // K], class_ids)
            fg.append(f)
            bg.append(b)
        q_loaded = loaded[N * K:]
        item = {
            "support_images": normalize_(s_imgs.float(), self.stats),  # (N, K, 3, H, W)
            "support_fg": torch.stack(fg).unflatten(0, (N, K)),  # (N, K, H, W)
            "support_bg": torch.stack(bg).unflatten(0, (N, K)),
            "query_images": normalize_(torch.stack([im for im, _ in q_loaded]).float(), self.stats),  # (Q, 3, H, W)
            "query_labels": episode_labels(torch.stack([lab for _, lab in q_loaded]), class_ids).long(),  # (Q, H, W)
            "class_ids": torch.tensor(class_ids),  # (N,) global ids
            "index": torch.tensor(index),
        }
        if self.keep_query_size:
            item["query_labels_full"] = torch.stack(
                [episode_labels(self.source.load_for_classes(i, class_ids)[1], class_ids) for i in ep.query])
        return item
