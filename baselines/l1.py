"""`l1`: L1 (lasso) regularization plus the sensitivity method's threshold.

The loss gets λ·‖w‖₁ over the prunable weights (the weight tensors of Linear and Conv
layers; biases are not penalized), so each SGD step moves every nonzero weight lr·λ
towards zero. Plain SGD on ‖w‖₁ oscillates around zero rather than landing on it, so, as
in the sensitivity method, at the end of every sparsify epoch weights with |w| < T are set
to zero and masked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from study import sparsity
from study.method import Method, MethodParams, Phase


def l1_penalty(weights: Iterable[Tensor], lam: float) -> Tensor:
    """λ·Σ |w| over ``weights``; its (sub)gradient is λ·sign(w), 0 at w = 0."""
    weights = list(weights)
    if not weights:
        return torch.zeros(())
    return lam * sum(w.abs().sum() for w in weights)


@dataclass
class L1Params(MethodParams):
    lam: float = 1e-4  # λ of λ‖w‖₁
    threshold: float = 1e-3  # T: |w| < T is pruned at the end of every sparsify epoch

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"l1: lam must be >= 0, got {self.lam}")
        if not self.threshold >= 0:
            raise ValueError(f"l1: threshold must be >= 0, got {self.threshold}")


class L1(Method):
    name = "l1"
    citation = (
        "L1 (lasso) regularization: R. Tibshirani, 'Regression shrinkage and selection via "
        "the lasso', J. R. Stat. Soc. B, 1996. With the threshold of Tartaglione et al. 2018."
    )
    Params = L1Params
    params: L1Params

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self.params.lam == 0:
            return None
        return l1_penalty(sparsity.prunable_weights(model).values(), self.params.lam)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase == "sparsify":
            self.threshold_prune(model, self.params.threshold)
