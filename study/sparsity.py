"""Sparsity accounting: which weights count, masks, thresholding and the paper's figures.

Pure functions over tensors and modules. Conventions (DESIGN.md, "Counting"):
prunable weights are the ``weight`` tensors of Linear and Conv layers; biases are
counted separately; compression = |θ| / |θ≠0| over prunable weights;
memory = nonzero × 4 bytes, in kB of 1000 bytes.

Structured accounting (the units a pruned network still has, as the L0 and SeReNe papers count
them): a layer's *neurons* are its output units, the rows of a Linear weight or the filters of
a Conv. A neuron is left when it has a nonzero incoming weight and, when the next prunable layer
reads it, a nonzero outgoing weight there, so that both ways of removing a unit count: its row
pruned (SeReNe, weight pruning) or its input to the next layer cut (L0's neuron gates on the
input units of a Linear layer). The *inputs* are the first layer's input units (features, or
channels of a conv) with a nonzero weight. "The next layer reads it" is decided on the layers
in definition order, as a chain: the next layer is a Linear whose inputs are this layer's units
(or, after a conv, its flattened channels: ``in_features`` a multiple of the channels, channel
by channel as ``nn.Flatten`` orders them), or a Conv (groups 1) whose input channels are them.
Anything else (a branch, a skip connection) counts incoming weights only.
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
    neurons_total: int = 0  # output units: rows of a Linear weight, filters of a Conv
    neurons: int = 0  # those left (module doc)

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
    inputs_total: int = 0  # the first layer's input units
    inputs: int = 0  # those read through a nonzero weight

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
        out[rf.INPUTS] = float(self.inputs)
        out.update({rf.neurons_key(layer.layer): float(layer.neurons) for layer in self.layers})
        return out

    @property
    def architecture(self) -> str:
        """The remaining units, input first: ``64-112-43-10`` (``runformat.architecture``)."""
        return rf.architecture(self.inputs, [layer.neurons for layer in self.layers])

    def table(self) -> list[dict[str, float | int | str]]:
        return [layer.as_row() for layer in self.layers]


def rows_in_use(weight: Tensor) -> Tensor:
    """Per output unit (row of a Linear weight, filter of a Conv): any nonzero incoming weight."""
    w = weight.detach()
    return (w.reshape(w.shape[0], -1) != 0).any(dim=1)


def inputs_in_use(weight: Tensor, units: int, module: nn.Module | None = None) -> Tensor | None:
    """Per input unit of a layer, of ``units`` units: any nonzero weight reading it. A Linear
    reads ``in_features / units`` consecutive features per unit (flattened conv channels); a
    Conv (groups 1) reads one input channel per unit. None when the layer's input is not
    ``units`` units in that way (module doc), or for a module neither Linear nor Conv."""
    w = weight.detach()
    if isinstance(module, nn.Linear) or (module is None and w.dim() == 2):
        if units <= 0 or w.shape[1] % units:
            return None
        return (w.reshape(w.shape[0], units, -1) != 0).any(dim=2).any(dim=0)
    if w.dim() > 2 and getattr(module, "groups", 1) == 1 and w.shape[1] == units:
        return (w.transpose(0, 1).reshape(units, -1) != 0).any(dim=1)
    return None


def _input_units(weight: Tensor, module: nn.Module | None) -> int:
    """The first layer's input units: a Linear's features, a Conv's channels (all groups)."""
    return weight.shape[1] * int(getattr(module, "groups", 1))


def count(weights: dict[str, Tensor], biases: dict[str, Tensor | None] | None = None,
          modules: dict[str, nn.Module] | None = None) -> SparsityReport:
    """Count nonzeros and units per layer. ``weights`` are the effective prunable weights keyed
    by parameter name, in the layers' order; ``biases`` and ``modules`` map the same layer names
    (``fc1``) to bias tensors and modules (without ``modules`` a 2-d weight is taken for a
    Linear layer's, any other for a Conv's)."""
    biases, modules = biases or {}, modules or {}
    items = [(layer_of(name), w) for name, w in weights.items()]
    layers = []
    for i, (layer, w) in enumerate(items):
        b = biases.get(layer)
        alive = rows_in_use(w)
        if i + 1 < len(items):  # the next layer of the chain reads these units
            following, w_next = items[i + 1]
            read = inputs_in_use(w_next, w.shape[0], modules.get(following))
            if read is not None:
                alive = alive & read.to(alive.device)
        layers.append(
            LayerCount(
                layer=layer,
                total=w.numel(),
                nonzero=int(torch.count_nonzero(w.detach())),
                bias_total=0 if b is None else b.numel(),
                bias_nonzero=0 if b is None else int(torch.count_nonzero(b.detach())),
                neurons_total=w.shape[0],
                neurons=int(alive.sum()),
            )
        )
    inputs_total = inputs = 0
    if items:
        first, w = items[0]
        inputs = inputs_total = _input_units(w, modules.get(first))
        read = inputs_in_use(w, inputs_total, modules.get(first))
        if read is not None:
            inputs = int(read.sum())
    return SparsityReport(tuple(layers), inputs_total=inputs_total, inputs=inputs)


def biases_of(model: nn.Module) -> dict[str, Tensor | None]:
    return {name: m.bias for name, m in prunable_layers(model).items()}


def count_model(model: nn.Module, weights: dict[str, Tensor] | None = None) -> SparsityReport:
    """Count a model; ``weights`` overrides the raw weights (e.g. a method's effective weights)."""
    return count(weights if weights is not None else prunable_weights(model), biases_of(model),
                 prunable_layers(model))
