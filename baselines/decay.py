"""`decay`: the sensitivity update with the sensitivity removed, the matched control.

After every optimizer step each parameter in scope is shrunk by λ times its pre-step value::

    w ← w − λ · w         the sensitivity update w ← w − λ · w · max(0, 1 − S) with S ≡ 0

λ is a rate per step, not scaled by the learning rate, as in the sensitivity methods (unlike
``weight-decay``, whose (λ/2)‖w‖² penalty shrinks w by lr·λ·w per SGD step). Everything else is
the sensitivity methods' too: the decay is taken from the weights before the step (in
``after_backward``) and subtracted after it by the very code of the sensitivity methods
(``study.sensitivity.DecayUpdate``); the same two phases; at the end of every sparsify
epoch every prunable weight with |w| < T is zeroed and masked; the same ``scope`` (``weights``:
the prunable weights; ``all``: their layers' biases too), the same checks on λ and T and the
same defaults, taken from ``SensitivityParams``. So a sensitivity run in which every S is 0 is
this run bit for bit (tests/test_decay.py), and comparing ``sensitivity-*`` with ``decay`` at
equal settings measures what the sensitivity term adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from study import sparsity
from study.method import ThresholdParams
from study.sensitivity import CITATION, SCOPES, DecayUpdate, Scope, SensitivityParams


def decayed_parameters(model: nn.Module, scope: str) -> dict[str, Tensor]:
    """The parameters the update shrinks, keyed by name as ``sensitivity()`` keys its S: every
    prunable weight and, with ``scope="all"``, the biases of the prunable layers."""
    params: dict[str, Tensor] = {}
    for layer, module in sparsity.prunable_layers(model).items():
        prefix = f"{layer}." if layer else ""  # a bare layer's parameters are "weight", "bias"
        params[f"{prefix}weight"] = module.weight
        if scope == "all" and module.bias is not None:
            params[f"{prefix}bias"] = module.bias
    return params


@dataclass
class DecayParams(ThresholdParams):
    lam: float = SensitivityParams.lam  # λ: the decay per step, not scaled by the learning rate
    threshold: float = SensitivityParams.threshold  # T: |w| < T is pruned at the end of every sparsify epoch
    scope: Scope = SensitivityParams.scope  # "weights" or "all" (their layers' biases too)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam >= 1:
            raise ValueError(f"invalid lam={self.lam!r}; must be < 1 (w shrinks by at most λ·w per step)")
        if self.scope not in SCOPES:
            raise ValueError(f"invalid scope={self.scope!r}; valid: {', '.join(SCOPES)}")


class Decay(DecayUpdate):
    name = "decay"
    citation = f"{CITATION} Their update with the sensitivity term removed (S = 0): the matched control."
    Params = DecayParams
    params: DecayParams

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        # d = w at the pre-step weights (a copy: the optimizer step changes w in place)
        with torch.no_grad():
            self.decay = {name: w.detach().clone()
                          for name, w in decayed_parameters(model, self.params.scope).items()}
