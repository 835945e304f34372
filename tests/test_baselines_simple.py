"""weight-decay and l1: the penalties match their formulas and gradients; thresholding
happens only in the sparsify phase and pruned weights stay at zero."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.l1 import L1, L1Params
from baselines.penalties import l1_penalty, l2_penalty
from baselines.weight_decay import WeightDecay, WeightDecayParams
from study.method import MethodContext

CONTEXT = MethodContext(train_size=100, num_classes=3, epochs=5, steps_per_epoch=4)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


def test_l2_penalty_formula_and_gradient() -> None:
    torch.manual_seed(1)
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    lam = 0.3
    value = l2_penalty([a, b], lam)
    expected = lam / 2 * (a.detach().pow(2).sum() + b.detach().pow(2).sum())
    torch.testing.assert_close(value.detach(), expected)
    ga, gb = torch.autograd.grad(value, [a, b])
    torch.testing.assert_close(ga, lam * a.detach())
    torch.testing.assert_close(gb, lam * b.detach())


def test_l1_penalty_formula_and_gradient() -> None:
    torch.manual_seed(2)
    a = torch.randn(4, 3)
    a[0, 0] = 0.0  # subgradient at 0 is 0
    a.requires_grad_(True)
    lam = 0.7
    value = l1_penalty([a], lam)
    torch.testing.assert_close(value.detach(), lam * a.detach().abs().sum())
    (ga,) = torch.autograd.grad(value, [a])
    torch.testing.assert_close(ga, lam * torch.sign(a.detach()))
    assert ga[0, 0] == 0


@pytest.mark.parametrize(
    ("method_cls", "params_cls", "reference"),
    [(WeightDecay, WeightDecayParams, l2_penalty), (L1, L1Params, l1_penalty)],
)
def test_penalty_covers_prunable_weights_not_biases(method_cls, params_cls, reference) -> None:
    model = small_model()
    method = method_cls(params_cls(lam=0.01), CONTEXT)
    method.attach(model)
    value = method.penalty(model)
    torch.testing.assert_close(value, reference([model[0].weight, model[2].weight], 0.01))
    value.backward()
    assert model[0].bias.grad is None and model[2].bias.grad is None
    assert model[2].weight.grad is not None
    assert method_cls(params_cls(lam=0.0), CONTEXT).penalty(model) is None


@pytest.mark.parametrize(("method_cls", "params_cls"), [(WeightDecay, WeightDecayParams), (L1, L1Params)])
def test_threshold_only_in_sparsify_and_pruned_stay_zero(method_cls, params_cls) -> None:
    model = small_model()
    threshold = 0.15
    method = method_cls(params_cls(lam=1e-3, threshold=threshold), CONTEXT)
    method.attach(model)
    before = model[2].weight.detach().clone()
    method.end_epoch(model, 1, "reach")
    torch.testing.assert_close(model[2].weight.detach(), before)  # no pruning while reaching

    method.end_epoch(model, 2, "sparsify")
    small = before.abs() < threshold
    assert small.any() and (~small).any()
    assert torch.all(model[2].weight[small] == 0)
    torch.testing.assert_close(model[2].weight[~small], before[~small])

    # SGD with momentum pushes pruned weights off zero; the masks put them back exactly.
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model)
    assert torch.all(model[2].weight[small] == 0)
    assert torch.all(model[2].weight[~small] != 0)


def test_weight_decay_step_shrinks_by_lr_lam_w() -> None:
    """One SGD step on the penalty alone is w ← (1 − lr·λ)·w."""
    model = small_model()
    method = WeightDecay(WeightDecayParams(lam=0.1, threshold=0.0), CONTEXT)
    w0 = model[2].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    method.penalty(model).backward()
    opt.step()
    torch.testing.assert_close(model[2].weight.detach(), (1 - 0.5 * 0.1) * w0)


@pytest.mark.parametrize("params_cls", [WeightDecayParams, L1Params])
@pytest.mark.parametrize("bad", [{"lam": -1.0}, {"threshold": -0.1}])
def test_invalid_params(params_cls, bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        params_cls(**bad)


def test_state_dict_round_trip_keeps_masks() -> None:
    model = small_model()
    method = L1(L1Params(threshold=0.15), CONTEXT)
    method.end_epoch(model, 1, "sparsify")
    restored = L1(L1Params(threshold=0.15), CONTEXT)
    restored.load_state_dict(method.state_dict())
    assert set(restored.masks) == {"0.weight", "2.weight"}
    for name, mask in method.masks.items():
        assert torch.equal(restored.masks[name], mask)
