"""`gmp`: gradual magnitude pruning with the cubic schedule (Zhu & Gupta 2017).

The sparsity is raised from s_i to s_f over n pruning steps spaced Δt apart:

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³   for t ∈ {t0, t0+Δt, …, t0+n·Δt}

pruning fast at first, while there are many redundant weights, and slowly near the end. At
each step the smallest-magnitude weights are masked until the target sparsity is reached,
in every layer separately (``scope: layer``, as the paper does) or over all prunable weights
together (``scope: global``). Pruned weights never come back (masks); training between and
after the steps lets the network recover.

Time unit: epochs of the sparsify phase, not optimizer steps as in the paper. The loop tells
a method the phase only at the end of an epoch, so t counts sparsify epochs: t = 1 at the end
of the first sparsify epoch, and the pruning for t happens at the end of that epoch. The reach
phase is dense training; ``start`` (t0) is relative to the start of the sparsify phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from baselines.penalties import prunable_penalty
from study import sparsity
from study.method import Method, MethodContext, MethodParams, Phase, check_fields

SCOPES = ("layer", "global")


def gmp_sparsity(t: float, s_i: float, s_f: float, t0: float, dt: float, n: int) -> float:
    """The cubic schedule's sparsity in force at time t.

    0 before t0 (dense); s_i at t0; the formula at the pruning times t0 + k·Δt (k ≤ n),
    held constant in between; s_f from t0 + n·Δt on.
    """
    if t < t0:
        return 0.0
    if n <= 0:
        return s_f
    k = min(math.floor((t - t0) / dt), n)  # the last pruning step taken by time t
    return s_f + (s_i - s_f) * (1.0 - k / n) ** 3


def _keep_count(total: int, target: float) -> int:
    return total - int(round(target * total))


@torch.no_grad()
def magnitude_masks(
    weights: dict[str, Tensor], masks: dict[str, Tensor], target: float, scope: str = "layer"
) -> dict[str, Tensor]:
    """Keep-masks with the largest-|w| weights kept so that a ``target`` fraction is pruned.

    Already-pruned weights (mask False) rank below every other weight, so they stay pruned
    as long as the target does not fall. ``scope="layer"`` prunes each tensor to ``target``;
    ``"global"`` ranks all weights together.
    """
    if scope not in SCOPES:
        raise ValueError(f"invalid scope={scope!r}; valid: {', '.join(SCOPES)}")
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().flatten().float()
        if name in masks:
            s = torch.where(masks[name].flatten(), s, torch.full_like(s, -1.0))
        scores[name] = s

    def top(s: Tensor, k: int) -> Tensor:
        keep = torch.zeros_like(s, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(s, k, sorted=False).indices] = True
        return keep

    if scope == "layer":
        return {
            name: top(s, _keep_count(s.numel(), target)).view_as(weights[name])
            for name, s in scores.items()
        }
    flat = torch.cat(list(scores.values()))
    keep = top(flat, _keep_count(flat.numel(), target))
    out, i = {}, 0
    for name, s in scores.items():
        out[name] = keep[i : i + s.numel()].view_as(weights[name])
        i += s.numel()
    return out


@dataclass
class GradualMagnitudeParams(MethodParams):
    target_sparsity: float = 0.9  # s_f, reached at t0 + n·Δt
    initial_sparsity: float = 0.0  # s_i, applied at t0
    start: int = 1  # t0, in sparsify epochs (1 = end of the first sparsify epoch)
    frequency: int = 2  # Δt, epochs between pruning steps
    steps: int = 40  # n, pruning steps after t0
    scope: Literal["layer", "global"] = "layer"  # same sparsity per layer, or one global ranking
    lam: float = 0.0  # optional L2 term (λ/2)‖w‖² on the prunable weights, both phases

    def __post_init__(self) -> None:
        checks = {
            "target_sparsity": 0 <= self.target_sparsity < 1,
            "initial_sparsity": 0 <= self.initial_sparsity <= self.target_sparsity,
            "start": self.start >= 1,
            "frequency": self.frequency >= 1,
            "steps": self.steps >= 0,
            "lam": self.lam >= 0,
        }
        check_fields(self, checks, prefix="gmp: invalid ",
                     suffix=" (need 0 <= initial_sparsity <= target_sparsity < 1, start >= 1, "
                     "frequency >= 1, steps >= 0, lam >= 0)")
        if self.scope not in SCOPES:
            raise ValueError(f"gmp: invalid scope={self.scope!r}; valid: {', '.join(SCOPES)}")


class GradualMagnitude(Method):
    name = "gmp"
    citation = (
        "M. Zhu, S. Gupta, 'To prune, or not to prune: exploring the efficacy of pruning for "
        "model compression', arXiv:1710.01878, 2017 (ICLR 2018 workshop)."
    )
    Params = GradualMagnitudeParams
    params: GradualMagnitudeParams

    def __init__(self, params: GradualMagnitudeParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.sparsify_epochs = 0  # t: sparsify epochs completed
        self.current_target = 0.0  # the sparsity last pruned to

    def penalty(self, model: nn.Module) -> Tensor | None:
        return prunable_penalty(model, self.params.lam)

    def target_at(self, t: int) -> float:
        p = self.params
        return gmp_sparsity(t, p.initial_sparsity, p.target_sparsity, p.start, p.frequency, p.steps)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase != "sparsify":
            return
        self.sparsify_epochs += 1
        target = self.target_at(self.sparsify_epochs)
        if target > self.current_target:
            weights = sparsity.prunable_weights(model)
            self.prune(model, magnitude_masks(weights, self.masks, target, self.params.scope))
            self.current_target = target

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"target_sparsity_now": self.current_target}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsify_epochs": self.sparsify_epochs, "current_target": self.current_target}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.sparsify_epochs = int(state.get("sparsify_epochs", 0))
        self.current_target = float(state.get("current_target", 0.0))
