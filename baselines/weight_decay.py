"""`weight-decay`: Tikhonov (L2) regularization plus the sensitivity method's threshold.

The loss gets (λ/2)·‖w‖² over the prunable weights (the weight tensors of Linear and
Conv layers; biases are not penalized, as in the sensitivity method's default scope), so
each SGD step shrinks every weight by lr·λ·w. In the sparsify phase, at the end of every
epoch, weights with |w| < T are set to zero and masked, exactly as the sensitivity method
does. This is the paper's "Tikhonov + threshold" comparison: the same procedure with the
sensitivity-selective decay replaced by a uniform one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from study import sparsity
from study.method import Method, MethodParams, Phase


def l2_penalty(weights: Iterable[Tensor], lam: float) -> Tensor:
    """(λ/2)·Σ w² over ``weights``; its gradient is λ·w."""
    weights = list(weights)
    if not weights:
        return torch.zeros(())
    return 0.5 * lam * sum(w.pow(2).sum() for w in weights)


@dataclass
class WeightDecayParams(MethodParams):
    lam: float = 1e-2  # λ of (λ/2)‖w‖²: every step shrinks w by lr·λ·w
    threshold: float = 1e-3  # T: |w| < T is pruned at the end of every sparsify epoch

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"weight-decay: lam must be >= 0, got {self.lam}")
        if not self.threshold >= 0:
            raise ValueError(f"weight-decay: threshold must be >= 0, got {self.threshold}")


class WeightDecay(Method):
    name = "weight-decay"
    citation = (
        "Tikhonov (L2) regularization, weight decay: A. N. Tikhonov, 'On the stability of "
        "inverse problems', 1943; Krogh & Hertz, 'A simple weight decay can improve "
        "generalization', NIPS 1991. With the threshold of Tartaglione et al. 2018."
    )
    Params = WeightDecayParams
    params: WeightDecayParams

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self.params.lam == 0:
            return None
        return l2_penalty(sparsity.prunable_weights(model).values(), self.params.lam)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase == "sparsify":
            self.threshold_prune(model, self.params.threshold)
