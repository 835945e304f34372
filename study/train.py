"""The one training loop, and the paper's two-phase regularize-and-prune procedure.

Phase 1, *reach*: train with the regularizer on, for ``reach_epochs`` epochs or until the
validation error reaches ``target_error``. Phase 2, *sparsify*: the method thresholds or
prunes at the end of every epoch; training stops at ``epochs`` or, with ``patience``, once
the validation error has stayed above the target for that many epochs.

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
from study.settings import TrainConfig


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


@dataclass
class _State:
    epoch: int = 0
    phase: Phase = "reach"
    epochs_above_target: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def method_context(data: Data, config: TrainConfig) -> MethodContext:
    """What a method learns about its run (:class:`study.method.MethodContext`): the training
    set's size and classes, the epochs and the steps per epoch."""
    return MethodContext(
        train_size=len(data.train), num_classes=data.num_classes, epochs=config.epochs,
        steps_per_epoch=math.ceil(len(data.train) / config.batch_size),
    )


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


def fit(
    model: nn.Module,
    method: Method,
    data: Data,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method`` through both phases; return the per-epoch history."""
    device = torch.device(config.device)
    seed_everything(config.seed)
    model.to(device)
    method.attach(model)
    model.to(device)  # attach may add parameters
    optimizer = make_optimizer(model, config)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    state = _State(phase="sparsify" if config.reach_epochs == 0 else "reach")

    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        method.load_state_dict(resume["method"], device)
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        state = _State(**resume["state"])

    def checkpoint() -> dict[str, Any]:
        # A deep copy: the live tensors keep changing after the callback returns.
        return copy.deepcopy({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "method": method.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": asdict(state),
        })

    status: Literal["finished", "diverged"] = "finished"
    while state.epoch < config.epochs and status == "finished":
        state.epoch += 1
        start = time.perf_counter()
        model.train()
        loss_sum, seen = 0.0, 0
        for x, y in data.train.batches(config.batch_size, shuffle=True, generator=generator):
            loss = train_step(model, method, optimizer, x, y)
            if loss is None:
                status = "diverged"
                break
            loss_sum += loss.item() * len(y)
            seen += len(y)
        train_loss = loss_sum / max(seen, 1) if status == "finished" else float("nan")
        if status == "finished":
            method.end_epoch(model, state.epoch, state.phase)

        val_loss, val_error = evaluate(model, data.val)
        test_loss, test_error = evaluate(model, data.test)
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
            **method.epoch_metrics(model),
            rf.EPOCH_SECONDS: time.perf_counter() - start,
        }
        state.history.append(record)

        if state.phase == "sparsify" and config.target_error is not None and config.patience:
            above = val_error > config.target_error
            state.epochs_above_target = state.epochs_above_target + 1 if above else 0
        state.phase = next_phase(state, config, val_error)
        for callback in callbacks:
            callback.on_epoch_end(record, checkpoint)
        if config.patience and state.epochs_above_target >= config.patience:
            break

    final = sparsity.count_model(model, method.effective_weights(model))
    return TrainResult(history=state.history, layers=final.table(), status=status)

