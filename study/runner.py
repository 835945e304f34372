"""A study on Ray Tune: grid or Optuna search, resources, MLflow parent run, resume, cluster.

``run_study(config)``:

1. starts Ray in-process on every core (or joins the cluster at ``address`` / ``$RAY_ADDRESS``);
2. opens the study's MLflow parent run (default store: ``<output_dir>/mlflow.db``);
3. runs the trials (:func:`study.trial.run_trial`) with a Tuner: a grid over the expanded
   plan (:mod:`study.plan`), or an Optuna search (TPE or NSGA-II, one objective or several)
   whose study is kept in ``<output_dir>/optuna.db``; optionally with ASHA early stopping
   (the searcher and the scheduler: :mod:`study.search`);
4. closes the parent run and returns a summary.

Every run of a study gets a Tune experiment ``<storage_path>/<name>-<timestamp>`` (default
``<output_dir>/ray``), listed in ``<output_dir>/study.json``. ``resume=True`` restores the
latest one with ``Tuner.restore``: finished trials stay finished, interrupted or crashed ones
continue from their checkpoints and keep their MLflow runs, and missing trials are started.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Ray >= 2.59 turns on token auth; local runs and loopback clusters run without it (a cluster
# with token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN before `study run`).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray import tune  # noqa: E402

from study import runformat as rf  # noqa: E402
from study.plan import grid_trials  # noqa: E402
from study.schema import StudyConfig  # noqa: E402
from study.search import make_scheduler, make_searcher, max_concurrent, optuna_storage_url  # noqa: E402
from study.tracking import Tracker, git_commit  # noqa: E402

STATE_FILE = "study.json"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the outcome --------------------------------------------------------------------------------


def _join(storage_path: str, name: str) -> str:
    """A Tune experiment's location: a local path or a URI (s3://..., gs://...)."""
    return f"{storage_path.rstrip('/')}/{name}"


@dataclass
class StudyOutcome:
    output_dir: Path
    tune_path: str  # the Tune experiment: a local path, or a URI under storage_path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    complete: bool  # every trial ended (finished, diverged, pruned or failed)
    statuses: dict[str, int] = field(default_factory=dict)  # MLflow child runs by status tag
    optuna_storage: str | None = None
    optuna_study: str | None = None

    @property
    def failed(self) -> int:
        return self.statuses.get(rf.FAILED, 0)


# -- the study's state file ---------------------------------------------------------------------


def read_state(output_dir: Path) -> dict[str, Any]:
    path = output_dir / STATE_FILE
    if not path.is_file():
        return {"runs": []}
    return json.loads(path.read_text())


def write_state(output_dir: Path, state: dict[str, Any]) -> None:
    path = output_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _update_run_entry(output_dir: Path, tune_name: str, **changes: Any) -> None:
    state = read_state(output_dir)
    for entry in state["runs"]:
        if entry["tune_name"] == tune_name:
            entry.update(changes)
    write_state(output_dir, state)


# -- Ray ------------------------------------------------------------------------------------------


def init_ray(config: StudyConfig, address: str | None = None) -> bool:
    """Start Ray in-process, or join a cluster; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, log_to_driver=False)
    else:
        r = config.resources
        ray.init(address="local", num_cpus=r.num_cpus or os.cpu_count(), num_gpus=r.num_gpus,
                 include_dashboard=False, log_to_driver=False)
    return True


def check_resources(config: StudyConfig) -> None:
    """Fail fast when no node could ever run a trial (Tune would wait forever)."""
    import ray

    have = ray.cluster_resources()
    r = config.resources
    if r.gpus_per_trial > 0 and have.get("GPU", 0) == 0:
        raise ValueError(f"resources.gpus_per_trial={r.gpus_per_trial:g} but the Ray cluster has no GPU; "
                         f"use --set resources.gpus_per_trial=0 to train on CPUs")
    if r.cpus_per_trial > have.get("CPU", 0):
        raise ValueError(f"resources.cpus_per_trial={r.cpus_per_trial:g} but the Ray cluster has "
                         f"{have.get('CPU', 0):g} CPUs")


def trial_dirname(trial: Any) -> str:
    """Short trial folders: the generated names hold the whole config and grow too long."""
    spec = trial.config.get("trial") or {}
    return f"{spec.get('method', 'trial')}-{trial.trial_id}"


# -- Optuna ---------------------------------------------------------------------------------------


def load_optuna_study(output_dir: str | Path, study_name: str | None = None) -> Any:
    """The persisted Optuna study of a finished (or running) study: ``.best_trials`` is the
    Pareto set. Default: the latest run of the study in ``output_dir``."""
    import optuna

    output_dir = Path(output_dir).resolve()
    if study_name is None:
        runs = [r for r in read_state(output_dir)["runs"] if r.get("optuna_study")]
        if not runs:
            raise ValueError(f"{output_dir} holds no Optuna study (was it a grid search?)")
        study_name = runs[-1]["optuna_study"]
    return optuna.load_study(study_name=study_name, storage=optuna_storage_url(output_dir))


# -- the driver-side callback ----------------------------------------------------------------------


class StudyCallback(tune.Callback):
    """Prints one line per ended trial and closes MLflow runs the trial could not close
    itself: stopped by the scheduler (``pruned``) or dead for good (``failed``)."""

    def __init__(self, tracker: Tracker, experiment_id: str, parent_run_id: str, total: int) -> None:
        self.tracker, self.experiment_id, self.parent_run_id = tracker, experiment_id, parent_run_id
        self.total, self.ended = total, 0

    def _close_open_runs(self, trial: Any, status: str, mlflow_status: str) -> None:
        runs = self.tracker.find_runs(
            self.experiment_id, {rf.TAG_TUNE_TRIAL_ID: trial.trial_id, rf.TAG_PARENT_RUN: self.parent_run_id}
        )
        for run in runs:
            if run.data.tags.get(rf.TAG_STATUS) == rf.RUNNING:
                self.tracker.finish(run.info.run_id, status, mlflow_status)

    def _line(self, trial: Any, what: str) -> None:
        self.ended += 1
        spec = trial.config.get("trial") or {}
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (spec.get("params") or {}).items())
        r = trial.last_result or {}
        numbers = ""
        if "val_error" in r:
            numbers = (f"  epoch {int(r.get('epoch', 0))}, val error {r['val_error']:.2f}%, "
                       f"compression {r.get('compression', float('nan')):.2f}x")
        seeds = spec.get("seeds", [])
        who = f"{spec.get('method', '?')} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
        _stderr(f"[{self.ended}/{self.total}] {who}{' ' + params if params else ''}: {what}{numbers}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        try:
            self._close_open_runs(trial, rf.PRUNED, "FINISHED")
        except Exception as err:  # tracking trouble must not stop the study
            _stderr(f"warning: could not close the MLflow runs of {trial.trial_id}: {err}")
        if not r.get("final"):
            what = rf.PRUNED
        elif r.get("diverged_seeds"):
            what = "diverged" if r.get("num_seeds", 1) == 1 else f"finished ({int(r['diverged_seeds'])} seeds diverged)"
        else:
            what = rf.FINISHED
        self._line(trial, what)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            self._close_open_runs(trial, rf.FAILED, "FAILED")
        except Exception as err:
            _stderr(f"warning: could not close the MLflow runs of {trial.trial_id}: {err}")
        self._line(trial, f"FAILED (see {trial.local_path})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _stderr(f"trial {trial.trial_id} crashed; retrying from its last checkpoint")


# -- the study ------------------------------------------------------------------------------------


def _study_constants(config: StudyConfig, tracking: dict[str, Any], commit: str | None,
                     hooks: dict[str, Any] | None) -> dict[str, Any]:
    """What every trial of the study shares (the ``study`` part of a trial's config)."""
    return {
        "name": config.name,
        "config_hash": config.config_hash(),
        "git_commit": commit,
        "train": config.train.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "cpus_per_trial": config.resources.cpus_per_trial,
        "checkpoint": {"every": config.resources.checkpoint_every, "seconds": config.resources.checkpoint_seconds},
        "tracking": tracking,
        "hooks": dict(hooks or {}),
    }


def _open_parent(tracker: Tracker, experiment_id: str, config: StudyConfig, tune_name: str,
                 source_text: str | None, commit: str | None) -> str:
    tags = {
        rf.TAG_ROLE: rf.ROLE_PARENT,
        rf.TAG_STUDY_NAME: config.name,
        rf.TAG_CONFIG_HASH: config.config_hash(),
        rf.TAG_SEARCH: config.search.kind,
        rf.TAG_TUNE_NAME: tune_name,
        rf.TAG_STATUS: rf.RUNNING,
    }
    if commit:
        tags[rf.TAG_GIT_COMMIT] = commit
    run_id = tracker.create_run(experiment_id, config.name, tags)
    tracker.log_params(run_id, {f"{rf.STUDY_PARAM_PREFIX}{key}": value for key, value in {
        "config_hash": config.config_hash(),
        "search": config.search.kind,
        "seeds": ",".join(map(str, config.seeds)),
        "methods": ",".join(config.methods),
        "datasets": ",".join(config.datasets),
        "archs": ",".join(config.archs),
    }.items()})
    tracker.log_text(run_id, config.to_yaml(), rf.STUDY_YAML)
    if source_text is not None:
        tracker.log_text(run_id, source_text, rf.STUDY_SOURCE_YAML)
    return run_id


def _count_statuses(tracker: Tracker, experiment_id: str, parent_run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in tracker.find_runs(experiment_id, {rf.TAG_PARENT_RUN: parent_run_id}):
        status = run.data.tags.get(rf.TAG_STATUS, "unknown")
        counts[status] = counts.get(status, 0) + 1
    return counts


def run_study(
    config: StudyConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    source_text: str | None = None,
    hooks: dict[str, Any] | None = None,
    log: Log = _stderr,
) -> StudyOutcome:
    """Run (or, with ``resume``, continue) a study; see the module docstring.

    ``hooks`` go to every trial's config for tests (``fail_at_epoch``, see study.trial).
    """
    output_dir = config.output_path
    output_dir.mkdir(parents=True, exist_ok=True)
    storage_path = config.resolved_storage_path
    state = read_state(output_dir)
    if resume:  # check what can be checked before starting anything
        if not state["runs"]:
            raise ValueError(f"nothing to resume: {output_dir / STATE_FILE} lists no runs of this study")
        entry = state["runs"][-1]
        tune_name = entry["tune_name"]
        if not tune.Tuner.can_restore(_join(storage_path, tune_name)):
            raise ValueError(f"cannot resume {tune_name}: no Tune experiment state in {_join(storage_path, tune_name)}")
        if entry.get("config_hash") != config.config_hash():
            log(f"warning: the study file changed since {tune_name} started (config hash "
                f"{entry.get('config_hash')} -> {config.config_hash()}); resuming the stored plan")
    else:
        if state["runs"] and not state["runs"][-1].get("complete"):
            log(f"note: the previous run {state['runs'][-1]['tune_name']} did not complete; "
                f"`study run --resume` continues it. Starting a new run.")
        tune_name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    started_ray = init_ray(config, address)
    try:
        check_resources(config)
        tracking_uri = config.resolved_tracking_uri
        tracker = Tracker(tracking_uri)
        artifact_location = (output_dir / "mlartifacts").as_uri() if rf.is_local_uri(tracking_uri) else None
        experiment_id = tracker.experiment_id(config.experiment_name, artifact_location)
        commit = git_commit()
        if resume:
            parent_run_id = entry["parent_run_id"]
            tracker.reopen(parent_run_id)
            log(f"resuming {tune_name} (MLflow parent run {parent_run_id})")
        else:
            parent_run_id = _open_parent(tracker, experiment_id, config, tune_name, source_text, commit)
            state["runs"].append({
                "tune_name": tune_name, "parent_run_id": parent_run_id, "experiment_id": experiment_id,
                "config_hash": config.config_hash(), "search": config.search.kind,
                "optuna_study": tune_name if config.search.kind == "optuna" else None,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": False,
            })
            write_state(output_dir, state)
        try:
            expected, tuner = _make_tuner(
                config, resume=resume, tune_name=tune_name, storage_path=storage_path, tracker=tracker,
                experiment_id=experiment_id, parent_run_id=parent_run_id, commit=commit, hooks=hooks, log=log,
            )
            results = tuner.fit()
        except BaseException as err:
            tracker.finish(parent_run_id, rf.FAILED, "FAILED", error=f"{type(err).__name__}: {err}"[:500])
            raise
        ended = results.num_terminated + results.num_errors
        complete = len(results) >= expected and ended == len(results)
        if complete:
            tracker.finish(parent_run_id, rf.FINISHED, "FINISHED")
        else:
            # interrupted: leave the trials' runs resumable but not "running" forever in the UI
            for run in tracker.find_runs(experiment_id, {rf.TAG_PARENT_RUN: parent_run_id}):
                if run.info.status == "RUNNING":
                    tracker.call(tracker.client.set_terminated, run.info.run_id, status="KILLED")
            tracker.finish(parent_run_id, rf.INTERRUPTED, "KILLED")
            log(f"the study was interrupted; continue it with `study run ... --resume` "
                f"(Tune experiment {_join(storage_path, tune_name)})")
        _update_run_entry(output_dir, tune_name, complete=complete)
        statuses = _count_statuses(tracker, experiment_id, parent_run_id)
        return StudyOutcome(
            output_dir=output_dir, tune_path=_join(storage_path, tune_name), tracking_uri=tracking_uri,
            experiment_id=experiment_id, parent_run_id=parent_run_id, complete=complete, statuses=statuses,
            optuna_storage=optuna_storage_url(output_dir) if config.search.kind == "optuna" else None,
            optuna_study=tune_name if config.search.kind == "optuna" else None,
        )
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _make_tuner(
    config: StudyConfig, *, resume: bool, tune_name: str, storage_path: str, tracker: Tracker,
    experiment_id: str, parent_run_id: str, commit: str | None, hooks: dict[str, Any] | None, log: Log,
) -> tuple[int, Any]:
    from study.trial import run_trial

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables would drown our lines
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    r = config.resources
    trainable = tune.with_resources(run_trial, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})
    expected = len(grid_trials(config)) if config.search.kind == "grid" else config.search.num_samples
    if resume:
        tuner = tune.Tuner.restore(_join(storage_path, tune_name), trainable=trainable,
                                   resume_unfinished=True, resume_errored=True)
        return expected, tuner

    tracking = {"uri": tracker.tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id}
    param_space: dict[str, Any] = {"study": _study_constants(config, tracking, commit, hooks)}
    search_alg = None
    if config.search.kind == "grid":
        param_space["trial"] = tune.grid_search([t.as_dict() for t in grid_trials(config)])
        num_samples = 1
    else:
        search_alg = make_searcher(config, config.output_path, tune_name)
        num_samples = config.search.num_samples
    log(f"study {config.name}: {expected} trials ({config.search.kind}), Tune experiment "
        f"{_join(storage_path, tune_name)}, MLflow {tracker.tracking_uri} (experiment {config.experiment_name!r})")
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=make_scheduler(config), num_samples=num_samples,
            max_concurrent_trials=max_concurrent(config), reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=tune_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=r.checkpoints_to_keep),
            callbacks=[StudyCallback(tracker, experiment_id, parent_run_id, expected)],
            verbose=0,
        ),
    )
    return expected, tuner
