"""`lobster`: S = |∂L/∂w| of the step's data loss; w ← w − λ·w·max(0, 1 − S) from the weights
after the optimizer step (the authors' order). A step by hand, the options, the threshold, and
the matched control: with S ≡ 0 and the pre-step order it is `decay` bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import baselines.lobster as lobster_module
from baselines.lobster import Lobster, LobsterParams, loss_sensitivity
from study.data import load_dataset
from study.method import MethodContext
from study.methods import build_method, default_params
from study.train import train_step
from tiny_runs import tiny_run

CONTEXT = MethodContext(train_size=100, num_classes=3, epochs=5, steps_per_epoch=4)


def test_one_step_by_hand_single_layer() -> None:
    """One Linear layer, one sample: ∂L/∂W = (p − e_y) xᵀ and ∂L/∂b = p − e_y by hand; the input
    is large, so some |∂L/∂w| exceed 1 (no decay there) and the clamp is exercised."""
    lam, lr = 0.1, 0.01
    layer = nn.Linear(2, 3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.05]]))
        layer.bias.copy_(torch.tensor([0.1, -0.1, 0.0]))
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    x, y = torch.tensor([[3.0, -0.25]], dtype=torch.float64), torch.tensor([1])
    p = torch.softmax(w0 @ x[0] + b0, 0)
    err = p - F.one_hot(y, 3)[0].double()
    g_w, g_b = torch.outer(err, x[0]), err
    assert (g_w.abs() > 1).any() and (g_w.abs() < 1).any()

    method = Lobster(LobsterParams(lam=lam, threshold=0.0), CONTEXT)
    train_step(layer, method, torch.optim.SGD(layer.parameters(), lr=lr), x, y)

    for got, w, g in ((layer.weight, w0, g_w), (layer.bias, b0, g_b)):
        w_sgd = w - lr * g
        expected = w_sgd - lam * w_sgd * (1 - g.abs()).clamp(min=0)  # post-step weights, scope all
        torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-12)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()


def recorded_step(model: nn.Module, method: Lobster, optimizer: torch.optim.Optimizer,
                  x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict, dict]:
    """One train_step that records, per parameter, the weights before, the .grad the optimizer
    used and the weights right after the optimizer step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: dict[str, dict] = {}
    step = optimizer.step

    def spy(*args, **kwargs):
        seen["grad"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        out = step(*args, **kwargs)
        seen["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return out

    optimizer.step = spy
    train_step(model, method, optimizer, x, y)
    return before, seen["grad"], seen["after"]


@pytest.mark.parametrize("scope", ["all", "weights"])
@pytest.mark.parametrize("decay_from", ["post-step", "pre-step"])
@pytest.mark.parametrize("rescaled", [False, True])
def test_one_step_options(scope: str, decay_from: str, rescaled: bool) -> None:
    """Conv + Linear under SGD with momentum, second step (the buffer is not the gradient):
    S is the data loss's gradient, autograd's; the decay is taken from the weights the option
    names; biases only with scope all; rescaled divides S by its per-tensor maximum."""
    lam = 0.05
    model = small_model()
    method = Lobster(LobsterParams(lam=lam, threshold=0.0, scope=scope, decay_from=decay_from,
                                   rescaled=rescaled), CONTEXT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    train_step(model, method, optimizer, x, y)
    x, y = 4 * torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64), torch.tensor([2, 2, 1, 0, 0, 1])
    loss_grads = dict(zip([n for n, _ in model.named_parameters()],
                          torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))))
    before, grads, after = recorded_step(model, method, optimizer, x, y)

    decayed = {"0.weight", "3.weight"} | ({"0.bias", "3.bias"} if scope == "all" else set())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], loss_grads[name], rtol=1e-12, atol=0)
        s = loss_grads[name].abs()
        if rescaled:
            s = s / s.max()
            assert s.max() == 1
        source = after[name] if decay_from == "post-step" else before[name]
        expected = after[name] - (lam * source * (1 - s).clamp(min=0) if name in decayed else 0)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_rescaled_floor_and_missing_grad() -> None:
    """A parameter without .grad has S = 0; a zero gradient stays S = 0 when rescaled."""
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    b.grad = torch.zeros(3)
    for rescaled in (False, True):
        s = loss_sensitivity({"a": a, "b": b}, rescaled)
        assert torch.equal(s["a"], torch.zeros(2)) and torch.equal(s["b"], torch.zeros(3))


def test_masks_hold_after_the_update() -> None:
    model = small_model()
    method = Lobster(LobsterParams(lam=0.1, threshold=0.0), CONTEXT)
    method.prune(model, {"3.weight": torch.rand(3, 18) > 0.4})
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.5), x, y)
    assert torch.all(model[3].weight[~method.masks["3.weight"]] == 0)
    assert torch.all(model[3].weight[method.masks["3.weight"]] != 0)


def test_threshold_prunes_weights_only_at_the_end_of_sparsify_epochs() -> None:
    model = small_model()
    method = Lobster(LobsterParams(threshold=0.15), CONTEXT)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.end_epoch(model, 1, "reach")
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    method.end_epoch(model, 2, "sparsify")
    small = before["3.weight"].abs() < 0.15
    assert small.any() and torch.all(model[3].weight[small] == 0)
    assert torch.equal(model[3].bias.detach(), before["3.bias"])  # biases are not thresholded


def test_defaults_are_the_authors_reading() -> None:
    params = default_params("lobster")
    assert params["scope"] == "all" and params["decay_from"] == "post-step" and params["rescaled"] is False
    decay = default_params("decay")
    assert (params["lam"], params["threshold"]) == (decay["lam"], decay["threshold"])


@pytest.mark.parametrize("bad", [{"lam": -1e-3}, {"lam": 1.0}, {"lam": math.nan}, {"threshold": math.inf},
                                 {"scope": "biases"}, {"decay_from": "later"}, {"rescaled": "yes"}])
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        LobsterParams(**bad)


def test_string_params_from_the_command_line() -> None:
    values = {"rescaled": "true", "scope": "weights", "decay_from": "pre-step"}
    method = build_method("lobster", values, CONTEXT)
    assert method.params == LobsterParams(rescaled=True, scope="weights", decay_from="pre-step")
    with pytest.raises(ValueError, match="decay_from"):
        build_method("lobster", {"decay_from": "after"}, CONTEXT)



@pytest.mark.parametrize("scope", ["weights", "all"])
def test_with_s_zero_and_the_pre_step_order_it_is_decay_bit_for_bit(scope: str, monkeypatch) -> None:
    data = load_dataset("synthetic", shape="1x6x6", num_classes=3, n_train=160, n_test=40)
    params = {"lam": 0.02, "threshold": 0.05, "scope": scope}
    control = tiny_run("decay", params, data)
    assert control[1][-1]["compression"] > 1.0  # the threshold pruned: the comparison covers it
    ours = tiny_run("lobster", {**params, "decay_from": "pre-step"}, data)
    assert not all(torch.equal(ours[0][k], control[0][k]) for k in control[0])  # S matters

    monkeypatch.setattr(lobster_module, "loss_sensitivity",
                        lambda params, rescaled=False: {n: torch.zeros_like(p) for n, p in params.items()})
    zero = tiny_run("lobster", {**params, "decay_from": "pre-step"}, data)
    assert all(torch.equal(zero[0][k], control[0][k]) for k in control[0])
    shared = set(control[1][0]) & set(zero[1][0])  # lobster adds its sens.* statistics
    assert [{k: r[k] for k in shared} for r in zero[1]] == [{k: r[k] for k in shared} for r in control[1]]
    assert "sens.1.q50" in zero[1][0] and zero[1][0]["sens.1.q50"] == 0


def test_epoch_metrics_describe_the_gradient_of_the_remaining_weights() -> None:
    model = small_model()
    method = Lobster(LobsterParams(lam=0.0, threshold=0.0), CONTEXT)
    method.prune(model, {"3.weight": torch.rand(3, 18) > 0.5})
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    g = torch.autograd.grad(F.cross_entropy(model(x), y), model[3].weight)[0].abs()
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
    metrics = method.epoch_metrics(model)
    assert metrics["sens.3.mean"] == pytest.approx(g[method.masks["3.weight"]].mean().item())
    assert "sens.0.mean" in metrics and not any(".bias" in k for k in metrics)
