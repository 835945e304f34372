"""`weight-decay`: Tikhonov (L2) regularization plus the sensitivity method's threshold.

The loss gets (λ/2)·‖w‖² over the prunable weights (the weight tensors of Linear and
Conv layers; biases are not penalized, as in the sensitivity method's default scope), so
each SGD step shrinks every weight by lr·λ·w. In the sparsify phase, at the end of every
epoch, weights with |w| < T are set to zero and masked, exactly as the sensitivity method
does. This is the paper's "Tikhonov + threshold" comparison: the same procedure with the
sensitivity-selective decay replaced by a uniform one. Its λ is scaled by the learning rate;
``decay`` is the same uniform shrinkage with λ per step, as in the sensitivity update.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from baselines.penalties import prunable_penalty
from study.method import ThresholdMethod, ThresholdParams


@dataclass
class WeightDecayParams(ThresholdParams):
    lam: float = 1e-2  # λ of (λ/2)‖w‖²: every step shrinks w by lr·λ·w
    threshold: float = 1e-3  # T: |w| < T is pruned at the end of every sparsify epoch


class WeightDecay(ThresholdMethod):
    name = "weight-decay"
    citation = (
        "Tikhonov (L2) regularization, weight decay: A. N. Tikhonov, 'On the stability of "
        "inverse problems', 1943; Krogh & Hertz, 'A simple weight decay can improve "
        "generalization', NIPS 1991. With the threshold of Tartaglione et al. 2018."
    )
    Params = WeightDecayParams

    def penalty(self, model: nn.Module) -> Tensor | None:
        return prunable_penalty(model, self.params.lam)
