"""Finding a study's runs: a study file, a study folder or an experiment name → the MLflow
store and experiment to read, and the study's output folder. ``study report``, ``status``,
``export`` and ``compare`` all go through :func:`locate`.

The rule, in order:

1. ``--tracking-uri`` (and ``--experiment``) when given;
2. a **study file** (validated, ``--set`` applied): the folder its ``output_dir`` names,
   relative to the working directory (the folder ``study run`` writes to), when its store is
   there; else the newest folder the study index (:mod:`study.index`) recorded for that file,
   or for a study of the same name and config hash;
3. a **study folder**: its own store (``mlflow.db``, else ``mlruns/``);
4. an **experiment name**: ``$MLFLOW_TRACKING_URI``, else the newest folder the index
   recorded for a study or experiment of that name.

Nothing here creates a store: MLflow creates a missing SQLite file when it opens one, so a
local store is opened only when it exists, and a study that is found nowhere is a one-line
error that says where it looked. A folder's own store that still points its artifacts at the
place it was made (a moved or copied folder) is rewritten to point into the folder
(:func:`study.relocate.relocate`), with a note.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from study import index
from study import runformat as rf
from study.state import STATE_FILE


class NotFound(ValueError):
    """No runs of the study anywhere the rule looks (the message says where)."""


@dataclass
class Located:
    tracking_uri: str
    experiment: str
    folder: Path | None  # the study's output folder, when known
    study: Any = None  # the validated study file (StudyConfig), when the target is one
    notes: list[str] = field(default_factory=list)  # how it was found, what was fixed

    @property
    def own_store(self) -> bool:
        """The store is the folder's own ``mlflow.db``."""
        return self.folder is not None and self.tracking_uri == rf.sqlite_uri(self.folder / rf.STORE_FILE)


def locate(target: str | Path, *, sets: Sequence[str] = (), tracking_uri: str | None = None,
           experiment: str | None = None, check: Callable[[Any], None] | None = None) -> Located:
    """Where the runs of ``target`` (a study file, a study folder or an experiment name) are;
    see the module docstring. ``check`` is called with a study file's validated study before
    any store is looked for (a bad option is reported as such, not as "no runs found").
    Raises ValueError (NotFound when nothing is found)."""
    path = Path(target)
    if sets and not path.is_file():
        raise ValueError(f"--set overrides fields of a study file; {str(target)!r} is not one")
    if tracking_uri:
        tracking_uri = rf.absolute_tracking_uri(tracking_uri)
    if path.is_file():
        found = _from_file(path, sets, tracking_uri, experiment, check)
    elif path.is_dir():
        found = _from_folder(path.resolve(), tracking_uri, experiment)
    else:
        found = _from_name(str(target), tracking_uri, experiment)
    if not rf.store_exists(found.tracking_uri):
        raise NotFound(f"no MLflow store at {rf.local_store_path(found.tracking_uri)} (from {found.tracking_uri})")
    if found.own_store:
        found.notes.extend(_relocate(found.folder))
    return found


def _from_file(path: Path, sets: Sequence[str], tracking_uri: str | None, experiment: str | None,
               check: Callable[[Any], None] | None = None) -> Located:
    from study.schema import load_study

    study = load_study(path, sets)
    if check is not None:
        check(study)
    name = experiment or study.experiment_name
    here = study.output_path
    if tracking_uri:
        return Located(tracking_uri, name, here, study)
    uri = study.resolved_tracking_uri
    entries = index.find(file=path, name=study.name, config_hash=study.config_hash())
    if rf.local_store_path(uri) is None:  # a server: the runs are there; the folder from the index
        folder = here if (here / STATE_FILE).is_file() or not entries else entries[0].folder
        return Located(uri, name, folder, study)
    if rf.store_exists(uri):
        return Located(uri, name, here, study)
    output_dir = study.output_dir or f"runs/{study.name}"
    relative = "" if Path(output_dir).expanduser().is_absolute() else ", relative to the working directory"
    looked = [f"{rf.local_store_path(uri)} (output_dir {output_dir!r}{relative})"]
    for entry in entries:
        if rf.store_exists(entry.tracking_uri):
            return Located(entry.tracking_uri, experiment or entry.experiment, entry.folder, study,
                           [f"found {study.name!r} in the study index: {entry.folder} (run {entry.recorded})"])
    looked.append(f"the study index {index.index_path()} "
                  f"({'no entry for this file' if not entries else 'its folders hold no store'})")
    raise NotFound(f"no runs of study {study.name!r} found: looked in " + " and ".join(looked))


def _from_folder(folder: Path, tracking_uri: str | None, experiment: str | None) -> Located:
    uri = tracking_uri or rf.folder_tracking_uri(folder)
    if experiment is None:
        if not rf.store_exists(uri):
            raise NotFound(f"no MLflow store at {rf.local_store_path(uri)}")
        names = list_experiments(uri)
        if len(names) != 1:
            raise ValueError(f"{folder} holds experiments {names}; name one with --experiment")
        experiment = names[0]
    return Located(uri, experiment, folder)


def _from_name(name: str, tracking_uri: str | None, experiment: str | None) -> Located:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return Located(rf.absolute_tracking_uri(uri), experiment or name, None)
    for entry in index.find(name=name):
        if rf.store_exists(entry.tracking_uri):
            return Located(entry.tracking_uri, experiment or entry.experiment, entry.folder, None,
                           [f"found {name!r} in the study index: {entry.folder} (run {entry.recorded})"])
    raise NotFound(f"{name!r} is neither a study file nor a study folder, and the study index "
                   f"{index.index_path()} has no study of that name; give --tracking-uri for an experiment name")


def list_experiments(tracking_uri: str) -> list[str]:
    """The experiments of a store (not MLflow's ``Default``)."""
    from mlflow import MlflowClient

    return [e.name for e in MlflowClient(tracking_uri=tracking_uri).search_experiments() if e.name != "Default"]


def _relocate(folder: Path) -> list[str]:
    from study.relocate import relocate

    try:
        roots = relocate(folder)
    except Exception as err:  # a read-only copy: reading still works, logging the report may not
        return [f"warning: {folder / rf.STORE_FILE} points its artifacts elsewhere and could not be "
                f"rewritten: {err}"]
    return [f"the study folder moved: its store pointed its artifacts at {root}; now at "
            f"{folder / rf.ARTIFACTS_DIR}" for root in roots]


def index_entry(study: Any, file: str | Path | None) -> index.Entry:
    """The index entry ``study run`` records for a validated study (before it starts)."""
    return index.Entry(
        name=study.name, config_hash=study.config_hash(), output_dir=str(study.output_path),
        tracking_uri=study.resolved_tracking_uri, experiment=study.experiment_name,
        file=str(Path(file).expanduser().resolve()) if file is not None else None,
    )
