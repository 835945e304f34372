"""`serene`: SeReNe, sensitivity-based regularization of neurons (Tartaglione, Bragagnolo, Odierna,
Fiandrotti, Grangetto, IEEE TNNLS 33(12), 2022; arXiv:2102.03773).

The sensitivity of a *neuron* i is that of the network output y ∈ R^C (the logits) to its
pre-activation z_i, the output of its Linear or Conv layer, over a minibatch of B samples::

    approach="full":         S_i = (1/B) Σ_n Σ_k α_k |∂y_k(x_n)/∂z_{n,i}|
    approach="lower-bound":  S_i = (1/B) Σ_n |Σ_k α_k ∂y_k(x_n)/∂z_{n,i}|     (≤ full; one backward)

with α_k = 1/C. A conv channel is one neuron at every output position p (its filter is shared):
its S is the mean over the positions of the per-position |·| (as in the authors' code); a Linear
layer applied at several positions per sample is treated the same way. After the optimizer step
every incoming weight of neuron i (row i of a Linear weight, filter i of a Conv) moves by::

    w ← w − λ · w · max(0, 1 − S_i)         biases are not decayed

then masks are re-applied, and at the end of every sparsify epoch every prunable weight with
|w| < T is pruned (``study.sensitivity.DecayUpdate``). What the authors' code
(``SERENE.py`` and ``train.py`` of EIDOSLAB/SeReNe) does, and the options that expose it:

* ``batch_scaling`` (default off): their ``full`` differentiates the batch-mean output
  ȳ = (1/B) Σ_n y(x_n) and then averages over the batch, one more 1/B; on multiplies S by 1/B
  (either approach; their ``lower-bound`` backpropagates Σ_n y(x_n) and has no such factor).
* ``decay_from`` (default ``post-step``): their step runs after ``optimizer.step()`` and decays
  the weights as they are after it; ``pre-step`` uses the weights S was taken at.
* ``output_layer`` (default on): their code decays every Linear and Conv layer, the output layer
  included (the last layer the forward runs; its neurons have S = α = 1/C under both approaches
  when y is that layer's output); off leaves that layer undecayed.

How S is computed reuses the machinery of ``study/sensitivity.py``: from the training step's
own forward (the capture of each layer's output, kept for the loss backward), or a separate
eval-mode pass when that is not exact (dropout, BatchNorm in train mode, a frozen first layer);
δ = ∂y_k/∂z by backward passes to the layer outputs only, ``class_chunk`` classes at a time
(``full``), or one backward with the output gradient α (``lower-bound``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from study import sparsity
from study.method import MethodContext, ThresholdParams, check_fields
from study.sensitivity import (DECAY_FROM, DecayFrom, SensitivityMethod, _Backward, _Capture,
                               _check_class_chunk, _derivative_chunks, _eval_forward, insensitivity)

Approach = Literal["full", "lower-bound"]
APPROACHES: tuple[str, ...] = ("full", "lower-bound")

CITATION = (
    "E. Tartaglione, A. Bragagnolo, F. Odierna, A. Fiandrotti, M. Grangetto. SeReNe: "
    "Sensitivity-Based Regularization of Neurons for Structured Sparsity in Neural Networks. "
    "IEEE TNNLS 33(12), 2022."
)


def _position_mean(layer: nn.Module, d: Tensor) -> Tensor:
    """(K, B, *z.shape[1:]) → (K, B, O): each neuron's value averaged over its positions (the
    spatial positions of a Conv channel; the middle dims of a Linear applied per position)."""
    if isinstance(layer, nn.Linear):
        return d.flatten(2, -2).mean(2) if d.dim() > 3 else d
    return d.flatten(3).mean(3)


def _neurons_from_graph(layers: dict[str, nn.Module], capture: _Capture, y: Tensor, approach: str,
                        batch_scaling: bool, class_chunk: int | None,
                        retain: bool) -> tuple[dict[str, Tensor], str | None]:
    """S_i (O,) of every prunable layer from one forward's graph (y: the logits, (B, C)), and
    the name of the last layer the forward ran (the output layer). A layer that did not run
    has S = 0. ``retain`` keeps the graph for a later backward (the step's loss)."""
    names = [n for n in layers if n in capture.outputs]
    zs = [capture.outputs[n] for n in names]
    batch, classes = y.shape
    scale = 1.0 / batch if batch_scaling else 1.0
    totals: dict[str, Tensor] = {}
    if approach == "full":
        has_conv = any(isinstance(layers[n], nn.modules.conv._ConvNd) for n in names)
        backward = _Backward(y, zs, batched=not has_conv, retain=retain)
        labels = torch.zeros(batch, dtype=torch.long, device=y.device)  # unspec: not read
        # unspec / sample weights each |δ_{k,n}| by coef = α/B: the mean over samples.
        for deltas, w in _derivative_chunks(backward, labels, "unspec", "sample", class_chunk):
            with torch.no_grad():
                for name, delta in zip(names, deltas):
                    part = _position_mean(layers[name], delta.abs()).sum((0, 1)).mul_(w.coef * scale)
                    totals[name] = part if name not in totals else totals[name].add_(part)
            del deltas  # free this chunk's δ before the next backward
    else:
        grads = torch.autograd.grad(y, zs, torch.full_like(y, 1.0 / classes), allow_unused=True,
                                    retain_graph=retain)
        with torch.no_grad():
            for name, g in zip(names, grads):
                if g is not None:
                    per_sample = _position_mean(layers[name], g.abs().unsqueeze(0))
                    totals[name] = per_sample.sum((0, 1)).mul_(scale / batch)
    result = {}
    for name, layer in layers.items():
        s = totals.get(name)
        result[name] = torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                   device=layer.weight.device) if s is None else s.to(layer.weight.dtype)
    return result, next(reversed(capture.outputs), None)


def _check(approach: str, batch_scaling: object, class_chunk: object) -> None:
    if approach not in APPROACHES:
        raise ValueError(f"invalid approach={approach!r}; valid: {', '.join(APPROACHES)}")
    if not isinstance(batch_scaling, bool):
        raise ValueError(f"invalid batch_scaling={batch_scaling!r}; must be true or false")
    _check_class_chunk(class_chunk)


def _separate_pass(model: nn.Module, x: Tensor, approach: str, batch_scaling: bool,
                   class_chunk: int | None) -> tuple[dict[str, Tensor], str | None]:
    layers = sparsity.prunable_layers(model)
    if not layers:
        raise ValueError("neuron_sensitivity(): the model has no Linear or Conv layer")
    if x.shape[0] == 0:
        raise ValueError("neuron_sensitivity(): need a non-empty batch")
    capture, logits = _eval_forward(model, layers, x)
    return _neurons_from_graph(layers, capture, logits, approach, batch_scaling, class_chunk,
                               retain=False)


def neuron_sensitivity(model: nn.Module, x: Tensor, approach: Approach = "full",
                       batch_scaling: bool = False, class_chunk: int | None = None) -> dict[str, Tensor]:
    """SeReNe's S_i of every neuron (output unit) of every prunable layer on batch x, keyed by
    layer name, each of shape (out_features,) or (out_channels,): a separate forward in eval
    mode (as :func:`study.sensitivity.sensitivity`; the model's modes, hooks and ``.grad`` are
    left as found). ``class_chunk`` (full): classes per backward, None = automatic."""
    _check(approach, batch_scaling, class_chunk)
    return _separate_pass(model, x, approach, batch_scaling, class_chunk)[0]


@dataclass
class SereneParams(ThresholdParams):
    # Defaults: the sensitivity methods' λ and T (see docs/methods.md for the digits numbers).
    lam: float = 1e-3  # λ: the decay per step, not scaled by the learning rate
    threshold: float = 3e-2  # T: |w| < T is pruned at the end of every sparsify epoch
    approach: Approach = "full"  # "full" or "lower-bound" (one backward)
    batch_scaling: bool = False  # S / B, as the authors' `full` code (S ≪ 1: near-uniform decay)
    output_layer: bool = True  # decay the output layer's weights too (the authors' code does)
    decay_from: DecayFrom = "post-step"  # the weights d = w·max(0, 1 − S_i) is taken from
    class_chunk: int = 0  # full: classes per backward; 0 = automatic (memory-bounded)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"lam": self.lam < 1},
                     suffix="; must be < 1 (w shrinks by at most λ·w per step)")
        check_fields(self, {"approach": self.approach in APPROACHES},
                     suffix=f"; valid: {', '.join(APPROACHES)}")
        check_fields(self, {"decay_from": self.decay_from in DECAY_FROM},
                     suffix=f"; valid: {', '.join(DECAY_FROM)}")
        check_fields(self, {"batch_scaling": isinstance(self.batch_scaling, bool),
                            "output_layer": isinstance(self.output_layer, bool)},
                     suffix="; must be true or false")
        check_fields(self, {"class_chunk": not isinstance(self.class_chunk, bool)
                            and isinstance(self.class_chunk, int) and self.class_chunk >= 0},
                     suffix="; must be an int >= 0 (0 = automatic)")


class Serene(SensitivityMethod):
    """SeReNe: the neuron sensitivity decays every incoming weight of the neuron.

    S per decayed weight tensor has shape (O, 1, ..., 1), one value per neuron, broadcasting to
    the weight; ``sens.<layer>.*`` describe the remaining weights, each carrying its neuron's S.
    """

    name: ClassVar[str] = "serene"
    citation: ClassVar[str] = CITATION
    Params = SereneParams

    def __init__(self, params: SereneParams, context: MethodContext) -> None:
        super().__init__(params, context)  # type: ignore[arg-type]
        self.params: SereneParams = params  # type: ignore[assignment]

    def _per_weight(self, layers: dict[str, nn.Module], s: dict[str, Tensor],
                    last: str | None) -> dict[str, Tensor]:
        out = {}
        for name, layer in layers.items():
            if name == last and not self.params.output_layer:
                continue
            shape = (-1, *[1] * (layer.weight.dim() - 1))
            out[f"{name}.weight" if name else "weight"] = s[name].reshape(shape)
        return out

    def graph_sensitivity(self, layers: dict[str, nn.Module], capture: _Capture, logits: Tensor,
                          y: Tensor) -> dict[str, Tensor]:
        p = self.params
        s, last = _neurons_from_graph(layers, capture, logits, p.approach, p.batch_scaling,
                                      p.class_chunk or None, retain=True)
        return self._per_weight(layers, s, last)

    def compute_sensitivity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        p = self.params
        s, last = _separate_pass(model, x, p.approach, p.batch_scaling, p.class_chunk or None)
        return self._per_weight(sparsity.prunable_layers(model), s, last)

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        s = self.step_sensitivity(model, x, y)
        params = self.named_parameters(model)
        with torch.no_grad():
            self._accumulate({name: v.expand_as(params[name]) for name, v in s.items()})
            self.schedule_decay(params, {name: insensitivity(v) for name, v in s.items()},
                                self.params.decay_from)
