"""`l0`: L0 regularization through hard-concrete gates (Louizos, Welling & Kingma, 2018).

Every prunable weight (``gates="weight"``) or every neuron (``gates="neuron"``: an input
unit of a Linear layer, an output channel of a Conv layer) is multiplied by a stochastic
gate z ∈ [0, 1] with a learned location log α. In training z is sampled from the
*hard concrete* distribution (β = 2/3, γ = −0.1, ζ = 1.1)::

    u ~ U(0, 1);  s = sigmoid((log u − log(1−u) + log α) / β);  z = clamp(s (ζ−γ) + γ, 0, 1)

The stretch to (γ, ζ) and the clamp give z an atom at exactly 0 (and at 1), so
P(z ≠ 0) = sigmoid(log α − β log(−γ/ζ)) is a smooth function of log α and the expected L0
norm can be penalised directly (the paper's eq. 12)::

    penalty = Σ_gates P(z ≠ 0) · (λ/N · g + (weight_decay/2) · Σ_{w in gate} w²)

with g the number of weights a gate controls (1 per weight, the column height for a Linear
input unit, in·kh·kw for a Conv channel) and N the training-set size: λ is "per weight
and per sample" as in the paper's code, where each gate pays λ per weight it controls,
the total is divided by N, and the L2 term is re-weighted by the probability that the
gate is on. At test time the gate is deterministic, z = clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1);
a weight whose test gate is exactly 0 is pruned, and the effective weights are
weight × test gate.

Optimizer: the paper trains with Adam (lr 1e-3), whose per-parameter step moves log α by
about lr per step however small its gradient. Under plain SGD the penalty's gradient on a
gate, λ/N · g · P'(log α) ≈ 1e-5 on small data sets, would leave the gates where they
started, so ``after_backward`` multiplies log α's gradient by ``gate_lr_scale`` / g
(default 1000; g as above, so that a neuron gate, which gathers the gradient of g
weights, does not move g times faster than a weight gate): under SGD that is a learning
rate of 1000·lr/g for the gates only; under Adam it changes nothing (Adam is invariant to
the scale of a gradient). ``gate_lr_scale=1`` with weight gates is plain SGD. As in the paper's code, log α is clamped to [log 1e-2, log 1e2]
after every step, and initialised as N(log((1−p)/p), 0.01²) with p = ``droprate_init``.
Their layers default to p = 0.5 (their MLP uses 0.2 on its input layer); here the default
is 0.2: a gate with log α = 0 halves its weight in expectation, and with PyTorch's default
initialisation (theirs is Kaiming-normal, about 2.4 times larger) and plain SGD, halving
all four layers of LeNet-5 kept it at chance on digits for 30+ epochs. ``weight_decay``
(5e-4, the default of their scripts) is per sample, as in their MLP (prior precision
N·wd, divided by N). Left out of the paper's code: the moving average of the parameters
used at evaluation, per-layer λ, and λ on a gated conv channel's bias (the bias is gated
in the forward pass but, not being a prunable weight, not charged).

``relaxation="concrete"`` (the reviewer's comparison) uses the plain binary concrete
(γ = 0, ζ = 1, no stretch): z never reaches 0, so P(z ≠ 0) = 1 carries no gradient; the
penalty then uses the keep probability sigmoid(log α) of the Bernoulli gate the concrete
relaxes, and at test time a gate with sigmoid(log α) < 1/2 is pruned (z = 0) and the
others are z = sigmoid(log α).

Implementation: ``attach`` turns every Linear/Conv module into a gated subclass in place
(``module.__class__``), registering ``log_alpha`` on it. Parameter names stay
``fc1.weight`` and the gates are saved as ``fc1.log_alpha``; the classes live at module
level, so the model still pickles and deep-copies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import sparsity
from study.method import Method, MethodParams, Phase, check_fields

GATES = ("weight", "neuron")
RELAXATIONS = ("hard-concrete", "concrete")
STRETCH = {"hard-concrete": (-0.1, 1.1), "concrete": (0.0, 1.0)}  # (γ, ζ)
# The paper's code keeps log α in [log 1e-2, log 1e2] after every step.
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
_EPS = 1e-6  # keeps u away from 0 and 1, as in the paper's code


# -- the distribution ----------------------------------------------------------------------
def sample_gate(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """One (hard-)concrete sample per entry of ``log_alpha``, differentiable in log α."""
    u = torch.rand_like(log_alpha).clamp_(_EPS, 1 - _EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    """P(z ≠ 0) = 1 − Q(0) = sigmoid(log α − β log(−γ/ζ)) for the hard concrete.

    For the unstretched concrete (γ = 0) every sample is > 0; the Bernoulli keep
    probability sigmoid(log α) stands in for it."""
    if gamma == 0:
        return torch.sigmoid(log_alpha)
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def deterministic_gate(log_alpha: Tensor, gamma: float, zeta: float) -> Tensor:
    """The deterministic test-time gate clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1).

    For the unstretched concrete the clamp never hits 0, so gates below 1/2 are cut."""
    pi = torch.sigmoid(log_alpha)
    if gamma == 0:
        return torch.where(pi >= 0.5, pi, torch.zeros_like(pi))
    return (pi * (zeta - gamma) + gamma).clamp(0.0, 1.0)


# -- the gated layers ----------------------------------------------------------------------
class _Gated(nn.Module):
    """Mixin placed before nn.Linear / nn.ConvNd: the forward pass uses weight × z."""

    log_alpha: nn.Parameter
    gates: str
    beta: float
    gamma: float
    zeta: float

    def gate_shape(self) -> tuple[int, ...]:
        """How one gate vector broadcasts over ``weight``."""
        if self.gates == "weight":
            return tuple(self.weight.shape)
        if isinstance(self, nn.Linear):  # input units: one gate per column of (out, in)
            return (1, self.weight.shape[1])
        return (self.weight.shape[0],) + (1,) * (self.weight.dim() - 1)  # output channels

    def group_size(self) -> int:
        """How many weights one gate switches off."""
        return self.weight.numel() // self.log_alpha.numel()

    def gate(self) -> Tensor:
        """A sample in training mode, the deterministic gate in eval mode; shaped like gate_shape."""
        if self.training:
            z = sample_gate(self.log_alpha, self.beta, self.gamma, self.zeta)
        else:
            z = deterministic_gate(self.log_alpha, self.gamma, self.zeta)
        return z.view(self.gate_shape())

    def gated_bias(self, z: Tensor) -> Tensor | None:
        # A switched-off conv channel loses its bias too (the paper gates the channel's output).
        if self.bias is None or self.gates != "neuron" or isinstance(self, nn.Linear):
            return self.bias
        return self.bias * z.view(-1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.gate()
        return self.layer_forward(x, self.weight * z, self.gated_bias(z))

    def layer_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError


class L0Linear(_Gated, nn.Linear):
    def layer_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


class _L0Conv(_Gated):
    def layer_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)  # type: ignore[attr-defined]


class L0Conv1d(_L0Conv, nn.Conv1d):
    pass


class L0Conv2d(_L0Conv, nn.Conv2d):
    pass


class L0Conv3d(_L0Conv, nn.Conv3d):
    pass


GATED_CLASSES: dict[type[nn.Module], type[_Gated]] = {
    nn.Linear: L0Linear, nn.Conv1d: L0Conv1d, nn.Conv2d: L0Conv2d, nn.Conv3d: L0Conv3d,
}


def gated_layers(model: nn.Module) -> dict[str, _Gated]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _Gated)}


# -- the method ----------------------------------------------------------------------------
@dataclass
class L0Params(MethodParams):
    lam: float = 0.1  # λ per weight; the penalty is λ/N · expected number of nonzero weights
    gates: Literal["weight", "neuron"] = "weight"  # one gate per weight, or per input unit / channel
    relaxation: Literal["hard-concrete", "concrete"] = "hard-concrete"
    temperature: float = 2.0 / 3.0  # β
    droprate_init: float = 0.2  # initial drop rate p: log α ~ N(log((1−p)/p), 0.01²)
    weight_decay: float = 5e-4  # the paper's L2 term, re-weighted by P(z ≠ 0); 0 turns it off
    gate_lr_scale: float = 1000.0  # multiplies log α's gradient: its learning rate under SGD (see docstring)

    def __post_init__(self) -> None:
        if self.gates not in GATES:
            raise ValueError(f"l0: unknown gates {self.gates!r}; valid: {', '.join(GATES)}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"l0: unknown relaxation {self.relaxation!r}; valid: {', '.join(RELAXATIONS)}")
        checks = {
            "lam": self.lam >= 0,
            "temperature": self.temperature > 0,
            "droprate_init": 0 < self.droprate_init < 1,
            "weight_decay": self.weight_decay >= 0,
            "gate_lr_scale": self.gate_lr_scale > 0,
        }
        check_fields(self, checks, prefix="l0: invalid ")


class L0HardConcrete(Method):
    name = "l0"
    citation = (
        "C. Louizos, M. Welling, D. P. Kingma, 'Learning Sparse Neural Networks through L0 "
        "Regularization', ICLR 2018."
    )
    Params = L0Params
    params: L0Params

    def attach(self, model: nn.Module) -> None:
        p = self.params
        gamma, zeta = STRETCH[p.relaxation]
        mean = math.log(1 - p.droprate_init) - math.log(p.droprate_init)
        for name, module in sparsity.prunable_layers(model).items():
            if isinstance(module, _Gated):  # attached before (e.g. resumed): keep its gates
                continue
            if type(module) not in GATED_CLASSES:
                valid = ", ".join(c.__name__ for c in GATED_CLASSES)
                kind = type(module).__name__
                raise ValueError(f"l0: cannot gate layer {name!r} of type {kind}; valid: {valid}")
            module.__class__ = GATED_CLASSES[type(module)]
            module.gates, module.beta, module.gamma, module.zeta = p.gates, p.temperature, gamma, zeta
            n_gates = module.weight.numel() if p.gates == "weight" else math.prod(module.gate_shape())
            log_alpha = torch.empty(n_gates, device=module.weight.device, dtype=module.weight.dtype)
            module.log_alpha = nn.Parameter(log_alpha.normal_(mean, 1e-2))

    def penalty(self, model: nn.Module) -> Tensor | None:
        p = self.params
        total: Tensor | None = None
        for m in gated_layers(model).values():
            on = prob_nonzero(m.log_alpha, m.beta, m.gamma, m.zeta)
            cost = torch.full_like(on, p.lam / self.context.train_size * m.group_size())
            if p.weight_decay > 0:
                cost = cost + 0.5 * p.weight_decay * _sum_per_gate(m, m.weight.pow(2))
            term = (on * cost).sum()
            total = term if total is None else total + term
        return total

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        # Per weight: a gate over g weights gathers g times the gradient, so it gets scale / g.
        for m in gated_layers(model).values():
            scale = self.params.gate_lr_scale / m.group_size()
            if m.log_alpha.grad is not None and scale != 1.0:
                m.log_alpha.grad.mul_(scale)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        super().after_step(model)
        for m in gated_layers(model).values():
            m.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        """Nothing to threshold: the test-time gates decide what is pruned, in both phases."""

    @torch.no_grad()
    def effective_weights(self, model: nn.Module) -> dict[str, Tensor]:
        out = {}
        for name, module in sparsity.prunable_layers(model).items():
            w = module.weight.detach()
            if isinstance(module, _Gated):
                w = w * deterministic_gate(module.log_alpha, module.gamma, module.zeta).view(module.gate_shape())
            out[f"{name}.weight"] = w
        return out

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        layers = gated_layers(model).values()
        if not layers:
            return {}
        expected = sum(float(prob_nonzero(m.log_alpha, m.beta, m.gamma, m.zeta).sum()) * m.group_size() for m in layers)
        total = sum(m.weight.numel() for m in layers)
        gates = torch.cat([deterministic_gate(m.log_alpha, m.gamma, m.zeta) for m in layers])
        return {
            "l0.expected_density": expected / total,  # E[fraction of weights with z ≠ 0] in training
            "l0.mean_test_gate": float(gates.mean()),
            "l0.gates_off": float((gates == 0).float().mean()),  # fraction of gates exactly 0 at test
        }


def _sum_per_gate(m: _Gated, values: Tensor) -> Tensor:
    """Sum a weight-shaped tensor over the weights each gate controls → one value per gate."""
    if m.gates == "weight":
        return values.reshape(-1)
    if isinstance(m, nn.Linear):
        return values.sum(0)  # per input unit: the column
    return values.reshape(values.shape[0], -1).sum(1)  # per output channel
