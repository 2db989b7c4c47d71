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
from panet_lite.pascal import DataError, PascalVOC, check_pascal_counts, prepare_pascal
from panet_lite.supports import box_masks

VOC_SETS = Path("VOCdevkit", "VOC2012", "ImageSets", "Segmentation")
FAKE_COUNTS = fd.reference_counts()  # what a correct preparation of the small scenario holds


def prepare(base, **kwargs) -> dict:
    """prepare_pascal offline and quiet, its counts checked against the scenario's (not the real dataset's)."""
    return prepare_pascal(base, **{"download": False, "progress": False, "reference": FAKE_COUNTS, **kwargs})


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
    report = prepare(trees)
    assert report == {"route": "VOC+SBD", "trainaug": len(fd.TRAINAUG), "val": len(fd.VOC_VAL),
                      "masks_written": 2 * 9, "object_masks": 9, "downloaded": [], "counts_checked": True}
    assert "2007_000033" not in fd.TRAINAUG  # VOC val, though SBD lists it as train
    assert_prepared(trees)


def test_second_run_rewrites_and_rereads_nothing(trees, monkeypatch):
    prepare(trees)
    before = snapshot(trees)

    def no_reading(*args, **kwargs):
        raise AssertionError("a finished mask was read again")

    monkeypatch.setattr(pascal, "read_png_mask", no_reading)
    monkeypatch.setattr(pascal, "read_sbd_mat", no_reading)
    report = prepare(str(trees))
    assert report["masks_written"] == 0
    assert snapshot(trees) == before


def test_changed_mask_is_checked_again(trees):
    prepare(trees)
    bad = voc_dir(trees) / "SegmentationClassAug" / "2008_000002.png"
    fd.save_palette_png(np.full((4, 4), 7, np.uint8), bad)
    with pytest.raises(DataError, match=str(bad)):
        prepare(trees)


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
        prepare(trees)
    assert (voc_dir(trees) / pascal.BUILDING).exists()
    stale = voc_dir(trees) / "SegmentationClassAug" / "2008_000003.png.123-4.tmp"
    stale.write_bytes(b"half a png")
    monkeypatch.setattr(pascal, "write_png_mask", real_write)
    report = prepare(trees)
    assert report["masks_written"] == 18 - 5
    assert_prepared(trees)


def test_root_may_be_vocdevkit_or_voc2012(trees):
    prepare(trees / "VOCdevkit" / "VOC2012")
    assert_prepared(trees)
    assert PascalVOC(str(trees / "VOCdevkit")).ids() == fd.TRAINAUG


# ----------------------------------------------------------------------------- the shared SegmentationClassAug

@pytest.mark.parametrize("with_list", [False, True])
def test_existing_segmentation_class_aug_needs_no_sbd(tmp_path, trees, with_list):
    prepare(trees)
    shared = fd.make_pascal_trees(tmp_path / "shared", sbd=False)
    shutil.copytree(voc_dir(trees) / "SegmentationClassAug", voc_dir(shared) / "SegmentationClassAug")
    if with_list:
        shutil.copy(trees / VOC_SETS / "trainaug.txt", shared / VOC_SETS / "trainaug.txt")
    report = prepare(shared)
    assert report["route"] == "SegmentationClassAug" and report["masks_written"] == 0
    assert report["object_masks"] == 0
    assert_prepared(shared, objects=False)
    with pytest.raises(DataError, match="SBD"):
        PascalVOC(shared).load_instances(fd.TRAINAUG[0])


def test_incomplete_segmentation_class_aug_asks_for_sbd(tmp_path, trees):
    prepare(trees)
    shared = fd.make_pascal_trees(tmp_path / "shared", sbd=False)
    shutil.copytree(voc_dir(trees) / "SegmentationClassAug", voc_dir(shared) / "SegmentationClassAug")
    (voc_dir(shared) / "SegmentationClassAug" / f"{fd.VOC_VAL[1]}.png").unlink()
    with pytest.raises(DataError, match="SBD not found"):
        prepare(shared)


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
        prepare(trees)
    assert str(path) in str(error.value)


def test_missing_voc_without_download(tmp_path):
    with pytest.raises(DataError, match="python -m panet_lite prepare pascal --root"):
        prepare(tmp_path)


# ----------------------------------------------------------------------------- reference counts

def _cut_short(base: Path, split: str, class_id: int) -> Path:
    """Drop the last image of a prepared class list, as a partial download or a hand edit would."""
    path = base / VOC_SETS / split / f"class{class_id}.txt"
    path.write_text("".join(f"{i}\n" for i in path.read_text().split()[:-1]))
    return path


def test_counts_of_a_correct_tree_pass(trees):
    assert prepare(trees)["counts_checked"] is True
    assert check_pascal_counts(trees, reference=FAKE_COUNTS) == FAKE_COUNTS
    assert check_pascal_counts(str(trees / "VOCdevkit"), reference=FAKE_COUNTS) == FAKE_COUNTS


def test_class_list_cut_short_fails_the_check(trees):
    prepare(trees)
    assert FAKE_COUNTS["trainaug"]["per_class"][3] == 2  # the scenario's two trainaug images of class 3 (bird)
    _cut_short(trees, "trainaug", 3)
    with pytest.raises(DataError) as error:
        check_pascal_counts(trees, reference=FAKE_COUNTS)
    message = str(error.value)
    assert message.startswith(f"the PASCAL-5i lists in {trees / VOC_SETS} do not match the reference counts of "
                              f"a correct preparation: trainaug class 3 bird (trainaug/class3.txt): expected 2 "
                              f"images, found 1. Likely cause: a partial or damaged SBD download")
    assert f"run `python -m panet_lite prepare pascal --root {trees}` (it rebuilds lists" in message
    assert f"delete {trees / 'SBD'} and {voc_dir(trees) / 'SegmentationClassAug'}, then run" in message
    assert "\n" not in message  # the CLI shows it as one line
    prepare(trees)  # rebuilds the list: the check passes again
    assert check_pascal_counts(trees, reference=FAKE_COUNTS) == FAKE_COUNTS


def test_val_list_cut_short_blames_voc(trees):
    prepare(trees)
    _cut_short(trees, "val", 17)
    with pytest.raises(DataError, match=r"val class 17 sheep \(val/class17.txt\): expected 2 images, found 1\. "
                                        r"Likely cause: an incomplete or modified VOC2012") as error:
        check_pascal_counts(trees, reference=FAKE_COUNTS)
    assert f"delete {trees / 'VOCdevkit'}, then run" in str(error.value)


def test_partial_sbd_fails_prepare_plainly(trees):
    """An SBD that lacks an image (here: missing from its train.txt) builds without error; only the count shows."""
    sbd_train = trees / "SBD" / "train.txt"
    sbd_train.write_text(sbd_train.read_text().replace("2008_000002\n", ""))
    with pytest.raises(DataError) as error:
        prepare(trees)
    message = str(error.value)
    assert "trainaug total (trainaug.txt): expected 6 images, found 5" in message
    assert "partial or damaged SBD download" in message
    assert f"delete {trees / 'SBD'} and" in message and "(it rebuilds lists" not in message  # just rebuilt
    assert (trees / VOC_SETS / "trainaug.txt").read_text().split() == [i for i in fd.TRAINAUG if i != "2008_000002"]
    assert prepare(trees, check_counts=False)["counts_checked"] is False  # the explicit way past it


def test_real_reference_rejects_a_small_tree_by_default(trees):
    """Without a reference argument, prepare compares with the real dataset: a small tree is a partial one."""
    with pytest.raises(DataError) as error:
        prepare_pascal(trees, download=False, progress=False)
    message = str(error.value)
    assert "reference counts (data/pascal5i_reference_counts.json)" in message
    assert "trainaug total (trainaug.txt): expected 10,582 images, found 6; " in message
    assert "trainaug class 1 aeroplane (trainaug/class1.txt): expected 586 images, found 1" in message
    assert "more. Likely cause:" in message and "or an incomplete or modified VOC2012" in message


def test_check_only_on_an_unprepared_tree_says_what_to_run(trees):
    with pytest.raises(DataError, match="PASCAL VOC is not prepared in .* Run `python -m panet_lite prepare pascal"):
        check_pascal_counts(trees)


def test_reference_file_holds_the_real_counts():
    """data/pascal5i_reference_counts.json, as the check reads it: the real SegmentationClassAug's counts."""
    reference = pascal.reference_counts()
    assert reference["trainaug"]["images"] == 10582 and reference["val"]["images"] == 1449
    assert [reference["trainaug"]["per_class"][c] for c in range(1, 21)] == [
        586, 486, 698, 461, 654, 385, 1086, 1000, 1081, 264, 528, 1177, 444, 482, 3898, 487, 299, 491, 500, 548]
    assert [reference["val"]["per_class"][c] for c in range(1, 21)] == [
        90, 79, 103, 72, 96, 74, 127, 119, 123, 71, 75, 128, 79, 76, 446, 85, 57, 90, 84, 74]


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
                sbd_url=f"{server.url}/{fd.SBD_ARCHIVE}", sbd_md5=fd.md5(www / fd.SBD_ARCHIVE), progress=False,
                reference=FAKE_COUNTS)
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
    prepare(trees)
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
    prepare(trees)
    source = PascalVOC(trees, split="val")
    image_id = "2007_000061"  # two instances of class 19 next to one of class 17
    _, label = source.load(image_id)
    fg, bg = box_masks(label, source.load_instances(image_id), 19)
    assert fg.any() and not (fg & bg).any()
    assert (label[fg] == 19).any() and not (label[bg] == 19).any()


def test_a_mirror_on_the_command_line_is_still_checked_against_the_official_checksum(tmp_path, archives, capsys):
    from panet_lite.cli import main

    with fd.serve_directory(archives) as server:  # our small archive is not the official one: refused
        code = main(["prepare", "pascal", "--root", str(tmp_path / "dest"), "--voc-url",
                     f"{server.url}/{fd.VOC_ARCHIVE}"])
        assert f"/{fd.VOC_ARCHIVE}" in server.requests
    err = capsys.readouterr().err.strip().splitlines()  # the download's progress bar, then one error line
    assert code == 2 and err[-1].startswith("error:") and "checksum mismatch" in err[-1]
    assert not any("Traceback" in line for line in err)
