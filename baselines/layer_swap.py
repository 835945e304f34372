"""Swapping a model's Linear and Conv layers, in place, for a method's own layer classes.

L0 (a gate per weight or neuron) and Sparse VD (a variance per weight) change how every
prunable layer computes while keeping its parameter names (``fc1.weight``). A method writes
one mixin, a subclass of ``SwappedLayer`` with its forward pass and the weight as it acts at
evaluation, and the helpers here do the rest:

* ``layer_classes(mixin, "L0")`` derives one class per prunable layer type (``L0Linear``,
  ``L0Conv1d``, ``L0Conv2d``, ``L0Conv3d``: the mixin placed before ``nn.Linear``, …) and
  registers each under that name in the mixin's module, so that a swapped model pickles;
* ``swap_layers`` turns each prunable layer into its class (``module.__class__``) and lets the
  method add its parameters; a layer swapped before (a resumed model) is left as it is;
* ``swapped_layers`` finds them again, and ``effective_weights`` reads every prunable weight as
  it acts in the evaluated network.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import sparsity

Layer = TypeVar("Layer", bound="SwappedLayer")


class SwappedLayer(nn.Module):
    """Base of a method's layer mixin, placed before nn.Linear / nn.ConvNd in a swapped class."""

    weight: Tensor
    bias: Tensor | None

    def layer_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's own operation (linear map or convolution) with this weight and bias."""
        if isinstance(self, nn.Linear):
            return F.linear(x, weight, bias)
        return self._conv_forward(x, weight, bias)  # type: ignore[attr-defined]

    def effective_weight(self) -> Tensor:
        """The weight as it acts in the evaluated network (what sparsity accounting counts)."""
        raise NotImplementedError


def layer_classes(mixin: type[Layer], prefix: str) -> dict[type[nn.Module], type[Layer]]:
    """One class ``prefix + Linear``, ``prefix + Conv1d``, … per prunable layer type, keyed by
    that type, each registered in the mixin's module under its name (pickle finds it there)."""
    home = sys.modules[mixin.__module__]
    classes: dict[type[nn.Module], type[Layer]] = {}
    for base in sparsity.PRUNABLE_TYPES:
        name = prefix + base.__name__
        cls = type(name, (mixin, base), {"__module__": mixin.__module__, "__qualname__": name})
        setattr(home, name, cls)
        classes[base] = cls
    return classes


def swap_layers(
    model: nn.Module, classes: dict[type[nn.Module], type[Layer]], method: str, setup: Callable[[Layer], None]
) -> None:
    """Turn every prunable layer into its class in ``classes``, then ``setup(layer)`` (add the
    method's parameters). Layers already swapped keep their state."""
    swapped = tuple(classes.values())
    for name, module in sparsity.prunable_layers(model).items():
        if isinstance(module, swapped):  # attached before (e.g. resumed)
            continue
        if type(module) not in classes:
            valid = ", ".join(c.__name__ for c in classes)
            raise ValueError(f"{method}: cannot use layer {name!r} of type {type(module).__name__}; valid: {valid}")
        module.__class__ = classes[type(module)]
        setup(module)  # type: ignore[arg-type]


def swapped_layers(model: nn.Module, mixin: type[Layer]) -> dict[str, Layer]:
    """The model's layers swapped to ``mixin``'s classes, keyed by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, mixin)}


@torch.no_grad()
def effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """Every prunable weight as it acts at evaluation, keyed like ``sparsity.prunable_weights``:
    a swapped layer's ``effective_weight()``, any other layer's plain weight."""
    layers = sparsity.prunable_layers(model).values()  # the same order as prunable_weights
    return {
        key: (m.effective_weight() if isinstance(m, SwappedLayer) else m.weight).detach()
        for key, m in zip(sparsity.prunable_weights(model), layers)
    }
