"""Norm penalties on the prunable weights, shared by the baselines that add one to the loss.

Only the weight tensors of Linear and Conv layers are penalized, never the biases (as in the
sensitivity method's default scope). ``weight-decay`` and ``l1`` are defined by these terms;
``magnitude`` and ``gmp`` offer the L2 term as an option (Han's weight decay).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from study import sparsity


def l2_penalty(weights: Iterable[Tensor], lam: float) -> Tensor:
    """(λ/2)·Σ w² over ``weights``; its gradient is λ·w."""
    weights = list(weights)
    if not weights:
        return torch.zeros(())
    return 0.5 * lam * sum(w.pow(2).sum() for w in weights)


def l1_penalty(weights: Iterable[Tensor], lam: float) -> Tensor:
    """λ·Σ |w| over ``weights``; its (sub)gradient is λ·sign(w), 0 at w = 0."""
    weights = list(weights)
    if not weights:
        return torch.zeros(())
    return lam * sum(w.abs().sum() for w in weights)


def prunable_penalty(
    model: nn.Module, lam: float, norm: Callable[[Iterable[Tensor], float], Tensor] = l2_penalty
) -> Tensor | None:
    """``norm`` (default the L2 term) over the model's prunable weights; None when λ = 0."""
    if lam == 0:
        return None
    return norm(sparsity.prunable_weights(model).values(), lam)
