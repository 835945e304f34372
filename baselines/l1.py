"""`l1`: L1 (lasso) regularization plus the sensitivity method's threshold.

The loss gets λ·‖w‖₁ over the prunable weights (the weight tensors of Linear and Conv
layers; biases are not penalized), so each SGD step moves every nonzero weight lr·λ
towards zero. Plain SGD on ‖w‖₁ oscillates around zero rather than landing on it, so, as
in the sensitivity method, at the end of every sparsify epoch weights with |w| < T are set
to zero and masked.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from baselines.penalties import l1_penalty, prunable_penalty
from study.method import ThresholdMethod, ThresholdParams


@dataclass
class L1Params(ThresholdParams):
    lam: float = 1e-4  # λ of λ‖w‖₁
    threshold: float = 1e-3  # T: |w| < T is pruned at the end of every sparsify epoch


class L1(ThresholdMethod):
    name = "l1"
    citation = (
        "L1 (lasso) regularization: R. Tibshirani, 'Regression shrinkage and selection via "
        "the lasso', J. R. Stat. Soc. B, 1996. With the threshold of Tartaglione et al. 2018."
    )
    Params = L1Params

    def penalty(self, model: nn.Module) -> Tensor | None:
        return prunable_penalty(model, self.params.lam, l1_penalty)
