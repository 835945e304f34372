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
              + Σ_biases (weight_decay/2) · b² · (P(z ≠ 0) of its gate, if the bias is gated)

with g the number of weights a gate controls (1 per weight, the column height for a Linear
input unit, in·kh·kw for a Conv channel) and N the training-set size: λ is "per weight
and per sample" as in the paper's code, where each gate pays λ per weight it controls,
the total is divided by N, and the L2 term is re-weighted by the probability that the
gate is on. The authors' code also puts the L2 term on the biases (``bias_decay``, default
on; off gives the L2 term on the weights only): plainly, except that a conv channel's bias
behind a neuron gate is re-weighted by that gate's P(z ≠ 0). At test time the gate is deterministic,
z = clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1); a weight whose test gate is exactly 0 is pruned,
and the effective weights are weight × test gate.

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
in the forward pass but, not being a prunable weight, not charged; their code even adds
it with the sign of a reward).

``relaxation="concrete"`` (the reviewer's comparison) uses the plain binary concrete
(γ = 0, ζ = 1, no stretch): z never reaches 0, so P(z ≠ 0) = 1 carries no gradient; the
penalty then uses the keep probability sigmoid(log α) of the Bernoulli gate the concrete
relaxes, and at test time a gate with sigmoid(log α) < 1/2 is pruned (z = 0) and the
others are z = sigmoid(log α).

Implementation: ``attach`` turns every Linear/Conv module into a gated class in place
(``baselines.layer_swap``: ``L0Linear``, ``L0Conv2d``, …), registering ``log_alpha`` on it.
Parameter names stay ``fc1.weight`` and the gates are saved as ``fc1.log_alpha``; the
classes live in this module, so the model still pickles and deep-copies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from baselines.layer_swap import SwappedLayer, effective_weights, layer_classes, swap_layers, swapped_layers
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
class _Gated(SwappedLayer):
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

    def bias_is_gated(self) -> bool:
        """Whether the bias sits behind a gate: a conv output channel's, with neuron gates."""
        return self.bias is not None and self.gates == "neuron" and not isinstance(self, nn.Linear)

    def gated_bias(self, z: Tensor) -> Tensor | None:
        # A switched-off conv channel loses its bias too (the paper gates the channel's output).
        return self.bias * z.view(-1) if self.bias_is_gated() else self.bias

    def forward(self, x: Tensor) -> Tensor:
        z = self.gate()
        return self.layer_forward(x, self.weight * z, self.gated_bias(z))

    def effective_weight(self) -> Tensor:
        return self.weight * deterministic_gate(self.log_alpha, self.gamma, self.zeta).view(self.gate_shape())


# L0Linear, L0Conv1d, L0Conv2d, L0Conv3d: _Gated before each prunable layer type.
GATED_CLASSES = layer_classes(_Gated, "L0")


# -- the method ----------------------------------------------------------------------------
@dataclass
class L0Params(MethodParams):
    lam: float = 0.1  # λ per weight; the penalty is λ/N · expected number of nonzero weights
    gates: Literal["weight", "neuron"] = "weight"  # one gate per weight, or per input unit / channel
    relaxation: Literal["hard-concrete", "concrete"] = "hard-concrete"
    temperature: float = 2.0 / 3.0  # β
    droprate_init: float = 0.2  # initial drop rate p: log α ~ N(log((1−p)/p), 0.01²)
    weight_decay: float = 5e-4  # the paper's L2 term, re-weighted by P(z ≠ 0); 0 turns it off
    bias_decay: bool = True  # the L2 term on the biases too, as in the authors' code
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
    uses_sparsify_phase = False  # the gates decide what is pruned, in both phases

    def attach(self, model: nn.Module) -> None:
        p = self.params
        gamma, zeta = STRETCH[p.relaxation]
        mean = math.log(1 - p.droprate_init) - math.log(p.droprate_init)

        def add_gates(module: _Gated) -> None:
            module.gates, module.beta, module.gamma, module.zeta = p.gates, p.temperature, gamma, zeta
            n_gates = module.weight.numel() if p.gates == "weight" else math.prod(module.gate_shape())
            log_alpha = torch.empty(n_gates, device=module.weight.device, dtype=module.weight.dtype)
            module.log_alpha = nn.Parameter(log_alpha.normal_(mean, 1e-2))

        swap_layers(model, GATED_CLASSES, self.name, add_gates)

    def penalty(self, model: nn.Module) -> Tensor | None:
        p = self.params
        total: Tensor | None = None
        for m in swapped_layers(model, _Gated).values():
            on = prob_nonzero(m.log_alpha, m.beta, m.gamma, m.zeta)
            cost = torch.full_like(on, p.lam / self.context.train_size * m.group_size())
            if p.weight_decay > 0:
                cost = cost + 0.5 * p.weight_decay * _sum_per_gate(m, m.weight.pow(2))
            term = (on * cost).sum()
            if p.bias_decay and p.weight_decay > 0 and m.bias is not None:
                # As in the authors' code: a bias behind a gate is re-weighted by P(z ≠ 0) too.
                b2 = 0.5 * p.weight_decay * m.bias.pow(2)
                term = term + (on * b2 if m.bias_is_gated() else b2).sum()
            total = term if total is None else total + term
        return total

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        # Per weight: a gate over g weights gathers g times the gradient, so it gets scale / g.
        for m in swapped_layers(model, _Gated).values():
            scale = self.params.gate_lr_scale / m.group_size()
            if m.log_alpha.grad is not None and scale != 1.0:
                m.log_alpha.grad.mul_(scale)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        super().after_step(model)
        for m in swapped_layers(model, _Gated).values():
            m.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        """Nothing to threshold: the test-time gates decide what is pruned, in both phases."""

    def effective_weights(self, model: nn.Module) -> dict[str, Tensor]:
        return effective_weights(model)

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        layers = swapped_layers(model, _Gated).values()
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
