"""The settings of one training run: the one definition of their names, defaults, bounds and
help texts (and of the default data set and architecture).

:class:`TrainConfig` is what the trainer (:func:`study.train.fit`) takes. The two other places
that need these settings derive them from it, so that a default is written once:

- the study file's ``train`` block (:class:`study.schema.TrainSettings`): the same fields
  without ``seed`` (a study axis, :data:`STUDY_AXES`) and with ``device: auto``;
- `study train`'s flags (``--epochs``, ``--batch-size``, …, ``--device auto``).

``epochs`` defaults to 20: a first run, or a study of many trials, that finishes in about a
minute on a laptop (digits / LeNet-300-100). The method defaults were tuned with 200 epochs; the
commands in docs/methods.md that reproduce those numbers pass ``--epochs 200``.

Standard library only (torch is imported lazily by :func:`choose_device`): the schema and the
CLI's help read this module without loading torch.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Literal, Sequence

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]  # Literal["sgd", "adam"]
#: The sparsify phase's pruning schedules of the threshold methods (study.prune_schedule):
#: ``fixed`` prunes |w| < the method's T at the end of every sparsify epoch; ``plateau-bisect``
#: waits for a plateau of the validation loss, rolls back to the best epoch and prunes with the
#: largest T that keeps the validation loss within ``prune_tolerance`` of that best.
FIXED, PLATEAU_BISECT = "fixed", "plateau-bisect"
PRUNE_SCHEDULES: tuple[str, ...] = (FIXED, PLATEAU_BISECT)
PruneSchedule = Literal[PRUNE_SCHEDULES]  # type: ignore[valid-type]  # Literal["fixed", "plateau-bisect"]

#: The device setting that picks the GPU when the run has one (study files and `study train`).
AUTO = "auto"
DEVICE_HELP = ("auto (the GPU when the run has one: in a study, when Ray gives the trial one; "
               "else the CPU), cpu, cuda or cuda:N")
#: TrainConfig fields a study's ``train`` block does not hold: the seed is a study axis.
STUDY_AXES: tuple[str, ...] = ("seed",)
#: The part of the training set held out for validation (study files and `study train`).
VAL_FRACTION = 0.1
#: What `study train` and an empty study train on: the embedded digits with LeNet-300-100.
DATASET = "digits"
ARCH = "lenet300"

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _setting(default: Any, help: str, **bounds: float) -> Any:
    """A field with its help text and numeric bounds (``ge``, ``gt``, ``le``, ``lt``), which the
    dataclass checks and the schema hands to pydantic."""
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass
class TrainConfig:
    """Training settings shared by every method (the two phases: see :mod:`study.train`)."""

    epochs: int = _setting(20, "maximum epochs, both phases together", ge=1)
    batch_size: int = _setting(32, "minibatch size", ge=1)
    lr: float = _setting(0.1, "learning rate η", gt=0)
    momentum: float = _setting(0.0, "SGD momentum (adam ignores it)", ge=0, lt=1)
    optimizer: Optimizer = _setting("sgd", "optimizer: " + " or ".join(OPTIMIZERS))
    reach_epochs: int = _setting(10, "length of phase 1 (reach performance) before thresholding starts", ge=0)
    target_error: float | None = _setting(
        None, "validation error (%) that ends phase 1 early; with patience it also stops phase 2", ge=0, le=100)
    patience: int = _setting(
        0, "stop after this many sparsify epochs with validation error above the target (0 = never)", ge=0)
    prune_schedule: PruneSchedule = _setting(
        FIXED, "how threshold methods prune in phase 2: fixed (|w| < the method's T every epoch) or "
        "plateau-bisect (at each plateau of the validation loss: back to the best epoch, then the largest T "
        "within prune_tolerance, found by bisection; the method's T is unused)")
    plateau_epochs: int = _setting(
        20, "plateau-bisect: sparsify epochs without a relative improvement of the validation loss above "
        "plateau_tolerance that make a plateau (the authors' PWE)", ge=1)
    plateau_tolerance: float = _setting(
        0.01, "plateau-bisect: an epoch improves when its validation loss is below (1 - this) x the best "
        "(negative: when not above (1 + |this|) x the best, the authors' code's rule)", gt=-1, lt=1)
    prune_tolerance: float = _setting(
        0.05, "plateau-bisect: the pruning may raise the validation loss to (1 + this) x the best (the "
        "authors' TWT)", ge=0)
    seed: int = _setting(0, "seeds Python, NumPy, torch and the batch order: CPU runs repeat exactly")
    device: str = _setting("cpu", "cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.prune_schedule not in PRUNE_SCHEDULES:
            raise ValueError(f"unknown prune_schedule {self.prune_schedule!r}; valid: {', '.join(PRUNE_SCHEDULES)}")
        for f in dataclasses.fields(self):
            value, bounds = getattr(self, f.name), f.metadata.get("bounds", {})
            if value is None:
                continue
            for kind, limit in bounds.items():
                compare, symbol = _BOUNDS[kind]
                if not compare(value, limit):
                    raise ValueError(f"invalid train setting {f.name}={value!r} (must be {symbol} {limit})")


def choose_device(setting: str, gpu_ids: Sequence[Any] | None = None) -> str:
    """The device an ``auto`` setting means: the GPU when the run has one, else the CPU; any
    other setting as it is. Inside a Ray trial pass ``gpu_ids`` (``ray.get_gpu_ids()``): a
    trial with ``num_gpus=0`` still sees the node's GPUs, so ``torch.cuda.is_available()``
    alone is not enough."""
    if setting != AUTO:
        return setting
    if gpu_ids is not None and len(gpu_ids) == 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
