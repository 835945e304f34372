"""MLflow: one parent run per study, one child run per trial, per-epoch metrics, artifacts.

The layout (the names, tags and URI rules that `study report` reads back) is owned by
:mod:`study.runformat`; this module writes through it. Trials run in several processes that
share one SQLite file by default, so every call retries while the database is locked.
"""
from __future__ import annotations

import csv
import io
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from study import runformat as rf

T = TypeVar("T")


# -- records -----------------------------------------------------------------------------------


def table_csv(rows: Iterable[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def git_commit(where: str | Path | None = None) -> str | None:
    """The commit of the repository holding the code, or None outside git."""
    folder = Path(where) if where else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# -- the client --------------------------------------------------------------------------------


def _is_locked(err: Exception) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


class Tracker:
    """A thin MlflowClient wrapper: the few calls a study needs, retried while SQLite is locked.

    Pickles as its URI only (Ray ships it to trials and keeps it in experiment state).
    """

    def __init__(self, tracking_uri: str, *, retries: int = 12) -> None:
        self.tracking_uri = tracking_uri
        self.retries = retries
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "retries": self.retries, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
                if attempt == self.retries or not _is_locked(err):
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
        raise AssertionError("unreachable")

    # -- experiments and runs ------------------------------------------------------------------
    def experiment_id(self, name: str, artifact_location: str | None = None) -> str:
        """The id of experiment ``name``, created (or restored from the trash) if needed."""
        found = self.call(self.client.get_experiment_by_name, name)
        if found is None:
            try:
                return self.call(self.client.create_experiment, name, artifact_location=artifact_location)
            except Exception:  # another process created it first
                found = self.call(self.client.get_experiment_by_name, name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.call(self.client.restore_experiment, found.experiment_id)
        return found.experiment_id

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self.call(self.client.create_run, experiment_id, tags=tags, run_name=run_name)
        return run.info.run_id

    def find_runs(self, experiment_id: str, tags: dict[str, str]) -> list[Any]:
        """Runs whose tags all equal ``tags``, oldest first."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs: list[Any] = []
        token = None
        while True:
            page = self.call(
                self.client.search_runs, [experiment_id], filter_string=where, max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def get_run(self, run_id: str) -> Any:
        return self.call(self.client.get_run, run_id)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log the params a run does not have yet (params are immutable in MLflow)."""
        from mlflow.entities import Param

        have = self.get_run(run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in have]
        for start in range(0, len(new), 100):  # MLflow's batch limit
            self.call(self.client.log_batch, run_id, params=new[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # NaN is stored as it is; SQL stores keep ±inf as ±(largest float), which the reader undoes.
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.call(self.client.log_batch, run_id, metrics=items[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.call(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.call(self.client.log_text, run_id, text, artifact_file)

    def reopen(self, run_id: str) -> None:
        """A retried or resumed run is running again."""
        self.call(self.client.update_run, run_id, status="RUNNING")
        self.set_tags(run_id, {rf.TAG_STATUS: rf.RUNNING})

    def finish(self, run_id: str, status: str, mlflow_status: str = "FINISHED", **tags: str) -> None:
        """Set the status tag (finished, diverged, failed, pruned, interrupted) and end the run."""
        self.set_tags(run_id, {rf.TAG_STATUS: status, **tags})
        self.call(self.client.set_terminated, run_id, status=mlflow_status)

    def last_epoch(self, run_id: str) -> int:
        """The last epoch a run has logged (0 if none): where a retry continues logging."""
        value = self.get_run(run_id).data.metrics.get(rf.EPOCH)
        return int(value) if value is not None and math.isfinite(value) else 0

