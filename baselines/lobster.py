"""`lobster`: LOBSTER, loss-based sensitivity regularization.

Tartaglione, Bragagnolo, Fiandrotti, Grangetto, "LOss-Based SensiTivity rEgulaRization: towards
deep sparse neural networks", Neural Networks 146, 2022 (arXiv:2011.09905). The sensitivity of
a parameter is that of the loss, not of the network output as in the 2018 method::

    S(w) = |∂L/∂w|          L: the batch-mean data loss of this step (no penalty: LOBSTER has none)

It is read from ``w.grad`` in ``after_backward``, i.e. the gradient the step has just computed:
no extra pass. ``w.grad`` is the data loss's gradient exactly because the method adds no penalty
and the loop's optimizers take no weight decay of their own; it is read before the optimizer
step, so no optimizer can change it. After the optimizer step every parameter in scope is
pulled towards zero in proportion to its bounded insensitivity::

    w ← w − λ · w · max(0, 1 − S)      w: the weights after the optimizer step (``decay_from``)

then masks are re-applied, and at the end of every sparsify epoch every prunable weight with
|w| < T is pruned (``study.sensitivity.DecayUpdate``, shared with ``decay`` and the 2018
method). Each epoch reports ``sens.<layer>.*``, statistics of the epoch-mean S of the remaining
weights, as the sensitivity methods do. The authors' code (``LOBSTER.step``, called after ``optimizer.step()``) decays the
post-step weights with the pre-step gradient; the 2018 method as implemented here decays the
pre-step weights: ``decay_from: pre-step`` gives that order. ``scope: all`` (their code: every
parameter of the Linear and Conv layers) also decays the biases; ``rescaled`` divides S by its
per-tensor maximum first (their code's option; then S ∈ [0, 1] and no clamp is needed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines.decay import decayed_parameters
from study.method import ThresholdParams, check_fields
from study.sensitivity import DECAY_FROM, SCOPES, DecayFrom, Scope, SensitivityStatistics, insensitivity

# The floor of the per-tensor maximum when rescaling (as in the authors' code): a tensor whose
# gradient is 0 everywhere keeps S = 0 instead of dividing by zero.
RESCALE_EPS = 1e-10


def loss_sensitivity(params: dict[str, Tensor], rescaled: bool = False) -> dict[str, Tensor]:
    """S = |∂L/∂w| of each parameter from its ``.grad`` (0 where it has none: L does not depend
    on it); ``rescaled``: S / max(max S, RESCALE_EPS) per tensor."""
    out: dict[str, Tensor] = {}
    for name, p in params.items():
        s = torch.zeros_like(p) if p.grad is None else p.grad.detach().abs()
        if rescaled:
            s = s / s.max().clamp(min=RESCALE_EPS)
        out[name] = s
    return out


@dataclass
class LobsterParams(ThresholdParams):
    # Defaults: the sensitivity methods' λ and T (see the README for the digits numbers).
    lam: float = 1e-3  # λ: the decay per step, not scaled by the learning rate
    threshold: float = 3e-2  # T: |w| < T is pruned at the end of every sparsify epoch
    scope: Scope = "all"  # "all": weights and biases of the Linear and Conv layers (their code)
    rescaled: bool = False  # S / max S per tensor before the update (their code's option)
    decay_from: DecayFrom = "post-step"  # the weights d = w·max(0, 1 − S) is taken from

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"lam": self.lam < 1},
                     suffix="; must be < 1 (w shrinks by at most λ·w per step)")
        check_fields(self, {"scope": self.scope in SCOPES}, suffix=f"; valid: {', '.join(SCOPES)}")
        check_fields(self, {"decay_from": self.decay_from in DECAY_FROM},
                     suffix=f"; valid: {', '.join(DECAY_FROM)}")
        check_fields(self, {"rescaled": isinstance(self.rescaled, bool)}, suffix="; must be true or false")


class Lobster(SensitivityStatistics):
    name = "lobster"
    citation = (
        "E. Tartaglione, A. Bragagnolo, A. Fiandrotti, M. Grangetto. LOss-Based SensiTivity "
        "rEgulaRization (LOBSTER): towards deep sparse neural networks. Neural Networks 146, 2022."
    )
    Params = LobsterParams
    params: LobsterParams

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        params = decayed_parameters(model, self.params.scope)
        with torch.no_grad():
            s = loss_sensitivity(params, self.params.rescaled)
            self._accumulate(s)  # sens.<layer>.*: statistics of the epoch-mean S, as the others
            self.schedule_decay(params, {name: insensitivity(v) for name, v in s.items()},
                                self.params.decay_from)
