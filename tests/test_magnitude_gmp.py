"""magnitude (Han et al.) and gmp (Zhu & Gupta): thresholds, schedules, masks, resume."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.gmp import GradualMagnitude, GradualMagnitudeParams, gmp_sparsity, magnitude_masks
from baselines.magnitude import (
    Magnitude,
    MagnitudeParams,
    han_threshold,
    parse_layer_quality,
    round_quality,
)
from study import sparsity
from study.method import MethodContext

CONTEXT = MethodContext(train_size=100, num_classes=3, epochs=50, steps_per_epoch=4)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(20, 30)
        self.fc2 = nn.Linear(30, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def train_steps(model: nn.Module, method, steps: int = 3, seed: int = 0) -> None:
    """A few SGD-with-momentum steps through the method's hooks, as the loop does."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        penalty = method.penalty(model)
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad()
        loss.backward()
        method.after_backward(model, x, y)
        opt.step()
        method.after_step(model)


def zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: w.detach() == 0 for n, w in sparsity.prunable_weights(model).items()}


# -- magnitude (Han et al. 2015) ------------------------------------------------------


def test_han_threshold_is_quality_times_std() -> None:
    torch.manual_seed(3)
    w = torch.randn(40, 10)
    assert han_threshold(w, 1.5) == pytest.approx(1.5 * w.std().item())
    keep = w.abs() > 0.5
    assert han_threshold(w, 0.7, keep, "kept") == pytest.approx(0.7 * w[keep].std().item())
    assert han_threshold(w, 0.7, keep, "all") == pytest.approx(0.7 * w.std().item())
    assert han_threshold(w, 2.0, torch.zeros_like(w, dtype=torch.bool), "kept") == 0.0
    with pytest.raises(ValueError, match="std_over"):
        han_threshold(w, 1.0, None, "median")


def test_quality_parsing_and_schedule() -> None:
    assert parse_layer_quality("fc1:1.0, fc2:0.8") == {"fc1": 1.0, "fc2": 0.8}
    assert parse_layer_quality({"fc1": 2}) == {"fc1": 2.0}
    assert parse_layer_quality("") == {}
    with pytest.raises(ValueError, match="layer_quality"):
        parse_layer_quality("fc1=1.0")
    with pytest.raises(ValueError, match="layer_quality"):
        parse_layer_quality("fc1:abc")
    assert MagnitudeParams(layer_quality={"fc1": 1.5}).layer_quality == "fc1:1.5"
    assert round_quality(1.0, 0, 0.5) == 1.0
    assert round_quality(1.0, 3, 0.5) == 2.5
    with pytest.raises(ValueError, match="rounds"):
        MagnitudeParams(rounds=0)
    with pytest.raises(ValueError, match="std_over"):
        MagnitudeParams(std_over="median")
    with pytest.raises(ValueError, match="fc9"):
        Magnitude(MagnitudeParams(layer_quality="fc9:1.0"), CONTEXT).attach(Net())


def test_first_round_prunes_below_quality_times_layer_std() -> None:
    model = Net()
    method = Magnitude(MagnitudeParams(quality=0.8, layer_quality="fc2:0.3", rounds=2, retrain_epochs=2), CONTEXT)
    method.attach(model)
    before = {n: w.detach().clone() for n, w in sparsity.prunable_weights(model).items()}
    method.end_epoch(model, 1, "reach")
    assert not any(z.any() for z in zeros(model).values())  # nothing pruned while reaching
    method.end_epoch(model, 2, "sparsify")  # first sparsify epoch: round 0
    for name, q in (("fc1.weight", 0.8), ("fc2.weight", 0.3)):
        w = before[name]
        expected_pruned = w.abs() < q * w.std()
        assert torch.equal(zeros(model)[name], expected_pruned)
        assert torch.equal(method.masks[name], ~expected_pruned)


def test_rounds_at_scheduled_epochs_and_no_regrowth() -> None:
    model = Net()
    retrain, rounds = 3, 3
    method = Magnitude(
        MagnitudeParams(quality=0.5, quality_growth=0.5, rounds=rounds, retrain_epochs=retrain), CONTEXT
    )
    method.attach(model)
    for epoch in (1, 2):
        train_steps(model, method, seed=epoch)
        method.end_epoch(model, epoch, "reach")
    assert method.rounds_done == 0
    prune_epochs, prev = [], zeros(model)
    for s in range(1, 16):  # sparsify epochs
        train_steps(model, method, seed=100 + s)
        assert all(torch.equal(prev[n] & ~z, torch.zeros_like(z)) for n, z in zeros(model).items())
        rounds_before = method.rounds_done
        method.end_epoch(model, 2 + s, "sparsify")
        now = zeros(model)
        # pruned weights never regrow, and the masks agree with the zeros
        for name in now:
            assert torch.all(now[name][prev[name]])
            assert torch.equal(~method.masks[name], now[name])
        if method.rounds_done > rounds_before:
            prune_epochs.append(s)
            assert sum(int(z.sum()) for z in now.values()) > sum(int(z.sum()) for z in prev.values())
        prev = now
    assert prune_epochs == [1, 1 + retrain, 1 + 2 * retrain]
    assert method.rounds_done == rounds


def test_magnitude_std_over_kept_uses_unpruned_weights() -> None:
    model = Net()
    method = Magnitude(MagnitudeParams(quality=1.0, quality_growth=0.0, std_over="kept", retrain_epochs=1), CONTEXT)
    method.end_epoch(model, 1, "sparsify")
    w = model.fc1.weight.detach().clone()
    keep = method.masks["fc1.weight"]
    method.end_epoch(model, 2, "sparsify")  # no training in between: only the std changes
    assert torch.equal(method.masks["fc1.weight"], keep & (w.abs() >= w[keep].std()))


def test_magnitude_state_dict_resumes_schedule() -> None:
    params = MagnitudeParams(quality=0.5, rounds=3, retrain_epochs=2)
    model = Net()
    method = Magnitude(params, CONTEXT)
    for s in range(1, 4):
        method.end_epoch(model, s, "sparsify")
    state = method.state_dict()
    restored = Magnitude(params, CONTEXT)
    restored.load_state_dict(state)
    assert (restored.sparsify_epochs, restored.rounds_done) == (3, 2)
    assert all(torch.equal(restored.masks[n], m) for n, m in method.masks.items())
    restored.end_epoch(model, 4, "sparsify")
    assert restored.rounds_done == 2  # sparsify epoch 4 is a retrain epoch
    restored.end_epoch(model, 5, "sparsify")
    assert restored.rounds_done == 3


def test_magnitude_lam_is_l2() -> None:
    model = Net()
    assert Magnitude(MagnitudeParams(), CONTEXT).penalty(model) is None
    value = Magnitude(MagnitudeParams(lam=0.2), CONTEXT).penalty(model)
    expected = 0.1 * (model.fc1.weight.pow(2).sum() + model.fc2.weight.pow(2).sum())
    torch.testing.assert_close(value, expected)


# -- gmp (Zhu & Gupta 2017) -------------------------------------------------------------


def test_gmp_sparsity_matches_the_cubic_formula() -> None:
    s_i, s_f, t0, dt, n = 0.1, 0.9, 3, 2, 5
    assert gmp_sparsity(t0 - 1, s_i, s_f, t0, dt, n) == 0.0
    for k in range(n + 1):
        t = t0 + k * dt
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert gmp_sparsity(t, s_i, s_f, t0, dt, n) == pytest.approx(expected)
        if k < n:  # held constant between pruning steps
            assert gmp_sparsity(t + dt - 1, s_i, s_f, t0, dt, n) == pytest.approx(expected)
    assert gmp_sparsity(t0, s_i, s_f, t0, dt, n) == pytest.approx(s_i)
    assert gmp_sparsity(t0 + n * dt, s_i, s_f, t0, dt, n) == pytest.approx(s_f)
    assert gmp_sparsity(t0 + n * dt + 100, s_i, s_f, t0, dt, n) == pytest.approx(s_f)
    assert gmp_sparsity(t0, s_i, s_f, t0, dt, 0) == s_f
    values = [gmp_sparsity(t, s_i, s_f, t0, dt, n) for t in range(t0, t0 + n * dt + 1)]
    assert values == sorted(values)


def test_magnitude_masks_layer_and_global() -> None:
    w = {"a.weight": torch.tensor([[0.1, -0.5], [0.3, -0.2]]), "b.weight": torch.tensor([0.05, 0.9, -0.04, 0.6])}
    layer = magnitude_masks(w, {}, 0.5, "layer")
    assert layer["a.weight"].tolist() == [[False, True], [True, False]]
    assert layer["b.weight"].tolist() == [False, True, False, True]
    glob = magnitude_masks(w, {}, 0.5, "global")  # keep 4 of 8: 0.9, 0.6, 0.5, 0.3
    assert glob["a.weight"].tolist() == [[False, True], [True, False]]
    assert glob["b.weight"].tolist() == [False, True, False, True]
    glob = magnitude_masks(w, {}, 0.75, "global")  # keep 2: 0.9, 0.6
    assert not glob["a.weight"].any()
    # a pruned weight stays pruned even when it is now the largest
    masks = {"b.weight": torch.tensor([True, False, True, True])}
    again = magnitude_masks(w, masks, 0.5, "layer")
    assert again["b.weight"].tolist() == [True, False, False, True]  # 0.9 masked: keep 0.6, 0.05
    assert not again["b.weight"][1]
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(w, {}, 0.5, "row")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gmp_follows_schedule_and_reaches_target(scope: str) -> None:
    params = GradualMagnitudeParams(
        target_sparsity=0.8, initial_sparsity=0.2, start=2, frequency=2, steps=3, scope=scope
    )
    model = Net()
    method = GradualMagnitude(params, CONTEXT)
    method.attach(model)
    train_steps(model, method)
    method.end_epoch(model, 1, "reach")
    assert method.masks == {}
    total = sum(w.numel() for w in sparsity.prunable_weights(model).values())
    prev = zeros(model)
    for t in range(1, 12):
        train_steps(model, method, seed=t)
        method.end_epoch(model, 1 + t, "sparsify")
        expected = gmp_sparsity(t, 0.2, 0.8, 2, 2, 3)
        now = zeros(model)
        pruned = sum(int(z.sum()) for z in now.values())
        if scope == "layer":
            for name, z in now.items():
                n = z.numel()
                assert int(z.sum()) == int(round(expected * n)), (t, name)
        else:
            assert pruned == int(round(expected * total))
        for name in now:
            assert torch.all(now[name][prev[name]])  # no regrowth
        prev = now
    report = sparsity.count_model(model)
    assert report.sparsity == pytest.approx(0.8, abs=1.0 / total)
    assert method.current_target == pytest.approx(0.8)


def test_gmp_masks_hold_through_momentum_and_resume() -> None:
    params = GradualMagnitudeParams(target_sparsity=0.6, start=1, frequency=1, steps=2)
    model = Net()
    method = GradualMagnitude(params, CONTEXT)
    method.end_epoch(model, 1, "sparsify")
    method.end_epoch(model, 2, "sparsify")
    pruned = zeros(model)
    assert math.isclose(sum(int(z.sum()) for z in pruned.values()) / sum(z.numel() for z in pruned.values()),
                        gmp_sparsity(2, 0.0, 0.6, 1, 1, 2), abs_tol=0.01)
    train_steps(model, method, steps=5)
    for name, z in zeros(model).items():
        assert torch.equal(z, pruned[name])  # pruned exactly zero, the rest moved off zero
    restored = GradualMagnitude(params, CONTEXT)
    restored.load_state_dict(method.state_dict())
    assert (restored.sparsify_epochs, restored.current_target) == (2, method.current_target)
    restored.end_epoch(model, 3, "sparsify")
    assert restored.current_target == pytest.approx(0.6)


def test_gmp_invalid_params() -> None:
    for bad in ({"target_sparsity": 1.0}, {"initial_sparsity": 0.95}, {"frequency": 0}, {"start": 0}, {"steps": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GradualMagnitudeParams(**bad)
    with pytest.raises(ValueError, match="scope"):
        GradualMagnitudeParams(scope="row")
