"""The sensitivity methods: the update rule, masks, thresholding, metrics and params."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study import runformat as rf
from study.method import Method, MethodContext
from study.sensitivity import (
    SensitivityMethod,
    SensitivityParams,
    SensitivitySpec,
    SensitivityUnspec,
    insensitivity,
    insensitivity_decay,
    sensitivity,
)
from study.train import train_step  # the loop's own step: S comes from its forward

CONTEXT = MethodContext(train_size=8, num_classes=3, epochs=2, steps_per_epoch=1)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_insensitivity_decay_hand_values():
    w = torch.tensor([1.0, -2.0, 3.0, 0.5])
    s = torch.tensor([0.0, 0.5, 2.0, 1.0])
    assert insensitivity(s).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert insensitivity_decay(w, s, 0.1).tolist() == pytest.approx([0.1, -0.1, 0.0, 0.0])


@pytest.mark.parametrize("cls,scope", [(SensitivityUnspec, "weights"), (SensitivitySpec, "all"),
                                       (SensitivityUnspec, "all")])
def test_one_step_equals_the_hand_written_rule(cls, scope):
    lam, lr = 0.05, 0.1
    model = tiny_model()
    x, y = tiny_batch()
    reference = copy.deepcopy(model)

    method = cls(SensitivityParams(lam=lam, threshold=0.0, scope=scope), CONTEXT)
    method.attach(model)
    model.train()
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=lr), x, y)

    # By hand: w_new = w_old − lr·∇L(w_old) − λ·w_old·max(0, 1 − S(w_old)).
    s = sensitivity(reference, x, y, kind=cls.kind, scope=scope)
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    for (name, w_old), g, w_new in zip(reference.named_parameters(), grads, model.parameters()):
        want = w_old.detach() - lr * g
        if name in s:
            want = want - lam * w_old.detach() * (1 - s[name]).clamp(min=0)
        assert torch.allclose(w_new, want, rtol=1e-12, atol=1e-14), name
    assert ("0.bias" in s) == (scope == "all")
    assert s["0.weight"].abs().sum() > 0 and (s["0.weight"] < 1).any()  # the decay did something


def test_masks_keep_pruned_weights_at_zero():
    model = tiny_model()
    x, y = tiny_batch()
    method = SensitivityUnspec(SensitivityParams(lam=0.1, threshold=0.0), CONTEXT)
    method.attach(model)
    keep = {name: torch.rand_like(w) > 0.5 for name, w in
            {"0.weight": model[0].weight, "2.weight": model[2].weight}.items()}
    method.prune(model, keep)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        train_step(model, method, optimizer, x, y)
    for name, mask in keep.items():
        w = dict(model.named_parameters())[name]
        assert torch.all(w[~mask] == 0) and torch.all(w[mask] != 0)


def test_thresholding_only_in_the_sparsify_phase():
    model = tiny_model()
    method = SensitivitySpec(SensitivityParams(threshold=0.2), CONTEXT)
    method.attach(model)
    before = model[0].weight.detach().clone()
    method.end_epoch(model, 1, "reach")
    assert torch.equal(model[0].weight, before) and not method.masks
    method.end_epoch(model, 2, "sparsify")
    small = before.abs() < 0.2
    assert small.any() and torch.all(model[0].weight[small] == 0)
    assert torch.equal(model[0].weight[~small], before[~small])
    assert torch.equal(method.masks["0.weight"], ~small)


def test_epoch_metrics_describe_the_epoch_mean_sensitivity():
    """The statistics are of each weight's S averaged over the epoch's steps, over the weights
    not pruned; a new epoch starts new sums."""
    model = tiny_model()
    x, y = tiny_batch()
    x[:, 1] = 0  # a dead input: the weights it feeds have S = 0 at every step
    method = SensitivityUnspec(SensitivityParams(lam=0.01), CONTEXT)
    method.attach(model)
    assert method.epoch_metrics(model) == {} and method.epoch_sensitivity() == {}
    method.prune(model, {"0.weight": model[0].weight.detach().abs() > 0.1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []  # S of each step at its pre-step weights, by the separate pass
    for batch in (slice(0, 5), slice(5, 8), slice(0, 8)):  # uneven batches, as an epoch's last
        steps.append(sensitivity(model, x[batch], y[batch], kind="unspec"))
        train_step(model, method, optimizer, x[batch], y[batch])
    metrics = method.epoch_metrics(model)
    assert set(metrics) == {rf.sens_key(layer, stat) for layer in ("0", "2") for stat in rf.SENS_STATS}
    assert "frac_zero" in rf.SENS_STATS
    mean = {name: sum(s[name] for s in steps) / 3 for name in steps[0]}
    got = method.epoch_sensitivity()
    assert set(got) == set(mean) and all(torch.allclose(got[n], mean[n], rtol=1e-12) for n in mean)
    s = mean["0.weight"][method.masks["0.weight"]]  # unpruned weights only
    want = torch.quantile(s, torch.tensor([0.1, 0.5, 0.9], dtype=s.dtype)).tolist()
    got_q = [metrics["sens.0.q10"], metrics["sens.0.q50"], metrics["sens.0.q90"]]
    assert got_q == pytest.approx(want, rel=1e-6)  # reported in float32
    assert metrics["sens.0.mean"] == pytest.approx(s.mean().item())
    assert metrics["sens.0.frac_ge1"] == pytest.approx((s >= 1).double().mean().item())
    dead = method.masks["0.weight"][:, 1].sum().item()  # unpruned weights fed by the dead input
    assert dead > 0 and metrics["sens.0.frac_zero"] == pytest.approx(dead / s.numel())
    assert metrics["sens.2.frac_zero"] == 0
    # the epoch ends; its statistics stay until the next epoch's first step starts new sums
    method.end_epoch(model, 1, "reach")
    assert method.epoch_metrics(model) == metrics
    fresh = sensitivity(model, x, y, kind="unspec")
    train_step(model, method, optimizer, x, y)
    assert all(torch.allclose(method.epoch_sensitivity()[n], fresh[n], rtol=1e-12) for n in fresh)


def test_method_classes():
    assert issubclass(SensitivityUnspec, SensitivityMethod) and issubclass(SensitivityMethod, Method)
    assert SensitivityUnspec.name == "sensitivity-unspec" and SensitivityUnspec.kind == "unspec"
    assert SensitivitySpec.name == "sensitivity-spec" and SensitivitySpec.kind == "spec"
    assert "Sensitivity-Driven Regularization" in SensitivitySpec.citation
    assert SensitivityUnspec.Params is SensitivityParams
    method = SensitivityUnspec(SensitivityParams(), CONTEXT)
    method.after_step(tiny_model())  # no pending decay: a no-op


@pytest.mark.parametrize("field,value", [("lam", -1e-3), ("lam", 1.0), ("lam", float("nan")),
                                         ("threshold", -0.1), ("threshold", "0.1"),
                                         ("output", "probs"), ("aggregate", "mean"),
                                         ("scope", "bias"), ("conv", "lower"),
                                         ("class_chunk", -1), ("class_chunk", 1.5),
                                         ("class_chunk", True)])
def test_bad_params(field, value):
    with pytest.raises(ValueError, match=f"invalid {field}="):
        SensitivityParams(**{field: value})


@pytest.mark.parametrize("class_chunk,passed", [(0, None), (2, 2)])
def test_class_chunk_reaches_sensitivity_and_changes_nothing(monkeypatch, class_chunk, passed):
    model = tiny_model()
    x, y = tiny_batch()
    method = SensitivityUnspec(SensitivityParams(class_chunk=class_chunk), CONTEXT)
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["class_chunk"])
        return sensitivity(*args, **kwargs)

    monkeypatch.setattr("study.sensitivity.sensitivity", spy)
    s = method.compute_sensitivity(model, x, y)
    assert seen == [passed]  # 0 (the MLflow-friendly "automatic") becomes None
    want = sensitivity(model, x, y, kind="unspec")
    assert all(torch.allclose(s[name], want[name], rtol=1e-12, atol=0) for name in want)


def test_method_pickles_after_a_step_and_keeps_its_statistics():
    """Its cached view of the model holds a weak reference; pickling drops it and the next step
    rebuilds it (e.g. when a trainer object is sent to another process)."""
    import pickle

    model = tiny_model()
    x, y = tiny_batch()
    method = SensitivitySpec(SensitivityParams(lam=0.01), CONTEXT)
    method.attach(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, method, optimizer, x, y)
    copy_ = pickle.loads(pickle.dumps(method))
    assert copy_.epoch_metrics(model) == method.epoch_metrics(model)
    train_step(model, copy_, optimizer, x, y)
    assert copy_._steps == 2
