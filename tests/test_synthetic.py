"""The embedded dataset: deterministic, PASCAL-5i shaped, VOC-like borders, exportable as a VOC tree."""
import torch

from panet_lite.data import IGNORE
from panet_lite.synthetic import N_CLASSES, SyntheticFewShot, class_texture, render, write_voc_tree


def test_render_is_deterministic_and_well_formed():
    a_img, a_lab = render(7, size=64, seed=0)
    b_img, b_lab = render(7, size=64, seed=0)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert a_img.shape == (3, 64, 64) and a_img.dtype == torch.uint8
    assert a_lab.shape == (64, 64) and a_lab.dtype == torch.long
    assert not torch.equal(render(8)[0], a_img)


def test_labels_classes_and_borders():
    seen, touching, borders = set(), 0, 0
    for i in range(200):
        _, lab = render(i, size=64)
        values = set(lab.unique().tolist())
        assert values <= set(range(N_CLASSES + 1)) | {IGNORE}
        assert 0 in values and IGNORE in values  # background and VOC-like borders in every image
        seen |= values
        # 255 pixels sit on object outlines: nearly all touch a remaining object pixel (those that
        # don't are on object parts thinner than 3 pixels, which are all outline)
        border = (lab == IGNORE).float()[None, None]
        obj = ((lab > 0) & (lab != IGNORE)).float()[None, None]
        near = torch.nn.functional.max_pool2d(obj, 3, 1, 1)
        touching += int((near[border > 0] > 0).sum())
        borders += int(border.sum())
    assert seen >= set(range(1, N_CLASSES + 1))
    assert touching / borders > 0.95


def test_latin_square_every_held_out_class_is_a_new_combination_of_seen_attributes():
    for fold in range(4):
        test = range(5 * fold + 1, 5 * fold + 6)
        train = [c for c in range(1, 21) if c not in test]
        train_or = {class_texture(c)[0] for c in train}
        train_families = {class_texture(c)[1] for c in train}
        for c in test:
            o, p = class_texture(c)
            assert o in train_or and p in train_families
            assert (o, p) not in {class_texture(t) for t in train}
    assert len({class_texture(c) for c in range(1, 21)}) == 20


def test_border_hand_computed():
    from panet_lite.synthetic import _border

    label = torch.zeros(5, 5, dtype=torch.long)
    label[1:4, 1:4] = 3
    expected = label.clone().bool()
    expected[2, 2] = False  # the one interior pixel of the 3x3 square
    assert torch.equal(_border(label), expected)


def test_source_and_class_lists():
    src = SyntheticFewShot("val", 120, size=48)
    assert src.ids()[:2] == ["val-000000", "val-000001"]
    lists = src.class_lists([3, 1])
    assert all(l == sorted(l) for l in lists)
    assert all(3 in src.classes_in(i) for i in lists[0])
    img, lab = src.load("val-000005")
    assert img.shape == (3, 48, 48)
    assert SyntheticFewShot("trainaug", 10).load("trainaug-000001")[1].shape == (96, 96)


def test_voc_export_reads_back_through_the_pascal_loader(tmp_path):
    from panet_lite.pascal import PascalVOC

    write_voc_tree(tmp_path, n_train=30, n_val=10, size=48)
    voc = PascalVOC(tmp_path, "trainaug")
    src = SyntheticFewShot("trainaug", 30, size=48)
    assert voc.ids() == src.ids()
    assert voc.class_lists([1, 2, 3]) == src.class_lists([1, 2, 3])
    img, lab = voc.load("trainaug-000004")
    ref_img, ref_lab = src.load("trainaug-000004")
    assert torch.equal(lab, ref_lab)  # PNG masks are lossless
    assert (img.float() - ref_img.float()).abs().mean() < 8  # JPEG is not
