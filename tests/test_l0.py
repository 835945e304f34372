"""L0 regularization with hard-concrete gates (baselines/l0.py)."""
from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.l0 import (
    L0Conv2d,
    L0HardConcrete,
    L0Linear,
    L0Params,
    prob_nonzero,
    sample_gate,
    deterministic_gate,
)
from study import sparsity
from study.method import MethodContext

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
N_TRAIN = 500


def context(train_size: int = N_TRAIN) -> MethodContext:
    return MethodContext(train_size=train_size, num_classes=3, epochs=2, steps_per_epoch=10)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def attached(model: nn.Module, **params) -> L0HardConcrete:
    method = L0HardConcrete(L0Params(**params), context())
    method.attach(model)
    return method


# -- the distribution ------------------------------------------------------------------------
def test_prob_nonzero_is_the_closed_form_and_matches_monte_carlo() -> None:
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
    closed = torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))
    assert torch.allclose(prob_nonzero(log_alpha, BETA, GAMMA, ZETA), closed)
    torch.manual_seed(0)
    z = sample_gate(log_alpha.expand(200_000, -1).contiguous(), BETA, GAMMA, ZETA)
    assert z.min() == 0 and z.max() == 1  # exact zeros and ones occur
    mc = (z != 0).float().mean(0)
    assert torch.allclose(mc, closed, atol=4e-3), (mc, closed)


def test_test_gate_is_exactly_zero_or_one_at_the_extremes() -> None:
    gate = deterministic_gate(torch.tensor([-20.0, math.log(1e-2), 0.0, math.log(1e2), 20.0]), GAMMA, ZETA)
    assert gate[0] == 0 and gate[1] == 0  # the clamp's lower end: log α = log 1e-2 still prunes
    assert gate[2] == pytest.approx(0.5 * (ZETA - GAMMA) + GAMMA)
    assert gate[3] == 1 and gate[4] == 1


def test_concrete_relaxation_has_no_exact_zeros_and_cuts_below_one_half() -> None:
    log_alpha = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    torch.manual_seed(0)
    z = sample_gate(log_alpha.expand(10_000, -1).contiguous(), BETA, 0.0, 1.0)
    assert (z > 0).all() and (z < 1).all()
    assert torch.allclose(prob_nonzero(log_alpha, BETA, 0.0, 1.0), torch.sigmoid(log_alpha))
    gate = deterministic_gate(log_alpha, 0.0, 1.0)
    assert gate[0] == 0 and gate[1] == 0
    assert torch.allclose(gate[2:], torch.sigmoid(log_alpha[2:]))


# -- attach, forward, state ----------------------------------------------------------------
def test_attach_keeps_names_adds_gates_and_is_idempotent() -> None:
    model = convnet()
    names_before = [n for n, _ in model.named_parameters()]
    method = attached(model)
    assert isinstance(model[0], L0Conv2d) and isinstance(model[3], L0Linear)
    assert list(sparsity.prunable_weights(model)) == ["0.weight", "3.weight"]
    keys = list(model.state_dict())
    assert set(names_before) < set(keys) and {"0.log_alpha", "3.log_alpha"} <= set(keys)
    assert model[0].log_alpha.shape == (model[0].weight.numel(),)
    # init: mean log((1-p)/p) = log 4 for the default p = 0.2, std 0.01
    assert (model[3].log_alpha.mean() - math.log(4)).abs() < 0.01
    assert 0.005 < model[3].log_alpha.std() < 0.02
    gates = model[0].log_alpha
    method.attach(model)
    assert model[0].log_alpha is gates and len(list(model.parameters())) == len(keys)
    # pickles, deep-copies and reloads into a freshly attached model
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone[0].log_alpha, gates)
    copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = convnet()
    attached(fresh).attach(fresh)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh[0].log_alpha, gates)


def test_eval_forward_uses_the_deterministic_gate_and_train_forward_samples() -> None:
    model = mlp()
    attached(model)
    layer = model[0]
    with torch.no_grad():
        layer.log_alpha.uniform_(-3, 3)
    x = torch.randn(4, 6)
    layer.eval()
    z = deterministic_gate(layer.log_alpha, GAMMA, ZETA).view(layer.weight.shape)
    expected = F.linear(x, layer.weight * z, layer.bias)
    assert torch.equal(layer(x), expected) and torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    assert not torch.allclose(a, layer(x))


def test_penalty_is_lambda_over_n_times_expected_l0_and_trains_the_gates() -> None:
    model = mlp()
    method = attached(model, lam=0.3, weight_decay=0.0)
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.log_alpha.uniform_(-2, 2)
    expected = sum(prob_nonzero(m.log_alpha.detach(), BETA, GAMMA, ZETA).sum() for m in (model[0], model[2]))
    penalty = method.penalty(model)
    assert penalty.item() == pytest.approx(0.3 / N_TRAIN * float(expected), rel=1e-6)
    penalty.backward()
    assert (model[0].log_alpha.grad > 0).all()  # gradient descent lowers every log α


def test_weight_decay_term_is_reweighted_by_the_gate_probability() -> None:
    model = mlp()
    method = attached(model, lam=0.0, weight_decay=0.1, bias_decay=False)  # the weights' term alone
    expected = sum(
        (prob_nonzero(m.log_alpha, BETA, GAMMA, ZETA) * 0.05 * m.weight.reshape(-1) ** 2).sum().item()
        for m in (model[0], model[2])
    )
    assert method.penalty(model).item() == pytest.approx(float(expected), rel=1e-6)
    method.penalty(model).backward()
    assert model[0].bias.grad is None and model[2].bias.grad is None


@pytest.mark.parametrize("gates", ["weight", "neuron"])
def test_bias_decay_is_the_authors_l2_on_biases_reweighted_where_gated(gates: str) -> None:
    """As in AMLab-Amsterdam/L0_regularization: (wd/2)·b² on a Linear bias, and on a conv bias
    behind a neuron gate (wd/2)·b²·P(z ≠ 0) of its channel; the default."""
    assert L0Params().bias_decay is True
    model = convnet()
    method = attached(model, gates=gates, lam=0.0, weight_decay=0.1)
    conv, fc = model[0], model[3]
    without = L0HardConcrete(L0Params(gates=gates, lam=0.0, weight_decay=0.1, bias_decay=False), context())
    with torch.no_grad():
        conv.log_alpha.uniform_(-2, 2)
        conv_on = prob_nonzero(conv.log_alpha, BETA, GAMMA, ZETA) if gates == "neuron" else 1.0
        expected = (conv_on * 0.05 * conv.bias ** 2).sum() + (0.05 * fc.bias ** 2).sum()
        assert (method.penalty(model) - without.penalty(model)).item() == pytest.approx(float(expected), rel=1e-5)
    method.penalty(model).backward()
    torch.testing.assert_close(fc.bias.grad, 0.1 * fc.bias.detach())  # d/db (wd/2)·b² = wd·b
    torch.testing.assert_close(conv.bias.grad, 0.1 * conv.bias.detach() * conv_on)


def test_neuron_gates_count_the_group_size_in_the_penalty() -> None:
    model = convnet()
    method = attached(model, gates="neuron", lam=1.0, weight_decay=0.0)
    conv, fc = model[0], model[3]
    assert conv.log_alpha.shape == (4,) and fc.log_alpha.shape == (64,)  # channels; input units
    with torch.no_grad():
        expected = prob_nonzero(conv.log_alpha, BETA, GAMMA, ZETA).sum() * 2 * 3 * 3
        expected = expected + prob_nonzero(fc.log_alpha, BETA, GAMMA, ZETA).sum() * 3
    assert method.penalty(model).item() == pytest.approx(float(expected) / N_TRAIN, rel=1e-6)


def test_neuron_gates_zero_whole_columns_and_channels_and_counting_sees_them() -> None:
    model = convnet()
    method = attached(model, gates="neuron")
    conv, fc = model[0], model[3]
    with torch.no_grad():
        conv.log_alpha.fill_(5.0)
        conv.log_alpha[[1, 3]] = -5.0
        fc.log_alpha.fill_(5.0)
        fc.log_alpha[:10] = -5.0
        conv.bias.fill_(0.3)
    weights = method.effective_weights(model)
    w_conv, w_fc = weights["0.weight"], weights["3.weight"]
    assert (w_conv[[1, 3]] == 0).all() and (w_conv[[0, 2]] == conv.weight[[0, 2]]).all()
    assert (w_fc[:, :10] == 0).all() and torch.equal(w_fc[:, 10:], fc.weight[:, 10:])
    report = sparsity.count_model(model, weights)
    assert report.nonzero == 2 * 2 * 9 + 3 * 54
    # the eval forward pass agrees: a switched-off channel outputs exactly 0, bias included
    model.eval()
    out = conv(torch.randn(2, 2, 6, 6))
    assert (out[:, [1, 3]] == 0).all() and (out[:, [0, 2]] != 0).any()


def test_weight_gates_prune_exactly_the_weights_whose_test_gate_is_zero() -> None:
    model = mlp()
    method = attached(model)
    layer = model[0]
    with torch.no_grad():
        layer.log_alpha.fill_(3.0)
        layer.log_alpha[:7] = -3.0
    weights = method.effective_weights(model)
    assert (weights["0.weight"].reshape(-1)[:7] == 0).all()
    assert torch.equal(weights["0.weight"].reshape(-1)[7:], layer.weight.reshape(-1)[7:])
    report = sparsity.count_model(model, weights)
    assert report.nonzero == 30 - 7 + 15
    assert method.epoch_metrics(model)["l0.gates_off"] == pytest.approx(7 / 45)


def test_after_step_clamps_log_alpha_to_the_papers_range() -> None:
    model = mlp()
    method = attached(model)
    with torch.no_grad():
        model[0].log_alpha[0] = -50.0
        model[0].log_alpha[1] = 50.0
    method.after_step(model)
    assert model[0].log_alpha[0].item() == pytest.approx(math.log(1e-2))
    assert model[0].log_alpha[1].item() == pytest.approx(math.log(1e2))


@pytest.mark.parametrize("gates, group", [("weight", 1), ("neuron", 5)])
def test_gate_lr_scale_multiplies_the_gate_gradient_per_weight(gates: str, group: int) -> None:
    model = mlp()
    method = attached(model, gates=gates, gate_lr_scale=10.0)
    method.penalty(model).backward()
    before = model[0].log_alpha.grad.clone()
    weight_grad = model[0].weight.grad.clone()
    method.after_backward(model, torch.zeros(1, 6), torch.zeros(1, dtype=torch.long))
    assert torch.allclose(model[0].log_alpha.grad, 10 / group * before)  # fc1: 5 weights per input unit
    assert torch.equal(model[0].weight.grad, weight_grad)


@pytest.mark.parametrize(
    "params",
    [{"gates": "row"}, {"relaxation": "gumbel"}, {"droprate_init": 1.0}, {"lam": -1.0}, {"temperature": 0.0}],
)
def test_bad_params_raise(params: dict) -> None:
    with pytest.raises(ValueError):
        L0Params(**params)


def test_fit_trains_and_resumes_with_gates() -> None:
    from study.data import load_dataset
    from study.train import TrainConfig, fit

    data = load_dataset("synthetic", shape="1x6x6", num_classes=3, n_train=120, n_test=40)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, reach_epochs=1)

    def run(resume=None, epochs=2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
        ctx = MethodContext(train_size=len(data.train), num_classes=3, epochs=2, steps_per_epoch=4)
        method = L0HardConcrete(L0Params(gate_lr_scale=100.0), ctx)
        saved = []
        cfg = TrainConfig(**{**config.__dict__, "epochs": epochs})
        callback = type("C", (), {"on_epoch_end": lambda self, r, ck: saved.append(copy.deepcopy(ck()))})()
        result = fit(model, method, data, cfg, callbacks=[callback], resume=resume)
        return result, saved

    full, saved = run()
    assert full.status == "finished" and "l0.expected_density" in full.history[-1]
    assert "1.log_alpha" in saved[0]["model"]
    resumed, _ = run(resume=saved[0])
    assert resumed.history[-1]["test_loss"] == pytest.approx(full.history[-1]["test_loss"])
