"""`serene`: the neuron sensitivity against brute-force per-sample Jacobians of the outputs with
respect to the pre-activations (torch.func, float64), for Linear and Conv layers and both
approaches; the step's update row by row; the options; the fallback pass."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, vmap

import study.serene as serene_module
from study.method import MethodContext
from study.methods import build_method, default_params
from study.serene import Serene, SereneParams, neuron_sensitivity
from study.sparsity import prunable_layers
from study.train import train_step

CLASSES = 3
APPROACHES = ("full", "lower-bound")


def preactivation_jacobians(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """∂y_k(x_n)/∂z_n for every prunable layer, in eval mode: name -> (B, C, *z.shape[1:]).
    A perturbation ε added to each layer's output by a forward hook; jacrev at ε = 0 per sample."""
    model.eval()
    layers = prunable_layers(model)
    shapes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
             for n, m in layers.items()]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()

    def y_of(eps: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        handles = [m.register_forward_hook(lambda m, i, o, n=n: o + eps[n]) for n, m in layers.items()]
        try:
            return model(xi.unsqueeze(0)).squeeze(0)
        finally:
            for h in handles:
                h.remove()

    eps = {n: torch.zeros(s, dtype=x.dtype) for n, s in shapes.items()}
    return vmap(jacrev(y_of), in_dims=(None, 0))(eps, x)


def brute_force(model: nn.Module, x: torch.Tensor, approach: str) -> dict[str, torch.Tensor]:
    """S_i straight from the definition: α = 1/C, the mean over samples, the per-position |·|
    averaged over a neuron's positions (Conv: spatial dims; Linear: the middle dims)."""
    out = {}
    layers = prunable_layers(model)
    for name, j in preactivation_jacobians(model, x).items():  # (B, C, *z)
        batch, classes = j.shape[:2]
        per = j.abs() / classes if approach == "full" else (j.sum(1, keepdim=True) / classes).abs()
        if isinstance(layers[name], nn.Linear):
            per = per.reshape(*per.shape[:2], -1, per.shape[-1]).mean(2)  # (B, K, O)
        else:
            per = per.reshape(*per.shape[:3], -1).mean(3)
        out[name] = per.sum((0, 1)) / batch
    return out


def assert_close(got: dict, want: dict, rtol: float = 1e-10) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        err = (got[name] - want[name]).abs().max() / want[name].abs().max().clamp(min=1e-12)
        assert err <= rtol, f"{name}: relative error {err:.2e}"


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(),
                         nn.Linear(4, CLASSES)).double()


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, (3, 2), dilation=(2, 1), padding=(2, 0)), nn.Tanh(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, CLASSES),
    ).double()


class PerPosition(nn.Module):
    """A Linear layer applied at 4 positions per sample (as in a transformer), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Linear(3, 5), nn.Linear(20, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(x.reshape(-1, 4, 3))).flatten(1))


MODELS = {"mlp": (mlp, (6,)), "conv": (convnet, (2, 8, 9)), "positions": (lambda: PerPosition().double(), (12,))}


def batch_for(model_name: str, n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *MODELS[model_name][1]), generator=g, dtype=torch.float64)
    return x, torch.tensor([0, 2, 1, 2, 2, 0, 1][:n])


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("approach", APPROACHES)
def test_separate_pass_matches_brute_force(model_name: str, approach: str) -> None:
    torch.manual_seed(1)
    model = MODELS[model_name][0]()
    x, _ = batch_for(model_name)
    want = brute_force(copy.deepcopy(model), x, approach)
    assert all(s.abs().max() > 0 for s in want.values())
    for chunk in (1, 2, None):
        assert_close(neuron_sensitivity(model, x, approach, class_chunk=chunk), want)
    scaled = neuron_sensitivity(model, x, approach, batch_scaling=True)
    assert_close(scaled, {n: s / len(x) for n, s in want.items()})


def test_lower_bound_is_below_full_and_the_output_layer_has_s_alpha() -> None:
    torch.manual_seed(2)
    model = mlp()
    x, _ = batch_for("mlp")
    full, lower = neuron_sensitivity(model, x, "full"), neuron_sensitivity(model, x, "lower-bound")
    assert all(torch.all(lower[n] <= full[n] + 1e-15) for n in full)
    assert any(torch.any(lower[n] < full[n] - 1e-6) for n in full)
    for s in (full["4"], lower["4"]):  # y is that layer's output: ∂y_k/∂z_i = 1 if k = i
        torch.testing.assert_close(s, torch.full((CLASSES,), 1.0 / CLASSES, dtype=torch.float64))


def stepped(model: nn.Module, x: torch.Tensor, y: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
            **params) -> tuple[nn.Module, nn.Module, dict, int]:
    """One SGD step (lr 0.1) with serene. Returns (the model before, the model after, the
    weights right after the optimizer step, how many separate passes ran)."""
    before = copy.deepcopy(model)
    separate = []
    real = serene_module._separate_pass
    monkeypatch.setattr(serene_module, "_separate_pass",
                        lambda *a, **k: separate.append(1) or real(*a, **k))
    method = Serene(SereneParams(threshold=0.0, **params), MethodContext(len(x), CLASSES, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step, seen = optimizer.step, {}

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return out

    optimizer.step = spy
    train_step(model, method, optimizer, x, y)
    monkeypatch.undo()
    return before, model, seen, len(separate)


@pytest.mark.parametrize("model_name", ["mlp", "conv"])
def test_one_step_decays_each_neurons_incoming_weights(model_name: str, monkeypatch) -> None:
    """From the step's own forward (no separate pass): every row / filter i moves by
    −λ·w·max(0, 1 − S_i), S_i by brute force at the pre-step weights; biases are not decayed;
    the options pick the weights d is taken from, the approach, the batch scaling and whether
    the output layer is decayed."""
    lam = 0.2
    x, y = batch_for(model_name)
    combos = itertools.product(APPROACHES, ("post-step", "pre-step"), (False, True), (True, False))
    for approach, decay_from, batch_scaling, output_layer in combos:
        torch.manual_seed(3)
        model = MODELS[model_name][0]().train()
        with torch.no_grad():  # a larger head: some S_i ≥ 1 (no decay), exercising the clamp
            model[-1].weight.mul_(10 if model_name == "mlp" else 40)
        before, after, post, separate = stepped(model, x, y, monkeypatch, lam=lam, approach=approach,
                                                decay_from=decay_from, batch_scaling=batch_scaling,
                                                output_layer=output_layer)
        assert separate == 0
        s = brute_force(before, x, approach)
        if approach == "full" and not batch_scaling:
            assert any(torch.any(v >= 1) for v in s.values()) and any(torch.any(v < 1) for v in s.values())
        last = list(prunable_layers(before))[-1]
        for name, p in after.named_parameters():
            layer = name.rsplit(".", 1)[0]
            expected = post[name]
            if name.endswith("weight") and (output_layer or layer != last):
                s_i = s[layer] / (len(x) if batch_scaling else 1)
                ins = (1 - s_i).clamp(min=0).reshape(-1, *[1] * (p.dim() - 1))
                source = post[name] if decay_from == "post-step" else dict(before.named_parameters())[name]
                expected = post[name] - lam * source.detach() * ins
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_dropout_in_train_mode_falls_back_to_the_eval_pass(monkeypatch) -> None:
    torch.manual_seed(4)
    x, y = batch_for("mlp")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, CLASSES)).double().train()
    before, after, post, separate = stepped(model, x, y, monkeypatch, lam=0.2, decay_from="pre-step")
    assert separate == 1 and after.training
    s = brute_force(copy.deepcopy(before), x, "full")  # eval mode: dropout off
    w0 = dict(before.named_parameters())
    for name in ("0.weight", "3.weight"):
        ins = (1 - s[name[0]]).clamp(min=0)[:, None]
        torch.testing.assert_close(dict(after.named_parameters())[name].detach(),
                                   post[name] - 0.2 * w0[name].detach() * ins, rtol=0, atol=1e-12)


def test_inplace_activation_matches_brute_force(monkeypatch) -> None:
    """nn.ReLU(inplace=True) after a layer must not turn δ into the derivative with respect to
    the activation's output (the capture passes a copy downstream)."""
    torch.manual_seed(5)
    x, y = batch_for("mlp")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, CLASSES)).double()
    want = brute_force(copy.deepcopy(model), x, "full")
    assert_close(neuron_sensitivity(model, x), want)
    before, after, post, separate = stepped(model.train(), x, y, monkeypatch, lam=0.2)
    assert separate == 0
    ins = (1 - want["0"]).clamp(min=0)[:, None]
    torch.testing.assert_close(after[0].weight.detach(), post["0.weight"] * (1 - 0.2 * ins), rtol=0, atol=1e-12)


def test_masks_and_threshold() -> None:
    torch.manual_seed(6)
    model = mlp()
    method = Serene(SereneParams(lam=0.1, threshold=0.2), MethodContext(5, CLASSES, 1, 1))
    method.prune(model, {"2.weight": torch.rand(4, 5) > 0.5})
    x, y = batch_for("mlp")
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    assert torch.all(model[2].weight[~method.masks["2.weight"]] == 0)
    bias = model[0].bias.detach().clone()
    small = model[0].weight.detach().abs() < 0.2
    method.end_epoch(model, 1, "reach")
    assert not torch.all(model[0].weight[small] == 0)
    method.end_epoch(model, 2, "sparsify")
    assert small.any() and torch.all(model[0].weight[small] == 0) and torch.equal(model[0].bias, bias)


def test_epoch_metrics_describe_the_remaining_weights() -> None:
    torch.manual_seed(7)
    model = mlp()
    method = Serene(SereneParams(lam=0.1, threshold=0.0), MethodContext(5, CLASSES, 1, 1))
    x, y = batch_for("mlp")
    s = neuron_sensitivity(model, x)
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
    metrics = method.epoch_metrics(model)
    assert metrics["sens.4.mean"] == pytest.approx(1.0 / CLASSES)
    assert metrics["sens.0.mean"] == pytest.approx(s["0"].mean().item())  # every row has 6 weights


def test_defaults_are_the_faithful_reading() -> None:
    params = default_params("serene")
    assert params["approach"] == "full" and params["batch_scaling"] is False
    assert params["output_layer"] is True and params["decay_from"] == "post-step"


@pytest.mark.parametrize("bad", [{"lam": 1.0}, {"threshold": -1.0}, {"approach": "local"},
                                 {"batch_scaling": "yes"}, {"output_layer": 1}, {"decay_from": "later"},
                                 {"class_chunk": -1}, {"class_chunk": True}])
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SereneParams(**bad)


def test_bad_inputs_to_neuron_sensitivity() -> None:
    with pytest.raises(ValueError, match="approach"):
        neuron_sensitivity(mlp(), torch.zeros(2, 6, dtype=torch.float64), "local")
    with pytest.raises(ValueError, match="no Linear or Conv"):
        neuron_sensitivity(nn.Sequential(nn.Tanh()), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="non-empty"):
        neuron_sensitivity(mlp(), torch.zeros(0, 6, dtype=torch.float64))


def test_string_params_and_pickling() -> None:
    import pickle

    method = build_method("serene", {"approach": "lower-bound", "batch_scaling": "true",
                                     "output_layer": "false"}, MethodContext(5, CLASSES, 1, 1))
    assert method.params == SereneParams(approach="lower-bound", batch_scaling=True, output_layer=False)
    model = mlp()
    x, y = batch_for("mlp")
    train_step(model, method, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    copy_ = pickle.loads(pickle.dumps(method))
    assert copy_.params == method.params and math.isclose(
        copy_.epoch_metrics(model)["sens.0.mean"], method.epoch_metrics(model)["sens.0.mean"])
    assert "sens.4.mean" not in method.epoch_metrics(model)  # output layer off: no S, no decay
    assert F.cross_entropy(model(x), y).isfinite()
