"""prepare_pascal, PascalVOC and box_masks on small generated VOC/SBD trees (offline, local HTTP)."""
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image

import fakedata as fd
from panet_lite import pascal
from panet_lite.pascal import DataError, PascalVOC, box_masks, prepare_pascal

VOC_SETS = Path("VOCdevkit", "VOC2012", "ImageSets", "Segmentation")


def voc_dir(base: Path) -> Path:
    return base / "VOCdevkit" / "VOC2012"


def snapshot(base: Path) -> dict[str, int]:
    """mtime_ns of every file prepare writes."""
    voc = voc_dir(base)
    files = [*voc.glob("Segmentation*Aug/*"), *voc.glob("ImageSets/Segmentation/**/*"), voc / pascal.INDEX_FILE]
    return {str(p.relative_to(base)): p.stat().st_mtime_ns for p in files if p.is_file()}


def assert_prepared(base: Path, trainaug=fd.TRAINAUG, objects: bool = True) -> None:
    """trainaug.txt, every mask pixel-exact, and the per-class lists are what the scenario implies."""
    voc = voc_dir(base)
    assert (base / VOC_SETS / "trainaug.txt").read_text().split() == trainaug
    classes_of = {}
    for image_id in trainaug + fd.VOC_VAL:
        want_class, want_object = fd.expected_masks(image_id)
        with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as image:
            assert image.mode in ("P", "L")
            np.testing.assert_array_equal(np.array(image), want_class, err_msg=image_id)
        if objects:
            with Image.open(voc / "SegmentationObjectAug" / f"{image_id}.png") as image:
                np.testing.assert_array_equal(np.array(image), want_object, err_msg=image_id)
        classes_of[image_id] = set(np.unique(want_class).tolist()) - {0, 255}
    for split, ids in (("trainaug", trainaug), ("val", fd.VOC_VAL)):
        for c in range(1, 21):
            listed = (base / VOC_SETS / split / f"class{c}.txt").read_text().split()
            assert listed == sorted(i for i in ids if c in classes_of[i]), (split, c)
    assert not list(voc.glob("Segmentation*Aug/*.tmp"))
    assert not (voc / pascal.BUILDING).exists()


@pytest.fixture
def trees(tmp_path) -> Path:
    return fd.make_pascal_trees(tmp_path / "data")


# ----------------------------------------------------------------------------- building from VOC + SBD

@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_fake_trees_are_read_by_torchvision(trees):  # torchvision's __getitem__ leaves files open
    voc = torchvision.datasets.VOCSegmentation(trees, year="2012", image_set="trainval")
    image, target = voc[0]
    assert target.mode == "P" and image.size == target.size
    sbd = torchvision.datasets.SBDataset(trees / "SBD", image_set="train", mode="segmentation")
    assert len(sbd) == len(fd.SBD_TRAIN)
    _, target = sbd[2]
    np.testing.assert_array_equal(np.array(target), fd.scene(fd.SBD_TRAIN[2]).class_mask(borders=False))


def test_prepare_builds_trainaug_masks_and_lists(trees):
    report = prepare_pascal(trees, download=False, progress=False)
    assert report == {"route": "VOC+SBD", "trainaug": len(fd.TRAINAUG), "val": len(fd.VOC_VAL),
                      "masks_written": 2 * 9, "object_masks": 9, "downloaded": []}
    assert "2007_000033" not in fd.TRAINAUG  # VOC val, though SBD lists it as train
    assert_prepared(trees)


def test_second_run_rewrites_and_rereads_nothing(trees, monkeypatch):
    prepare_pascal(trees, download=False, progress=False)
    before = snapshot(trees)

    def no_reading(*args, **kwargs):
        raise AssertionError("a finished mask was read again")

    monkeypatch.setattr(pascal, "read_png_mask", no_reading)
    monkeypatch.setattr(pascal, "read_sbd_mat", no_reading)
    report = prepare_pascal(str(trees), download=False, progress=False)
    assert report["masks_written"] == 0
    assert snapshot(trees) == before


def test_changed_mask_is_checked_again(trees):
    prepare_pascal(trees, download=False, progress=False)
    bad = voc_dir(trees) / "SegmentationClassAug" / "2008_000002.png"
    fd.save_palette_png(np.full((4, 4), 7, np.uint8), bad)
    with pytest.raises(DataError, match=str(bad)):
        prepare_pascal(trees, download=False, progress=False)


def test_interrupted_build_is_finished(trees, monkeypatch):
    written = []
    real_write = pascal.write_png_mask

    def dying_write(mask, path):
        if len(written) == 5:
            raise RuntimeError("killed")
        written.append(path)
        real_write(mask, path)

    monkeypatch.setattr(pascal, "write_png_mask", dying_write)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_pascal(trees, download=False, progress=False)
    assert (voc_dir(trees) / pascal.BUILDING).exists()
    stale = voc_dir(trees) / "SegmentationClassAug" / "2008_000003.png.123-4.tmp"
    stale.write_bytes(b"half a png")
    monkeypatch.setattr(pascal, "write_png_mask", real_write)
    report = prepare_pascal(trees, download=False, progress=False)
    assert report["masks_written"] == 18 - 5
    assert_prepared(trees)


def test_root_may_be_vocdevkit_or_voc2012(trees):
    prepare_pascal(trees / "VOCdevkit" / "VOC2012", download=False, progress=False)
    assert_prepared(trees)
    assert PascalVOC(str(trees / "VOCdevkit")).ids() == fd.TRAINAUG


# ----------------------------------------------------------------------------- the shared SegmentationClassAug

@pytest.mark.parametrize("with_list", [False, True])
def test_existing_segmentation_class_aug_needs_no_sbd(tmp_path, trees, with_list):
    prepare_pascal(trees, download=False, progress=False)
    shared = fd.make_pascal_trees(tmp_path / "shared", sbd=False)
    shutil.copytree(voc_dir(trees) / "SegmentationClassAug", voc_dir(shared) / "SegmentationClassAug")
    if with_list:
        shutil.copy(trees / VOC_SETS / "trainaug.txt", shared / VOC_SETS / "trainaug.txt")
    report = prepare_pascal(shared, download=False, progress=False)
    assert report["route"] == "SegmentationClassAug" and report["masks_written"] == 0
    assert report["object_masks"] == 0
    assert_prepared(shared, objects=False)
    with pytest.raises(DataError, match="SBD"):
        PascalVOC(shared).load_instances(fd.TRAINAUG[0])


def test_incomplete_segmentation_class_aug_asks_for_sbd(tmp_path, trees):
    prepare_pascal(trees, download=False, progress=False)
    shared = fd.make_pascal_trees(tmp_path / "shared", sbd=False)
    shutil.copytree(voc_dir(trees) / "SegmentationClassAug", voc_dir(shared) / "SegmentationClassAug")
    (voc_dir(shared) / "SegmentationClassAug" / f"{fd.VOC_VAL[1]}.png").unlink()
    with pytest.raises(DataError, match="SBD not found"):
        prepare_pascal(shared, download=False, progress=False)


# ----------------------------------------------------------------------------- bad data

def _voc(base, folder, image_id, ext):
    return voc_dir(base) / folder / f"{image_id}.{ext}"


def _missing_image(base):
    path = _voc(base, "JPEGImages", "2008_000002", "jpg")
    path.unlink()
    return path


def _unreadable_png(base):
    path = _voc(base, "SegmentationClass", "2007_000032", "png")
    path.write_bytes(b"not a png")
    return path


def _unreadable_mat(base):
    path = base / "SBD" / "cls" / "2008_000003.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    return path


def _wrong_size(base):
    path = _voc(base, "SegmentationClass", "2007_000042", "png")
    fd.save_palette_png(np.zeros((5, 7), np.uint8), path)
    return path


def _bad_png_labels(base):
    path = _voc(base, "SegmentationClass", "2007_000061", "png")
    mask = fd.scene("2007_000061").class_mask(borders=True)
    mask[0, 0] = 21
    fd.save_palette_png(mask, path)
    return path


def _bad_mat_labels(base):
    path = base / "SBD" / "cls" / "2008_000008.mat"
    mask = fd.scene("2008_000008").class_mask(borders=False)
    mask[1, 1] = 100
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask}})
    return path


def _rgb_mask(base):
    path = _voc(base, "SegmentationClass", "2007_000039", "png")
    mask = fd.scene("2007_000039").class_mask(borders=True)
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(path)
    return path


def _wrong_struct(base):
    path = base / "SBD" / "inst" / "2008_000002.mat"
    scipy.io.savemat(path, {"GTcls": {"Segmentation": fd.scene("2008_000002").instances}})
    return path


@pytest.mark.parametrize("damage", [_missing_image, _unreadable_png, _unreadable_mat, _wrong_size,
                                    _bad_png_labels, _bad_mat_labels, _rgb_mask, _wrong_struct])
def test_bad_data_names_the_file(trees, damage):
    path = damage(trees)
    with pytest.raises(DataError) as error:
        prepare_pascal(trees, download=False, progress=False)
    assert str(path) in str(error.value)


def test_missing_voc_without_download(tmp_path):
    with pytest.raises(DataError, match="python -m panet_lite prepare pascal --root"):
        prepare_pascal(tmp_path, download=False, progress=False)


# ----------------------------------------------------------------------------- downloads (local HTTP server)

@pytest.fixture
def archives(tmp_path) -> Path:
    """The scenario packed as the real VOC tar and SBD tgz in tmp_path/www."""
    source = fd.make_pascal_trees(tmp_path / "source")
    fd.pack_voc(source, tmp_path / "www")
    fd.pack_sbd(source / "SBD", tmp_path / "www")
    return tmp_path / "www"


def _download_args(server, www, **overrides):
    args = dict(voc_url=f"{server.url}/{fd.VOC_ARCHIVE}", voc_md5=fd.md5(www / fd.VOC_ARCHIVE),
                sbd_url=f"{server.url}/{fd.SBD_ARCHIVE}", sbd_md5=fd.md5(www / fd.SBD_ARCHIVE), progress=False)
    args.update(overrides)
    return args


def _torchvision_tables():
    return dict(torchvision.datasets.voc.DATASET_YEAR_DICT["2012"]), (
        torchvision.datasets.SBDataset.url, torchvision.datasets.SBDataset.md5)


def test_download_end_to_end(tmp_path, archives):
    tables = _torchvision_tables()
    with fd.serve_directory(archives) as server:
        report = prepare_pascal(tmp_path / "dest", **_download_args(server, archives))
        assert report["downloaded"] == ["VOC2012", "SBD"] and report["route"] == "VOC+SBD"
        assert_prepared(tmp_path / "dest")
        assert _torchvision_tables() == tables
        asked = len(server.requests)
        again = prepare_pascal(tmp_path / "dest", **_download_args(server, archives))
        assert again["downloaded"] == [] and again["masks_written"] == 0
        assert len(server.requests) == asked


@pytest.mark.parametrize("which", ["voc_md5", "sbd_md5"])
def test_checksum_mismatch_is_a_clear_error(tmp_path, archives, which):
    tables = _torchvision_tables()
    with fd.serve_directory(archives) as server:
        with pytest.raises(DataError, match=f"checksum mismatch .*expected md5 {'0' * 32}"):
            prepare_pascal(tmp_path / "dest", **_download_args(server, archives, **{which: "0" * 32}))
    assert _torchvision_tables() == tables


def test_unreachable_server_is_a_clear_error(tmp_path, archives):
    with fd.serve_directory(archives) as server:
        url = server.url
    with pytest.raises(DataError, match="could not download"):
        prepare_pascal(tmp_path / "dest", voc_url=f"{url}/{fd.VOC_ARCHIVE}", progress=False)


def test_truncated_download_is_downloaded_again(tmp_path, archives):
    dest = tmp_path / "dest"
    dest.mkdir()
    data = (archives / fd.VOC_ARCHIVE).read_bytes()
    (dest / fd.VOC_ARCHIVE).write_bytes(data[: len(data) // 2])  # killed mid-download
    with fd.serve_directory(archives) as server:
        report = prepare_pascal(dest, **_download_args(server, archives))
        assert f"/{fd.VOC_ARCHIVE}" in server.requests
    assert report["downloaded"] == ["VOC2012", "SBD"]
    assert_prepared(dest)


def test_interrupted_extractions_are_finished(tmp_path, archives):
    """VOC: tar half extracted (archive complete); SBD: torchvision killed between its moves."""
    dest = tmp_path / "dest"
    sbd = dest / "SBD"
    dest.mkdir()
    shutil.copy(archives / fd.VOC_ARCHIVE, dest / fd.VOC_ARCHIVE)
    with tarfile.open(archives / fd.VOC_ARCHIVE) as tar:
        members = tar.getmembers()
        tar.extractall(dest, members=members[: len(members) // 2])
    sbd.mkdir()
    shutil.copy(archives / fd.SBD_ARCHIVE, sbd / fd.SBD_ARCHIVE)
    with tarfile.open(sbd / fd.SBD_ARCHIVE) as tar:
        tar.extractall(sbd)
    shutil.move(str(sbd / "benchmark_RELEASE" / "dataset" / "cls"), str(sbd / "cls"))
    with fd.serve_directory(archives) as server:
        report = prepare_pascal(dest, **_download_args(server, archives))
        assert server.requests == []  # both archives were complete and verified
    assert report["downloaded"] == ["VOC2012"]  # re-extracted
    assert_prepared(dest)


# ----------------------------------------------------------------------------- the source

def test_pascal_voc_source(trees):
    prepare_pascal(trees, download=False, progress=False)
    train, val = PascalVOC(trees), PascalVOC(str(trees), split="val")
    assert train.ids() == fd.TRAINAUG and val.ids() == fd.VOC_VAL
    assert train.num_classes == 20 and len(train.class_names) == 20 and train.class_names[0] == "aeroplane"
    image, label = train.load("2008_000002")
    want_class, want_object = fd.expected_masks("2008_000002")
    assert image.dtype == torch.uint8 and image.shape == (3, *want_class.shape)
    assert label.dtype == torch.int64 and torch.equal(label, torch.from_numpy(want_class.astype(np.int64)))
    instances = train.load_instances("2008_000002")
    assert instances.dtype == torch.int64 and torch.equal(instances, torch.from_numpy(want_object.astype(np.int64)))
    for c, members in zip(range(1, 21), train.class_lists(range(1, 21))):
        assert members == [i for i in train.ids() if c in train.classes_in(i)]
    # class_lists from the prepared files equals the base class's scan of the masks
    assert val.class_lists([3, 17]) == super(PascalVOC, val).class_lists([3, 17])


def test_unprepared_source_says_what_to_run(trees):
    with pytest.raises(DataError, match="python -m panet_lite prepare pascal --root"):
        PascalVOC(trees)


def test_box_masks_hand_made():
    label = torch.zeros(8, 10, dtype=torch.int64)
    instances = torch.zeros(8, 10, dtype=torch.int64)
    label[1:4, 1:5], instances[1:4, 1:5] = 3, 1  # class 3, instance 1: 12 px
    label[5:7, 6:9], instances[5:7, 6:9] = 3, 2  # class 3, instance 2: 6 px
    label[6:8, 0:3], instances[6:8, 0:3] = 5, 3  # class 5: must not matter
    label[0, 1:5], instances[0, 1:5] = 255, 255  # a border above instance 1
    label[2, 2] = 255  # a border pixel inside instance 1: the box still covers it
    fg, bg = box_masks(label, instances, 3)
    want_fg = torch.zeros(8, 10, dtype=torch.bool)
    want_fg[1:4, 1:5] = True
    want_bg = torch.ones(8, 10, dtype=torch.bool)
    want_bg[1:4, 1:5] = False
    want_bg[5:7, 6:9] = False
    assert torch.equal(fg, want_fg) and torch.equal(bg, want_bg)
    fg5, bg5 = box_masks(label, instances, 5)
    assert fg5.sum() == 6 and torch.equal(bg5, ~fg5)
    with pytest.raises(ValueError):
        box_masks(label, instances, 7)


def test_box_masks_on_prepared_instances(trees):
    prepare_pascal(trees, download=False, progress=False)
    source = PascalVOC(trees, split="val")
    image_id = "2007_000061"  # two instances of class 19 next to one of class 17
    _, label = source.load(image_id)
    fg, bg = box_masks(label, source.load_instances(image_id), 19)
    assert fg.any() and not (fg & bg).any()
    assert (label[fg] == 19).any() and not (label[bg] == 19).any()
