"""The sampler reproduces the authors' draws exactly; episodes become correct tensors."""
import random

import numpy as np
import pytest
import torch

from panet_lite.episodes import EpisodeDataset, episode_labels, sample_episodes, support_masks
from panet_lite.synthetic import SyntheticFewShot


def authors_sampler(class_lists, n_episodes, n_ways, n_shots, n_queries, seed):
    """The PANet repository's draw sequence, rewritten from its structure: global `random`,
    np.bincount for the queries per way, a nested comprehension for the paired indices, and
    fewShot's query order (cumsum[i+1] - j - 1)."""
    random.seed(seed)
    cnt_query = np.bincount(random.choices(population=range(n_ways), k=n_queries), minlength=n_ways)
    n_elements = [n_shots + x for x in cnt_query]
    n_data = [len(lst) for lst in class_lists]
    indices = [[(dataset_idx, data_idx)
                for i, dataset_idx in enumerate(random.sample(range(len(class_lists)), k=len(n_elements)))
                for data_idx in random.sample(range(n_data[dataset_idx]), k=n_elements[i])]
               for _ in range(n_episodes)]
    out = []
    for paired in indices:
        cumsum = np.cumsum([0] + n_elements)
        ways = [paired[cumsum[i]][0] for i in range(n_ways)]
        support = [[class_lists[paired[cumsum[i] + j][0]][paired[cumsum[i] + j][1]] for j in range(n_shots)]
                   for i in range(n_ways)]
        query = [class_lists[paired[cumsum[i + 1] - j - 1][0]][paired[cumsum[i + 1] - j - 1][1]]
                 for i in range(n_ways) for j in range(cnt_query[i])]
        out.append((ways, support, query))
    return out


@pytest.mark.parametrize("n_ways,n_shots,n_queries,seed", [(1, 1, 1, 1234), (1, 5, 1, 1235), (2, 1, 3, 7),
                                                          (5, 5, 4, 1238)])
def test_sampler_is_draw_for_draw_the_authors(n_ways, n_shots, n_queries, seed):
    rng = random.Random(0)
    class_lists = [[f"c{c}_{i}" for i in range(rng.randint(12, 40))] for c in range(15)]
    ours = sample_episodes(class_lists, 200, n_ways, n_shots, n_queries, seed)
    ref = authors_sampler(class_lists, 200, n_ways, n_shots, n_queries, seed)
    assert [(e.ways, e.support, e.query) for e in ours] == ref
    for e in ours:
        assert len(set(e.ways)) == n_ways
        for w, shots in enumerate(e.support):
            qs = [q for q, qw in zip(e.query, e.query_ways) if qw == w]
            assert len(set(shots + qs)) == len(shots) + len(qs)  # distinct images within a way
            assert all(i.startswith(f"c{e.ways[w]}_") for i in shots + qs)


def test_sampler_errors_are_clear():
    with pytest.raises(ValueError, match="need at least 3 classes"):
        sample_episodes([["a", "b"], ["c", "d"]], 1, 3, 1)
    with pytest.raises(ValueError, match="has 2 images"):
        sample_episodes([["a", "b"], ["c", "d", "e"]], 1, 1, 2)


def test_support_masks_and_episode_labels_hand_computed():
    label = torch.tensor([[0, 3, 3, 255], [7, 7, 3, 0]])
    fg, bg = support_masks(label, 3, [3, 7])
    assert fg.tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]
    assert bg.tolist() == [[1, 0, 0, 1], [0, 0, 0, 1]]  # 255 is background (faithful quirk)
    _, bg_corrected = support_masks(label, 3, [3, 7], ignore_is_background=False)
    assert bg_corrected.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    label2 = torch.tensor([[0, 3, 5, 255], [7, 7, 3, 0]])  # 5 is not in the episode -> background
    assert episode_labels(label2, [7, 3]).tolist() == [[0, 2, 0, 255], [1, 1, 2, 0]]


def test_episode_dataset_tensors():
    source = SyntheticFewShot("trainaug", 300, size=48)
    ds = EpisodeDataset(source, [1, 2, 3, 4, 5], n_episodes=5, n_ways=2, n_shots=3, n_queries=2, seed=3)
    item = ds[0]
    assert item["support_images"].shape == (2, 3, 3, 48, 48)
    assert item["support_fg"].shape == item["support_bg"].shape == (2, 3, 48, 48)
    assert item["query_images"].shape == (2, 3, 48, 48) and item["query_labels"].shape == (2, 48, 48)
    ep = ds.episodes[0]
    assert item["class_ids"].tolist() == [[1, 2, 3, 4, 5][w] for w in ep.ways]
    for w in range(2):  # every support has foreground of its own way
        assert (item["support_fg"][w].flatten(1).sum(1) > 0).all()
    assert set(item["query_labels"].unique().tolist()) <= {0, 1, 2, 255}
    assert (item["support_fg"] * item["support_bg"]).sum() == 0
    torch.testing.assert_close(ds[0]["support_images"], item["support_images"])  # deterministic


def test_flip_is_per_image_and_reproducible():
    source = SyntheticFewShot("trainaug", 300, size=48)
    a = EpisodeDataset(source, [1, 2, 3], 20, flip=True, seed=5)
    b = EpisodeDataset(source, [1, 2, 3], 20, flip=False, seed=5)
    flipped = 0
    for i in range(20):
        x, y = a[i]["query_images"], b[i]["query_images"]
        assert torch.equal(x, y) or torch.equal(x, y.flip(-1))
        flipped += not torch.equal(x, y)
        torch.testing.assert_close(a[i]["query_images"], x)
    assert 3 <= flipped <= 17


def test_images_of_several_sizes_without_a_size_are_one_clear_error():
    from panet_lite.data import SegmentationSource

    class TwoSizes(SegmentationSource):  # VOC-like: every image has its own size
        num_classes, class_names = 1, ("thing",)

        def ids(self):
            return ["a", "b", "c"]

        def load(self, image_id):
            h = {"a": 6, "b": 7, "c": 6}[image_id]
            label = torch.zeros(h, 5, dtype=torch.int64)
            label[1:3, 1:3] = 1
            return torch.zeros(3, h, 5, dtype=torch.uint8), label

        def classes_in(self, image_id):
            return {1}

    data = EpisodeDataset(TwoSizes(), [1], 4, n_ways=1, n_shots=1, n_queries=1, seed=0, size=None)
    sizes = [{tuple(data.source.load(i)[0].shape[-2:]) for i in (*ep.support[0], *ep.query)} for ep in data.episodes]
    mixed = next(i for i, s in enumerate(sizes) if len(s) > 1)
    with pytest.raises(ValueError, match=f"--size none keeps each image's own size, and episode {mixed} has images "
                                         f"of 2 sizes \\(6x5, 7x5\\).*give a --size"):
        data[mixed]
    for i in (i for i, s in enumerate(sizes) if len(s) == 1):  # one size: the episode keeps it
        assert data[i]["query_images"].shape[-2:] == next(iter(sizes[i]))
