"""MLflow: one parent run per study, one child run per trial, per-epoch metrics, artifacts.

The layout (the contract `study report` reads):

- experiment = the study's experiment name (default: the study name);
- parent run: tags ``study.role=parent``, ``study.name``, ``study.config_hash``, the git
  commit; param ``study.config_hash``; artifact ``study.yaml`` (the validated study);
- child run per trial: tags ``mlflow.parentRunId``, ``study.role=trial``, ``study.trial_id``,
  ``status`` (running, finished, diverged, failed, pruned); params method, arch, dataset,
  seed, every method parameter, ``train.<field>``, ``data.<option>``, ``model.<option>``;
  metrics: every numeric key of each epoch's record with step = epoch (``phase`` as
  ``phase_index``: 0 = reach, 1 = sparsify); artifacts ``layers.csv`` and ``history.csv``.

Trials run in several processes that share one SQLite file by default, so every call
retries while the database is locked.
"""
from __future__ import annotations

import csv
import io
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

PHASE_INDEX = {"reach": 0, "sparsify": 1}
STATUSES = ("running", "finished", "diverged", "failed", "pruned")
LAYER_COLUMNS = ("layer", "total", "nonzero", "bias_total", "bias_nonzero", "remaining")

T = TypeVar("T")


# -- URIs ---------------------------------------------------------------------------------------


def sqlite_uri(path: str | Path) -> str:
    """``sqlite:////abs/path.db``: MLflow 3 needs an absolute path."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    """The study's tracking URI, made absolute.

    None -> ``sqlite:///<abs output_dir>/mlflow.db``; a relative ``sqlite:///x.db`` or a bare
    path is taken relative to the working directory (a bare folder becomes a ``file:`` store);
    server URIs (``http://...``, ``databricks``) are kept as they are.
    """
    if uri is None or uri == "":
        return sqlite_uri(Path(output_dir) / "mlflow.db")
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return uri if rest.startswith("/") else sqlite_uri(rest)
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:"):]).expanduser().resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        path = Path(uri).expanduser()
        return sqlite_uri(path) if path.suffix == ".db" else path.resolve().as_uri()
    return uri


def is_local_uri(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


# -- records -----------------------------------------------------------------------------------


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Every numeric key of an epoch record (no bools); ``phase`` becomes ``phase_index``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "phase":
            if value in PHASE_INDEX:
                out["phase_index"] = float(PHASE_INDEX[value])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def param_string(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(list(value))
    return str(value)


def flatten_params(
    *,
    method: str,
    arch: str,
    dataset: str,
    seed: int,
    method_params: dict[str, Any],
    train: dict[str, Any],
    data: dict[str, Any],
    model: dict[str, Any],
) -> dict[str, str]:
    """The child run's params: method, arch, dataset, seed, the method's parameters as they
    are, then ``train.<field>``, ``data.<option>`` and ``model.<option>``."""
    out = {"method": method, "arch": arch, "dataset": dataset, "seed": str(seed)}
    out.update({k: param_string(v) for k, v in method_params.items()})
    for prefix, values in (("train", train), ("data", data), ("model", model)):
        out.update({f"{prefix}.{k}": param_string(v) for k, v in values.items()})
    return out


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
        items = [Metric(k, _loggable(v), now, step) for k, v in metrics.items()]
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
        self.set_tags(run_id, {"status": "running"})

    def finish(self, run_id: str, status: str, mlflow_status: str = "FINISHED", **tags: str) -> None:
        """Set the ``status`` tag (finished, diverged, failed, pruned) and end the run."""
        self.set_tags(run_id, {"status": status, **tags})
        self.call(self.client.set_terminated, run_id, status=mlflow_status)

    def last_epoch(self, run_id: str) -> int:
        """The last epoch a run has logged (0 if none): where a retry continues logging."""
        value = self.get_run(run_id).data.metrics.get("epoch")
        return int(value) if value is not None and math.isfinite(value) else 0


def _loggable(value: float) -> float:
    # MLflow stores NaN; ±inf is stored as ±max float by the SQL store. Keep them as they are.
    return float(value)
