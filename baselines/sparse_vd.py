"""`sparse-vd`: Sparse Variational Dropout (Molchanov, Ashukha & Vetrov, 2017).

Every prunable weight gets a Gaussian posterior q(w) = N(θ, σ²) (the *additive noise*
reparametrization: θ and log σ² are the parameters, and the dropout rate is
log α = log σ² − log θ², clipped to [−10, 10]). Training uses the local reparametrization
trick: a Linear layer's pre-activation is Gaussian with

    mean = x θᵀ + b,   var = x² (σ²)ᵀ,   output = mean + sqrt(var + 1e-8) · ε,  ε ~ N(0, 1)

and a Conv layer the same with conv2d (conv(x, θ) and conv(x², σ²)). The prior is the
log-uniform one; its KL has no closed form and the paper's approximation is used:

    −KL(q ‖ p) ≈ k1 · sigmoid(k2 + k3 · log α) − 0.5 · log(1 + 1/α) − k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695.

The data loss is a per-sample mean, so the per-sample negative ELBO is CE + KL/N
(N = training-set size); the penalty is kl_weight(t) · Σ KL / N, with kl_weight rising
linearly from 0 to 1 over the first ``warmup_epochs`` epochs (counted in optimizer steps;
default 50, about the ramp of the authors' reference code, 0.02 per epoch). On small data
sets the KL dominates the ELBO (N = 1293 digits vs 130k LeNet-5 weights): with a 10-epoch
ramp and SGD it zeroed every weight before the data term had learnt anything.
``kl_scale`` (default 1, the ELBO) multiplies the KL term for sweeps.
At test time a weight with log α ≥ ``log_alpha_threshold`` (3, i.e. dropout rate
α/(1+α) > 0.95) is zeroed: the eval forward pass and the effective weights are θ × mask.

Optimizer: the paper trains with Adam (lr 1e-3), and so should this method. Under plain
SGD (lr 0.1) the KL gradient on θ grows like 1/θ as θ shrinks (log α = log σ² − log θ²),
and the error trajectory is erratic (epochs at 20-37 % test error between good ones);
log σ² barely moves under SGD either, which ``sigma_lr_scale`` (default 1) can correct.

Implementation: ``attach`` turns every Linear/Conv module into a variational class in place
(``baselines.layer_swap``: ``SVDLinear``, ``SVDConv2d``, …), registering ``log_sigma2`` next
to ``weight`` (which plays θ). Parameter names stay ``fc1.weight``; the classes live in this
module, so the model still pickles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.layer_swap import SwappedLayer, effective_weights, layer_classes, swap_layers, swapped_layers
from study.method import Method, MethodParams, Phase, check_fields

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = 10.0
_VAR_EPS = 1e-8  # keeps sqrt differentiable where the variance is 0 (e.g. zero inputs)
_W2_EPS = 1e-16  # keeps log θ² finite at θ = 0 (log α is clipped there anyway)


def neg_kl(log_alpha: Tensor) -> Tensor:
    """The paper's approximation of −KL(q(w) ‖ log-uniform prior), elementwise (≤ 0)."""
    # log(1 + 1/α) = softplus(−log α), stable for large |log α|
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


# -- the variational layers ----------------------------------------------------------------
class _Variational(SwappedLayer):
    """Mixin placed before nn.Linear / nn.ConvNd: θ = ``weight``, plus ``log_sigma2``."""

    log_sigma2: nn.Parameter
    log_alpha_threshold: float

    def log_alpha(self) -> Tensor:
        log_w2 = torch.log(self.weight.pow(2) + _W2_EPS)
        return (self.log_sigma2 - log_w2).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def keep_mask(self) -> Tensor:
        return self.log_alpha() < self.log_alpha_threshold

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:  # deterministic: the posterior mean with dropped weights zeroed
            return self.layer_forward(x, self.effective_weight(), self.bias)
        mean = self.layer_forward(x, self.weight, self.bias)
        var = self.layer_forward(x * x, torch.exp(self.log_sigma2), None)
        return mean + torch.sqrt(var + _VAR_EPS) * torch.randn_like(mean)

    def effective_weight(self) -> Tensor:
        return self.weight * self.keep_mask()


# SVDLinear, SVDConv1d, SVDConv2d, SVDConv3d: _Variational before each prunable layer type.
VARIATIONAL_CLASSES = layer_classes(_Variational, "SVD")


# -- the method ----------------------------------------------------------------------------
@dataclass
class SparseVDParams(MethodParams):
    log_alpha_threshold: float = 3.0  # weights with log α ≥ this are pruned (dropout rate > 0.95)
    warmup_epochs: float = 50.0  # the KL weight rises linearly from 0 to 1 over these epochs
    log_sigma2_init: float = -10.0  # initial log σ² of every weight
    kl_scale: float = 1.0  # multiplies the KL term (1 = the ELBO; >1 sparsifies harder)
    sigma_lr_scale: float = 1.0  # multiplies log σ²'s gradient, i.e. its learning rate under SGD

    def __post_init__(self) -> None:
        checks = {
            "log_alpha_threshold": -LOG_ALPHA_CLIP < self.log_alpha_threshold <= LOG_ALPHA_CLIP,
            "warmup_epochs": self.warmup_epochs >= 0,
            "kl_scale": self.kl_scale >= 0,
            "sigma_lr_scale": self.sigma_lr_scale > 0,
        }
        check_fields(self, checks, prefix="sparse-vd: invalid ")


class SparseVD(Method):
    name = "sparse-vd"
    citation = (
        "D. Molchanov, A. Ashukha, D. Vetrov, 'Variational Dropout Sparsifies Deep Neural "
        "Networks', ICML 2017."
    )
    Params = SparseVDParams
    params: SparseVDParams
    uses_sparsify_phase = False  # log α decides what is pruned, in both phases

    def __init__(self, params: SparseVDParams, context: Any) -> None:
        super().__init__(params, context)
        self.steps = 0  # optimizer steps taken: drives the KL warm-up

    def attach(self, model: nn.Module) -> None:
        def add_variance(module: _Variational) -> None:
            module.log_alpha_threshold = self.params.log_alpha_threshold
            module.log_sigma2 = nn.Parameter(torch.full_like(module.weight, self.params.log_sigma2_init))

        swap_layers(model, VARIATIONAL_CLASSES, self.name, add_variance)

    def kl_weight(self) -> float:
        """Linear warm-up from 0 to 1 over ``warmup_epochs`` epochs of optimizer steps."""
        warmup_steps = self.params.warmup_epochs * self.context.steps_per_epoch
        return 1.0 if warmup_steps <= 0 else min(1.0, self.steps / warmup_steps)

    def kl(self, model: nn.Module) -> Tensor | None:
        """Σ KL over every variational weight (the approximation, so ≥ 0)."""
        terms = [-neg_kl(m.log_alpha()).sum() for m in swapped_layers(model, _Variational).values()]
        return torch.stack(terms).sum() if terms else None

    def penalty(self, model: nn.Module) -> Tensor | None:
        weight = self.params.kl_scale * self.kl_weight()
        if weight == 0:
            return None
        kl = self.kl(model)
        return None if kl is None else weight * kl / self.context.train_size

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        if self.params.sigma_lr_scale != 1.0:
            for m in swapped_layers(model, _Variational).values():
                if m.log_sigma2.grad is not None:
                    m.log_sigma2.grad.mul_(self.params.sigma_lr_scale)

    def after_step(self, model: nn.Module) -> None:
        super().after_step(model)
        self.steps += 1

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        """Nothing to threshold by hand: log α decides what is pruned, in both phases."""

    def effective_weights(self, model: nn.Module) -> dict[str, Tensor]:
        return effective_weights(model)

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        layers = swapped_layers(model, _Variational).values()
        if not layers:
            return {}
        log_alpha = torch.cat([m.log_alpha().reshape(-1) for m in layers])
        return {
            "svd.kl_weight": self.kl_weight(),
            "svd.kl_per_sample": float(-neg_kl(log_alpha).sum()) / self.context.train_size,
            "svd.mean_log_alpha": float(log_alpha.mean()),
            "svd.frac_pruned": float((log_alpha >= self.params.log_alpha_threshold).float().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.steps = int(state.get("steps", 0))
