"""A study's state file, ``<output_dir>/study.json``: every ``study run`` of the study, newest
last, with what it needs to resume and what `study status` shows.

Each entry: ``tune_name`` (its Tune experiment, ``<name>-<timestamp>``), ``parent_run_id``,
``experiment_id``, ``config_hash``, ``search``, ``optuna_study`` / ``optuna_studies``,
``started``, ``complete``, ``stage`` (search or confirm), ``confirm_seeds`` and, once the
confirm stage began, ``confirm_tune_name`` and ``chosen``. :mod:`study.runner` writes it; the
reading side (:mod:`study.status`, `study run`'s "already complete") only reads it, and
imports nothing heavy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "study.json"


def read_state(output_dir: Path) -> dict[str, Any]:
    path = Path(output_dir) / STATE_FILE
    if not path.is_file():
        return {"runs": []}
    return json.loads(path.read_text())


def write_state(output_dir: Path, state: dict[str, Any]) -> None:
    path = Path(output_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def update_run_entry(output_dir: Path, tune_name: str, **changes: Any) -> None:
    state = read_state(output_dir)
    for entry in state["runs"]:
        if entry["tune_name"] == tune_name:
            entry.update(changes)
    write_state(output_dir, state)


def latest_run(output_dir: Path) -> dict[str, Any] | None:
    """The newest run of the study in ``output_dir``, or None."""
    runs = read_state(output_dir)["runs"]
    return runs[-1] if runs else None
