"""panet_lite.segment: PANet on images and masks given as arrays or PIL images, of any size."""
import numpy as np
import pytest
import torch
from PIL import Image

from panet_lite import segment
from panet_lite.episodes import EpisodeDataset
from panet_lite.evaluate import predict
from panet_lite.model import PANet
from panet_lite.synthetic import SyntheticFewShot


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PANet("small").eval()


@pytest.fixture(scope="module")
def episode():
    """A 1-way 1-shot episode of the embedded dataset, as the test pipeline builds it (no resizing)."""
    source = SyntheticFewShot("val", n_images=200, size=64)
    data = EpisodeDataset(source, [1, 2, 3, 4, 5], 3, 1, 1, seed=7, size=None, faithful=True)
    ep = data.episodes[2]
    c = data.classes[ep.ways[0]]
    s_img, s_lab = source.load_for_classes(ep.support[0][0], [c])
    q_img, _ = source.load_for_classes(ep.query[0], [c])
    batch = {k: v[None] for k, v in data[2].items()}
    return batch, s_img.permute(1, 2, 0).numpy(), (s_lab == c).numpy().astype(np.uint8), q_img.permute(1, 2, 0).numpy()


def test_segment_equals_the_test_pipeline_on_an_episode(model, episode):
    batch, support, mask, query = episode
    want = predict(model, batch, torch.device("cpu"), size=query.shape[:2])[0, 0]
    (got,) = segment(model, [[support]], [[mask]], [query], size=None)
    assert got.dtype == torch.int64 and torch.equal(got, want)
    # PIL images and bool masks give the same answer.
    (again,) = segment(model, [[Image.fromarray(support)]], [[mask.astype(bool)]], [Image.fromarray(query)], size=None)
    assert torch.equal(again, want)


def test_each_query_comes_back_at_its_own_size(model):
    rng = np.random.default_rng(0)
    image = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    masks = [np.zeros((50, 70), np.uint8), np.zeros((33, 41), np.uint8)]
    masks[0][10:30, 20:50] = 1
    masks[1][5:20, 5:30] = 1
    out = segment(model, [[image(50, 70)], [image(33, 41)]], [[masks[0]], [masks[1]]],
                  [image(45, 60), image(80, 20)], size=48)
    assert [tuple(o.shape) for o in out] == [(45, 60), (80, 20)]
    assert all(set(o.unique().tolist()) <= {0, 1, 2} for o in out)  # 2-way: background, way 1, way 2


@pytest.mark.parametrize("case, message", [
    ("shots differ", "every way needs the same number"),
    ("mask size", "must be an H x W mask of its image's size 20 x 30"),
    ("mask values", "must hold 0 (background) and 1 (the object) only"),
    ("empty mask", "is empty"),
    ("grey image", "must be an H x W x 3 uint8 array or a PIL image"),
    ("no query", "at least one query"),
])
def test_bad_input_says_what_is_wrong(model, case, message):
    img = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    args = {
        "shots differ": ([[img], [img, img]], [[mask], [mask, mask]], [img]),
        "mask size": ([[img]], [[mask[:10]]], [img]),
        "mask values": ([[img]], [[mask * 255]], [img]),
        "empty mask": ([[img]], [[mask * 0]], [img]),
        "grey image": ([[img[..., 0]]], [[mask]], [img]),
        "no query": ([[img]], [[mask]], []),
    }[case]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segment(model, *args, size=32)
