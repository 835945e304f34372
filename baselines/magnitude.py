"""`magnitude`: iterative magnitude pruning with retraining (Han et al. 2015).

Han et al. train the network, prune every connection whose magnitude is below a per-layer
threshold, retrain the survivors with the pruned connections held at zero, and repeat.
The threshold is "a quality parameter multiplied by the standard deviation of a layer's
weights".

How it maps onto the two-phase loop:

* *reach*: ordinary training (with the optional L2 term ``lam``, Han's weight decay).
* *sparsify*: ``rounds`` rounds of prune-then-retrain. The loop gives a method control only
  at the end of an epoch, so round r prunes at the end of sparsify epoch
  ``1 + r·retrain_epochs`` and the next ``retrain_epochs`` epochs retrain with masks.
  (The first sparsify epoch therefore trains once more before the first pruning.) After the
  last round, training simply continues with the masks until the loop stops.

At round r (0-based), layer l is pruned where |w| < q_{l,r} · std_l, with
q_{l,r} = q_l · (1 + r·quality_growth), q_l = ``layer_quality[l]`` if given else
``quality``. The growing threshold follows Han's thesis (S. Han, "Efficient Methods and
Hardware for Deep Learning", Stanford PhD thesis, 2017), which raises the threshold by a delta
at every pruning iteration; here the delta is the same every round, q_l · quality_growth.

std_l is recomputed at every round, from the weights as they are then. ``std_over`` picks
the weights it is taken over: ``all`` (default) the layer's whole weight tensor, the zeros
pruned in earlier rounds included; ``kept`` only the still-unpruned weights, which makes a
fixed quality prune more every round. (Distiller's SensitivityPruner, another reading of
Han, instead computes the std once, at its first pruning, and keeps that absolute threshold
for every later round.) Pruned weights never come back (masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from baselines.penalties import prunable_penalty
from study import sparsity
from study.method import Method, MethodContext, MethodParams, Phase, check_fields

STD_OVER = ("all", "kept")


def han_threshold(
    weight: Tensor, quality: float, keep: Tensor | None = None, std_over: str = "all"
) -> float:
    """Han's per-layer threshold: quality × std of the layer's weights.

    ``std_over="all"`` takes the (sample) std over the whole tensor; ``"kept"`` only over
    the entries where ``keep`` is True (threshold 0 when fewer than two remain).
    """
    if std_over not in STD_OVER:
        raise ValueError(f"invalid std_over={std_over!r}; valid: {', '.join(STD_OVER)}")
    w = weight.detach()
    if std_over == "kept" and keep is not None:
        w = w[keep]
    if w.numel() < 2:
        return 0.0
    return float(quality * w.float().std())


def parse_layer_quality(spec: str | dict[str, float] | None) -> dict[str, float]:
    """``"fc1:1.0,fc2:0.8"`` (or a dict) → ``{"fc1": 1.0, "fc2": 0.8}``; ``""`` → ``{}``."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in spec.split(","):
            layer, sep, value = part.partition(":")
            if not sep or not layer.strip():
                raise ValueError(f"invalid layer_quality entry {part!r}; expected 'layer:quality', e.g. 'fc1:1.0'")
            items.append((layer.strip(), value))
    out: dict[str, float] = {}
    for layer, value in items:
        try:
            q = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"invalid layer_quality value {layer}={value!r}; expected a number") from None
        if not q >= 0:
            raise ValueError(f"invalid layer_quality value {layer}={q}; must be >= 0")
        out[str(layer)] = q
    return out


def round_quality(quality: float, round_index: int, growth: float) -> float:
    """The quality used at round ``round_index`` (0-based): quality · (1 + r·growth)."""
    return quality * (1.0 + round_index * growth)


@dataclass
class MagnitudeParams(MethodParams):
    quality: float = 1.0  # q: prune |w| < q·std(layer), for layers not in layer_quality
    layer_quality: str = ""  # per-layer q, "fc1:1.0,fc2:0.8" (a dict is accepted too)
    quality_growth: float = 0.25  # round r uses q·(1 + r·quality_growth)
    rounds: int = 5  # prune-retrain rounds in the sparsify phase
    retrain_epochs: int = 10  # epochs of retraining after each pruning
    std_over: Literal["all", "kept"] = "all"  # std over the whole layer or its unpruned weights
    lam: float = 0.0  # optional L2 term (λ/2)‖w‖² on the prunable weights, both phases

    def __post_init__(self) -> None:
        if isinstance(self.layer_quality, dict):  # keep a string: it is an MLflow param
            self.layer_quality = ",".join(f"{k}:{v}" for k, v in self.layer_quality.items())
        parse_layer_quality(self.layer_quality)
        checks = {
            "quality": self.quality >= 0,
            "quality_growth": self.quality_growth >= 0,
            "rounds": self.rounds >= 1,
            "retrain_epochs": self.retrain_epochs >= 1,
            "lam": self.lam >= 0,
        }
        check_fields(self, checks, prefix="magnitude: invalid ")
        if self.std_over not in STD_OVER:
            raise ValueError(f"magnitude: invalid std_over={self.std_over!r}; valid: {', '.join(STD_OVER)}")


class Magnitude(Method):
    name = "magnitude"
    citation = (
        "S. Han, J. Pool, J. Tran, W. J. Dally, 'Learning both weights and connections for "
        "efficient neural networks', NIPS 2015."
    )
    Params = MagnitudeParams
    params: MagnitudeParams

    def __init__(self, params: MagnitudeParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.layer_quality = parse_layer_quality(params.layer_quality)
        self.sparsify_epochs = 0  # sparsify epochs completed
        self.rounds_done = 0

    def attach(self, model: nn.Module) -> None:
        layers = sparsity.prunable_layers(model)
        unknown = sorted(set(self.layer_quality) - set(layers))
        if unknown:
            raise ValueError(f"magnitude: unknown layer {unknown[0]!r} in layer_quality; valid: {', '.join(layers)}")

    def penalty(self, model: nn.Module) -> Tensor | None:
        return prunable_penalty(model, self.params.lam)

    def quality_for(self, layer: str, round_index: int) -> float:
        base = self.layer_quality.get(layer, self.params.quality)
        return round_quality(base, round_index, self.params.quality_growth)

    def is_prune_epoch(self, sparsify_epoch: int) -> bool:
        """Whether the round schedule prunes at the end of this (1-based) sparsify epoch."""
        r, offset = divmod(sparsify_epoch - 1, self.params.retrain_epochs)
        return offset == 0 and r < self.params.rounds

    @torch.no_grad()
    def prune_round(self, model: nn.Module) -> None:
        """One Han pruning step on every prunable layer, at quality for ``rounds_done``."""
        keep: dict[str, Tensor] = {}
        for name, w in sparsity.prunable_weights(model).items():
            old = self.masks.get(name)
            q = self.quality_for(sparsity.layer_of(name), self.rounds_done)
            t = han_threshold(w, q, old, self.params.std_over)
            keep[name] = w.abs() >= t
        self.prune(model, keep)
        self.rounds_done += 1

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase != "sparsify":
            return
        self.sparsify_epochs += 1
        if self.is_prune_epoch(self.sparsify_epochs):
            self.prune_round(model)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"prune_round": float(self.rounds_done)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsify_epochs": self.sparsify_epochs, "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.sparsify_epochs = int(state.get("sparsify_epochs", 0))
        self.rounds_done = int(state.get("rounds_done", 0))
