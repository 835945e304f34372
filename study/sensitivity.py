"""The method under study: sensitivity-driven regularization (Tartaglione et al., NeurIPS 2018).

The sensitivity of the network output y ∈ R^C to a parameter w, over a minibatch of B samples::

    S(w) = (1/B) Σ_n Σ_k α_{n,k} |∂y_k(x_n)/∂w|          aggregate="sample" (default)
    S(w) = Σ_k |(1/B) Σ_n α_{n,k} ∂y_k(x_n)/∂w|          aggregate="batch" (a lower bound)

with α_{n,k} = 1/C (*unspecific*) or the one-hot of sample n's true class (*specific*), and
y the logits (default) or their softmax. After each optimizer step every weight in scope is
pulled towards zero in proportion to its bounded insensitivity::

    w ← w − λ · w · max(0, 1 − S(w))       (S taken at the pre-step weights; λ not scaled by lr)

and in the sparsify phase every |w| < T is pruned at the end of each epoch.

How S is computed, exactly and cheaply (one extra forward with hooks, then backward passes to
the layers' outputs only; no per-sample Python loops):

* The hooks capture, per Linear/Conv layer, its input ``a`` and its output ``z`` (before the
  activation). One backward (specific) or batched backwards over the C classes (unspecific,
  ``is_grads_batched``) give δ = ∂y_k/∂z per sample.
* **Class chunking** (unspecific): δ for K classes holds K × Σ_layers numel(z) entries (for
  VGG-16 on ImageNet, C = 1000 copies of every activation of the batch), so the classes are
  processed ``class_chunk`` at a time: one forward, then per chunk one batched backward
  (graph retained) whose δ is turned into that chunk's share of S and freed. S is a sum over
  classes, so the result does not depend on the chunk size. Besides the forward's graph (as
  in a training step), only one chunk's δ and backward intermediates of about that size exist
  at a time. By default the chunk is the largest that keeps chunk × Σ_layers numel(z) ≤
  DELTA_ELEMENTS (at least one class); smaller chunks mean more, smaller backward passes.
* **Linear** layers: the per-sample gradient δ aᵀ is rank one, so |δ aᵀ| = |δ||a|ᵀ and
  S_W = Dᵀ|A|/B exactly, with D = Σ_k α_k |δ_k| (one matmul per layer and chunk).
* **Conv** layers: the per-sample gradient Σ_p δ_p a_pᵀ sums over output positions p, so the
  absolute value does not factor. ``conv="exact"`` unfolds the input and forms every
  per-sample (and, for unspecific, per-class) gradient with an einsum, in memory-bounded chunks.
  ``conv="bound"`` returns the cheaper upper bound Σ_p |δ_p||a_p|ᵀ (one weight-gradient
  convolution per layer and chunk); it is a bound, not the sensitivity.
* ``aggregate="batch"`` never needs per-sample gradients: per class, the batch-mean gradient is
  one matmul (Linear) or one weight-gradient convolution (Conv); the result is exact in both
  conv modes.

Samples must not interact in the forward pass. The sensitivity pass therefore runs the model in
eval mode: BatchNorm layers in train mode are evaluated with their running statistics (a
warning says so) and dropout is off. The model's modes, hooks and ``.grad`` are left as found.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import sparsity
from study.method import Method, MethodContext, MethodParams, Phase

Kind = Literal["unspec", "spec"]
Output = Literal["logits", "softmax"]
Aggregate = Literal["sample", "batch"]
Scope = Literal["weights", "all"]
ConvMode = Literal["exact", "bound"]

KINDS: tuple[str, ...] = ("unspec", "spec")
OUTPUTS: tuple[str, ...] = ("logits", "softmax")
AGGREGATES: tuple[str, ...] = ("sample", "batch")
SCOPES: tuple[str, ...] = ("weights", "all")
CONV_MODES: tuple[str, ...] = ("exact", "bound")

CITATION = (
    "E. Tartaglione, S. Lepsøy, A. Fiandrotti, G. Francini. Learning Sparse Neural Networks "
    "via Sensitivity-Driven Regularization. NeurIPS 2018."
)

# Largest number of elements one chunk of per-sample conv gradients may hold (exact path).
CHUNK_ELEMENTS = 2**25
# Largest number of δ entries (classes per chunk × Σ_layers numel(z)) one unspecific backward
# may return, when sensitivity() chooses the class chunk itself.
DELTA_ELEMENTS = 2**25

_CONV_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight,
                     3: torch.nn.grad.conv3d_weight}


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"invalid {name}={value!r}; valid: {', '.join(valid)}")


# -- capturing layer inputs and outputs --------------------------------------------------------
class _Capture:
    """Forward hooks that record each prunable layer's input and output for one forward pass."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in self.outputs:
                # A second call would add a second term to the per-sample gradient.
                raise ValueError(f"layer {name!r} runs more than once per forward; "
                                 "shared layers are not supported by sensitivity()")
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _EvalMode:
    """Run the model in eval mode (independent samples) and restore every module's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}

    def __enter__(self) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modes):
            warnings.warn("sensitivity(): BatchNorm in train mode couples the samples of a batch; "
                          "computing the sensitivity with BatchNorm in eval mode (running stats)",
                          stacklevel=3)
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode


# -- backward passes, one chunk of classes at a time ---------------------------------------------
class _Backward:
    """Backward passes from the model output y (B, C) to the captured layer outputs zs.

    Each call returns δ = ∂y_k/∂z for every z, as (K, B, *z.shape[1:]) (zeros for a z that y
    does not depend on). ``classes`` retains the graph so that the next chunk can follow.
    """

    def __init__(self, y: Tensor, zs: list[Tensor]) -> None:
        self.y, self.zs = y, zs
        self.batched = True  # False once a batched backward has failed: use per-class ones

    def spec(self, target: Tensor) -> list[Tensor]:
        """K = 1: the derivative of sample n's true-class output, in one backward (the last)."""
        grad_out = F.one_hot(target, self.y.shape[1]).to(self.y.dtype)
        grads = torch.autograd.grad(self.y, self.zs, grad_out, allow_unused=True)
        return self._fill([None if g is None else g.unsqueeze(0) for g in grads], 1)

    def classes(self, rows: range) -> list[Tensor]:
        """K = len(rows): the derivatives of outputs k ∈ rows, in one batched backward."""
        batch, classes = self.y.shape
        eye = torch.eye(classes, dtype=self.y.dtype, device=self.y.device)[rows.start:rows.stop]
        grad_out = eye[:, None, :].expand(len(rows), batch, classes)
        if self.batched:
            try:
                grads = torch.autograd.grad(self.y, self.zs, grad_out, allow_unused=True,
                                            retain_graph=True, is_grads_batched=True)
                return self._fill(list(grads), len(rows))
            except RuntimeError:
                # Some operator without a vmap rule in its backward: one backward per class.
                self.batched = False
        per_class = [torch.autograd.grad(self.y, self.zs, g, allow_unused=True, retain_graph=True)
                     for g in grad_out]
        grads = [None if per_class[0][i] is None else torch.stack([g[i] for g in per_class])
                 for i in range(len(self.zs))]
        return self._fill(grads, len(rows))

    def _fill(self, grads: list[Tensor | None], k: int) -> list[Tensor]:
        return [torch.zeros((k, *z.shape), dtype=z.dtype, device=z.device) if g is None else g
                for g, z in zip(grads, self.zs)]


@dataclass
class _Weights:
    """How per-(class, sample) gradients combine into S.

    sample aggregate: S = Σ_{k,n} coef · |g_{k,n}|.
    batch aggregate:  S = Σ_groups |coef · Σ_{n in group} g_{k(group),n}|.
    """

    coef: float
    groups: list[tuple[int, Tensor | None]]  # (row k of δ, sample indices or None = all)


def _spec_weights(target: Tensor) -> _Weights:
    """α = one-hot of the true class: δ has one row; the batch aggregate groups by class."""
    groups = [(0, (target == c).nonzero().squeeze(1)) for c in torch.unique(target).tolist()]
    return _Weights(1.0 / target.shape[0], groups)


def _unspec_weights(batch: int, classes: int, rows: int) -> _Weights:
    """α = 1/C for each of the ``rows`` classes of one chunk of δ."""
    return _Weights(1.0 / (batch * classes), [(k, None) for k in range(rows)])


def _derivative_chunks(y: Tensor, zs: list[Tensor], target: Tensor, kind: str,
                       class_chunk: int | None) -> Iterator[tuple[list[Tensor], _Weights]]:
    """(δ of every z, how to weigh it) for each chunk of classes; spec is a single chunk.

    unspec: ``class_chunk`` classes per batched backward, or (None) the most whose δ fit in
    DELTA_ELEMENTS entries, at least one.
    """
    backward = _Backward(y, zs)
    if kind == "spec":
        yield backward.spec(target), _spec_weights(target)
        return
    batch, classes = y.shape
    if class_chunk is None:
        class_chunk = DELTA_ELEMENTS // max(1, sum(z.numel() for z in zs))
    step = max(1, min(classes, class_chunk))
    for k in range(0, classes, step):
        rows = range(k, min(k + step, classes))
        yield backward.classes(rows), _unspec_weights(batch, classes, len(rows))


# -- per-layer sensitivities ---------------------------------------------------------------------
def _linear_sensitivity(a: Tensor, delta: Tensor, aggregate: str, w: _Weights) -> tuple[Tensor, Tensor]:
    """Linear layer. a: (B, ..., I); delta: (K, B, ..., O). Returns (S_W (O, I), S_b (O,))."""
    k, batch = delta.shape[:2]
    a = a.reshape(batch, -1, a.shape[-1])                  # (B, P, I); P > 1 for sequence inputs
    delta = delta.reshape(k, batch, -1, delta.shape[-1])   # (K, B, P, O)
    if aggregate == "batch":
        # Per group, the batch-summed gradient is one matmul: (O, B·P) @ (B·P, I).
        s_w = torch.zeros(delta.shape[-1], a.shape[-1], dtype=delta.dtype, device=delta.device)
        s_b = torch.zeros(delta.shape[-1], dtype=delta.dtype, device=delta.device)
        for row, idx in w.groups:
            d, x = (delta[row], a) if idx is None else (delta[row, idx], a[idx])
            d, x = d.reshape(-1, d.shape[-1]), x.reshape(-1, x.shape[-1])
            s_w += (d.T @ x).abs_()
            s_b += d.sum(0).abs_()
        return w.coef * s_w, w.coef * s_b
    s_b = w.coef * delta.sum(2).abs().sum((0, 1))
    if a.shape[1] == 1:
        # Rank one per sample: |δ aᵀ| = |δ||a|ᵀ, so S_W = Dᵀ|A| with D = Σ_k coef·|δ_k|.
        d = w.coef * delta[:, :, 0].abs().sum(0)           # (B, O)
        return d.T @ a[:, 0].abs(), s_b
    return _per_sample_abs_sum(a.transpose(1, 2), delta.transpose(2, 3), 1, w.coef), s_b


def _per_sample_abs_sum(a_cols: Tensor, delta: Tensor, groups: int, coef: float) -> Tensor:
    """Σ_{k,n} coef·|Σ_p δ_{k,n,:,p} a_{n,:,p}ᵀ| without a per-sample Python loop.

    a_cols: (B, I·groups, P) unfolded inputs; delta: (K, B, O, P). Works in chunks of samples
    and classes so that at most CHUNK_ELEMENTS per-sample gradient entries exist at once.
    """
    k, batch, out, pos = delta.shape
    a_cols = a_cols.reshape(batch, groups, -1, pos)         # (B, G, I, P)
    delta = delta.reshape(k, batch, groups, out // groups, pos)
    per_grad = out * a_cols.shape[2]
    k_chunk = max(1, min(k, CHUNK_ELEMENTS // per_grad))
    n_chunk = max(1, CHUNK_ELEMENTS // (per_grad * k_chunk))
    total = torch.zeros(groups, out // groups, a_cols.shape[2], dtype=delta.dtype, device=delta.device)
    for k0 in range(0, k, k_chunk):
        for n0 in range(0, batch, n_chunk):
            g = torch.einsum("kngop,ngip->kngoi", delta[k0:k0 + k_chunk, n0:n0 + n_chunk],
                             a_cols[n0:n0 + n_chunk])
            total += g.abs().sum((0, 1))
    return coef * total.reshape(out, -1)


def _padded_input(conv: nn.modules.conv._ConvNd, a: Tensor) -> Tensor:
    """The conv input as the convolution sees it, padding included (any padding mode)."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(a, conv._reversed_padding_repeated_twice, mode=mode)


def _unfold(conv: nn.modules.conv._ConvNd, a: Tensor) -> Tensor:
    """Unfold a padded conv input of any dimension to columns (B, C_in·Πkernel, P)."""
    dims = len(conv.kernel_size)
    for d in range(dims):
        span = conv.dilation[d] * (conv.kernel_size[d] - 1) + 1
        a = a.unfold(2 + d, span, conv.stride[d])[..., ::conv.dilation[d]]
    # a: (B, C, O_1..O_d, k_1..k_d) → (B, C, k_1..k_d, O_1..O_d), matching the weight's layout.
    order = [0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims)]
    a = a.permute(order)
    return a.reshape(a.shape[0], -1, math.prod(a.shape[2 + dims:]))


def _conv_sensitivity(conv: nn.modules.conv._ConvNd, a: Tensor, delta: Tensor, aggregate: str,
                      mode: str, w: _Weights) -> tuple[Tensor, Tensor]:
    """Conv layer. a: (B, C_in, *spatial) input; delta: (K, B, C_out, *out_spatial)."""
    a = _padded_input(conv, a)
    weight_grad = _CONV_WEIGHT_GRAD[len(conv.kernel_size)]

    def wgrad(x: Tensor, d: Tensor) -> Tensor:
        """Σ_n Σ_p d_{n,:,p} x_{n,:,p}ᵀ: the ordinary weight gradient, with no padding left."""
        return weight_grad(x, conv.weight.shape, d, conv.stride, 0, conv.dilation, conv.groups)

    spatial = tuple(range(3, delta.dim()))
    if aggregate == "batch":
        # Per group, the batch-summed gradient is one weight-gradient convolution.
        s_w = torch.zeros_like(conv.weight, dtype=delta.dtype)
        s_b = torch.zeros(delta.shape[2], dtype=delta.dtype, device=delta.device)
        for row, idx in w.groups:
            d, x = (delta[row], a) if idx is None else (delta[row, idx], a[idx])
            s_w += wgrad(x, d).abs_()
            s_b += d.sum((0, *(s - 1 for s in spatial))).abs_()
        return w.coef * s_w, w.coef * s_b
    s_b = w.coef * delta.sum(spatial).abs().sum((0, 1))
    if mode == "bound":
        # Σ_p |δ_p||a_p|ᵀ ≥ |Σ_p δ_p a_pᵀ|: an upper bound, one weight-gradient convolution.
        return w.coef * wgrad(a.abs(), delta.abs().sum(0)), s_b
    cols = _unfold(conv, a)
    flat = delta.reshape(*delta.shape[:3], -1)
    return _per_sample_abs_sum(cols, flat, conv.groups, w.coef).reshape(conv.weight.shape), s_b


def _layer_sensitivity(layer: nn.Module, a: Tensor, delta: Tensor, aggregate: str, conv: str,
                       w: _Weights) -> tuple[Tensor, Tensor]:
    if isinstance(layer, nn.Linear):
        return _linear_sensitivity(a, delta, aggregate, w)
    return _conv_sensitivity(layer, a, delta, aggregate, conv, w)


def sensitivity(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    kind: Kind = "unspec",
    output: Output = "logits",
    aggregate: Aggregate = "sample",
    scope: Scope = "weights",
    conv: ConvMode = "exact",
    class_chunk: int | None = None,
) -> dict[str, Tensor]:
    """The sensitivity S of the model's output to each parameter in scope, on batch (x, target).

    Keyed by parameter name (``fc1.weight``, and with ``scope="all"`` also ``fc1.bias``); each
    tensor has its parameter's shape. ``target`` holds int class labels (used by ``spec`` only).
    ``class_chunk`` (unspec only): classes per batched backward; None chooses the most that keep
    the δ of one chunk under DELTA_ELEMENTS entries. It changes memory and speed, not S.
    See the module docstring for the formulas and the cost of each path. The model's modes,
    hooks and parameter ``.grad`` are unchanged afterwards.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("output", output, OUTPUTS)
    _check_choice("aggregate", aggregate, AGGREGATES)
    _check_choice("scope", scope, SCOPES)
    _check_choice("conv", conv, CONV_MODES)
    if class_chunk is not None and (isinstance(class_chunk, bool) or not isinstance(class_chunk, int)
                                    or class_chunk < 1):
        raise ValueError(f"invalid class_chunk={class_chunk!r}; must be None (automatic) or an int >= 1")
    layers = sparsity.prunable_layers(model)
    if not layers:
        raise ValueError("sensitivity(): the model has no Linear or Conv layer")
    if x.shape[0] == 0 or target.shape != (x.shape[0],):
        raise ValueError(f"sensitivity(): need a non-empty batch with target of shape ({x.shape[0]},), "
                         f"got x {tuple(x.shape)} and target {tuple(target.shape)}")

    capture = _Capture(layers)
    try:
        with _EvalMode(model), torch.enable_grad():
            # An input that requires grad keeps every layer output in the graph, frozen or not.
            logits = model(x.detach().requires_grad_(x.is_floating_point()))
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"sensitivity(): model output must be (batch, classes), "
                                 f"got {tuple(logits.shape)}")
            y = logits.softmax(1) if output == "softmax" else logits
    finally:
        capture.remove()
    batch, classes = y.shape
    if kind == "spec" and (target.min() < 0 or target.max() >= classes):
        raise ValueError(f"sensitivity(): target labels must be in [0, {classes})")

    names = [n for n in layers if n in capture.outputs]  # layers the forward pass ran
    zs = [capture.outputs[n] for n in names]

    # S is a sum over classes, so each chunk of classes adds its part: only one chunk's δ
    # (K × B × every layer's output) exists at a time.
    totals: dict[str, tuple[Tensor, Tensor]] = {}
    for deltas, w in _derivative_chunks(y, zs, target, kind, class_chunk):
        with torch.no_grad():
            parts = {name: _layer_sensitivity(layers[name], capture.inputs[name], delta,
                                              aggregate, conv, w)
                     for name, delta in zip(names, deltas)}
        del deltas  # free this chunk's δ before the next backward
        for name, (s_w, s_b) in parts.items():
            if name in totals:
                totals[name][0].add_(s_w)
                totals[name][1].add_(s_b)
            else:
                totals[name] = (s_w, s_b)

    result: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if name in totals:
            s_w, s_b = totals[name]
        else:
            # A layer the forward pass never ran: the output does not depend on it, S = 0.
            s_w = torch.zeros_like(layer.weight)
            s_b = None if layer.bias is None else torch.zeros_like(layer.bias)
        prefix = f"{name}." if name else ""  # a bare layer's parameters are "weight", "bias"
        result[f"{prefix}weight"] = s_w.reshape(layer.weight.shape).to(layer.weight.dtype)
        if scope == "all" and layer.bias is not None:
            result[f"{prefix}bias"] = s_b.reshape(layer.bias.shape).to(layer.bias.dtype)
    return result


# -- the update ------------------------------------------------------------------------------------
def insensitivity(s: Tensor) -> Tensor:
    """The bounded insensitivity max(0, 1 − S), in [0, 1]."""
    return (1 - s).clamp(min=0)


def insensitivity_decay(w: Tensor, s: Tensor, lam: float) -> Tensor:
    """The amount the update subtracts from w: λ · w · max(0, 1 − S)."""
    return lam * w * insensitivity(s)


# -- the method --------------------------------------------------------------------------------------
@dataclass
class SensitivityParams(MethodParams):
    """Hyperparameters of the sensitivity methods (MLflow params of the same names)."""

    # Defaults tuned on `study train` (digits, lenet300, 200 epochs, batch 32, lr 0.1): ~13x
    # compression at ~4% test error. The paper used λ=1e-5, T=1e-3 on MNIST (40x more steps/epoch).
    lam: float = 1e-3              # λ: the decay rate, per step, not scaled by the learning rate
    threshold: float = 3e-2        # T: in the sparsify phase |w| < T is pruned every epoch
    output: Output = "logits"
    aggregate: Aggregate = "sample"
    scope: Scope = "weights"
    conv: ConvMode = "exact"
    class_chunk: int = 0           # unspec: classes per backward; 0 = automatic (memory-bounded)

    def __post_init__(self) -> None:
        for name in ("lam", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"invalid {name}={value!r}; must be a finite number >= 0")
        if self.lam >= 1:
            raise ValueError(f"invalid lam={self.lam!r}; must be < 1 (w shrinks by at most λ·w per step)")
        _check_choice("output", self.output, OUTPUTS)
        _check_choice("aggregate", self.aggregate, AGGREGATES)
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("conv", self.conv, CONV_MODES)
        if isinstance(self.class_chunk, bool) or not isinstance(self.class_chunk, int) \
                or self.class_chunk < 0:
            raise ValueError(f"invalid class_chunk={self.class_chunk!r}; must be an int >= 0 (0 = automatic)")


class SensitivityMethod(Method):
    """Sensitivity-driven regularization: after every step w ← w − λ·w·max(0, 1 − S(w)).

    S is computed at the pre-step weights in ``after_backward`` (one extra forward and the
    backward passes described in the module docstring). ``epoch_metrics`` reports statistics of
    the S of the last step of the epoch, over the weights that are not pruned.
    """

    kind: ClassVar[Kind] = "unspec"
    citation: ClassVar[str] = CITATION
    Params: ClassVar[type[MethodParams]] = SensitivityParams

    def __init__(self, params: SensitivityParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.params: SensitivityParams = params
        self.decay: dict[str, Tensor] = {}
        self.last_sensitivity: dict[str, Tensor] = {}

    def compute_sensitivity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        p = self.params
        return sensitivity(model, x, y, kind=self.kind, output=p.output, aggregate=p.aggregate,
                           scope=p.scope, conv=p.conv, class_chunk=p.class_chunk or None)

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        s = self.compute_sensitivity(model, x, y)
        params = dict(model.named_parameters())
        with torch.no_grad():
            self.decay = {name: insensitivity_decay(params[name].detach(), s[name], self.params.lam)
                          for name in s}
        self.last_sensitivity = s

    def after_step(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, decay in self.decay.items():
                params[name].sub_(decay)
        self.decay = {}
        super().after_step(model)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase == "sparsify":
            self.threshold_prune(model, self.params.threshold)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in sparsity.prunable_weights(model):
            s = self.last_sensitivity.get(name)
            if s is None:
                continue
            mask = self.masks.get(name)
            values = (s if mask is None else s[mask]).detach().flatten().float()
            if values.numel() == 0:
                continue
            layer = sparsity.layer_of(name)
            q10, q50, q90 = quantiles(values, (0.1, 0.5, 0.9))
            out.update({
                f"sens.{layer}.q10": q10, f"sens.{layer}.q50": q50, f"sens.{layer}.q90": q90,
                f"sens.{layer}.mean": values.mean().item(),
                f"sens.{layer}.frac_ge1": (values >= 1).float().mean().item(),
            })
        return out


def quantiles(values: Tensor, qs: tuple[float, ...]) -> list[float]:
    """Linear-interpolation quantiles (as torch.quantile) of a 1-d tensor of any size."""
    v = values.sort().values
    out = []
    for q in qs:
        pos = q * (v.numel() - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, v.numel() - 1)
        out.append((v[lo] + (pos - lo) * (v[hi] - v[lo])).item())
    return out


class SensitivityUnspec(SensitivityMethod):
    """Unspecific sensitivity: all C outputs weigh the same, α_k = 1/C."""

    name: ClassVar[str] = "sensitivity-unspec"
    kind: ClassVar[Kind] = "unspec"


class SensitivitySpec(SensitivityMethod):
    """Specific sensitivity: only the output of each sample's true class counts."""

    name: ClassVar[str] = "sensitivity-spec"
    kind: ClassVar[Kind] = "spec"
