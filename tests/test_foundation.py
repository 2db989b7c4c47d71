"""The frozen DINOv2 encoder: patch tokens as a stride-14 map, frozen, input sides, weights from a file,
and one clear line when the hub cannot be reached. Offline: ViT-S/14's real architecture, random weights."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from panet_lite.foundation import (FOUNDATION_BACKBONES, DINOv2Encoder, FoundationWeightsUnavailable, build_dinov2,
                                   input_side, load_dinov2_weights)


def _encoder(seed: int) -> DINOv2Encoder:
    torch.manual_seed(seed)
    return build_dinov2("dinov2_vits14", pretrained=False)


@pytest.fixture(scope="module")
def encoder():
    return _encoder(0)


def test_the_feature_map_is_timms_patch_tokens(encoder):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 28, 42)  # non-square: a 2 x 3 grid of patches
    with torch.no_grad():
        y = encoder(x)
        tokens = encoder.vit.forward_features(x)  # (B, 1 + 6, 384): the class token, then the patches
    assert encoder.vit.num_prefix_tokens == 1 and tokens.shape == (2, 7, 384)
    reference = tokens[:, 1:].reshape(2, 2, 3, 384).permute(0, 3, 1, 2)  # row-major patches -> (B, C, h, w)
    assert y.shape == (2, 384, 2, 3)
    assert torch.equal(y, reference)


def test_shapes_attributes_and_sides_resized_to_whole_patches(encoder):
    assert (encoder.out_channels, encoder.stride, encoder.min_size) == (384, 14, 21)
    assert encoder.mean == (0.485, 0.456, 0.406) and encoder.std == (0.229, 0.224, 0.225)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 56, 56)).shape == (1, 384, 4, 4)
        x = torch.randn(1, 3, 30, 43)  # 30 -> 28, 43 -> 42: resized, not cropped by timm to whole patches
        fitted = torch.nn.functional.interpolate(x, size=(28, 42), mode="bilinear", antialias=True)
        assert torch.equal(encoder.fit(x), fitted)
        assert torch.equal(encoder(x), encoder(fitted))
        assert encoder(torch.randn(1, 3, 21, 50)).shape == (1, 384, 2, 4)  # min_size: 2 patches a side
    assert FOUNDATION_BACKBONES["dinov2_vitb14"].timm_name == "vit_base_patch14_dinov2.lvd142m"
    with pytest.raises(ValueError, match=r"^unknown foundation backbone 'dinov2_vitl14'; choose one of "
                                         r"dinov2_vits14, dinov2_vitb14$"):
        build_dinov2("dinov2_vitl14")


def test_frozen_and_always_in_eval_mode(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = torch.nn.Sequential(encoder, torch.nn.Conv2d(384, 2, 1))
    parent.train()
    assert parent[1].training and not any(m.training for m in encoder.modules())
    x = torch.randn(1, 3, 28, 28, requires_grad=True)
    parent(x).square().mean().backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert x.grad is not None and parent[1].weight.grad is not None  # gradients still flow through it


def test_input_side_is_the_nearest_multiple_of_14():
    # 417 = 29 * 14 + 11: 420 is 3 away, 406 is 11; 400 = 28 * 14 + 8: 406 is 6 away, 392 is 8.
    assert [input_side(n) for n in (417, 400, 420, 1, 6, 7, 20, 21, 22, 35, 500)] == \
           [420, 406, 420, 14, 14, 14, 14, 28, 28, 42, 504]  # ties (7, 21, 35) go up; never below 14
    assert input_side(12, stride=8) == 16 and input_side(11, stride=8) == 8


def test_weights_from_a_local_file(tmp_path):
    source, target = _encoder(1), _encoder(2)
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        expected, before = source(x), target(x)
    assert not torch.equal(expected, before)
    torch.save(source.state_dict(), tmp_path / "encoder.pth")  # our encoder's keys: vit.*
    save_file(source.vit.state_dict(), str(tmp_path / "model.safetensors"))  # timm's keys, as on the hub
    # Meta's release has timm's key names for ViT-S/B, plus the masked-image-modelling token timm drops.
    torch.save({**source.vit.state_dict(), "mask_token": torch.zeros(1, 384)}, tmp_path / "dinov2_vits14_pretrain.pth")
    for name in ("encoder.pth", "model.safetensors", "dinov2_vits14_pretrain.pth"):
        target = _encoder(2)
        load_dinov2_weights(target, tmp_path / name)
        with torch.no_grad():
            assert torch.equal(target(x), expected), name
    wrong = {k.replace("blocks.", "layers."): v for k, v in source.vit.state_dict().items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError) as error:
        load_dinov2_weights(target, tmp_path / "wrong.pth")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"--pretrained {tmp_path / 'wrong.pth'}: not dinov2_vits14 weights")
    assert "tensors missing, e.g. blocks.0." in message and "unexpected, e.g. layers.0." in message
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        load_dinov2_weights(target, tmp_path / "absent.pth")


def test_offline_without_a_cached_copy_says_what_where_and_how_in_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    # huggingface_hub reads these variables once, at import, into module constants that it reads per call.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(FoundationWeightsUnavailable) as error:
        build_dinov2("dinov2_vits14", pretrained=True)
    message = str(error.value)
    assert "\n" not in message and error.value.__cause__ is None and error.value.__suppress_context__
    for part in ("timm/vit_small_patch14_dinov2.lvd142m", "88.2 MB", str(cache), "HF_HUB_OFFLINE is set",
                 "connect to the internet once, or pass --pretrained PATH with a local copy of the file"):
        assert part in message, part


def _panet_lite(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "panet_lite", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


NOTRAIN = ("test", "--dataset", "synthetic", "--fold", "0", "--notrain", "--backbone", "dinov2_vits14", "--runs", "1",
           "--episodes", "20", "--size", "56")  # 20 episodes: each of fold 0's 5 classes drawn


def test_test_notrain_runs_panet_on_dinov2_features_and_says_random_weights_are_not_a_result():
    run = _panet_lite(*NOTRAIN, "--pretrained", "false", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 <= result["miou"] <= 1 and len(result["class_iou"]) == 5
    assert "no training: PANet's matching on dinov2_vits14's RANDOM weights (--pretrained false): NOT a result" in run.stdout


def test_test_notrain_offline_ends_with_one_line_naming_the_weights_and_the_fix(tmp_path):
    run = _panet_lite(*NOTRAIN, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: cannot get the dinov2_vits14 weights (timm/vit_small_patch14_dinov2.lvd142m, "
                               "model.safetensors, 88.2 MB) into the Hugging Face cache " + str(tmp_path / "hf"))
    assert lines[0].endswith("pass --pretrained PATH with a local copy of the file (--pretrained false: random "
                             "weights, not a result)")


def test_a_checkpoint_brings_its_own_weights():
    run = _panet_lite("test", "--dataset", "synthetic", "--fold", "0", "--checkpoint", "x.pt", "--pretrained", "false")
    assert run.returncode != 0 and "drop --pretrained" in run.stderr


def test_without_a_network_the_hub_cache_is_read_at_once_and_a_missing_file_is_one_line(tmp_path, monkeypatch):
    """No DNS (no network at all): no retries; weights already in the Hugging Face cache load from it
    (the second run on a machine that downloaded them once), and without them the error says why."""
    import socket

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(FoundationWeightsUnavailable, match=r"https://huggingface.co cannot be resolved \(no "
                                                           r"internet\?\) and the file is not in the cache; "):
        build_dinov2("dinov2_vits14", pretrained=True)
    torch.manual_seed(3)
    saved = DINOv2Encoder("dinov2_vits14")
    for p in saved.vit.parameters():
        p.data.normal_(0, 0.02)
    repo = cache / "models--timm--vit_small_patch14_dinov2.lvd142m"  # the hub cache's layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(saved.vit.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")
    loaded = build_dinov2("dinov2_vits14", pretrained=True)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))


def test_segment_takes_a_frozen_dinov2_encoder():
    from panet_lite import segment
    from panet_lite.model import PANet

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (50, 61, 3), generator=g, dtype=torch.uint8).numpy()
    query = torch.randint(0, 256, (47, 39, 3), generator=g, dtype=torch.uint8).numpy()
    mask = torch.zeros(50, 61, dtype=torch.long)
    mask[10:40, 20:50] = 1
    model = PANet("dinov2_vits14", method="ssp")  # random weights: shapes and mechanics only
    (labels,) = segment(model, [[image]], [[mask.numpy()]], [query], size=56)
    assert labels.shape == (47, 39) and set(labels.unique().tolist()) <= {0, 1}


def test_reproduce_notrain_trains_nothing_says_so_and_reuses_only_untrained_rows(tmp_path, monkeypatch):
    from panet_lite import reproduce as rep
    from panet_lite.evaluate import EvalConfig
    from panet_lite.train import TrainConfig

    cfg = TrainConfig(backbone="small", pretrained=False, size=40)
    ev = EvalConfig(runs=1, episodes=20, size=40, device="cpu")  # 20: every class of fold 0 drawn
    monkeypatch.setattr(rep, "train", lambda *a, **k: pytest.fail("reproduce --notrain trained a model"))
    table = rep.reproduce("synthetic", None, tmp_path, cfg, ev, folds=(0,), shots=(1,), progress=False, notrain=True)
    assert table["notrain"] == {"backbone": "small", "pretrained": False}
    text = (tmp_path / "table.md").read_text()
    assert text.startswith("No training: PANet's matching on small's RANDOM weights (--pretrained false): NOT a "
                           "result") and "synthetic pipeline check" in text
    assert not (tmp_path / "fold0-1way-1shot" / "checkpoint.pt").exists()
    row = json.loads((tmp_path / "fold0-1way-1shot" / "results-faithful.json").read_text())
    assert row["notrain"] is True
    monkeypatch.setattr(rep, "evaluate", lambda *a, **k: pytest.fail("a saved untrained row was tested again"))
    assert rep.reproduce("synthetic", None, tmp_path, cfg, ev, folds=(0,), shots=(1,), progress=False,
                         notrain=True)["settings"] == table["settings"]
    assert not rep._same_setting(row, cfg, ev, notrain=False)  # a trained run never takes an untrained row
    assert not rep._same_setting(row, TrainConfig(backbone="small", pretrained=False, method="mlc", align=False),
                                 ev, notrain=True)


def test_an_untrained_table_on_a_benchmark_sets_no_published_number_beside_and_shows_the_foundation_results():
    from panet_lite import reproduce as rep

    rows = [{"dataset": "pascal5i", "fold": f, "shots": 1, "ways": 1, "miou": 0.5, "miou_std": 0.01, "fb_iou": 0.6,
             "train_config": {"backbone": "dinov2_vits14", "pretrained": True, "method": "panet"},
             "eval_config": {"protocol": "hsnet"}, "notrain": True} for f in range(4)]
    table = rep.summarize("pascal5i", rows)
    assert table["kind"] == rep.NO_TRAINING and table["settings"][0].get("paper_mean") is None
    text = rep.markdown(table)
    assert text.startswith("No training: PANet's matching on dinov2_vits14's pretrained features; pascal5i, hsnet "
                           "protocol (mIoU %, one run of 1,000 episodes)")
    assert "| 1-way 1-shot | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 60.0 |" in text
    assert "frozen foundation models" in text and "Matcher" in text


def test_the_command_line_s_reproduce_notrain_writes_to_its_own_folder(monkeypatch, tmp_path):
    from panet_lite import cli, reproduce as rep

    got = {}
    monkeypatch.setattr(rep, "reproduce", lambda *a, **k: got.update(out=a[2], cfg=a[3], notrain=k["notrain"])
                        or {"settings": [], "dataset": "synthetic"})
    monkeypatch.setattr(rep, "markdown", lambda table: "")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "--dataset", "synthetic", "--notrain", "--backbone", "dinov2_vits14",
                     "--method", "ssp", "--pretrained", "false"]) == 0
    assert got["notrain"] and got["out"] == "runs/synthetic-ssp-notrain-dinov2_vits14"
    assert (got["cfg"].backbone, got["cfg"].method) == ("dinov2_vits14", "ssp")


def test_the_chapter_s_model_offline_is_one_line_and_random_weights(monkeypatch, tmp_path, capsys):
    from panet_lite.course import foundation_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model, pretrained = foundation_model("dinov2_vits14", method="mlc")
    lines = capsys.readouterr().out.splitlines()
    assert not pretrained and not model.training and model.method == "mlc"
    assert len(lines) == 1 and "dinov2_vits14" in lines[0] and "88.2 MB" in lines[0] and "--pretrained PATH" in \
        lines[0] and lines[0].endswith("Going on with RANDOM weights: shapes and mechanics only, not results")


def test_the_chapter_s_photos_come_from_a_prepared_voc_else_the_embedded_data(tmp_path):
    from panet_lite.course import photo_source
    from panet_lite.pascal import PascalVOC
    from panet_lite.synthetic import SyntheticFewShot, write_voc_tree

    root = write_voc_tree(tmp_path / "voc", n_train=40, n_val=20, size=32)
    source, size, where = photo_source(root)
    assert isinstance(source, PascalVOC) and size == 417 and where.startswith("PASCAL VOC in")
    source, size, where = photo_source(tmp_path / "nothing")
    assert isinstance(source, SyntheticFewShot) and size is None and "prepare pascal --root data/pascal" in where


def test_random_weights_are_the_same_draw_every_run(capsys, monkeypatch, tmp_path):
    from panet_lite import cli

    monkeypatch.chdir(tmp_path)
    results = []
    for _ in range(2):
        assert cli.main([*NOTRAIN, "--pretrained", "false", "--episodes", "5", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0] == results[1]
