"""sensitivity(): every path against brute-force per-sample Jacobians (torch.func), float64."""
from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from study.sensitivity import quantiles, sensitivity
from study.sparsity import prunable_layers

KINDS = ("unspec", "spec")
OUTPUTS = ("logits", "softmax")
AGGREGATES = ("sample", "sum", "serene", "batch")
SCOPES = ("weights", "all")
CLASSES = 3
# Classes per unspecific backward: one at a time, uneven (2 + 1), all at once, automatic.
CLASS_CHUNKS = (1, 2, 3, None)


def chunkings(kind):
    """The class_chunk values to try: chunking only applies to unspec."""
    return CLASS_CHUNKS if kind == "unspec" else (None, 1)


def jacobians(model, x, output):
    """Per-sample Jacobians dy_k(x_n)/dθ of the prunable layers' parameters: name -> (B, C, *shape)."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def y_of(p, xi):
        logits = functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)
        return logits.softmax(0) if output == "softmax" else logits

    jac = vmap(jacrev(y_of), in_dims=(None, 0))(params, x)
    prunable = {f"{layer}.{p}" for layer in prunable_layers(model) for p in ("weight", "bias")}
    return {name: j for name, j in jac.items() if name in prunable}


def combine(jac, target, kind, aggregate, scope):
    """S straight from the definition, given the full per-sample Jacobians."""
    batch, classes = next(iter(jac.values())).shape[:2]
    dtype = next(iter(jac.values())).dtype
    if kind == "unspec":
        alpha = torch.full((batch, classes), 1.0 / classes, dtype=dtype)
    else:
        alpha = F.one_hot(target, classes).to(dtype)
    out = {}
    for name, j in jac.items():
        if name.endswith(".bias") and scope == "weights":
            continue
        a = alpha.reshape(batch, classes, *([1] * (j.dim() - 2)))
        per_sample = (a * j.abs()).sum((0, 1))  # Σ_n Σ_k α |∂y_k(x_n)/∂w|
        if aggregate == "sample":
            out[name] = per_sample / batch
        elif aggregate == "sum":
            out[name] = per_sample
        elif aggregate == "serene":  # the batch-mean output's per-sample derivative, averaged
            out[name] = per_sample / batch**2
        else:
            out[name] = ((a * j).sum(0) / batch).abs().sum(0)
    return out


def brute_force(model, x, target, kind, output, aggregate, scope):
    return combine(jacobians(model, x, output), target, kind, aggregate, scope)


def assert_close(got, want, rtol=1e-6):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        scale = want[name].abs().max().clamp(min=1e-12)
        err = (got[name] - want[name]).abs().max() / scale
        assert err <= rtol, f"{name}: relative error {err:.2e}"


def mlp(bias: bool) -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 5, bias=bias), nn.ReLU(), nn.Linear(5, 4, bias=bias), nn.Tanh(),
        nn.Linear(4, CLASSES, bias=bias),
    ).double()


def convnet(bias: bool) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias), nn.ReLU(),
        nn.Conv2d(3, 4, (3, 2), dilation=(2, 1), padding=(2, 0), bias=bias), nn.Tanh(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, CLASSES, bias=bias),
    ).double()


def batch_for(model_name: str, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if model_name == "mlp" else (n, 2, 8, 9)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2, 2, 0, 1][:n])
    return x, target


@pytest.mark.parametrize("model_name,bias", [("mlp", True), ("mlp", False), ("conv", True), ("conv", False)])
def test_every_combination_matches_brute_force(model_name, bias):
    torch.manual_seed(1)
    model = mlp(bias) if model_name == "mlp" else convnet(bias)
    x, target = batch_for(model_name)
    jac = {output: jacobians(model, x, output) for output in OUTPUTS}
    for kind, output, aggregate, scope in itertools.product(KINDS, OUTPUTS, AGGREGATES, SCOPES):
        want = combine(jac[output], target, kind, aggregate, scope)
        results = [sensitivity(model, x, target, kind, output, aggregate, scope, class_chunk=chunk)
                   for chunk in chunkings(kind)]
        for got in results:
            assert_close(got, want)
            assert_close(got, results[0], rtol=1e-12)  # chunking changes nothing but rounding
        if not bias or scope == "weights":
            assert all(name.endswith(".weight") for name in got)


def test_more_conv_shapes_match_brute_force():
    """Groups, reflect padding, 'same' padding, Conv1d, and a Linear over a sequence."""
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(4, 6, 3, groups=2, padding=1, padding_mode="reflect")
            self.c2 = nn.Conv1d(6, 4, 2, padding="same", dilation=2)
            self.seq = nn.Linear(4, 3)  # applied at every position: not rank one per sample
            self.out = nn.Linear(3 * 7, CLASSES)

        def forward(self, x):
            h = torch.tanh(self.c2(torch.relu(self.c1(x))))       # (B, 4, 7)
            h = torch.tanh(self.seq(h.transpose(1, 2)))             # (B, 7, 3)
            return self.out(h.flatten(1))

    model = Net().double()
    x = torch.randn(4, 4, 7, dtype=torch.float64)
    target = torch.tensor([1, 0, 2, 2])
    jac = {output: jacobians(model, x, output) for output in OUTPUTS}
    for kind, output, aggregate in itertools.product(KINDS, OUTPUTS, AGGREGATES):
        for chunk in chunkings(kind):
            got = sensitivity(model, x, target, kind, output, aggregate, "all", class_chunk=chunk)
            assert_close(got, combine(jac[output], target, kind, aggregate, "all"))


def test_grouped_conv2d_matches_brute_force():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, stride=(1, 2)), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 3 * 2, CLASSES)).double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    target = torch.tensor([2, 0, 0])
    jac = jacobians(model, x, "logits")
    for kind, aggregate, conv in itertools.product(KINDS, AGGREGATES, ("exact", "bound")):
        for chunk in chunkings(kind):
            got = sensitivity(model, x, target, kind, "logits", aggregate, "all", conv, chunk)
            if conv == "exact" or aggregate == "batch":
                assert_close(got, combine(jac, target, kind, aggregate, "all"))
            else:  # the bound does not depend on the chunking either
                assert_close(got, sensitivity(model, x, target, kind, "logits", aggregate, "all",
                                              conv), rtol=1e-12)


def test_exact_path_chunks_give_the_same_result(monkeypatch):
    torch.manual_seed(4)
    model = convnet(True)
    x, target = batch_for("conv")
    full = sensitivity(model, x, target, "unspec")
    monkeypatch.setattr("study.sensitivity.CHUNK_ELEMENTS", 50)  # forces one (class, sample) at a time
    assert_close(sensitivity(model, x, target, "unspec"), full, rtol=1e-12)


def recording_grad(monkeypatch, fail_batched=False):
    """Patch torch.autograd.grad to record the grad_outputs shape of every call."""
    grad, calls = torch.autograd.grad, []

    def recorded(outputs, inputs, grad_outputs=None, **kwargs):
        calls.append((tuple(grad_outputs.shape), bool(kwargs.get("is_grads_batched"))))
        if fail_batched and kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recorded)
    return calls


def test_automatic_class_chunk_keeps_delta_under_the_budget(monkeypatch):
    """None: the most classes whose δ (chunk × Σ numel(z)) fit DELTA_ELEMENTS, at least one.
    (Batched backwards: a model without conv layers; with them, see the next test.)"""
    torch.manual_seed(9)
    model = mlp(True)
    x, target = batch_for("mlp")
    want = sensitivity(model, x, target, "unspec", scope="all")
    # Layer outputs per batch: (5, 5), (5, 4), (5, 3).
    per_class = 5 * 5 + 5 * 4 + 5 * 3
    calls = recording_grad(monkeypatch)
    for budget, chunks in ((3 * per_class, [3]), (3 * per_class - 1, [2, 1]),
                           (2 * per_class - 1, [1, 1, 1]), (1, [1, 1, 1])):
        monkeypatch.setattr("study.sensitivity.DELTA_ELEMENTS", budget)
        calls.clear()
        assert_close(sensitivity(model, x, target, "unspec", scope="all"), want, rtol=1e-12)
        assert calls == [((k, 5, CLASSES), True) for k in chunks]
    # An explicit chunk overrides the budget; one larger than C is all classes at once.
    for chunk, chunks in ((2, [2, 1]), (10, [3])):
        calls.clear()
        assert_close(sensitivity(model, x, target, "unspec", scope="all", class_chunk=chunk), want,
                     rtol=1e-12)
        assert calls == [((k, 5, CLASSES), True) for k in chunks]
    calls.clear()
    sensitivity(model, x, target, "spec", class_chunk=1)  # spec: one plain backward
    assert calls == [((5, CLASSES), False)]


def test_conv_models_take_one_backward_per_class(monkeypatch):
    """vmap has no batching rule for the conv and pooling backwards (it loops and copies), so a
    model with conv layers gets one plain backward per class, whatever the class chunk."""
    torch.manual_seed(9)
    model = convnet(True)
    x, target = batch_for("conv")
    want = sensitivity(model, x, target, "unspec", scope="all")
    calls = recording_grad(monkeypatch)
    for chunk in (None, 1, 2, 3):
        calls.clear()
        assert_close(sensitivity(model, x, target, "unspec", scope="all", class_chunk=chunk), want,
                     rtol=1e-12)
        assert calls == [((5, CLASSES), False)] * CLASSES


def test_fallback_without_batched_backward(monkeypatch):
    """If the batched backward is unavailable, one backward per class gives the same S."""
    torch.manual_seed(8)
    model = mlp(True)  # batched backwards apply (no conv layer)
    x, target = batch_for("mlp")
    want = sensitivity(model, x, target, "unspec", scope="all")
    grad = torch.autograd.grad

    def no_batched_grad(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batched_grad)
    assert_close(sensitivity(model, x, target, "unspec", scope="all"), want, rtol=1e-12)


def test_fallback_is_tried_once_per_call_with_class_chunks(monkeypatch):
    torch.manual_seed(8)
    model = mlp(True)  # batched backwards apply (no conv layer)
    x, target = batch_for("mlp")
    want = sensitivity(model, x, target, "unspec", scope="all")
    calls = recording_grad(monkeypatch, fail_batched=True)
    assert_close(sensitivity(model, x, target, "unspec", scope="all", class_chunk=2), want, rtol=1e-12)
    # The first chunk's batched backward fails; then one backward per class, no more retries.
    assert calls == [((2, 5, CLASSES), True)] + [((5, CLASSES), False)] * CLASSES


def test_conv_bound_is_the_bound_and_is_an_upper_bound():
    """conv='bound' = (1/B) Σ_n Σ_k α_k Σ_p |δ_p||a_p|; checked with a fixed linear readout."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2, bias=True).double()
    readout = nn.Linear(3 * 3 * 3, CLASSES, bias=False).double()
    model = nn.Sequential(conv, nn.Flatten(), readout)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 2])
    cols = F.unfold(x, 3, padding=1, stride=2)                   # (B, 18, P)
    delta = readout.weight.detach().reshape(CLASSES, 3, -1)      # dy_k/dz: (C, O, P), same for all n
    for kind in KINDS:
        alpha = (torch.full((4, CLASSES), 1 / CLASSES, dtype=torch.float64) if kind == "unspec"
                 else F.one_hot(target, CLASSES).double())
        want = torch.einsum("nk,kop,nip->oi", alpha, delta.abs(), cols.abs()) / 4
        bound = sensitivity(model, x, target, kind, conv="bound")["0.weight"]
        assert torch.allclose(bound, want.reshape(conv.weight.shape), rtol=1e-10, atol=0)
        exact = sensitivity(model, x, target, kind)["0.weight"]
        assert (bound >= exact - 1e-12).all() and (bound > exact + 1e-6).any()
        # Batch aggregate is exact in either mode; biases are always exact.
        for aggregate, scope in (("batch", "all"), ("sample", "all")):
            b = sensitivity(model, x, target, kind, aggregate=aggregate, scope=scope, conv="bound")
            e = sensitivity(model, x, target, kind, aggregate=aggregate, scope=scope, conv="exact")
            assert torch.allclose(b["0.bias"], e["0.bias"])
            if aggregate == "batch":
                assert_close(b, e, rtol=1e-12)


def test_hand_computed_single_linear_layer():
    """y = Wx + b, so dy_k/dW_ij = [k = i] x_j and dy_k/db_i = [k = i]."""
    model = nn.Linear(2, 2).double()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]], dtype=torch.float64)
    t = torch.tensor([0, 1])
    s = lambda kind, agg: sensitivity(model, x, t, kind, aggregate=agg, scope="all")  # noqa: E731
    # unspec sample: mean_n |x_nj| / C
    assert s("unspec", "sample")["weight"].tolist() == [[1.0, 1.5], [1.0, 1.5]]
    assert s("unspec", "sample")["bias"].tolist() == [0.5, 0.5]
    # unspec batch: |mean_n x_nj| / C
    assert s("unspec", "batch")["weight"].tolist() == [[1.0, 0.5], [1.0, 0.5]]
    # sum: B × sample; serene: sample / B (B = 2)
    assert s("unspec", "sum")["weight"].tolist() == [[2.0, 3.0], [2.0, 3.0]]
    assert s("unspec", "sum")["bias"].tolist() == [1.0, 1.0]
    assert s("unspec", "serene")["weight"].tolist() == [[0.5, 0.75], [0.5, 0.75]]
    assert s("spec", "sum")["weight"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    # spec: row i only sees the samples of class i
    assert s("spec", "sample")["weight"].tolist() == [[0.5, 1.0], [1.5, 2.0]]
    assert s("spec", "sample")["bias"].tolist() == [0.5, 0.5]
    # two samples of one class with opposite signs: batch cancels, sample does not
    x2 = torch.tensor([[1.0, -2.0], [-3.0, 4.0]], dtype=torch.float64)
    t2 = torch.tensor([0, 0])
    assert sensitivity(model, x2, t2, "spec")["weight"].tolist() == [[2.0, 3.0], [0.0, 0.0]]
    assert sensitivity(model, x2, t2, "spec", aggregate="batch")["weight"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_grads_hooks_modes_and_no_grad_are_left_alone():
    torch.manual_seed(6)
    model = nn.Sequential(convnet(True), nn.Dropout(0.5)).double()
    model.train()
    x, target = batch_for("conv")
    grads = {}
    for name, p in model.named_parameters():
        p.grad = torch.randn_like(p)
        grads[name] = p.grad.clone()
    p0 = dict(model.named_parameters())["0.0.weight"]
    p0.grad = None
    grads.pop("0.0.weight")
    rng = torch.get_rng_state()
    with torch.no_grad():
        s = sensitivity(model, x, target, "unspec")
    assert s["0.0.weight"].abs().sum() > 0 and not s["0.0.weight"].requires_grad
    assert p0.grad is None
    for name, p in model.named_parameters():
        if name in grads:
            assert torch.equal(p.grad, grads[name])
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout is off in the sensitivity pass
    # dropout off: the same as in eval mode
    model.eval()
    assert_close(sensitivity(model, x, target, "unspec"), s, rtol=1e-12)


def test_batchnorm_in_train_mode_warns_and_uses_running_stats():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, CLASSES)).double()
    model[1].running_mean.normal_()
    x, target = batch_for("mlp")
    model.train()
    stats = model[1].running_mean.clone()
    with pytest.warns(UserWarning, match="BatchNorm"):
        got = sensitivity(model, x, target, "spec")
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, stats)
    assert_close(got, brute_force(model, x, target, "spec", "logits", "sample", "weights"))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sensitivity(model, x, target, "spec")


def test_unused_and_frozen_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 4)
            self.b = nn.Linear(4, CLASSES)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = Net().double()
    model.a.weight.requires_grad_(False)
    x, target = batch_for("mlp")
    s = sensitivity(model, x, target, scope="all")
    assert torch.equal(s["unused.weight"], torch.zeros(3, 3, dtype=torch.float64))
    want = brute_force(model, x, target, "unspec", "logits", "sample", "all")
    assert torch.equal(want["unused.weight"], s["unused.weight"])
    assert_close(s, want)


@pytest.mark.parametrize("arg,value", [("kind", "both"), ("output", "probs"), ("aggregate", "mean"),
                                       ("scope", "biases"), ("conv", "lower")])
def test_bad_choices(arg, value):
    model = mlp(True)
    x, target = batch_for("mlp")
    with pytest.raises(ValueError, match=f"invalid {arg}='{value}'; valid: "):
        sensitivity(model, x, target, **{arg: value})


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_class_chunk(value):
    model = mlp(True)
    x, target = batch_for("mlp")
    with pytest.raises(ValueError, match=f"invalid class_chunk={value!r}; must be None"):
        sensitivity(model, x, target, class_chunk=value)


def test_bad_inputs():
    model = mlp(True)
    x, target = batch_for("mlp")
    with pytest.raises(ValueError, match="target of shape"):
        sensitivity(model, x, target[:3])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        sensitivity(model, x, torch.tensor([0, 1, 2, 3, 0]), "spec")
    with pytest.raises(ValueError, match="no Linear or Conv"):
        sensitivity(nn.Sequential(nn.ReLU()), x, target)
    with pytest.raises(ValueError, match="must be \\(batch, classes\\)"):
        sensitivity(nn.Sequential(nn.Linear(6, 3), nn.Unflatten(1, (3, 1))).double(), x, target)
    shared = nn.Linear(6, 6).double()
    with pytest.raises(ValueError, match="more than once"):
        sensitivity(nn.Sequential(shared, nn.ReLU(), shared), x, target)
    assert not shared._forward_hooks  # removed even after an error


def test_quantiles_match_torch():
    v = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    got = quantiles(v, (0.1, 0.5, 0.9))
    want = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9])).tolist()
    assert got == pytest.approx(want, abs=1e-6)
    assert quantiles(torch.tensor([2.0]), (0.1, 0.9)) == [2.0, 2.0]


# -- S from the training step's own forward ---------------------------------------------------------
def step_and_record(monkeypatch, model, x, target, kind, **params):
    """One study.train.train_step with a sensitivity method. Returns (S the step used, how many
    separate sensitivity() passes it ran, the model as it was before the step)."""
    from study import sensitivity as sens
    from study.method import MethodContext
    from study.train import train_step

    before = copy.deepcopy(model)
    recorded, separate = [], []
    from_graph, separate_pass = sens._from_graph, sens.sensitivity

    def spy_graph(*args, **kwargs):
        result = from_graph(*args, **kwargs)
        recorded.append({k: v.clone() for k, v in result.items()})
        return result

    def spy_separate(*args, **kwargs):
        separate.append(1)
        return separate_pass(*args, **kwargs)

    monkeypatch.setattr(sens, "_from_graph", spy_graph)
    monkeypatch.setattr(sens, "sensitivity", spy_separate)
    cls = sens.SensitivityUnspec if kind == "unspec" else sens.SensitivitySpec
    method = cls(sens.SensitivityParams(lam=0.01, threshold=0.0, **params),
                 MethodContext(len(x), CLASSES, 1, 1))
    method.attach(model)
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.1), x, target)
    monkeypatch.undo()
    assert len(recorded) == 1  # one S per step, from whichever forward
    return recorded[0], len(separate), before


@pytest.mark.parametrize("model_name", ["mlp", "conv"])
def test_step_forward_matches_sensitivity_and_brute_force(monkeypatch, model_name):
    """In train mode without dropout or BatchNorm, S comes from the step's own forward (no
    separate pass) and equals sensitivity() and the brute-force Jacobians."""
    torch.manual_seed(11)
    x, target = batch_for(model_name)
    for kind, output, aggregate in itertools.product(KINDS, OUTPUTS, AGGREGATES):
        model = mlp(True) if model_name == "mlp" else convnet(True)
        model.train()
        chunk = 2 if kind == "unspec" else 0
        got, separate, before = step_and_record(monkeypatch, model, x, target, kind, output=output,
                                                aggregate=aggregate, scope="all", class_chunk=chunk)
        assert separate == 0
        want = brute_force(before, x, target, kind, output, aggregate, "all")
        assert_close(got, want)
        assert_close(got, sensitivity(before, x, target, kind, output, aggregate, "all"), rtol=1e-12)


def test_step_forward_conv_bound(monkeypatch):
    torch.manual_seed(12)
    x, target = batch_for("conv")
    for kind in KINDS:
        model = convnet(True).train()
        got, separate, before = step_and_record(monkeypatch, model, x, target, kind, conv="bound")
        assert separate == 0
        assert_close(got, sensitivity(before, x, target, kind, conv="bound"), rtol=1e-12)


def test_dropout_in_train_mode_falls_back_to_the_eval_pass(monkeypatch):
    """The step's forward is stochastic: S comes from a separate eval-mode pass (dropout off)."""
    torch.manual_seed(13)
    x, target = batch_for("mlp")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, CLASSES)).double()
    for kind in KINDS:
        got, separate, before = step_and_record(monkeypatch, model.train(), x, target, kind)
        assert separate == 1 and model.training and model[2].training
        assert_close(got, brute_force(before, x, target, kind, "logits", "sample", "weights"))
    # The same model in eval mode: the step's forward is exact again.
    got, separate, before = step_and_record(monkeypatch, model.eval(), x, target, "unspec")
    assert separate == 0
    assert_close(got, brute_force(before, x, target, "unspec", "logits", "sample", "weights"))


def test_batchnorm_in_train_mode_falls_back_to_running_stats(monkeypatch):
    torch.manual_seed(14)
    x, target = batch_for("mlp")
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, CLASSES)).double()
    with pytest.warns(UserWarning, match="BatchNorm"):
        got, separate, before = step_and_record(monkeypatch, model.train(), x, target, "spec")
    assert separate == 1
    # The separate pass runs after the step's forward has updated the running statistics.
    with torch.no_grad():
        before.train()(x)
    assert_close(got, brute_force(before, x, target, "spec", "logits", "sample", "weights"))


def test_frozen_first_layer_falls_back(monkeypatch):
    """No graph reaches a frozen first layer's output in the step: the separate pass gives S."""
    torch.manual_seed(15)
    x, target = batch_for("mlp")
    model = mlp(True)
    model[0].requires_grad_(False)
    got, separate, before = step_and_record(monkeypatch, model, x, target, "unspec")
    assert separate == 1
    assert_close(got, brute_force(before, x, target, "unspec", "logits", "sample", "weights"))


def test_step_forward_is_exact_names_the_mode_dependent_modules():
    from study.sensitivity import step_forward_is_exact

    plain = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.LayerNorm(2), nn.InstanceNorm1d(2))
    assert step_forward_is_exact(plain.train())
    for module in (nn.Dropout(0.1), nn.AlphaDropout(0.1), nn.BatchNorm1d(2), nn.RReLU(),
                   nn.InstanceNorm1d(2, track_running_stats=True), nn.MultiheadAttention(2, 1, dropout=0.1)):
        model = nn.Sequential(nn.Linear(2, 2), module)
        assert not step_forward_is_exact(model.train()), module
        assert step_forward_is_exact(model.eval()), module
    assert step_forward_is_exact(nn.Sequential(nn.MultiheadAttention(2, 1)).train())


def test_inplace_activation_matches_brute_force(monkeypatch):
    """nn.ReLU(inplace=True) (as in VGG) after a layer must not turn δ into the derivative with
    respect to the activation's output: both paths capture a copy."""
    torch.manual_seed(16)
    x, target = batch_for("mlp")
    make = lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 4),  # noqa: E731
                                 nn.ReLU(inplace=True), nn.Linear(4, CLASSES)).double()
    torch.manual_seed(16)
    model = make()
    for kind in KINDS:
        want = brute_force(model, x, target, kind, "logits", "sample", "all")
        assert_close(sensitivity(model, x, target, kind, scope="all"), want)
        got, separate, before = step_and_record(monkeypatch, copy.deepcopy(model).train(), x, target,
                                                kind, scope="all")
        assert separate == 0
        assert_close(got, want)


def test_functional_inplace_change_of_a_layer_output_is_an_error(monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, CLASSES)

        def forward(self, x):
            return self.b(self.a(x).relu_())  # no module flag announces this one

    x, target = batch_for("mlp")
    with pytest.raises(ValueError, match="in-place operation changed .* layer 'a'"):
        sensitivity(Net().double(), x, target)
    with pytest.raises(ValueError, match="in-place operation"):  # the step falls back, then says so
        step_and_record(monkeypatch, Net().double(), x, target, "spec")
