"""Tests for study/models.py: layer names, prunable counts, shapes, options, pretrained."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from study import sparsity
from study.models import build_model, model_names


def prunable_count(model: nn.Module) -> dict[str, int]:
    return {layer.layer: layer.total for layer in sparsity.count_model(model).layers}


def test_registry_names():
    assert model_names() == ["lenet300", "lenet5", "vgg16", "mlp"]


def test_lenet300_mnist_counts():
    counts = prunable_count(build_model("lenet300", (1, 28, 28), 10))
    assert counts == {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    assert sum(counts.values()) == 266_200


def test_lenet300_digits_shape():
    model = build_model("lenet300", (1, 8, 8), 10)
    assert model.fc1.in_features == 64
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_lenet5_mnist_counts_and_layout():
    model = build_model("lenet5", (1, 28, 28), 10)
    counts = prunable_count(model)
    assert counts == {"conv1": 500, "conv2": 25_000, "fc1": 400_000, "fc2": 5_000}
    assert sum(counts.values()) == 430_500
    assert sparsity.count_model(model).bias_total == 20 + 50 + 500 + 10
    # Caffe layout: no ReLU after the convolutions, one after fc1
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_relu_option_and_digits_padding():
    model = build_model("lenet5", (1, 8, 8), 10, {"relu": True})
    names = [name for name, _ in model.named_children()]
    assert names[:5] == ["conv1", "relu1", "pool1", "conv2", "relu2"]
    assert model.conv1.padding == (2, 2) and model.fc1.in_features == 50 * 2 * 2
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # the ReLU changes the function: negative conv outputs are cut
    torch.manual_seed(0)
    plain = build_model("lenet5", (1, 8, 8), 10)
    torch.manual_seed(0)
    with_relu = build_model("lenet5", (1, 8, 8), 10, {"relu": "true"})
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(plain(x), with_relu(x))


def test_lenet5_padding_choices():
    same = build_model("lenet5", (1, 28, 28), 10, {"padding": "same"})
    assert same.fc1.in_features == 50 * 7 * 7
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet5", (1, 8, 8), 10, {"padding": "valid"})
    with pytest.raises(ValueError, match="padding='full'; valid choices: auto, valid, same"):
        build_model("lenet5", (1, 28, 28), 10, {"padding": "full"})
    with pytest.raises(ValueError, match=r"image input shape \(C, H, W\)"):
        build_model("lenet5", (784,), 10)


def test_mlp_hidden_option():
    model = build_model("mlp", (3, 4, 4), 5, {"hidden": "20,10,7"})
    assert prunable_count(model) == {"fc1": 48 * 20, "fc2": 200, "fc3": 70, "fc4": 35}
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 5)
    assert list(prunable_count(build_model("mlp", (10,), 2, {"hidden": ()}))) == ["fc1"]


def test_vgg16_cifar_forward_and_names():
    model = build_model("vgg16", (3, 32, 32), 10)  # < 64 px: the cifar variant
    layers = list(sparsity.prunable_layers(model))
    assert len(layers) == 16
    assert layers[0] == "features.0"
    assert layers[-3:] == ["classifier.0", "classifier.3", "classifier.6"]
    assert model.classifier[0].in_features == 512
    counts = prunable_count(model)
    assert sum(v for k, v in counts.items() if k.startswith("features")) == 14_710_464
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_cifar_batch_norm_and_channels():
    model = build_model("vgg16", (1, 32, 32), 7, {"batch_norm": True, "variant": "cifar"})
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.features[0].in_channels == 1
    assert len(sparsity.prunable_layers(model)) == 16
    model.eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 7)


def test_vgg16_imagenet_variant_is_torchvision():
    with torch.device("meta"):  # shapes only: skips allocating and initializing 138M weights
        model = build_model("vgg16", (3, 224, 224), 4)  # >= 64 px: the imagenet variant
    layers = list(sparsity.prunable_layers(model))
    assert len(layers) == 16 and layers[0] == "features.0" and layers[12] == "features.28"
    assert layers[-3:] == ["classifier.0", "classifier.3", "classifier.6"]
    assert model.classifier[0].in_features == 512 * 7 * 7 and model.classifier[6].out_features == 4
    total = sum(w.numel() for w in sparsity.prunable_weights(model).values())
    assert total == 138_344_128 - 4096 * 996  # the 1000-class VGG-16's, with a 4-class last layer
    with pytest.raises(ValueError, match="variant='resnet'; valid choices: imagenet, cifar"):
        build_model("vgg16", (3, 32, 32), 10, {"variant": "resnet"})
    with pytest.raises(ValueError, match="at least 32x32"):
        build_model("vgg16", (3, 16, 16), 10)


def test_deterministic_init():
    torch.manual_seed(5)
    a = build_model("lenet5", (1, 28, 28), 10)
    torch.manual_seed(5)
    b = build_model("lenet5", (1, 28, 28), 10)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_unknown_model_and_option():
    choices = r"valid choices: lenet300, lenet5, vgg16, mlp"
    with pytest.raises(ValueError, match=rf"unknown model 'resnet'; {choices}"):
        build_model("resnet", (1, 28, 28), 10)
    options = r"valid options: padding, pretrained, relu"
    with pytest.raises(ValueError, match=rf"unknown option\(s\) relux; {options}"):
        build_model("lenet5", (1, 28, 28), 10, {"relux": True})
    with pytest.raises(ValueError, match="valid options: pretrained"):
        build_model("lenet300", (1, 28, 28), 10, {"hidden": (1,)})
    with pytest.raises(ValueError, match="relu='maybe' is not a valid bool"):
        build_model("lenet5", (1, 28, 28), 10, {"relu": "maybe"})


def test_pretrained_round_trip(tmp_path):
    torch.manual_seed(1)
    source = build_model("lenet300", (1, 8, 8), 10)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_model("lenet300", (1, 8, 8), 10, {"pretrained": str(path)})
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(source(x), loaded(x))
    # a training checkpoint holding the state dict under "model" works too
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    again = build_model("lenet300", (1, 8, 8), 10, {"pretrained": tmp_path / "ckpt.pt"})
    assert torch.equal(source(x), again(x))


def test_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found: .*missing.pt"):
        build_model("lenet300", (1, 8, 8), 10, {"pretrained": str(tmp_path / "missing.pt")})
    torch.save(build_model("lenet300", (1, 28, 28), 10).state_dict(), tmp_path / "mnist.pt")
    with pytest.raises(ValueError, match="does not match the model: .*size mismatch"):
        build_model("lenet300", (1, 8, 8), 10, {"pretrained": str(tmp_path / "mnist.pt")})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pt"):
        build_model("lenet300", (1, 8, 8), 10, {"pretrained": str(tmp_path / "junk.pt")})
