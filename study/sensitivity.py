"""The method under study: sensitivity-driven regularization (Tartaglione et al., NeurIPS 2018).
(One concept over 400 lines: the sensitivity and its exact per-layer derivatives for every
reading, kind and layer type, which the brute-force tests check together; the update itself
is short and shared with the matched control.)

The sensitivity of the network output y ∈ R^C to a parameter w, over a minibatch of B samples
(the paper leaves the minibatch normalisation open; ``aggregate`` picks the reading)::

    S(w) = (1/B) Σ_n Σ_k α_{n,k} |∂y_k(x_n)/∂w|          aggregate="sample" (default: the mean)
    S(w) =       Σ_n Σ_k α_{n,k} |∂y_k(x_n)/∂w|          aggregate="sum"    (B × sample)
    S(w) = (1/B²) Σ_n Σ_k α_{n,k} |∂y_k(x_n)/∂w|         aggregate="serene" (sample / B)
    S(w) = Σ_k |(1/B) Σ_n α_{n,k} ∂y_k(x_n)/∂w|          aggregate="batch"  (a lower bound)

with α_{n,k} = 1/C (*unspecific*) or the one-hot of sample n's true class (*specific*), and
y the logits (default) or their softmax. ``serene`` is the reading of the authors' later code
(SeReNe's ``step_full``: the derivative of the batch-mean output ȳ = (1/B) Σ_n y(x_n), taken per
sample and averaged over the batch, i.e. one more 1/B than ``sample``). After each optimizer step
every weight in scope is pulled towards zero in proportion to its bounded insensitivity::

    w ← w − λ · w · max(0, 1 − S(w))       (S taken at the pre-step weights; λ not scaled by lr)

and in the sparsify phase every |w| < T is pruned at the end of each epoch.

How S is computed, exactly and cheaply (backward passes to the layers' outputs only; no
per-sample Python loops):

* **From the step's own forward.** ``SensitivityMethod.forward`` runs the training step's forward
  with hooks that capture, per Linear/Conv layer, its input ``a`` and its output ``z`` (before the
  activation), and computes S right there from that graph, before the loss backward frees it: no
  second forward, and no retained graph for the loop to manage (the backward passes below retain
  it for the loss backward, which then frees it as in a plain step). This is exact when the
  train-mode forward treats samples independently and deterministically, i.e. unless a module in train
  mode is dropout, BatchNorm, InstanceNorm with running statistics, RReLU or MultiheadAttention
  with dropout (``step_forward_is_exact``; a custom module whose forward reads ``self.training``
  is not detected). Otherwise, or when no graph reaches a layer's output (a frozen first layer),
  ``after_backward`` falls back to :func:`sensitivity`: a separate forward in eval mode on the
  same batch, at the same weights.
* One backward (specific) or batched backwards over the C classes (unspecific,
  ``is_grads_batched``) give δ = ∂y_k/∂z per sample. A graph with a conv layer gets one plain
  backward per class instead: vmap has no batching rule for the conv and pooling backwards, and
  its own loop plus the stacking costs more than the plain loop (measured on CPU, torch 2.x).
* **Class chunking** (unspecific): δ for K classes holds K × Σ_layers numel(z) entries (for
  VGG-16 on ImageNet, C = 1000 copies of every activation of the batch), so the classes are
  processed ``class_chunk`` at a time: per chunk one backward (graph retained) whose δ is turned
  into that chunk's share of S and freed. S is a sum over classes, so the result does not depend
  on the chunk size. By default the chunk is the largest that keeps chunk × Σ_layers numel(z) ≤
  DELTA_ELEMENTS (at least one class): one chunk at MNIST scale. With one backward per class,
  each class's δ is used before the next one exists (holding all of them, to reuse each chunk
  of unfolded inputs across classes, measured slower on LeNet-5).
* **Linear** layers: the per-sample gradient δ aᵀ is rank one, so |δ aᵀ| = |δ||a|ᵀ and
  S_W = c · Dᵀ|A| exactly, with D = Σ_k α_k |δ_k| summed over all chunks of classes and c the
  aggregate's 1/B, 1 or 1/B² (one matmul per layer).
* **Conv** layers: the per-sample gradient Σ_p δ_p a_pᵀ sums over output positions p, so the
  absolute value does not factor. ``conv="exact"`` unfolds the input and forms, per sample, all
  (K classes × C_out) × C_in·Πkernel gradient entries with one batched matmul over positions,
  a few samples at a time (cache-sized chunks of CHUNK_ELEMENTS entries). ``conv="bound"``
  returns the cheaper upper bound Σ_p |δ_p||a_p|ᵀ (one weight-gradient convolution per layer
  and chunk); it is a bound, not the sensitivity.
* ``aggregate="batch"`` never needs per-sample gradients: per class, the batch-mean gradient is
  one matmul (Linear) or one weight-gradient convolution (Conv); the result is exact in both
  conv modes.

:func:`sensitivity` (the separate pass) runs the model in eval mode: BatchNorm layers in train
mode are evaluated with their running statistics (a warning says so) and dropout is off. The
model's modes, hooks and ``.grad`` are left as found.

One module, one concept: S (both ways of computing it), the update that uses it and the
statistics reported about it; the numerics and the method share the private helpers.
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import runformat as rf
from study import sparsity
from study.method import MethodContext, MethodParams, Phase, ThresholdMethod

Kind = Literal["unspec", "spec"]
Output = Literal["logits", "softmax"]
Aggregate = Literal["sample", "sum", "serene", "batch"]
Scope = Literal["weights", "all"]
ConvMode = Literal["exact", "bound"]
DecayFrom = Literal["post-step", "pre-step"]

KINDS: tuple[str, ...] = ("unspec", "spec")
OUTPUTS: tuple[str, ...] = ("logits", "softmax")
AGGREGATES: tuple[str, ...] = ("sample", "sum", "serene", "batch")
SCOPES: tuple[str, ...] = ("weights", "all")
CONV_MODES: tuple[str, ...] = ("exact", "bound")
DECAY_FROM: tuple[str, ...] = ("post-step", "pre-step")  # the weights d = w·f is taken from

CITATION = (
    "E. Tartaglione, S. Lepsøy, A. Fiandrotti, G. Francini. Learning Sparse Neural Networks "
    "via Sensitivity-Driven Regularization. NeurIPS 2018."
)

# Most per-sample conv gradient entries formed at once (exact path): small enough to stay in
# cache while their absolute values are summed, large enough to keep the Python loop short.
CHUNK_ELEMENTS = 2**18
# Largest number of δ entries (classes per chunk × Σ_layers numel(z)) one unspecific backward
# may return, when the class chunk is chosen automatically.
DELTA_ELEMENTS = 2**25

_CONV_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight,
                     3: torch.nn.grad.conv3d_weight}


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"invalid {name}={value!r}; valid: {', '.join(valid)}")


def _check_class_chunk(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"invalid class_chunk={value!r}; must be None (automatic) or an int >= 1")


# -- capturing layer inputs and outputs --------------------------------------------------------
class _Capture:
    """Forward hooks that record each prunable layer's input and output for one forward pass.

    δ must be the derivative with respect to the layer's output as the layer produced it. An
    in-place operation on it afterwards (``nn.ReLU(inplace=True)``, as in VGG) would rebase it
    onto the activation's output; with ``clone`` the layer passes a copy downstream instead, so
    that the recorded output stays untouched (the forward's values do not change).
    ``modified()`` tells, after the forward, whether a recorded tensor was changed in place
    anyway (a functional in-place operation that no module flag announces).
    """

    def __init__(self, layers: dict[str, nn.Module], clone: bool = False) -> None:
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.versions: dict[str, tuple[int, int]] = {}
        self.clone = clone
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if name in self.outputs:
                # A second call would add a second term to the per-sample gradient.
                raise ValueError(f"layer {name!r} runs more than once per forward; "
                                 "shared layers are not supported by sensitivity()")
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = output
            self.versions[name] = (inputs[0]._version, output._version)
            return output.clone() if self.clone else None
        return hook

    def modified(self) -> list[str]:
        """The layers whose recorded input or output an in-place operation changed."""
        return [name for name, (a, z) in self.versions.items()
                if self.inputs[name]._version != a or self.outputs[name]._version != z]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _has_inplace(model: nn.Module) -> bool:
    """Whether a module announces an in-place operation (``inplace=True``: ReLU, Dropout, …)."""
    return any(getattr(m, "inplace", False) is True for m in model.modules())


_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.RReLU,
                   nn.modules.instancenorm._InstanceNorm, nn.MultiheadAttention)


def _differs_in_train_mode(m: nn.Module) -> bool:
    """A module in train mode whose forward is stochastic or mixes the samples of a batch."""
    if not m.training or not isinstance(m, _MODE_DEPENDENT):
        return False
    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.RReLU)):
        return True
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats  # train: the sample's own statistics; eval: running ones
    if isinstance(m, nn.MultiheadAttention):
        return m.dropout > 0
    return False


def step_forward_is_exact(model: nn.Module) -> bool:
    """Whether the model's forward, in its current modes, gives the per-sample sensitivity that
    :func:`sensitivity` computes in eval mode (see the module docstring)."""
    return not any(_differs_in_train_mode(m) for m in model.modules())


class _EvalMode:
    """Run the model in eval mode (independent samples) and restore every module's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}

    def __enter__(self) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modes):
            warnings.warn("sensitivity(): BatchNorm in train mode couples the samples of a batch; "
                          "computing the sensitivity with BatchNorm in eval mode (running stats)",
                          stacklevel=4)
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode


# -- backward passes, one chunk of classes at a time ---------------------------------------------
class _Backward:
    """Backward passes from the model output y (B, C) to the captured layer outputs zs.

    Each call returns δ = ∂y_k/∂z for every z, as (K, B, *z.shape[1:]) (zeros for a z that y
    does not depend on). ``retain``: keep the graph after the last call (the step's loss
    backward still needs it). The returned δ may alias autograd's buffers: read them only.
    """

    def __init__(self, y: Tensor, zs: list[Tensor], batched: bool, retain: bool) -> None:
        self.y, self.zs, self.retain = y, zs, retain
        self.batched = batched  # False: one backward per class (also once a batched one failed)

    def spec(self, target: Tensor) -> list[Tensor]:
        """K = 1: the derivative of sample n's true-class output, in one backward."""
        # The one-hot rows by scatter: unlike F.one_hot, no min/max check that waits for a GPU.
        grad_out = torch.zeros_like(self.y).scatter_(1, target[:, None], 1.0)
        grads = torch.autograd.grad(self.y, self.zs, grad_out, allow_unused=True,
                                    retain_graph=self.retain)
        return self._fill([None if g is None else g.unsqueeze(0) for g in grads], 1)

    def classes(self, rows: range, last: bool) -> list[Tensor]:
        """K = len(rows): the derivatives of outputs k ∈ rows."""
        batch, classes = self.y.shape
        eye = torch.eye(classes, dtype=self.y.dtype, device=self.y.device)[rows.start:rows.stop]
        grad_out = eye[:, None, :].expand(len(rows), batch, classes)
        if self.batched:
            try:
                grads = torch.autograd.grad(self.y, self.zs, grad_out, allow_unused=True,
                                            retain_graph=self.retain or not last,
                                            is_grads_batched=True)
                return self._fill(list(grads), len(rows))
            except RuntimeError:
                # Some operator without a vmap rule in its backward: one backward per class.
                self.batched = False
        per_class = [torch.autograd.grad(self.y, self.zs, g, allow_unused=True,
                                         retain_graph=self.retain or not last or i < len(rows) - 1)
                     for i, g in enumerate(grad_out)]
        grads = [None if per_class[0][i] is None
                 else per_class[0][i].unsqueeze(0) if len(rows) == 1
                 else torch.stack([g[i] for g in per_class])
                 for i in range(len(self.zs))]
        return self._fill(grads, len(rows))

    def _fill(self, grads: list[Tensor | None], k: int) -> list[Tensor]:
        return [torch.zeros((k, *z.shape), dtype=z.dtype, device=z.device) if g is None else g
                for g, z in zip(grads, self.zs)]


@dataclass
class _Weights:
    """How per-(class, sample) gradients g_{k,n} combine into S.

    per-sample aggregates: S = coef · Σ_{k,n} |g_{k,n}|.
    batch aggregate:       S = Σ_groups |coef · Σ_{n in group} g_{k(group),n}|; ``groups`` lists
    (row k of δ, sample indices or None = all).
    """

    coef: float
    groups: list[tuple[int, Tensor | None]] | None = None


def _sample_coef(aggregate: str, batch: int) -> float:
    """The weight of one sample's |∂y/∂w| (or, for batch, of its ∂y/∂w)."""
    return {"sample": 1.0 / batch, "batch": 1.0 / batch, "sum": 1.0, "serene": 1.0 / batch**2}[aggregate]


def _derivative_chunks(backward: _Backward, target: Tensor, kind: str, aggregate: str,
                       class_chunk: int | None) -> Iterator[tuple[list[Tensor], _Weights]]:
    """(δ of every z, how to weigh it) for each chunk of classes; spec is a single chunk.

    unspec: ``class_chunk`` classes per backward, or (None) the most whose δ fit in
    DELTA_ELEMENTS entries, at least one.
    """
    batch, classes = backward.y.shape
    coef = _sample_coef(aggregate, batch)
    if kind == "spec":
        groups = None
        if aggregate == "batch":  # α = one-hot of the true class: the batch sum runs per class
            groups = [(0, (target == c).nonzero().squeeze(1)) for c in torch.unique(target).tolist()]
        yield backward.spec(target), _Weights(coef, groups)
        return
    if class_chunk is None:
        class_chunk = DELTA_ELEMENTS // max(1, sum(z.numel() for z in backward.zs))
    k = 0
    while k < classes:
        # Without batched backwards, one class at a time: its δ is used before the next exists.
        step = max(1, min(classes, class_chunk)) if backward.batched else 1
        rows = range(k, min(k + step, classes))
        groups = [(i, None) for i in range(len(rows))] if aggregate == "batch" else None
        yield backward.classes(rows, last=rows.stop == classes), _Weights(coef / classes, groups)
        k = rows.stop


# -- per-layer sensitivities ---------------------------------------------------------------------
def _abs_sum(t: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """Σ |t| over ``dims`` (a fresh tensor; ``t`` is not changed)."""
    return t.abs().sum(dims)


def _rank_one(layer: nn.Module, a: Tensor, w: _Weights) -> bool:
    """A Linear layer applied once per sample (input (B, I)) under a per-sample aggregate: its
    per-sample gradient δ aᵀ is rank one, so |δ aᵀ| = |δ||a|ᵀ and S_W = Dᵀ|A| with
    D = Σ_k coef·|δ_k| (B, O), summed over the chunks of classes before the one matmul."""
    return isinstance(layer, nn.Linear) and a.dim() == 2 and w.groups is None


def _linear_sensitivity(a: Tensor, delta: Tensor, w: _Weights,
                        bias: bool) -> tuple[Tensor, Tensor | None]:
    """Linear layer that is not rank one (batch aggregate, or applied at P positions per
    sample). a: (B, ..., I); delta: (K, B, ..., O). Returns (S_W (O, I), S_b (O,) or None)."""
    k, batch = delta.shape[:2]
    delta = delta.reshape(k, batch, -1, delta.shape[-1])   # (K, B, P, O)
    a = a.reshape(batch, -1, a.shape[-1])                  # (B, P, I)
    if w.groups is not None:
        # Per group, the batch-summed gradient is one matmul: (O, B·P) @ (B·P, I).
        s_w = torch.zeros(delta.shape[-1], a.shape[-1], dtype=delta.dtype, device=delta.device)
        s_b = torch.zeros(delta.shape[-1], dtype=delta.dtype, device=delta.device) if bias else None
        for row, idx in w.groups:
            d, x = (delta[row], a) if idx is None else (delta[row, idx], a[idx])
            d, x = d.reshape(-1, d.shape[-1]), x.reshape(-1, x.shape[-1])
            s_w += (d.T @ x).abs_()
            if s_b is not None:
                s_b += d.sum(0).abs_()
        return s_w.mul_(w.coef), None if s_b is None else s_b.mul_(w.coef)
    s_b = _abs_sum(delta.sum(2), (0, 1)).mul_(w.coef) if bias else None
    return _per_sample_abs_sum(a.transpose(1, 2), delta.transpose(2, 3), 1, w.coef), s_b


def _per_sample_abs_sum(a_cols: Tensor, delta: Tensor, groups: int, coef: float) -> Tensor:
    """coef · Σ_{k,n} |Σ_p δ_{k,n,:,p} a_{n,:,p}ᵀ| without a per-sample Python loop.

    a_cols: (B, G·I, P) unfolded inputs; delta: (K, B, G·O, P). For each sample and group, the
    K·O × I block of per-class gradients is one matmul over the positions p; a few samples (and,
    if one sample's block is too large, a few classes) at a time, so that at most CHUNK_ELEMENTS
    gradient entries exist at once. Returns (G·O, I).
    """
    k, batch, out, pos = delta.shape
    o, i = out // groups, a_cols.shape[1] // groups
    d = delta.reshape(k, batch, groups, o, pos).permute(1, 2, 0, 3, 4)    # (B, G, K, O, P)
    a = a_cols.reshape(batch, groups, i, pos).transpose(2, 3)           # (B, G, P, I)
    per_class = groups * o * i
    k_chunk = max(1, min(k, CHUNK_ELEMENTS // per_class))
    n_chunk = max(1, CHUNK_ELEMENTS // (per_class * k_chunk))
    total = torch.zeros(groups, o, i, dtype=delta.dtype, device=delta.device)
    for k0 in range(0, k, k_chunk):
        kc = min(k_chunk, k - k0)
        for n0 in range(0, batch, n_chunk):
            n1 = min(n0 + n_chunk, batch)
            left = d[n0:n1, :, k0:k0 + kc].reshape(-1, kc * o, pos)     # (n·G, K·O, P)
            g = torch.bmm(left, a[n0:n1].reshape(-1, pos, i))           # (n·G, K·O, I)
            total += g.view(n1 - n0, groups, kc, o, i).abs_().sum((0, 2))
    return total.mul_(coef).reshape(out, i)


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


class _Inputs:
    """The forms of each layer's captured input that the chunks of classes share (|a|, the
    padded conv input, its unfolded columns), computed once; a form larger than DELTA_ELEMENTS
    entries is recomputed per chunk instead of kept."""

    def __init__(self, layers: dict[str, nn.Module], inputs: dict[str, Tensor]) -> None:
        self.layers, self.inputs = layers, inputs
        self.cache: dict[tuple[str, str], Tensor] = {}

    def get(self, name: str, form: str) -> Tensor:
        if (name, form) in self.cache:
            return self.cache[name, form]
        layer, a = self.layers[name], self.inputs[name]
        if form == "abs":
            value = a.abs()
        elif form == "padded":
            value = _padded_input(layer, a)
        elif form == "abs_padded":
            value = self.get(name, "padded").abs()
        else:  # "cols"
            value = _unfold(layer, self.get(name, "padded"))
        if value.numel() <= DELTA_ELEMENTS:
            self.cache[name, form] = value
        return value


def _conv_sensitivity(conv: nn.modules.conv._ConvNd, inputs: _Inputs, name: str, delta: Tensor,
                      mode: str, w: _Weights, bias: bool) -> tuple[Tensor, Tensor | None]:
    """Conv layer ``name``: its input (B, C_in, *spatial); delta: (K, B, C_out, *out_spatial)."""
    a = inputs.get(name, "padded")
    weight_grad = _CONV_WEIGHT_GRAD[len(conv.kernel_size)]

    def wgrad(x: Tensor, d: Tensor) -> Tensor:
        """Σ_n Σ_p d_{n,:,p} x_{n,:,p}ᵀ: the ordinary weight gradient, with no padding left."""
        return weight_grad(x, conv.weight.shape, d, conv.stride, 0, conv.dilation, conv.groups)

    spatial = tuple(range(3, delta.dim()))
    if w.groups is not None:
        # Per group, the batch-summed gradient is one weight-gradient convolution.
        s_w = torch.zeros_like(conv.weight, dtype=delta.dtype)
        s_b = torch.zeros(delta.shape[2], dtype=delta.dtype, device=delta.device) if bias else None
        for row, idx in w.groups:
            d, x = (delta[row], a) if idx is None else (delta[row, idx], a[idx])
            s_w += wgrad(x, d).abs_()
            if s_b is not None:
                s_b += d.sum((0, *(s - 1 for s in spatial))).abs_()
        return s_w.mul_(w.coef), None if s_b is None else s_b.mul_(w.coef)
    s_b = _abs_sum(delta.sum(spatial), (0, 1)).mul_(w.coef) if bias else None
    if mode == "bound":
        # Σ_p |δ_p||a_p|ᵀ ≥ |Σ_p δ_p a_pᵀ|: an upper bound, one weight-gradient convolution.
        return wgrad(inputs.get(name, "abs_padded"), _abs_sum(delta, 0)).mul_(w.coef), s_b
    cols = inputs.get(name, "cols")
    flat = delta.reshape(*delta.shape[:3], -1)
    return _per_sample_abs_sum(cols, flat, conv.groups, w.coef).reshape(conv.weight.shape), s_b


def _from_graph(layers: dict[str, nn.Module], capture: _Capture, y: Tensor, target: Tensor,
                kind: str, aggregate: str, scope: str, conv: str, class_chunk: int | None,
                retain: bool) -> dict[str, Tensor]:
    """S of every parameter in scope from one forward's graph: y (B, C) and the captured layer
    inputs and outputs. ``retain`` keeps the graph for a later backward (the step's loss)."""
    names = [n for n in layers if n in capture.outputs]  # layers the forward pass ran
    zs = [capture.outputs[n] for n in names]
    has_conv = any(isinstance(layers[n], nn.modules.conv._ConvNd) for n in names)
    backward = _Backward(y, zs, batched=not has_conv, retain=retain)
    inputs = _Inputs(layers, capture.inputs)

    # S is a sum over classes, so each chunk of classes adds its part: only one chunk's δ
    # (K × B × every layer's output) exists at a time.
    totals: dict[str, list[Tensor | None]] = {}  # name -> [S_W, S_b]
    d_totals: dict[str, Tensor] = {}             # rank-one Linear layers: name -> D (B, O)
    for deltas, w in _derivative_chunks(backward, target, kind, aggregate, class_chunk):
        with torch.no_grad():
            for name, delta in zip(names, deltas):
                layer, a = layers[name], capture.inputs[name]
                if _rank_one(layer, a, w):
                    d = _abs_sum(delta, 0).mul_(w.coef)
                    d_totals[name] = d if name not in d_totals else d_totals[name].add_(d)
                    continue
                bias = scope == "all" and layer.bias is not None
                if isinstance(layer, nn.Linear):
                    s_w, s_b = _linear_sensitivity(a, delta, w, bias)
                else:
                    s_w, s_b = _conv_sensitivity(layer, inputs, name, delta, conv, w, bias)
                _add(totals, name, s_w, s_b)
        del deltas  # free this chunk's δ before the next backward
    with torch.no_grad():
        for name, d in d_totals.items():
            bias = scope == "all" and layers[name].bias is not None
            _add(totals, name, d.T @ inputs.get(name, "abs"), d.sum(0) if bias else None)

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


def _add(totals: dict[str, list[Tensor | None]], name: str, s_w: Tensor, s_b: Tensor | None) -> None:
    if name not in totals:
        totals[name] = [s_w, s_b]
        return
    totals[name][0].add_(s_w)
    if s_b is not None:
        totals[name][1].add_(s_b)


def _check_output(logits: Tensor, batch: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(f"sensitivity(): model output must be (batch, classes), got {tuple(logits.shape)}")


def _check_target(target: Tensor, kind: str, classes: int) -> None:
    if kind == "spec" and (target.min() < 0 or target.max() >= classes):
        raise ValueError(f"sensitivity(): target labels must be in [0, {classes})")


def _eval_forward(model: nn.Module, layers: dict[str, nn.Module], x: Tensor) -> tuple[_Capture, Tensor]:
    """The separate pass's forward (also SeReNe's, ``study/serene.py``): the model in eval mode
    on x, recording each layer's input and output. Returns the capture and the logits, whose
    graph reaches every recorded output."""
    capture = _Capture(layers, clone=_has_inplace(model))
    try:
        with _EvalMode(model), torch.enable_grad():
            # An input that requires grad keeps every layer output in the graph, frozen or not.
            logits = model(x.detach().requires_grad_(x.is_floating_point()))
            _check_output(logits, x.shape[0])
    finally:
        capture.remove()
    if capture.modified():
        raise ValueError(f"sensitivity(): an in-place operation changed the input or output of "
                         f"layer {capture.modified()[0]!r} after it ran; S needs them as the layer "
                         "saw and produced them (use an out-of-place activation, or a module with "
                         "inplace=True, which sensitivity() handles)")
    return capture, logits


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
    ``class_chunk`` (unspec only): classes per backward; None chooses the most that keep the δ
    of one chunk under DELTA_ELEMENTS entries. It changes memory and speed, not S.
    See the module docstring for the formulas and the cost of each path. This is the separate,
    eval-mode pass; the model's modes, hooks and parameter ``.grad`` are unchanged afterwards.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("output", output, OUTPUTS)
    _check_choice("aggregate", aggregate, AGGREGATES)
    _check_choice("scope", scope, SCOPES)
    _check_choice("conv", conv, CONV_MODES)
    _check_class_chunk(class_chunk)
    layers = sparsity.prunable_layers(model)
    if not layers:
        raise ValueError("sensitivity(): the model has no Linear or Conv layer")
    if x.shape[0] == 0 or target.shape != (x.shape[0],):
        raise ValueError(f"sensitivity(): need a non-empty batch with target of shape ({x.shape[0]},), "
                         f"got x {tuple(x.shape)} and target {tuple(target.shape)}")

    capture, logits = _eval_forward(model, layers, x)
    with torch.enable_grad():
        y = logits.softmax(1) if output == "softmax" else logits
    _check_target(target, kind, y.shape[1])
    return _from_graph(layers, capture, y, target, kind, aggregate, scope, conv, class_chunk,
                       retain=False)


# -- the update ------------------------------------------------------------------------------------
def insensitivity(s: Tensor) -> Tensor:
    """The bounded insensitivity max(0, 1 − S), in [0, 1]."""
    return (1 - s).clamp(min=0)


def insensitivity_decay(w: Tensor, s: Tensor, lam: float) -> Tensor:
    """The amount the update subtracts from w: λ · w · max(0, 1 − S)."""
    return lam * w * insensitivity(s)


def _decay_in_place(w: Tensor, s: Tensor) -> Tensor:
    """Turn S (≥ 0) into w · max(0, 1 − S) in place, in two passes: the step later subtracts
    λ times it (:func:`insensitivity_decay` without the temporaries)."""
    s.clamp_(max=1)
    return torch.addcmul(w, w, s, value=-1, out=s)


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


@dataclass
class _Plan:
    """What the method needs about its model, found once (the module walk is not free)."""

    model: weakref.ref
    layers: dict[str, nn.Module]
    params: dict[str, Tensor]
    mode_dependent: list[nn.Module]  # the modules step_forward_is_exact looks at
    inplace: bool                    # a module works in place: capture with clones


class DecayUpdate(ThresholdMethod):
    """The update the sensitivity methods share with their matched control ``decay``: after the
    optimizer step every parameter in scope moves by −λ·d, with d taken from the pre-step
    weights in ``after_backward`` (d = w·max(0, 1 − S) here, d = w for ``decay``); then the
    masks are re-applied, and every sparsify epoch ends with |w| < T pruned.

    LOBSTER's and SeReNe's code takes d from the weights after the optimizer step instead:
    ``schedule_decay(..., "post-step")`` leaves a factor f, and the step subtracts λ·w·f."""

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.decay: dict[str, Tensor] = {}   # d per parameter name, set by after_backward
        self.factor: dict[str, Tensor] = {}  # f per parameter name: d = f · the post-step w

    def named_parameters(self, model: nn.Module) -> dict[str, Tensor]:
        return dict(model.named_parameters())

    def schedule_decay(self, params: dict[str, Tensor], factors: dict[str, Tensor],
                       decay_from: DecayFrom) -> None:
        """In ``after_backward``: d = w·f for each name in ``factors`` (f broadcasts to w), from
        the weights now (``pre-step``) or from those after the optimizer step (``post-step``)."""
        _check_choice("decay_from", decay_from, DECAY_FROM)
        if decay_from == "pre-step":
            self.decay = {name: params[name].detach() * f for name, f in factors.items()}
        else:
            self.factor = factors

    def after_step(self, model: nn.Module) -> None:
        params = self.named_parameters(model)
        with torch.no_grad():
            for name, decay in self.decay.items():
                params[name].sub_(decay, alpha=self.params.lam)
            for name, factor in self.factor.items():
                params[name].sub_(params[name] * factor, alpha=self.params.lam)
        self.decay, self.factor = {}, {}
        super().after_step(model)


class SensitivityStatistics(DecayUpdate):
    """Statistics of S per epoch, for the methods whose update uses an S of each weight (the
    sensitivity methods, SeReNe, LOBSTER): ``after_backward`` passes each step's S to
    ``_accumulate``; ``epoch_metrics`` reports statistics of the epoch-mean S: each weight's S
    averaged over the steps of the epoch, over the weights not pruned at the end of the epoch."""

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self._s_sum: dict[str, Tensor] = {}           # Σ over the epoch's steps of each weight's S
        self._steps = 0
        self._epoch_over = False                      # the next step starts a new epoch's sums

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        super().end_epoch(model, epoch, phase)
        self._epoch_over = True

    def _accumulate(self, s: dict[str, Tensor]) -> None:
        """Add this step's S of every prunable weight to the epoch's sums (one add per layer)."""
        if self._epoch_over:
            self._s_sum, self._steps, self._epoch_over = {}, 0, False
        for name, value in s.items():
            if not name.endswith("weight"):  # the statistics describe the prunable weights
                continue
            if name in self._s_sum:
                self._s_sum[name].add_(value)
            else:
                self._s_sum[name] = value.clone()
        self._steps += 1

    def epoch_sensitivity(self) -> dict[str, Tensor]:
        """Each prunable weight's S averaged over the steps of the current (or just finished)
        epoch, keyed by parameter name; empty before the first step."""
        return {name: total / self._steps for name, total in self._s_sum.items()}

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Per layer, over the weights not pruned now, of the epoch-mean S (``epoch_sensitivity``):
        the 10/50/90 % quantiles, the mean, the share ≥ 1 and the share exactly 0 (S = 0 at every
        step of the epoch: a dead input or unit)."""
        out: dict[str, float] = {}
        for name, s in self.epoch_sensitivity().items():
            mask = self.masks.get(name)
            values = (s if mask is None else s[mask]).flatten()
            if values.numel() == 0:
                continue
            layer = sparsity.layer_of(name)
            q10, q50, q90 = quantiles(values.float(), (0.1, 0.5, 0.9))
            stats = {"q10": q10, "q50": q50, "q90": q90, "mean": values.mean().item(),
                     "frac_ge1": (values >= 1).float().mean().item(),
                     "frac_zero": (values == 0).float().mean().item()}
            out.update({rf.sens_key(layer, stat): value for stat, value in stats.items()})
        return out


class SensitivityMethod(SensitivityStatistics):
    """Sensitivity-driven regularization: after every step w ← w − λ·w·max(0, 1 − S(w)).

    S is taken at the pre-step weights: from the step's own forward (``forward``) when that is
    exact, else by a separate eval-mode pass in ``after_backward`` (module docstring).
    ``epoch_metrics`` reports statistics of the epoch-mean S: each weight's S averaged over the
    steps of the epoch, over the weights not pruned at the end of the epoch.
    """

    kind: ClassVar[Kind] = "unspec"
    citation: ClassVar[str] = CITATION
    Params: ClassVar[type[MethodParams]] = SensitivityParams

    def __init__(self, params: SensitivityParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.params: SensitivityParams = params
        self._plan: _Plan | None = None
        self._step_s: dict[str, Tensor] | None = None  # S from this step's forward, if exact

    def __getstate__(self) -> dict:
        # The plan holds a weak reference (not picklable) and is rebuilt on the next step.
        return {**self.__dict__, "_plan": None}

    def _plan_for(self, model: nn.Module) -> _Plan:
        if self._plan is None or self._plan.model() is not model:
            self._plan = _Plan(weakref.ref(model), sparsity.prunable_layers(model),
                               dict(model.named_parameters()),
                               [m for m in model.modules() if isinstance(m, _MODE_DEPENDENT)],
                               _has_inplace(model))
        return self._plan

    def compute_sensitivity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """S on (x, y) by the separate eval-mode pass (:func:`sensitivity`)."""
        p = self.params
        return sensitivity(model, x, y, kind=self.kind, output=p.output, aggregate=p.aggregate,
                           scope=p.scope, conv=p.conv, class_chunk=p.class_chunk or None)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The step's forward, capturing the prunable layers' inputs and outputs; S comes from
        this graph when that is exact (else ``after_backward`` runs the separate pass)."""
        self._step_s = None
        plan = self._plan_for(model)
        if not torch.is_grad_enabled() or any(_differs_in_train_mode(m) for m in plan.mode_dependent):
            return model(x)
        capture = _Capture(plan.layers, clone=plan.inplace)
        try:
            logits = model(x)
        finally:
            capture.remove()
        if logits.dim() != 2 or logits.shape[0] != x.shape[0] or not logits.requires_grad \
                or not all(z.requires_grad for z in capture.outputs.values()) \
                or y.shape != (x.shape[0],) or capture.modified():
            return logits  # after_backward's separate pass handles (and reports) this case
        self._step_s = self.graph_sensitivity(plan.layers, capture, logits, y)
        return logits

    def graph_sensitivity(self, layers: dict[str, nn.Module], capture: _Capture, logits: Tensor,
                          y: Tensor) -> dict[str, Tensor]:
        """S from the step's forward graph, which it keeps for the loss backward (SeReNe
        overrides this and ``compute_sensitivity``)."""
        p = self.params  # labels are checked by the loss (and scatter); no sync here
        out = logits.softmax(1) if p.output == "softmax" else logits
        return _from_graph(layers, capture, out, y, self.kind, p.aggregate, p.scope, p.conv,
                           p.class_chunk or None, retain=True)

    def step_sensitivity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """This step's S: from the step's forward when that was exact, else the separate pass."""
        s = self._step_s if self._step_s is not None else self.compute_sensitivity(model, x, y)
        self._step_s = None
        return s

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        s = self.step_sensitivity(model, x, y)
        params = self.named_parameters(model)
        with torch.no_grad():
            self._accumulate(s)
            self.decay = {name: _decay_in_place(params[name].detach(), s[name]) for name in s}

    def named_parameters(self, model: nn.Module) -> dict[str, Tensor]:
        return self._plan_for(model).params


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
