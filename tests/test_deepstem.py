"""The deep-stem ResNet-50 of MLC's baseline and SSP: layout, stride, no final ReLU, frozen BatchNorm, weights."""
import pytest
import torch
from torch import nn

from panet_lite.encoders import DeepStemResNet50Encoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return DeepStemResNet50Encoder()


def test_layout_stride_and_dilation(encoder):
    x = torch.randn(2, 3, 65, 48)
    with torch.no_grad():
        y = encoder.eval()(x)
    assert y.shape == (2, 1024, 9, 6)  # output stride 8: ceil(65 / 8), ceil(48 / 8)
    assert [type(m).__name__ for m in encoder.conv1] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d"]
    assert [len(encoder.layer1), len(encoder.layer2), len(encoder.layer3)] == [3, 4, 6]
    # layer3: no stride, dilation 2 after its first block (ResNet's replace_stride_with_dilation).
    assert [b.conv2.dilation for b in encoder.layer3] == [(1, 1)] + [(2, 2)] * 5
    assert all(b.conv2.stride == (1, 1) for b in encoder.layer3)
    assert encoder.layer2[0].conv2.stride == (2, 2)
    # torchvision's ResNet-50 stem and layers 1-3 hold 8,543,296 parameters; the deep stem (three 3x3
    # convolutions, 128 channels into layer1) holds 123,776 more.
    assert sum(p.numel() for p in encoder.parameters()) == 8_543_296 + 123_776


def test_no_final_relu_in_the_last_block(encoder):
    with torch.no_grad():
        y = encoder.eval()(torch.randn(1, 3, 40, 40))
    assert (y < 0).any()  # the matched features keep their sign
    assert [b.last_relu for b in encoder.layer3] == [True] * 5 + [False]
    assert all(b.last_relu for b in encoder.layer2)


def test_frozen_batchnorm_keeps_statistics_and_parameters(encoder):
    encoder.train()
    bns = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    trained = [m for part in (encoder.layer2, encoder.layer3) for m in part.modules() if isinstance(m, nn.Conv2d)]
    frozen = [m for part in (encoder.conv1, encoder.layer1) for m in part.modules() if isinstance(m, nn.Conv2d)]
    assert len(trained) + len(frozen) == len(convs)
    assert all(m.weight.requires_grad for m in trained) and not any(m.weight.requires_grad for m in frozen)
    before = [m.running_mean.clone() for m in bns]
    encoder(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert all(m.weight.grad is None for m in bns + frozen) and all(m.weight.grad is not None for m in trained)
    free = DeepStemResNet50Encoder(freeze_bn=False).train()
    assert all(m.training for m in free.modules() if isinstance(m, nn.BatchNorm2d))


def test_weights_in_the_authors_layout_load_and_wrong_files_say_why(encoder, tmp_path):
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)  # the authors' file holds layer4 and fc too
    state["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "resnet50.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel's prefix is accepted
    loaded = DeepStemResNet50Encoder(pretrained=path)
    assert torch.equal(loaded.layer3[5].conv3.weight, state["layer3.5.conv3.weight"])
    assert torch.equal(loaded.conv1[6].weight, state["conv1.6.weight"])
    del state["layer2.1.bn2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="not deep-stem ResNet-50 weights .*layer2.1.bn2.weight"):
        DeepStemResNet50Encoder(pretrained=path)
    with pytest.raises(ValueError, match="not in torchvision"):
        DeepStemResNet50Encoder(pretrained=True)
    with pytest.raises(FileNotFoundError):
        DeepStemResNet50Encoder(pretrained=tmp_path / "nowhere.pth")
