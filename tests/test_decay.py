"""`decay`: the sensitivity update with S ≡ 0. A sensitivity run whose every S is forced to 0
trains bit for bit like `decay`; one step by hand; the defaults and checks are the sensitivity's."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.decay import Decay, DecayParams, decayed_parameters
from study.data import load_dataset
from study.method import MethodContext
from study.methods import default_params
from study.sensitivity import SensitivityMethod, SensitivityParams, sensitivity
from study.train import train_step
from tiny_runs import tiny_run

CONTEXT = MethodContext(train_size=100, num_classes=3, epochs=5, steps_per_epoch=4)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


def test_defaults_are_the_sensitivity_methods() -> None:
    ours, theirs = default_params("decay"), default_params("sensitivity-unspec")
    assert ours == {key: theirs[key] for key in ("lam", "threshold", "scope")}


@pytest.mark.parametrize("bad", [{"lam": -1e-3}, {"lam": 1.0}, {"lam": math.nan}, {"lam": True},
                                 {"threshold": -0.1}, {"threshold": math.inf}, {"scope": "biases"}])
def test_invalid_params_are_rejected_as_for_the_sensitivity_methods(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SensitivityParams(**bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        DecayParams(**bad)


@pytest.mark.parametrize("scope", ["weights", "all"])
def test_decayed_parameters_are_the_keys_of_the_sensitivity(scope: str) -> None:
    model = small_model()
    x, y = torch.randn(4, 1, 5, 5), torch.randint(0, 3, (4,))
    assert list(decayed_parameters(model, scope)) == list(sensitivity(model, x, y, scope=scope))


@pytest.mark.parametrize("scope", ["weights", "all"])
def test_one_step_by_hand(scope: str) -> None:
    """One SGD step: w ← (w − lr·∂L/∂w) − λ·w_before; λ not multiplied by lr; masks hold."""
    lam, lr = 0.1, 0.5
    model = small_model()
    method = Decay(DecayParams(lam=lam, threshold=0.0, scope=scope), CONTEXT)
    method.attach(model)
    method.prune(model, {"3.weight": torch.rand(3, 18) > 0.3})  # some weights pruned already
    x, y = torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = dict(zip(before, torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))))

    train_step(model, method, torch.optim.SGD(model.parameters(), lr=lr), x, y)

    decayed = {"0.weight", "3.weight"} | ({"0.bias", "3.bias"} if scope == "all" else set())
    for name, p in model.named_parameters():
        expected = before[name] - lr * grads[name] - (lam * before[name] if name in decayed else 0)
        if name in method.masks:
            expected = expected * method.masks[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    assert torch.all(model[3].weight[~method.masks["3.weight"]] == 0)


def test_threshold_prunes_only_at_the_end_of_sparsify_epochs() -> None:
    model = small_model()
    method = Decay(DecayParams(threshold=0.15), CONTEXT)
    before = model[3].weight.detach().clone()
    method.end_epoch(model, 1, "reach")
    assert torch.equal(model[3].weight.detach(), before)
    method.end_epoch(model, 2, "sparsify")
    small = before.abs() < 0.15
    assert small.any() and torch.all(model[3].weight[small] == 0)
    assert torch.equal(model[3].weight[~small], before[~small])


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", shape="1x6x6", num_classes=3, n_train=160, n_test=40)



def _same_run(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]]) -> bool:
    (state_a, hist_a), (state_b, hist_b) = a, b
    if state_a.keys() != state_b.keys() or not all(torch.equal(state_a[k], state_b[k]) for k in state_a):
        return False
    shared = (set(hist_a[0]) & set(hist_b[0])) - {"epoch_seconds"}
    return all(ra[k] == rb[k] or (ra[k] != ra[k] and rb[k] != rb[k])  # NaN == NaN here
               for ra, rb in zip(hist_a, hist_b) for k in shared)


@pytest.mark.parametrize("scope", ["weights", "all"])
@pytest.mark.parametrize("kind", ["sensitivity-unspec", "sensitivity-spec"])
def test_sensitivity_with_every_s_zero_is_decay_bit_for_bit(kind: str, scope: str, data,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"lam": 0.02, "threshold": 0.05, "scope": scope}
    control = tiny_run("decay", params, data)
    assert control[1][-1]["compression"] > 1.0  # the threshold did prune: the comparison covers it
    assert not _same_run(tiny_run(kind, params, data), control)  # the real S makes a difference

    real = SensitivityMethod.step_sensitivity  # S of the step, from its forward or the separate pass
    monkeypatch.setattr(SensitivityMethod, "step_sensitivity",
                        lambda self, model, x, y: {k: torch.zeros_like(s) for k, s in real(self, model, x, y).items()})
    assert _same_run(tiny_run(kind, params, data), control)
