"""A trial's checkpoints: when they are taken, the files, and reading them back safely.

A trial reports every epoch to Tune, but a checkpoint goes with the report only on a schedule
(:class:`CheckpointSchedule`: every ``resources.checkpoint_every`` epochs, once
``resources.checkpoint_seconds`` have passed since the last one, at the phase change and at the
end); a restarted trial re-trains the epochs after its last checkpoint.

A checkpoint is a folder (:class:`CheckpointFolder`) that Tune copies into its storage. It holds
``trial.pt``, the newest state, and ``previous.pt``, the one before it. Both hold tensors and
plain Python values only (each seed's ``study.train.Trainer.state_dict()``) and are read with
``torch.load(..., weights_only=True)``, so a crafted file cannot run code. If ``trial.pt`` is
truncated or corrupt, the trial warns (:class:`CheckpointWarning`) and continues from
``previous.pt``; if neither can be read, :class:`CheckpointError` says so in one line that names
the files.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: The files of a trial's checkpoint folder: the newest checkpoint and the one before it.
CHECKPOINT_FILE = "trial.pt"
PREVIOUS_FILE = "previous.pt"
CHECKPOINT_VERSION = 2


class CheckpointError(RuntimeError):
    """A trial checkpoint that cannot be read (truncated, corrupt, or not a trial checkpoint)."""


class CheckpointWarning(UserWarning):
    """The newest checkpoint could not be read; the trial continues from the one before."""


@dataclass(frozen=True)
class CheckpointSchedule:
    """When a report carries a checkpoint: every ``every`` epochs (0: never by count), once
    ``seconds`` have passed since the last one (None: never by time), at the phase change and
    at the end."""

    every: int = 1
    seconds: float | None = None

    def due(self, epochs_since: int, seconds_since: float, *, phase_changed: bool, final: bool) -> bool:
        return (final or phase_changed or (self.every > 0 and epochs_since >= self.every)
                or (self.seconds is not None and seconds_since >= self.seconds))


def _read_file(path: Path, origin: str) -> dict[str, Any]:
    where = f"{origin}/{path.name}"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read the trial checkpoint {where}: {reason[:200]}") from None
    if not isinstance(saved, dict) or saved.get("version") != CHECKPOINT_VERSION or not isinstance(
            saved.get("seeds"), list):
        found = f"version {saved.get('version')!r}" if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{where} is not a trial checkpoint of version {CHECKPOINT_VERSION} (found {found}; "
                              f"a study started by an older version of this code cannot be resumed)")
    return saved


class CheckpointFolder:
    """The trial's local checkpoint folder, handed to Tune at each checkpoint (Tune copies it to
    its storage): ``trial.pt``, the newest, and ``previous.pt``, the one before it, so that a
    damaged newest file costs a few re-trained epochs and not the trial."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="study-trial-"))

    def write(self, checkpoint: dict[str, Any]) -> Path:
        newest = self.path / CHECKPOINT_FILE
        if newest.exists():
            newest.replace(self.path / PREVIOUS_FILE)
        partial = self.path / (CHECKPOINT_FILE + ".partial")
        torch.save(checkpoint, partial)
        partial.replace(newest)
        return self.path

    def restore(self, folder: Path, origin: str) -> dict[str, Any] | None:
        """The newest readable checkpoint in a restored folder (None when it has none), which
        becomes this folder's ``trial.pt``. Warns when it falls back to ``previous.pt``."""
        candidates = [folder / name for name in (CHECKPOINT_FILE, PREVIOUS_FILE) if (folder / name).is_file()]
        if not candidates:
            return None
        errors = []
        for path in candidates:
            try:
                saved = _read_file(path, origin)
            except CheckpointError as err:
                errors.append(str(err))
                continue
            if errors:
                warnings.warn(f"{errors[0]}; continuing from the checkpoint before it, "
                              f"{origin}/{path.name}", CheckpointWarning, stacklevel=2)
            shutil.copyfile(path, self.path / CHECKPOINT_FILE)
            return saved
        raise CheckpointError("; ".join(errors))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
