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


# -- structured accounting: neurons and inputs -----------------------------------------------------
def test_neurons_of_the_hand_built_case(tiny: Tiny) -> None:
    """conv's two channels both have incoming weights, but fc reads only channel 1 (its input
    is the flattened conv output, channel by channel: columns 0-1 are channel 0, 2-3 channel 1,
    and only column 3 is nonzero); fc keeps one row; the single input channel is read."""
    report = sparsity.count_model(tiny)
    conv, fc = report.layers
    assert (conv.neurons_total, conv.neurons, fc.neurons_total, fc.neurons) == (2, 1, 3, 1)
    assert (report.inputs_total, report.inputs) == (1, 1)
    metrics = report.metrics()
    assert metrics["neurons.conv"] == 1.0 and metrics["neurons.fc"] == 1.0 and metrics["inputs"] == 1.0
    assert report.architecture == "1-1-1"
    assert conv.as_row()["neurons"] == 1 and conv.as_row()["neurons_total"] == 2


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_a_row_cut_and_a_column_cut_both_remove_a_neuron() -> None:
    """A unit is gone when its incoming row is zero (SeReNe, weight pruning) and when the next
    layer no longer reads it (L0's gates on a Linear layer's input units), checked by brute force
    against the definition."""
    model = _mlp()
    with torch.no_grad():
        model[1].weight[[0, 4]] = 0      # rows: units 0 and 4 of the first layer get no input
        model[3].weight[:, [1, 4]] = 0   # columns: units 1 and 4 of the first layer are not read
        model[3].weight[2] = 0           # unit 2 of the second layer: no input
        model[5].weight[:, 3] = 0        # unit 3 of the second layer: not read
        model[1].weight[:, [0, 7]] = 0   # inputs 0 and 7 are not read
        model[5].weight[1, 0] = 0        # one weight of the output layer: its unit stays
    report = sparsity.count_model(model)
    weights = [model[i].weight for i in (1, 3, 5)]
    expected = []
    for i, w in enumerate(weights):
        read_out = weights[i + 1].abs().sum(0) > 0 if i + 1 < len(weights) else torch.ones(w.shape[0], dtype=torch.bool)
        expected.append(int(((w.abs().sum(1) > 0) & read_out).sum()))
    assert [layer.neurons for layer in report.layers] == expected == [6 - 3, 5 - 2, 3]
    assert report.inputs == 6 and report.inputs_total == 8
    assert report.architecture == "6-3-3-3"


def test_conv_chains_and_the_flattened_conv_input() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 5))
    with torch.no_grad():
        model[0].weight[1] = 0           # filter 1 of the first conv: no input
        model[2].weight[:, 3] = 0        # channel 3 of the first conv: not read by the second
        model[4].weight[:, 4:8] = 0      # the Linear reads channel 1 of the second conv as columns 4-7
        model[0].weight[:, 0] = 0        # input channel 0: not read
    report = sparsity.count_model(model)
    assert [layer.neurons for layer in report.layers] == [2, 2, 5]
    assert [layer.neurons_total for layer in report.layers] == [4, 3, 5]
    assert (report.inputs, report.inputs_total) == (1, 2)
    assert report.architecture == "1-2-2-5"


def test_a_layer_that_is_not_read_as_a_chain_counts_incoming_weights_only() -> None:
    """The next layer's inputs are not this layer's units (a skip or a branch): only rows count."""
    weights = {"a.weight": torch.ones(4, 3), "b.weight": torch.ones(2, 7)}
    weights["b.weight"][:, 0] = 0
    report = sparsity.count(weights)
    assert [layer.neurons for layer in report.layers] == [4, 2]
    assert report.architecture == "3-4-2"


def test_effective_weights_decide_the_neurons() -> None:
    """The counts read the weights the method reports (e.g. L0's weights times its gates)."""
    model = _mlp()
    effective = {k: v.detach().clone() for k, v in sparsity.prunable_weights(model).items()}
    effective["3.weight"][:, :2] = 0  # gates off on two inputs of the second layer
    assert sparsity.count_model(model, effective).layers[0].neurons == 4
    assert sparsity.count_model(model).layers[0].neurons == 6
