"""The Tune experiment of one stage of a study: the trainable, a new or restored Tuner, the
trials' shared constants (with the stage their runs are tagged with), and the driver-side
callback that shows the stage's progress (:mod:`study.progress`) and closes the MLflow runs a
trial could not.

:mod:`study.runner` decides which stages run; this module builds each one's Tuner.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from study import runformat as rf
from study.progress import StageProgress, StageView, ended_line, ended_state, stop_all, trial_label
from study.faults import StopControl, one_line, trial_error
from study.schema import StudyConfig
from study.tracking import Tracker

Log = Callable[[str], None]


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def experiment_path(storage_path: str, name: str) -> str:
    """A Tune experiment's location: a local path or a URI (s3://..., gs://...)."""
    return f"{storage_path.rstrip('/')}/{name}"


def trial_dirname(trial: Any) -> str:
    """Short trial folders: the generated names hold the whole config and grow too long."""
    spec = trial.config.get("trial") or {}
    return f"{spec.get('method', 'trial')}-{trial.trial_id}"


def trial_id_of(result: Any) -> str:
    """The Tune trial id of a result (from its folder, :func:`trial_dirname`, when the trial
    died before it reported anything)."""
    return str(result.metrics.get("trial_id") or Path(result.path).name.rsplit("-", 1)[-1])


class StudyCallback(tune.Callback):
    """The stage's progress (:mod:`study.progress`: a live view on a terminal, else one line
    per ended trial) and the MLflow runs a trial could not close itself: stopped by the
    scheduler (``pruned``) or dead for good (``failed``)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str, total: int,
                 label: str = "", epochs: int = 0, live: bool | None = None) -> None:
        self.tracker, self.experiment_id, self.parent_run_id = tracker, experiment_id, parent_run_id
        self.view = StageView(StageProgress(total, epochs, label), live)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a Tune experiment saved by an older version (total, ended, label; no view) resumes too
        if "view" not in state:
            state["view"] = StageView(StageProgress(state.get("total", 0), 0, state.get("label", "")))
        self.__dict__.update(state)

    @property
    def progress(self) -> StageProgress:
        return self.view.progress

    def _close_open_runs(self, trial: Any, status: str, mlflow_status: str) -> None:
        runs = self.tracker.find_runs(
            self.experiment_id, {rf.TAG_TUNE_TRIAL_ID: trial.trial_id, rf.TAG_PARENT_RUN: self.parent_run_id}
        )
        for run in runs:
            if run.data.tags.get(rf.TAG_STATUS) == rf.RUNNING:
                self.tracker.finish(run.info.run_id, status, mlflow_status)

    def _ended(self, trial: Any, state: str, what: str) -> None:
        self.progress.end(trial, state)
        label = trial_label((trial.config or {}).get("trial") or {})
        self.view.line(ended_line(self.progress, label, what, trial.last_result))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.update(trials)
        self.view.start()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.progress.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        try:
            self._close_open_runs(trial, rf.PRUNED, "FINISHED")
        except Exception as err:  # tracking trouble must not stop the study
            self.view.line(f"warning: could not close the MLflow runs of {trial.trial_id}: {err}")
        state = ended_state(r)
        what = state
        if state == rf.FINISHED and r.get("diverged_seeds"):
            what = f"finished ({int(r['diverged_seeds'])} seeds diverged)"
        self._ended(trial, state, what)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            self._close_open_runs(trial, rf.FAILED, "FAILED")
        except Exception as err:
            self.view.line(f"warning: could not close the MLflow runs of {trial.trial_id}: {err}")
        message, retryable = trial_error(trial)
        self._ended(trial, rf.FAILED, f"FAILED: {message}")
        if not retryable:
            self._stop_study(message)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message, retryable = trial_error(trial)
        if retryable:
            self.view.line(f"trial {trial.trial_id} crashed ({message[:200]}); retrying from its last checkpoint")
            return
        label = trial_label((trial.config or {}).get("trial") or {})
        self.view.line(f"{label}: FAILED: {message}")
        self._stop_study(message)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.view.stop()

    def _stop_study(self, message: str) -> None:
        """A trial that cannot succeed (study.trial.SetupError) stops the study at once."""
        stop = StopControl.active
        where = f" (tracebacks: {stop.log_path})" if stop is not None and stop.log_path else ""
        self.view.line(f"stopping the study: a retry cannot fix this error{where}")
        if stop is not None:
            stop.stop(message)


def study_constants(config: StudyConfig, tracking: dict[str, Any] | None, commit: str | None,
                     hooks: dict[str, Any] | None, stage: str = rf.STAGE_SEARCH) -> dict[str, Any]:
    """What every trial of the study shares (the ``study`` part of a trial's config)."""
    return {
        "name": config.name,
        "config_hash": config.config_hash(),
        "git_commit": commit,
        "stage": stage,
        "train": config.train.model_dump(mode="json"),
        # a relative data root is the driver's (workers may run in another folder)
        "data": {**config.data.model_dump(mode="json"), "root": config.data.resolved_root},
        "model": config.model.model_dump(mode="json"),
        "cpus_per_trial": config.resources.cpus_per_trial,
        "checkpoint": {"every": config.resources.checkpoint_every, "seconds": config.resources.checkpoint_seconds},
        "tracking": tracking,
        "hooks": dict(hooks or {}),
    }


@dataclass
class StageContext:
    """What both stages of one run of a study share."""

    config: StudyConfig
    storage_path: str
    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    commit: str | None
    hooks: dict[str, Any] | None
    log: Log
    failures: dict[str, str] = field(default_factory=dict)  # Tune trial id -> its error, from Tune


def fit(tuner: Any, expected: int, failures: dict[str, str] | None = None) -> bool:
    """Run a Tuner; whether every expected trial ended (finished, diverged, pruned or failed)
    and nothing stopped it (a signal, or a trial that cannot succeed: :class:`StopControl`).
    The errors of failed trials go to ``failures``, keyed by Tune trial id: a trial that died
    before it opened its MLflow run still counts as failed."""
    stop = StopControl.active
    try:
        with stop.tune_running() if stop is not None else contextlib.nullcontext():
            results = tuner.fit()
    finally:
        stop_all()  # the live view, however the stage ended
    for result in results:
        if result.error is not None and failures is not None:
            failures[trial_id_of(result)] = one_line(getattr(result.error, "cause", None) or result.error)
    ended = results.num_terminated + results.num_errors
    stopped = stop is not None and (stop.interrupted or stop.error)
    return not stopped and len(results) >= expected and ended == len(results)


def constants(ctx: StageContext, stage: str) -> dict[str, Any]:
    """The study constants of one stage's trials, with the parent run they log under."""
    tracking = {"uri": ctx.tracker.tracking_uri, "experiment_id": ctx.experiment_id,
                "parent_run_id": ctx.parent_run_id}
    return study_constants(ctx.config, tracking, ctx.commit, ctx.hooks, stage)


def trainable(config: StudyConfig) -> Any:
    """:func:`study.trial.run_trial` with the study's resources per trial."""
    from study.trial import run_trial

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables would drown our lines
    # no TensorBoard or CSV files, which nothing reads (result.json stays: make_tuner's callback)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    r = config.resources
    return tune.with_resources(run_trial, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})


def restore(ctx: StageContext, tune_name: str) -> Any:
    """The Tuner of a stopped stage: finished trials stay finished, the others continue."""
    return tune.Tuner.restore(experiment_path(ctx.storage_path, tune_name), trainable=trainable(ctx.config),
                              resume_unfinished=True, resume_errored=True)


def make_tuner(ctx: StageContext, tune_name: str, param_space: dict[str, Any], expected: int, *,
               label: str = "", search_alg: Any = None, num_samples: int = 1, scheduler: Any = None,
               max_concurrent_trials: int | None = None) -> Any:
    """A new Tuner for one stage; ``expected`` trials, ``label`` prefixes its progress lines."""
    r = ctx.config.resources
    return tune.Tuner(
        trainable(ctx.config),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials, reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=tune_name,
            storage_path=ctx.storage_path,
            failure_config=tune.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=r.checkpoints_to_keep),
            callbacks=[StudyCallback(ctx.tracker, ctx.experiment_id, ctx.parent_run_id, expected, label,
                                     epochs=ctx.config.train.epochs),
                       JsonLoggerCallback()],  # result.json: the benchmark and the tests read it
            verbose=0,
        ),
    )
