"""MLflow: one parent run per study, one child run per trial, per-epoch metrics, artifacts.

The layout (the names, tags and URI rules that `study report` reads back) is owned by
:mod:`study.runformat`; this module writes through it. Every run also carries the tag
``study.create_token`` (bookkeeping for retries, see below).

Trials run in several processes that share one SQLite file by default, or talk to one
``mlflow server`` over HTTP on a cluster, so every call retries transient failures (SQLite
locked; server unreachable, timing out or answering 5xx/429) with backoff for up to
``RETRY_SECONDS`` (see :class:`Tracker`). Creating a run is the one call that is not
idempotent: each new run carries a unique tag ``study.create_token``, so a retry after a lost
answer finds the run the server did create instead of creating a second one.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import subprocess
import time
import uuid
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

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0  # how long one call keeps retrying a transient failure before it raises

# MLflow's own HTTP settings for study processes (a value already in the environment wins).
# MLflow retries every HTTP method itself (POST included: a create_run whose answer was lost
# would be sent again and make a second run) for about 4 minutes (7 retries, backoff factor 2)
# and waits 120 s for an answer. Tracker.call owns the retries instead: bounded, and aware that
# create_run is not idempotent. A request that hangs gives up after 30 s and is retried.
MLFLOW_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _is_locked(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _causes(err: BaseException) -> Iterable[BaseException]:
    """The error and what it was raised from or during (MLflow wraps requests' errors)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(err: BaseException) -> bool:
    """Worth retrying: SQLite busy, or the tracking server not reachable, not answering in
    time, or answering a retryable status (429, 5xx: requests' RetryError once MLflow's own
    retries, set to 0, are spent). Client errors (4xx, bad URI) are not."""
    import requests

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError)
    for cause in _causes(err):
        if isinstance(cause, requests.exceptions.InvalidURL):
            return False
        if isinstance(cause, transient) or _is_locked(cause):
            return True
    return False


class Tracker:
    """A thin MlflowClient wrapper: the few calls a study needs, each retried on transient
    failures with exponential backoff (0.05 s doubling to 2 s, with jitter) for at most
    ``retry_seconds`` (plus one request timeout); then the last error is raised, the trial
    fails and Tune retries it from its checkpoint.

    Pickles as its URI only (Ray ships it to trials and keeps it in experiment state).
    """

    def __init__(self, tracking_uri: str, *, retry_seconds: float = RETRY_SECONDS) -> None:
        self.tracking_uri = tracking_uri
        self.retry_seconds = retry_seconds
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "retry_seconds": self.retry_seconds, "_client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a Tune experiment pickled before retry_seconds existed (it held ``retries``) resumes too
        self.tracking_uri = state["tracking_uri"]
        self.retry_seconds = state.get("retry_seconds", RETRY_SECONDS)
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            for name, value in MLFLOW_HTTP_ENV.items():
                os.environ.setdefault(name, value)  # read by MLflow at each request
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while it fails transiently (see :func:`is_transient`).
        Only for idempotent calls (everything but create_run, which has its own wrapper)."""
        deadline = time.monotonic() + self.retry_seconds
        delay, warned = 0.05, False
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MlflowException wraps sqlalchemy's and requests' errors
                if not is_transient(err):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    if hasattr(err, "add_note"):
                        err.add_note(f"study: still failing after retrying for {self.retry_seconds:g} s")
                    raise
                if not warned and not _is_locked(err):
                    log.warning("tracking call failed (%s); retrying for up to %g s", err, self.retry_seconds)
                    warned = True
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))  # jitter spreads concurrent trials
            delay = min(2 * delay, 2.0)

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
        """Create a run, exactly once even when answers are lost.

        The run gets a fresh ``study.create_token``; a retry first looks for a run with that
        token (the server may have created it before the connection broke). If a retried
        request still made a second one, the newer copies are deleted, so searches (which
        list active runs only) see one run.
        """
        token = uuid.uuid4().hex
        tags = {**tags, rf.TAG_CREATE_TOKEN: token}
        by_token = f"tags.`{rf.TAG_CREATE_TOKEN}` = '{token}'"
        attempts = 0

        def create_once() -> str:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # not through self.call: this attempt is already being retried
                found = self.client.search_runs([experiment_id], filter_string=by_token,
                                                order_by=["attributes.start_time ASC"])
                if found:
                    return found[0].info.run_id
            return self.client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id

        run_id = self.call(create_once)
        if attempts > 1:
            found = self.find_runs(experiment_id, {rf.TAG_CREATE_TOKEN: token})
            for extra in found[1:]:
                self.call(self.client.delete_run, extra.info.run_id)
            if found:
                run_id = found[0].info.run_id
        return run_id

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
        self.log_steps(run_id, [(step, metrics)])

    def log_steps(self, run_id: str, steps: Iterable[tuple[int, dict[str, float]]]) -> None:
        """The metrics of several steps (epochs) in as few calls as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # NaN is stored as it is; SQL stores keep ±inf as ±(largest float), which the reader undoes.
        items = [Metric(k, float(v), now, step) for step, metrics in steps for k, v in metrics.items()]
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

