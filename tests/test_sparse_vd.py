"""Sparse variational dropout (baselines/sparse_vd.py)."""
from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

from baselines.sparse_vd import K1, K2, K3, SparseVD, SparseVDParams, SVDConv2d, SVDLinear, neg_kl
from study import sparsity
from study.method import MethodContext

N_TRAIN = 400
STEPS_PER_EPOCH = 10


def context() -> MethodContext:
    return MethodContext(train_size=N_TRAIN, num_classes=3, epochs=5, steps_per_epoch=STEPS_PER_EPOCH)


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def attached(model: nn.Module, **params) -> SparseVD:
    method = SparseVD(SparseVDParams(**params), context())
    method.attach(model)
    return method


def set_log_alpha(layer: nn.Module, log_alpha: torch.Tensor) -> None:
    """Choose log σ² so that log α = log σ² − log θ² takes the given values."""
    with torch.no_grad():
        layer.log_sigma2.copy_(log_alpha + torch.log(layer.weight.pow(2)))


# -- the KL approximation ------------------------------------------------------------------
@pytest.mark.parametrize("log_alpha", [-5.0, 0.0, 3.0, 8.0])
def test_neg_kl_is_the_published_formula(log_alpha: float) -> None:
    a = math.exp(log_alpha)
    expected = K1 / (1 + math.exp(-(K2 + K3 * log_alpha))) - 0.5 * math.log(1 + 1 / a) - K1
    assert neg_kl(torch.tensor(log_alpha, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)
    assert (K1, K2, K3) == (0.63576, 1.87320, 1.48695)


def test_neg_kl_limits_and_monotonicity() -> None:
    grid = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    values = neg_kl(grid)
    assert (values < 0).all() and (values.diff() > 0).all()  # −KL rises to 0 with the dropout rate
    assert neg_kl(torch.tensor(20.0, dtype=torch.float64)).abs() < 1e-8  # −KL → 0 as α → ∞
    # −KL ≈ 0.5 log α + const as α → 0: the slope of the left end is 1/2
    low = neg_kl(torch.tensor([-20.0, -19.0], dtype=torch.float64))
    assert (low[1] - low[0]).item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("log_alpha", [-5.0, -1.0, 0.0, 1.0, 3.0, 8.0])
def test_neg_kl_approximates_the_exact_kl_up_to_the_constant_k1(log_alpha: float) -> None:
    """Exact −KL(N(θ, αθ²) ‖ log-uniform) = 0.5 log α − E log|1 + √α ξ| + C, ξ ~ N(0, 1);
    the paper fixes C = −k1 (so that −KL → 0 as α → ∞) and claims a tight fit."""
    s = math.exp(log_alpha / 2)

    def integrand(x: float) -> float:
        return math.log(abs(1 + s * x)) * stats.norm.pdf(x)

    cut = -1 / s  # the integrable singularity of log|1 + s x|
    e_log = sum(integrate.quad(integrand, a, b, limit=500)[0] for a, b in ((-np.inf, cut), (cut, np.inf)))
    exact = 0.5 * log_alpha - e_log - K1
    assert neg_kl(torch.tensor(log_alpha, dtype=torch.float64)).item() == pytest.approx(exact, abs=0.01)


# -- layers --------------------------------------------------------------------------------
def test_local_reparametrization_matches_the_weight_noise_model_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    attached(model)
    layer = model[0]
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(torch.rand(2, 3) * 0.5 + 0.05))
    x = torch.randn(4, 3)
    sigma2 = layer.log_sigma2.exp().detach()
    # the weight-noise model: W ~ N(θ, σ²) elementwise, one draw per sample
    n = 100_000
    w = layer.weight.detach() + sigma2.sqrt() * torch.randn(n, 2, 3)
    y_w = torch.einsum("nij,bj->nbi", w, x) + layer.bias.detach()
    # the layer's own training forward pass (local reparametrization), n draws
    layer.train()
    with torch.no_grad():
        y_l = layer(x.repeat(n, 1)).view(n, 4, 2)
    mean = F.linear(x, layer.weight, layer.bias).detach()
    var = F.linear(x * x, sigma2)
    for y in (y_w, y_l):
        assert torch.allclose(y.mean(0), mean, atol=0.02)
        assert torch.allclose(y.var(0), var, rtol=0.03, atol=1e-3)


def test_local_reparametrization_matches_the_weight_noise_model_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2))
    attached(model)
    layer = model[0]
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(torch.rand(2, 1, 2, 2) * 0.5 + 0.05))
    x = torch.randn(1, 1, 3, 3)
    sigma2 = layer.log_sigma2.exp().detach()
    n = 50_000
    w = layer.weight.detach() + sigma2.sqrt() * torch.randn(n, 2, 1, 2, 2)
    # one weight draw per sample, shared by every position of that sample's output map
    y_w = torch.einsum("ncij,pij->ncp", w[:, :, 0], F.unfold(x, 2)[0].T.reshape(-1, 2, 2))
    y_w = y_w + layer.bias.detach().view(1, 2, 1)
    with torch.no_grad():
        y_l = layer(x.repeat(n, 1, 1, 1)).view(n, 2, 4)
    mean = F.conv2d(x, layer.weight, layer.bias).detach().view(2, 4)
    var = F.conv2d(x * x, sigma2).view(2, 4)
    for y in (y_w, y_l):
        assert torch.allclose(y.mean(0), mean, atol=0.02)
        assert torch.allclose(y.var(0), var, rtol=0.04, atol=1e-3)


def test_eval_is_deterministic_and_drops_weights_with_large_log_alpha() -> None:
    model = convnet()
    method = attached(model)
    conv, fc = model[0], model[3]
    log_alpha = torch.full_like(fc.weight, -2.0)
    log_alpha[:, :20] = 3.5  # pruned
    log_alpha[:, 20:25] = 2.9  # just below the threshold: kept
    set_log_alpha(fc, log_alpha)
    x = torch.randn(5, 2, 6, 6)
    model.eval()
    out = model(x)
    assert torch.equal(out, model(x))
    hidden = torch.relu(F.conv2d(x, conv.weight, conv.bias)).flatten(1)
    expected = F.linear(hidden, fc.weight * (log_alpha < 3), fc.bias)
    assert torch.allclose(out, expected, atol=1e-6)
    model.train()
    assert not torch.allclose(model(x), model(x))
    weights = method.effective_weights(model)
    assert (weights["3.weight"][:, :20] == 0).all() and (weights["3.weight"][:, 20:] != 0).all()
    report = sparsity.count_model(model, weights)
    assert report.nonzero == conv.weight.numel() + 3 * 44
    assert method.epoch_metrics(model)["svd.frac_pruned"] == pytest.approx(60 / (72 + 192))


def test_attach_keeps_names_is_idempotent_and_state_round_trips() -> None:
    model = convnet()
    names_before = [n for n, _ in model.named_parameters()]
    method = attached(model)
    assert isinstance(model[0], SVDConv2d) and isinstance(model[3], SVDLinear)
    assert list(sparsity.prunable_weights(model)) == ["0.weight", "3.weight"]
    keys = list(model.state_dict())
    assert set(names_before) < set(keys) and {"0.log_sigma2", "3.log_sigma2"} <= set(keys)
    assert (model[0].log_sigma2 == -10).all() and model[0].log_sigma2.shape == model[0].weight.shape
    sigma = model[0].log_sigma2
    method.attach(model)
    assert model[0].log_sigma2 is sigma
    pickle.loads(pickle.dumps(model))
    copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = convnet()
    attached(fresh)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))


# -- the penalty -------------------------------------------------------------------------
def test_penalty_is_warmed_up_kl_over_n_and_raises_log_alpha() -> None:
    model = convnet()
    method = attached(model, warmup_epochs=2)
    assert method.penalty(model) is None  # kl_weight 0 at step 0
    for _ in range(STEPS_PER_EPOCH):
        method.after_step(model)
    assert method.kl_weight() == pytest.approx(0.5)
    kl = sum(-neg_kl(m.log_alpha()).sum() for m in (model[0], model[3]))
    penalty = method.penalty(model)
    assert penalty.item() == pytest.approx(0.5 * kl.item() / N_TRAIN, rel=1e-6)
    penalty.backward()
    assert (model[3].log_sigma2.grad < 0).all()  # descent raises σ², hence log α
    # the step counter is method state: it survives a checkpoint
    other = SparseVD(SparseVDParams(warmup_epochs=2), context())
    other.load_state_dict(method.state_dict())
    assert other.kl_weight() == pytest.approx(0.5)
    for _ in range(2 * STEPS_PER_EPOCH):
        other.after_step(model)
    assert other.kl_weight() == 1.0


def test_log_alpha_is_clipped_and_finite_at_zero_weights() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    attached(model)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
        model[0].weight[1, 1] = 100.0
    log_alpha = model[0].log_alpha()
    assert log_alpha[0, 0] == 10 and log_alpha[1, 1] == -10 and torch.isfinite(log_alpha).all()


@pytest.mark.parametrize(
    "params", [{"warmup_epochs": -1.0}, {"log_alpha_threshold": 11.0}, {"kl_scale": -0.5}, {"sigma_lr_scale": 0.0}]
)
def test_bad_params_raise(params: dict) -> None:
    with pytest.raises(ValueError):
        SparseVDParams(**params)


def test_fit_trains_and_resumes() -> None:
    from study.data import load_dataset
    from study.train import TrainConfig, fit

    data = load_dataset("synthetic", shape="1x6x6", num_classes=3, n_train=120, n_test=40)
    ctx = MethodContext(train_size=len(data.train), num_classes=3, epochs=2, steps_per_epoch=4)

    def run(resume=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
        method = SparseVD(SparseVDParams(warmup_epochs=1), ctx)
        saved = []
        callback = type("C", (), {"on_epoch_end": lambda self, r, ck: saved.append(copy.deepcopy(ck()))})()
        config = TrainConfig(epochs=2, batch_size=32, lr=0.05, reach_epochs=1)
        return fit(model, method, data, config, callbacks=[callback], resume=resume), saved

    full, saved = run()
    assert full.status == "finished" and full.history[-1]["svd.kl_weight"] == 1.0
    assert saved[0]["method"]["steps"] == 4 and "1.log_sigma2" in saved[0]["model"]
    resumed, _ = run(resume=saved[0])
    assert resumed.history[-1]["test_loss"] == pytest.approx(full.history[-1]["test_loss"])
