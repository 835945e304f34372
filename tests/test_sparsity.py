"""Sparsity accounting: a hand-built case checks every figure."""
import math

import pytest
import torch
from torch import nn

from study import sparsity


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2)  # 8 weights, 2 biases
        self.fc = nn.Linear(4, 3)  # 12 weights, 3 biases

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.fixture
def tiny() -> Tiny:
    model = Tiny()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([1.0, 0, 0, 2, 0, 0, 0, 3]).view(2, 1, 2, 2))
        model.conv.bias.copy_(torch.tensor([0.0, 1.0]))
        model.fc.weight.copy_(torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]))
        model.fc.bias.zero_()
    return model


def test_hand_built_counts(tiny: Tiny) -> None:
    report = sparsity.count_model(tiny)
    conv, fc = report.layers
    assert (conv.layer, conv.total, conv.nonzero, conv.bias_total, conv.bias_nonzero) == ("conv", 8, 3, 2, 1)
    assert (fc.layer, fc.total, fc.nonzero, fc.bias_total, fc.bias_nonzero) == ("fc", 12, 1, 3, 0)
    assert conv.remaining == pytest.approx(3 / 8)
    assert fc.remaining == pytest.approx(1 / 12)
    assert report.total == 20 and report.nonzero == 4
    assert report.compression == pytest.approx(5.0)
    assert report.sparsity == pytest.approx(0.8)
    assert report.memory_kb == pytest.approx(4 * 4 / 1000)
    metrics = report.metrics()
    assert metrics["remaining_pct.conv"] == pytest.approx(37.5)   # %, as every table shows it
    assert metrics["remaining_pct.fc"] == pytest.approx(100 / 12)
    assert conv.as_row()["remaining_pct"] == pytest.approx(37.5)
    assert metrics["nonzero"] == 4.0
    assert report.bias_total == 5 and report.bias_nonzero == 1


def test_all_pruned_is_infinite_compression(tiny: Tiny) -> None:
    zeros = {k: torch.zeros_like(v) for k, v in sparsity.prunable_weights(tiny).items()}
    report = sparsity.count_model(tiny, zeros)
    assert math.isinf(report.compression) and report.sparsity == 1.0 and report.memory_kb == 0.0


def test_threshold_masks_and_pruned_stay_pruned(tiny: Tiny) -> None:
    weights = sparsity.prunable_weights(tiny)
    first = sparsity.threshold_masks(weights, 1.5)
    assert first["conv.weight"].sum().item() == 2  # 2 and 3 survive
    sparsity.apply_masks(weights, first)
    with torch.no_grad():
        tiny.conv.weight.fill_(5.0)  # try to regrow everything
    second = sparsity.combine_masks(first, sparsity.threshold_masks(weights, 1.5))
    sparsity.apply_masks(weights, second)
    assert torch.count_nonzero(tiny.conv.weight).item() == 2


def test_negative_threshold_is_an_error(tiny: Tiny) -> None:
    with pytest.raises(ValueError, match="threshold"):
        sparsity.threshold_masks(sparsity.prunable_weights(tiny), -1.0)


def test_layer_names() -> None:
    assert sparsity.layer_of("features.0.weight") == "features.0"
