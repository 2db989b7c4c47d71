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
    from panet_lite import PANet
    from panet_lite.data import SegmentationSource

    class TwoSizes(SegmentationSource):  # VOC-like: every image has its own size
        num_classes, class_names = 1, ("thing",)

        def ids(self):
            return ["a", "b", "c", "d"]

        def load(self, image_id):
            h = {"a": 9, "b": 10, "c": 9, "d": 10}[image_id]
            label = torch.zeros(h, 9, dtype=torch.int64)
            label[1:5, 1:5] = 1
            return torch.zeros(3, h, 9, dtype=torch.uint8), label

        def classes_in(self, image_id):
            return {1}

    def size_of(image_id):
        return tuple(TwoSizes().load(image_id)[0].shape[-2:])

    fix = "--size none keeps each image's own size: give a --size \\(the paper's: 417\\)"
    two_shots = EpisodeDataset(TwoSizes(), [1], 8, n_ways=1, n_shots=2, n_queries=1, seed=0, size=None)
    index = next(i for i, ep in enumerate(two_shots.episodes) if len({size_of(s) for s in ep.support[0]}) == 2)
    with pytest.raises(ValueError, match=f"episode {index}'s supports have 2 sizes \\(9x9, 10x9\\).*{fix}"):
        two_shots[index]
    one_shot = EpisodeDataset(TwoSizes(), [1], 8, n_ways=1, n_shots=1, n_queries=1, seed=0, size=None)
    index = next(i for i, ep in enumerate(one_shot.episodes) if size_of(ep.support[0][0]) != size_of(ep.query[0]))
    item = one_shot[index]  # one image per stack: the item is built; encoding supports and queries together is not
    with pytest.raises(ValueError, match=f"this episode's supports and queries have 2 sizes.*{fix}"):
        PANet("small", pretrained=False)(item["support_images"][None], item["support_fg"][None],
                                         item["support_bg"][None], item["query_images"][None])


def test_episodes_are_the_straightforward_loader_s_tensors(tmp_path):
    """EpisodeDataset's fast path (images decoded into their channels_last layout and resized as uint8,
    labels resized and masked as uint8, normalised in place, masks by comparisons) gives, to the last
    bit, the tensors of the plain loader written here: PIL decode into planar int64/uint8 tensors,
    antialiased bilinear to uint8 and nearest through float, flip, masks with torch.isin, relabel
    with boolean indexing, normalise. Upsampled (57 px) and downsampled (31 px) episodes."""
    import torch.nn.functional as F
    from PIL import Image

    from panet_lite.data import IGNORE, normalize
    from panet_lite.pascal import PascalVOC
    from panet_lite.synthetic import write_voc_tree

    voc = write_voc_tree(tmp_path, n_train=60, n_val=4, size=48)
    source = PascalVOC(tmp_path, "trainaug")
    present = [c for c, ids in zip(range(1, 21), source.class_lists(range(1, 21))) if len(ids) >= 3]

    def plain(image_id, flip, size):
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as file:
            image = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1).contiguous()
        with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as file:
            label = torch.from_numpy(np.array(file)).long()
        img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        lab = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return (img.flip(-1), lab.flip(-1)) if flip else (img, lab)

    def relabel(label, classes):
        out = torch.zeros_like(label)
        out[label == IGNORE] = IGNORE
        for w, c in enumerate(classes):
            out[label == c] = w + 1
        return out

    for faithful, side in ((True, 57), (False, 57), (True, 31)):
        data = EpisodeDataset(source, present, 3, n_ways=2, n_shots=2, n_queries=2, seed=3, size=side,
                              flip=True, faithful=faithful)
        for index, ep in enumerate(data.episodes):
            item = data[index]
            classes = item["class_ids"].tolist()
            gen = torch.Generator().manual_seed(data.seed * 1_000_003 + index)
            ids = [i for shots in ep.support for i in shots] + ep.query
            flips = (torch.rand(len(ids), generator=gen) < 0.5).tolist()
            loaded = [plain(i, f, (side, side)) for i, f in zip(ids, flips)]
            for j, (image, label) in enumerate(loaded[:4]):
                w, k = divmod(j, 2)
                bg = ~torch.isin(label, torch.tensor(classes))
                bg &= True if faithful else label != IGNORE
                assert torch.equal(item["support_images"][w, k], normalize(image))
                assert torch.equal(item["support_fg"][w, k], (label == classes[w]).float())
                assert torch.equal(item["support_bg"][w, k], bg.float())
            for q, (image, label) in enumerate(loaded[4:]):
                assert torch.equal(item["query_images"][q], normalize(image))
                assert torch.equal(item["query_labels"][q], relabel(label, classes))
            assert item["query_labels"].dtype == torch.int64


RESIZE_DIGEST = """
import hashlib, torch
from panet_lite.episodes import resize_pair
g = torch.Generator().manual_seed(0)
digest = hashlib.sha256()
for h, w, size in ((375, 500, 417), (333, 500, (400, 400)), (60, 90, 31)):
    image = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).permute(2, 0, 1)
    image = torch.nn.functional.avg_pool2d(image[None].float(), 3, 1, 1)[0].round().to(torch.uint8)  # smooth
    digest.update(resize_pair(image, torch.zeros(h, w, dtype=torch.uint8), size)[0].contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def test_the_default_resize_is_pils_filter_and_the_same_bytes_on_every_cpu_kernel():
    """The default image resize (PyTorch's antialiased bilinear on uint8) is PIL's bilinear filter,
    which the authors' torchvision `Resize` applies, in fixed point: never more than one grey level
    apart, and apart on fewer values than the same filter in float arithmetic rounded (the loader's
    earlier way), upsampling, downsampling and both at once; and its integer arithmetic gives the
    same bytes under PyTorch's plain CPU kernels as under the vectorised ones this machine picks."""
    import os
    import subprocess
    import sys

    import torch.nn.functional as F
    from PIL import Image

    from panet_lite.episodes import resize_pair

    g = torch.Generator().manual_seed(1)
    for h, w, size in ((375, 500, 417), (500, 333, 417), (48, 48, 57), (90, 120, 31)):
        noise = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
        image = F.avg_pool2d(noise, 5, 1, 2)[0].round().to(torch.uint8)  # (3, h, w), some smoothness
        ours, _ = resize_pair(image, torch.zeros(h, w, dtype=torch.uint8), size)
        pil = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size), Image.BILINEAR))
        pil = torch.from_numpy(pil.copy()).permute(2, 0, 1).int()
        rounded = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
        rounded = rounded.round().clamp(0, 255).int()
        assert (ours.int() - pil).abs().max() <= 1
        assert (ours.int() != pil).sum() <= (rounded != pil).sum(), (h, w, size)
    run = lambda env: subprocess.run([sys.executable, "-c", RESIZE_DIGEST], capture_output=True, text=True,
                                     check=True, env={**os.environ, **env}).stdout
    assert run({"ATEN_CPU_CAPABILITY": "default"}) == run({})


