"""The Method interface: the only thing the training loop knows about a sparsifier.

A method is a small class with typed hyperparameters (a dataclass ``Params``) and
hooks that the loop calls in this order, every step and every epoch::

    attach(model)                      once, before the optimizer is built
    out = forward(model, x, y)         every step: the step's own forward pass
    loss = data_loss(out) + penalty(model)
    loss.backward(); after_backward(model, x, y)
    optimizer.step(); after_step(model) (then masks are re-applied)
    end_epoch(model, epoch, phase)     thresholding, prune/retrain schedules
    effective_weights(model)           what sparsity accounting counts

This module imports nothing of any concrete method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from study import sparsity

Phase = Literal["reach", "sparsify"]


@dataclass(frozen=True)
class MethodContext:
    """Facts about the run that some methods need (e.g. L0 scales λ by 1/N)."""

    train_size: int
    num_classes: int
    epochs: int
    steps_per_epoch: int


@dataclass
class MethodParams:
    """Base class of every method's hyperparameters; subclasses add typed fields."""


class Method:
    """Base class: a method with no regularizer that keeps its masks applied.

    Subclasses set ``name``, ``citation`` and ``Params`` and override the hooks they
    need. ``self.masks`` holds boolean keep-masks keyed by prunable parameter name;
    once a weight is pruned it stays at exactly zero.
    """

    name: ClassVar[str] = "base"
    citation: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: Whether the method does something in the sparsify phase that it does not do in the reach
    #: phase (thresholding, a pruning schedule); False for methods that act alike in both.
    uses_sparsify_phase: ClassVar[bool] = True
    #: Whether the method prunes by a magnitude threshold, |w| < T (``ThresholdMethod``), so
    #: that the training loop's sparsify schedule may choose T (``train.prune_schedule``).
    #: Methods that prune their own way (Han's magnitude, GMP, L0, sparse VD) leave it False.
    prunes_by_threshold: ClassVar[bool] = False

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        self.params = params
        self.context = context
        self.masks: dict[str, Tensor] = {}

    @classmethod
    def expects_sparsify_phase(cls, params: MethodParams) -> bool:
        """Whether a run with these parameters needs its sparsify phase to start: the check
        before launch rejects train settings under which it never does."""
        return cls.uses_sparsify_phase

    # -- hooks ---------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Set up what the method needs (gates, buffers). Called before the optimizer exists."""

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The step's forward pass: the model's output on x (y: the labels). A method that needs
        this forward's graph overrides it; the loss backward frees the graph right after."""
        return model(x)

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A term added to the data loss, or None."""
        return None

    def after_backward(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        """Work that needs this step's batch and the pre-step weights."""

    def after_step(self, model: nn.Module) -> None:
        """Update after the optimizer step; the base class re-applies the masks."""
        self.apply_masks(model)

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        """End-of-epoch work such as thresholding."""

    def effective_weights(self, model: nn.Module) -> dict[str, Tensor]:
        """The prunable weights as they act in the evaluated network."""
        return sparsity.prunable_weights(model)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra per-epoch metrics to report (e.g. sensitivity statistics)."""
        return {}

    # -- helpers shared by methods -------------------------------------------
    def apply_masks(self, model: nn.Module) -> None:
        if self.masks:
            sparsity.apply_masks(sparsity.prunable_weights(model), self.masks)

    def prune(self, model: nn.Module, keep: dict[str, Tensor]) -> None:
        """Add ``keep`` (True = keep) to the masks and zero what is pruned."""
        self.masks = sparsity.combine_masks(self.masks, keep)
        self.apply_masks(model)

    def threshold_prune(self, model: nn.Module, threshold: float) -> None:
        """Prune every prunable weight with |w| < threshold (a no-op for threshold 0)."""
        if threshold > 0:
            self.prune(model, sparsity.threshold_masks(sparsity.prunable_weights(model), threshold))

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.masks = {k: v.to(device) for k, v in state.get("masks", {}).items()}


@dataclass
class ThresholdParams(MethodParams):
    """λ and T of a method that shrinks weights while training and prunes |w| < T.

    Subclasses redeclare both fields with their own defaults and comments."""

    lam: float = 0.0  # λ: how strongly weights are shrunk (the subclass says how)
    threshold: float = 0.0  # T: |w| < T is pruned at the end of every sparsify epoch

    def __post_init__(self) -> None:
        for name in ("lam", "threshold"):
            value = getattr(self, name)
            # the chained comparison is False for NaN, negative and infinite values
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")


class ThresholdMethod(Method):
    """The sensitivity method's procedure with another shrinkage: the subclass shrinks weights
    in both phases (a penalty or an update, strength λ) and, at the end of every sparsify epoch,
    every prunable weight with |w| < T is zeroed and masked.

    The training loop may choose T itself (``train.prune_schedule: plateau-bisect``): it then
    sets ``threshold_each_epoch`` to False and prunes through ``threshold_prune``. The method
    knows nothing of the schedule."""

    Params: ClassVar[type[MethodParams]] = ThresholdParams
    params: ThresholdParams
    prunes_by_threshold: ClassVar[bool] = True
    #: Whether ``end_epoch`` prunes |w| < ``params.threshold`` at the end of every sparsify epoch.
    threshold_each_epoch: bool = True

    @classmethod
    def expects_sparsify_phase(cls, params: MethodParams) -> bool:
        return getattr(params, "threshold", 0) > 0  # T = 0: the sparsify phase prunes nothing

    def end_epoch(self, model: nn.Module, epoch: int, phase: Phase) -> None:
        if phase == "sparsify" and self.threshold_each_epoch:
            self.threshold_prune(model, self.params.threshold)


def check_fields(obj: object, checks: dict[str, bool], prefix: str = "invalid ", suffix: str = "") -> None:
    """Raise a one-line ValueError naming the first field whose check is False and its value."""
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"{prefix}{name}={getattr(obj, name)!r}{suffix}")

