"""Sparsity accounting: which weights count, masks, thresholding and the paper's figures.

Pure functions over tensors and modules. Conventions (DESIGN.md, "Counting"):
prunable weights are the ``weight`` tensors of Linear and Conv layers; biases are
counted separately; compression = |θ| / |θ≠0| over prunable weights;
memory = nonzero × 4 bytes, in kB of 1000 bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from study import runformat as rf

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BYTES_PER_WEIGHT = 4  # fp32


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and Conv modules in definition order, keyed by module name (e.g. ``fc1``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """The prunable weight tensors, keyed by parameter name (e.g. ``fc1.weight``)."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in prunable_layers(model).items()}


def layer_of(param_name: str) -> str:
    """``fc1.weight`` → ``fc1``: the layer name used in ``remaining_pct.<layer>``."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def threshold_masks(weights: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Boolean keep-masks: True where |w| >= threshold."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return {name: w.detach().abs() >= threshold for name, w in weights.items()}


def combine_masks(old: dict[str, Tensor] | None, new: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pruned weights stay pruned: a weight is kept only if both masks keep it."""
    if not old:
        return dict(new)
    return {name: new[name] & old[name] if name in old else new[name] for name in new}


@torch.no_grad()
def apply_masks(params: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
    """Zero, in place, every weight whose mask is False."""
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


@dataclass(frozen=True)
class LayerCount:
    layer: str
    total: int
    nonzero: int
    bias_total: int
    bias_nonzero: int

    @property
    def remaining(self) -> float:
        """The share of the layer's weights left (a fraction)."""
        return self.nonzero / self.total if self.total else 0.0

    @property
    def remaining_pct(self) -> float:
        """The same in %, as it is logged (``remaining_pct.<layer>``) and tabled."""
        return 100.0 * self.remaining

    def as_row(self) -> dict[str, float | int | str]:
        """A ``layers.csv`` row (``runformat.LAYER_COLUMNS``)."""
        return {**asdict(self), rf.REMAINING_PCT: self.remaining_pct}


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerCount, ...]

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def bias_total(self) -> int:
        return sum(layer.bias_total for layer in self.layers)

    @property
    def bias_nonzero(self) -> int:
        return sum(layer.bias_nonzero for layer in self.layers)

    @property
    def compression(self) -> float:
        return self.total / self.nonzero if self.nonzero else float("inf")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    @property
    def memory_kb(self) -> float:
        return self.nonzero * BYTES_PER_WEIGHT / 1000.0

    def metrics(self) -> dict[str, float]:
        """The DESIGN.md per-epoch sparsity metrics, ``remaining_pct.<layer>`` (%) included."""
        out: dict[str, float] = {
            rf.COMPRESSION: self.compression,
            rf.SPARSITY: self.sparsity,
            rf.NONZERO: float(self.nonzero),
            rf.MEMORY_KB: self.memory_kb,
        }
        out.update({rf.remaining_key(layer.layer): layer.remaining_pct for layer in self.layers})
        return out

    def table(self) -> list[dict[str, float | int | str]]:
        return [layer.as_row() for layer in self.layers]


def count(weights: dict[str, Tensor], biases: dict[str, Tensor | None] | None = None) -> SparsityReport:
    """Count nonzeros per layer. ``weights`` are the effective prunable weights keyed by
    parameter name; ``biases`` maps the same layer names (``fc1``) to bias tensors."""
    biases = biases or {}
    layers = []
    for name, w in weights.items():
        layer = layer_of(name)
        b = biases.get(layer)
        layers.append(
            LayerCount(
                layer=layer,
                total=w.numel(),
                nonzero=int(torch.count_nonzero(w.detach())),
                bias_total=0 if b is None else b.numel(),
                bias_nonzero=0 if b is None else int(torch.count_nonzero(b.detach())),
            )
        )
    return SparsityReport(tuple(layers))


def biases_of(model: nn.Module) -> dict[str, Tensor | None]:
    return {name: m.bias for name, m in prunable_layers(model).items()}


def count_model(model: nn.Module, weights: dict[str, Tensor] | None = None) -> SparsityReport:
    """Count a model; ``weights`` overrides the raw weights (e.g. a method's effective weights)."""
    return count(weights if weights is not None else prunable_weights(model), biases_of(model))
