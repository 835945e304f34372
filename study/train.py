"""The one training loop, and the paper's two-phase regularize-and-prune procedure.

Phase 1, *reach*: train with the regularizer on, for ``reach_epochs`` epochs or until the
validation error reaches ``target_error``. Phase 2, *sparsify*: the method thresholds or
prunes at the end of every epoch; training stops at ``epochs`` or, with ``patience``, once
the validation error has stayed above the target for that many epochs.

``prune_schedule: plateau-bisect`` changes how the threshold methods prune in phase 2 (the loop
owns that schedule, :mod:`study.prune_schedule`): at the end of a sparsify epoch that completes a
plateau of the validation loss, the run rolls back to its best epoch and prunes with the largest
admissible T; that epoch's record describes the network after the pruning and carries
``prune_threshold`` and ``prune_from_epoch``. Both phases and the stops stay as they are.

The loop only calls the hooks of :class:`study.method.Method`; it knows nothing of any
method's internals. Every epoch yields one record of the DESIGN.md metrics. The loop's settings
are :class:`study.settings.TrainConfig` (the one definition, imported here for the loop's callers).
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import runformat as rf
from study import sparsity
from study.method import Method, MethodContext, Phase
from study.prune_schedule import PlateauWatch, bisect_threshold
from study.settings import PLATEAU_BISECT, TrainConfig


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]: ...


class Data(Protocol):
    train: Split
    val: Split
    test: Split
    num_classes: int


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    status: Literal["finished", "diverged"]


class Callback(Protocol):
    def on_epoch_end(self, record: dict[str, Any], checkpoint: Callable[[], dict[str, Any]]) -> None: ...


#: Why a run stopped: its last epoch, the patience rule, or a non-finite loss.
StopReason = Literal["epochs", "patience", "diverged"]


@dataclass
class _State:
    """A run's bookkeeping (plain values: it goes into checkpoints as it is)."""

    epoch: int = 0
    phase: Phase = "reach"
    epochs_above_target: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False


def method_context(data: Data, config: TrainConfig) -> MethodContext:
    """What a method learns about its run (:class:`study.method.MethodContext`): the training
    set's size and classes, the epochs and the steps per epoch."""
    return MethodContext(
        train_size=len(data.train), num_classes=data.num_classes, epochs=config.epochs,
        steps_per_epoch=math.ceil(len(data.train) / config.batch_size),
    )


def check_prune_schedule(method: Method | type[Method], schedule: str) -> None:
    """Refuse, in one line, a ``prune_schedule`` the method cannot follow: ``plateau-bisect``
    chooses the T of a method that prunes by threshold (``Method.prunes_by_threshold``)."""
    if schedule == PLATEAU_BISECT and not method.prunes_by_threshold:
        raise ValueError(f"prune_schedule {schedule!r} needs a method that prunes |w| < T (one with a "
                         f"threshold param); {method.name!r} prunes its own way: use prune_schedule 'fixed'")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error (%) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    loss_sum, wrong, n = 0.0, 0, 0
    for x, y in split.batches(batch_size, shuffle=False):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        wrong += (logits.argmax(1) != y).sum().item()
        n += len(y)
    model.train(was_training)
    if n == 0:  # an empty split (val_fraction=0) has no error, not a perfect one
        return float("nan"), float("nan")
    return loss_sum / n, 100.0 * wrong / n


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def train_step(
    model: nn.Module, method: Method, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Tensor | None:
    """One optimizer step through the method's hooks. Returns the data loss, or None (and no
    update) when the total loss is not finite."""
    loss = F.cross_entropy(method.forward(model, x, y), y)
    penalty = method.penalty(model)
    total = loss if penalty is None else loss + penalty
    if not torch.isfinite(total.detach()):
        return None
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    method.after_backward(model, x, y)
    optimizer.step()
    method.after_step(model)
    return loss.detach()


def next_phase(state: _State, config: TrainConfig, val_error: float) -> Phase:
    """The phase of the next epoch, after an epoch of ``state.phase`` ended with ``val_error``."""
    if state.phase == "sparsify":
        return "sparsify"
    reached = config.target_error is not None and val_error <= config.target_error
    return "sparsify" if reached or state.epoch >= config.reach_epochs else "reach"


class Trainer:
    """One training run, stepped one epoch at a time: the model, optimizer, method, batch-order
    generator, torch RNG stream, phase bookkeeping and history live here across epochs.

    ``run_epoch()`` trains, evaluates and returns one epoch's record; ``done`` and
    ``stop_reason`` (``epochs``, ``patience`` or ``diverged``) say when the run is over.
    ``state_dict()`` / ``load_state_dict()`` hold everything a resumed run needs to continue
    bit-for-bit (on the CPU) as if it had never stopped, as tensors and plain Python values only
    (they load with ``torch.load(..., weights_only=True)``).

    Each trainer keeps its own torch RNG stream (set at the start of each epoch, saved at its
    end), so several trainers in one process (the seeds of a trial, in lockstep) do not draw
    from each other's stream. The loop uses no other RNG (Python's and NumPy's are only seeded).
    """

    def __init__(self, model: nn.Module, method: Method, data: Data, config: TrainConfig) -> None:
        check_prune_schedule(method, config.prune_schedule)
        self.model, self.method, self.data, self.config = model, method, data, config
        #: The plateau watch of ``prune_schedule: plateau-bisect`` (None under ``fixed``).
        self.watch: PlateauWatch | None = None
        if config.prune_schedule == PLATEAU_BISECT:
            if len(data.val) == 0:
                raise ValueError("prune_schedule 'plateau-bisect' watches the validation loss: it needs a "
                                 "validation split (val_fraction > 0)")
            self.watch = PlateauWatch(config.plateau_epochs, config.plateau_tolerance)
            method.threshold_each_epoch = False  # type: ignore[attr-defined]  # the loop chooses T
        self.device = torch.device(config.device)
        seed_everything(config.seed)
        model.to(self.device)
        method.attach(model)
        model.to(self.device)  # attach may add parameters
        self.optimizer = make_optimizer(model, config)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self._rng = _rng_state(self.device)
        self.state = _State(phase="sparsify" if config.reach_epochs == 0 else "reach")

    # -- where the run stands ----------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs trained so far."""
        return self.state.epoch

    @property
    def phase(self) -> Phase:
        """The phase of the next epoch."""
        return self.state.phase

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the run is over, or None while it goes on (from the state and the settings, so
        a run resumed with more epochs goes on)."""
        config, state = self.config, self.state
        if state.diverged:
            return "diverged"
        if config.patience and state.epochs_above_target >= config.patience:
            return "patience"
        if state.epoch >= config.epochs:
            return "epochs"
        return None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def status(self) -> Literal["finished", "diverged"]:
        """How the run ends (so far): ``diverged`` after a non-finite loss, else ``finished``."""
        return "diverged" if self.state.diverged else "finished"

    def layers(self) -> list[dict[str, Any]]:
        """The per-layer counts of the model as it is now (DESIGN.md's counting)."""
        return sparsity.count_model(self.model, self.method.effective_weights(self.model)).table()

    def result(self) -> TrainResult:
        return TrainResult(history=self.state.history, layers=self.layers(), status=self.status)

    # -- one epoch ---------------------------------------------------------------------------
    def run_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Train one epoch of the current phase, evaluate, and return its record.
        ``on_batch(seen, total)`` follows the training samples of the epoch (a progress bar)."""
        if self.done:
            raise RuntimeError(f"the run is over ({self.stop_reason}) after epoch {self.state.epoch}")
        model, method, config, state = self.model, self.method, self.config, self.state
        _set_rng_state(self.device, self._rng)
        state.epoch += 1
        start = time.perf_counter()
        model.train()
        loss_sum, seen, diverged = 0.0, 0, False
        for x, y in self.data.train.batches(config.batch_size, shuffle=True, generator=self.generator):
            loss = train_step(model, method, self.optimizer, x, y)
            if loss is None:
                diverged = True
                break
            loss_sum += loss.item() * len(y)
            seen += len(y)
            if on_batch is not None:
                on_batch(seen, len(self.data.train))
        train_loss = float("nan") if diverged else loss_sum / max(seen, 1)
        if not diverged:
            method.end_epoch(model, state.epoch, state.phase)

        val_loss, val_error = evaluate(model, self.data.val)
        pruning: dict[str, float] = {}
        if self.watch is not None and not diverged and state.phase == "sparsify" \
                and self.watch.update(val_loss, state.epoch, self._snapshot):
            pruning = self._prune_at_plateau()
            val_loss, val_error = evaluate(model, self.data.val)
        test_loss, test_error = evaluate(model, self.data.test)
        report = sparsity.count_model(model, method.effective_weights(model))
        record: dict[str, Any] = {
            rf.EPOCH: state.epoch,
            rf.PHASE: state.phase,
            rf.TRAIN_LOSS: train_loss,
            rf.VAL_LOSS: val_loss,
            rf.VAL_ERROR: val_error,
            rf.TEST_LOSS: test_loss,
            rf.TEST_ERROR: test_error,
            **report.metrics(),
            rf.ARCHITECTURE: report.architecture,
            **pruning,
            **method.epoch_metrics(model),
            rf.EPOCH_SECONDS: time.perf_counter() - start,
        }
        state.history.append(record)

        if state.phase == "sparsify" and config.target_error is not None and config.patience:
            above = val_error > config.target_error
            state.epochs_above_target = state.epochs_above_target + 1 if above else 0
        state.phase = next_phase(state, config, val_error)
        state.diverged = diverged
        self._rng = _rng_state(self.device)
        return record

    # -- the plateau-bisection schedule ------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        """What a rollback restores: the model, the optimizer and the method (copies)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "method": copy.deepcopy(self.method.state_dict()),
        }

    def _prune_at_plateau(self) -> dict[str, float]:
        """Back to the best state, then prune with the largest admissible T (module doc)."""
        watch = self.watch
        assert watch is not None and watch.best is not None
        best, from_epoch = watch.best, watch.best_epoch
        bound = (1.0 + self.config.prune_tolerance) * watch.best_loss
        self.model.load_state_dict(best["model"])
        # deep copies: a loaded optimizer state may share the snapshot's tensors
        self.optimizer.load_state_dict(copy.deepcopy(best["optimizer"]))
        self.method.load_state_dict(copy.deepcopy(best["method"]), self.device)
        threshold, _ = bisect_threshold(sparsity.prunable_weights(self.model),
                                        lambda: evaluate(self.model, self.data.val)[0], bound)
        self.method.threshold_prune(self.model, threshold)
        watch.reset()
        return {rf.PRUNE_THRESHOLD: threshold, rf.PRUNE_FROM_EPOCH: float(from_epoch)}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain Python values. Like
        ``nn.Module.state_dict()`` it holds the live tensors: save it (or deep-copy it) before
        the next epoch changes them."""
        out = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": self._rng[0],
            "cuda_rng": self._rng[1],
            "state": asdict(self.state),  # copies the history list and its records
        }
        if self.watch is not None:  # plateau-bisect: the watch and its best state
            out["plateau"] = self.watch.state_dict()
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.method.load_state_dict(saved["method"], self.device)
        self.generator.set_state(saved["generator"])
        self._rng = (saved["torch_rng"], saved.get("cuda_rng"))
        self.state = _State(**saved["state"])
        if self.watch is not None and saved.get("plateau") is not None:
            self.watch.load_state_dict(saved["plateau"])


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The torch RNG state the loop draws from: the CPU's, and the GPU's on a CUDA device."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda" and state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def fit(
    model: nn.Module,
    method: Method,
    data: Data,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method`` through both phases; return the per-epoch history.

    A loop over :class:`Trainer`; ``resume`` is a ``Trainer.state_dict()``. Each callback gets
    every record and a function that returns a copy of the trainer's state at that point; the
    first with an ``on_batch`` method also gets ``on_batch(seen, total)`` within each epoch."""
    trainer = Trainer(model, method, data, config)
    if resume is not None:
        trainer.load_state_dict(resume)

    def checkpoint() -> dict[str, Any]:
        # A deep copy: the live tensors keep changing after the callback returns.
        return copy.deepcopy(trainer.state_dict())

    on_batch = next((c.on_batch for c in callbacks if hasattr(c, "on_batch")), None)
    while not trainer.done:
        record = trainer.run_epoch(on_batch)
        for callback in callbacks:
            callback.on_epoch_end(record, checkpoint)
    return trainer.result()
