"""A study on Ray Tune: grid or Optuna search, an optional confirm stage, resources, MLflow
parent run, resume, cluster.
(One concept over 400 lines: the life of one study run, from Ray's start to the parent run's
end, with its stops and resumes; one stage's Tuner is study.tuners.)

``run_study(config)``:

1. starts Ray in-process on every core (or joins the cluster at ``address`` / ``$RAY_ADDRESS``);
2. opens the study's MLflow parent run (default store: ``<output_dir>/mlflow.db``);
3. the **search stage**: runs the trials (:func:`study.trial.run_trial`) with a Tuner: a grid
   over the expanded plan (:mod:`study.plan`), or an Optuna search (TPE or NSGA-II, one
   objective or several; one shared Optuna study, or one per method with
   ``search.budget_per_method``) kept in ``<output_dir>/optuna.db``; optionally with ASHA early
   stopping (the searcher and the scheduler: :mod:`study.search`). Its runs are tagged
   ``study.stage=search``;
4. with ``confirm: {seeds: [...]}``, the **confirm stage**: each method's configuration chosen
   from the search runs by the report's selection rule (:mod:`study.stages`) is retrained on
   the fresh seeds, as a grid with no early stopping; runs tagged ``study.stage=confirm``,
   children of the same parent run;
5. closes the parent run, logs its summary metrics (:mod:`study.summary`) and returns a
   summary.

Every run of a study gets a Tune experiment ``<storage_path>/<name>-<timestamp>`` for its
search (default ``<output_dir>/ray``), and ``<name>-<timestamp>-confirm`` for its confirm
stage, listed in ``<output_dir>/study.json`` with the stage the run is in and the chosen
configurations. ``resume=True`` continues the latest run where it stopped: a search stage is
restored with ``Tuner.restore`` (finished trials stay finished, interrupted or crashed ones
continue from their checkpoints and keep their MLflow runs, missing trials are started) and
then confirmed; a confirm stage is restored the same way, with the configurations recorded
when it began.
"""
from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ray >= 2.59 turns on token auth; local runs and loopback clusters run without it (a cluster
# with token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN before `study run`).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray import tune  # noqa: E402

from study import runformat as rf  # noqa: E402
from study.faults import MLFLOW_LOGGERS, StopControl, StudyLog  # noqa: E402
from study.plan import TrialSpec, confirm_trials, grid_trials, search_trial_count  # noqa: E402
from study.preflight import check_study, ray_address  # noqa: E402
from study.schema import StudyConfig  # noqa: E402
from study.state import STATE_FILE, read_state, write_state  # noqa: E402,F401  (re-exported)
from study.state import update_run_entry as _update_run_entry  # noqa: E402
from study.search import (  # noqa: E402
    make_scheduler, make_searcher, max_concurrent, optuna_storage_url, optuna_study_names,
)
from study.summary import log_parent_summary  # noqa: E402
from study.tracking import Tracker, git_commit  # noqa: E402
from study.tuners import (  # noqa: E402
    Log, StageContext, constants, fit, make_tuner, restore, to_stderr,
)
from study.tuners import experiment_path as _join  # noqa: E402
from study.tuners import study_constants as _study_constants  # noqa: E402,F401  (tests build trial configs)

# -- the outcome --------------------------------------------------------------------------------


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
    optuna_study: str | None = None  # the one shared Optuna study; None with one study per method
    optuna_studies: dict[str, str] = field(default_factory=dict)  # method -> Optuna study (equal budgets)
    stage: str = rf.STAGE_SEARCH  # the stage the study reached
    confirm_tune_path: str | None = None
    chosen: list[dict[str, Any]] = field(default_factory=list)  # the confirm stage's configurations
    interrupted: str | None = None  # the signal that stopped it (SIGINT, SIGTERM)
    error: str | None = None  # the trial error no retry could fix that stopped it
    log_path: Path | None = None  # Ray's, Tune's and MLflow's log records, tracebacks among them

    @property
    def failed(self) -> int:
        """Failed trial runs, counting trials that failed before they opened one."""
        return self.statuses.get(rf.FAILED, 0)


# -- Ray ------------------------------------------------------------------------------------------


def init_ray(config: StudyConfig, address: str | None = None) -> bool:
    """Start Ray in-process, or join a cluster; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(address)
    if address:
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


# -- Optuna ---------------------------------------------------------------------------------------


def load_optuna_study(output_dir: str | Path, study_name: str | None = None, method: str | None = None) -> Any:
    """The persisted Optuna study of a finished (or running) study: ``.best_trials`` is the
    Pareto set. Default: the latest run of the study in ``output_dir``; with equal budgets
    (one Optuna study per method) ``method`` says which."""
    import optuna

    output_dir = Path(output_dir).resolve()
    if study_name is None:
        runs = [r for r in read_state(output_dir)["runs"] if r.get("optuna_study") or r.get("optuna_studies")]
        if not runs:
            raise ValueError(f"{output_dir} holds no Optuna study (was it a grid search?)")
        studies = runs[-1].get("optuna_studies") or {"": runs[-1]["optuna_study"]}
        key = "" if method is None and "" in studies else method
        if key not in studies:
            raise ValueError(f"{output_dir}: the latest search has one Optuna study per method; "
                             f"method={method!r}, valid: {', '.join(k for k in studies if k)}")
        study_name = studies[key]
    return optuna.load_study(study_name=study_name, storage=optuna_storage_url(output_dir))


# -- the study ------------------------------------------------------------------------------------


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
    if config.description:
        tags[rf.TAG_DESCRIPTION] = config.description
    run_id = tracker.create_run(experiment_id, config.name, tags)
    params = {
        "config_hash": config.config_hash(),
        "search": config.search.kind,
        "seeds": ",".join(map(str, config.seeds)),
        "methods": ",".join(config.methods),
        "datasets": ",".join(config.datasets),
        "archs": ",".join(config.archs),
    }
    if config.search.budget_per_method is not None:
        params["budget_per_method"] = str(config.search.budget_per_method)
    if config.confirm is not None:
        params["confirm_seeds"] = ",".join(map(str, config.confirm.seeds))
    tracker.log_params(run_id, {f"{rf.STUDY_PARAM_PREFIX}{key}": value for key, value in params.items()})
    tracker.log_text(run_id, config.to_yaml(), rf.STUDY_YAML)
    if source_text is not None:
        tracker.log_text(run_id, source_text, rf.STUDY_SOURCE_YAML)
    return run_id


def _count_statuses(tracker: Tracker, experiment_id: str, parent_run_id: str,
                    failures: dict[str, str] | None = None) -> dict[str, int]:
    """Child runs by status tag, plus the trials Tune saw fail without an MLflow run."""
    counts: dict[str, int] = {}
    logged = set()
    for run in tracker.find_runs(experiment_id, {rf.TAG_PARENT_RUN: parent_run_id}):
        status = run.data.tags.get(rf.TAG_STATUS, "unknown")
        counts[status] = counts.get(status, 0) + 1
        logged.add(run.data.tags.get(rf.TAG_TUNE_TRIAL_ID))
    unlogged = [trial_id for trial_id in failures or {} if trial_id not in logged]
    if unlogged:  # it died before it opened its run (e.g. its data could not be loaded)
        counts[rf.FAILED] = counts.get(rf.FAILED, 0) + len(unlogged)
    return counts


def _open_store(config: StudyConfig, study_log: StudyLog, *, entry: dict[str, Any] | None, tune_name: str,
                source_text: str | None) -> tuple[Tracker, str, str | None, str]:
    """The MLflow side of a run, made in a thread while Ray starts: the tracker, the experiment,
    the git commit and the parent run (``entry``'s, reopened, when resuming)."""
    import mlflow  # noqa: F401  it sets up its loggers on import: send them to the log file from then on

    study_log.capture(*MLFLOW_LOGGERS)
    tracker = Tracker(config.resolved_tracking_uri)
    artifact_location = (config.output_path / rf.ARTIFACTS_DIR).as_uri() if rf.is_local_uri(tracker.tracking_uri) else None
    experiment_id = tracker.experiment_id(config.experiment_name, artifact_location)
    commit = git_commit()
    if entry is not None:
        tracker.reopen(entry["parent_run_id"])
        return tracker, experiment_id, commit, entry["parent_run_id"]
    return tracker, experiment_id, commit, _open_parent(tracker, experiment_id, config, tune_name, source_text, commit)


def _abandon_store(store: Future, err: BaseException) -> None:
    """Ray or the resources failed (or a signal came) while the MLflow store was being made: the
    parent run it opened ends FAILED (KILLED, ``interrupted``, after a signal)."""
    try:
        tracker, _, _, parent_run_id = store.result()
    except BaseException:
        return
    with contextlib.suppress(Exception):
        if isinstance(err, KeyboardInterrupt):
            tracker.finish(parent_run_id, rf.INTERRUPTED, "KILLED")
        else:
            tracker.finish(parent_run_id, rf.FAILED, "FAILED", error=f"{type(err).__name__}: {err}"[:500])


def _end_stopped(ctx: StageContext, stop: StopControl, stage: str) -> None:
    """A study that did not complete: its unfinished runs end KILLED (a resume reopens them); the
    parent run ends KILLED with status ``interrupted`` after a signal, FAILED after a trial
    error no retry can fix."""
    for run in ctx.tracker.find_runs(ctx.experiment_id, {rf.TAG_PARENT_RUN: ctx.parent_run_id}):
        if run.info.status == "RUNNING":
            ctx.tracker.call(ctx.tracker.client.set_terminated, run.info.run_id, status="KILLED")
    if stop.error and not stop.interrupted:
        ctx.tracker.finish(ctx.parent_run_id, rf.FAILED, "FAILED", error=stop.error[:500])
    else:
        ctx.tracker.finish(ctx.parent_run_id, rf.INTERRUPTED, "KILLED")
    ctx.log(f"the study stopped in its {stage} stage (Tune saved its state; `study run ... --resume` continues)")


def run_study(
    config: StudyConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    source_text: str | None = None,
    hooks: dict[str, Any] | None = None,
    log: Log = to_stderr,
) -> StudyOutcome:
    """Run (or, with ``resume``, continue) a study; see the module docstring.

    Before Ray starts, the checks of :func:`study.preflight.check_study` (missing data, devices,
    GPUs: errors; thresholds above every initial weight: warnings, to ``log``). While it runs,
    SIGINT and SIGTERM stop it cleanly and a trial error no retry can fix stops it
    (:class:`study.faults.StopControl`); Ray's, Tune's and MLflow's log records go to
    ``<output_dir>/logs/<tune name>.log`` (:class:`study.faults.StudyLog`).

    ``hooks`` go to every trial's config for tests (``fail_at_epoch``, see study.trial).
    """
    for warning in check_study(config, address):  # before anything is written or started
        log(warning)
    output_dir = config.output_path
    output_dir.mkdir(parents=True, exist_ok=True)
    storage_path = config.resolved_storage_path
    state = read_state(output_dir)
    if resume:  # check what can be checked before starting anything
        if not state["runs"]:
            raise ValueError(f"nothing to resume: {output_dir / STATE_FILE} lists no runs of this study")
        entry = state["runs"][-1]
        tune_name = entry["tune_name"]
        if entry.get("stage", rf.STAGE_SEARCH) == rf.STAGE_SEARCH and not tune.Tuner.can_restore(
                _join(storage_path, tune_name)):
            raise ValueError(f"cannot resume {tune_name}: no Tune experiment state in {_join(storage_path, tune_name)}")
        if entry.get("config_hash") != config.config_hash():
            log(f"warning: the study file changed since {tune_name} started (config hash "
                f"{entry.get('config_hash')} -> {config.config_hash()}); resuming the stored plan")
    else:
        if state["runs"] and not state["runs"][-1].get("complete"):
            log(f"note: the previous run {state['runs'][-1]['tune_name']} did not complete; "
                f"`study run --resume` continues it. Starting a new run.")
        tune_name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    log_path = output_dir / "logs" / f"{tune_name}.log"
    with StopControl(log_path) as stop, StudyLog(log_path) as study_log, ThreadPoolExecutor(1) as pool:
        store = pool.submit(_open_store, config, study_log, entry=entry if resume else None, tune_name=tune_name,
                            source_text=source_text)
        started_ray = False
        try:
            try:
                started_ray = init_ray(config, address)  # its one line (started, or joined) stays on the terminal
                study_log.capture("ray")
                stop.arm()  # ray.init installs its own SIGTERM handler
                check_resources(config)
                tracker, experiment_id, commit, parent_run_id = store.result()
            except BaseException as err:
                _abandon_store(store, err)
                raise
            tracking_uri = tracker.tracking_uri
            if resume:
                log(f"resuming {tune_name} at its {entry.get('stage', rf.STAGE_SEARCH)} stage "
                    f"(MLflow parent run {parent_run_id})")
            else:
                studies = optuna_study_names(config, tune_name)
                entry = {
                    "tune_name": tune_name, "parent_run_id": parent_run_id, "experiment_id": experiment_id,
                    "config_hash": config.config_hash(), "search": config.search.kind,
                    "optuna_study": studies.get(""), "optuna_studies": {m: n for m, n in studies.items() if m},
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": False,
                    "stage": rf.STAGE_SEARCH,
                    "confirm_seeds": list(config.confirm.seeds) if config.confirm is not None else None,
                }
                state["runs"].append(entry)
                write_state(output_dir, state)
            ctx = StageContext(config, storage_path, tracker, experiment_id, parent_run_id, commit, hooks, log)
            stop.on_stuck = lambda: _end_stopped(ctx, stop, entry.get("stage", rf.STAGE_SEARCH))
            confirm_name = f"{tune_name}-confirm"
            try:
                complete = True
                resume_confirm = resume
                if entry.get("stage", rf.STAGE_SEARCH) == rf.STAGE_SEARCH:
                    complete = _run_search(ctx, tune_name, resume=resume)
                    if complete and entry.get("confirm_seeds"):
                        entry.update(_begin_confirm(ctx, confirm_name))
                        _update_run_entry(output_dir, tune_name, **{k: entry[k] for k in ("stage", "confirm_tune_name",
                                                                                           "chosen")})
                        resume_confirm = False
                if complete and entry.get("stage") == rf.STAGE_CONFIRM:
                    chosen = [TrialSpec(**c["trial"]) for c in entry["chosen"]]
                    complete = _run_confirm(ctx, confirm_name, confirm_trials(chosen, entry["confirm_seeds"]),
                                            resume=resume_confirm)
            except KeyboardInterrupt:  # a second signal, or one outside Tune: stopped where it was
                stop.interrupted = stop.interrupted or "SIGINT"
                complete = False
            except BaseException as err:
                tracker.finish(parent_run_id, rf.FAILED, "FAILED", error=f"{type(err).__name__}: {err}"[:500])
                raise
            if complete:
                tracker.finish(parent_run_id, rf.FINISHED, "FINISHED")
            else:
                _end_stopped(ctx, stop, entry.get("stage", rf.STAGE_SEARCH))
            _update_run_entry(output_dir, tune_name, complete=complete)
            statuses = _count_statuses(tracker, experiment_id, parent_run_id, ctx.failures)
            log_parent_summary(tracker, config, parent_run_id, log)
            optuna = config.search.kind == "optuna"
            return StudyOutcome(
                output_dir=output_dir, tune_path=_join(storage_path, tune_name), tracking_uri=tracking_uri,
                experiment_id=experiment_id, parent_run_id=parent_run_id, complete=complete, statuses=statuses,
                optuna_storage=optuna_storage_url(output_dir) if optuna else None,
                optuna_study=entry.get("optuna_study"), optuna_studies=dict(entry.get("optuna_studies") or {}),
                stage=entry.get("stage", rf.STAGE_SEARCH),
                confirm_tune_path=_join(storage_path, confirm_name) if entry.get("stage") == rf.STAGE_CONFIRM else None,
                chosen=list(entry.get("chosen") or []),
                interrupted=stop.interrupted, error=stop.error, log_path=log_path,
            )
        finally:
            if started_ray:
                import ray

                ray.shutdown()


def _run_search(ctx: StageContext, tune_name: str, *, resume: bool) -> bool:
    config = ctx.config
    expected = search_trial_count(config)
    if resume:
        return fit(restore(ctx, tune_name), expected, ctx.failures)
    search_alg, num_samples = None, 1
    param_space: dict[str, Any] = {"study": constants(ctx, rf.STAGE_SEARCH)}
    if config.search.kind == "grid":
        param_space["trial"] = tune.grid_search([t.as_dict() for t in grid_trials(config)])
    else:
        search_alg = make_searcher(config, config.output_path, tune_name)
        num_samples = expected
    stage = " search stage:" if config.confirm is not None else ""
    ctx.log(f"study {config.name}:{stage} {expected} trials ({config.search.kind}), Tune experiment "
            f"{_join(ctx.storage_path, tune_name)}, MLflow {ctx.tracker.tracking_uri} "
            f"(experiment {config.experiment_name!r})")
    tuner = make_tuner(ctx, tune_name, param_space, expected, search_alg=search_alg, num_samples=num_samples,
                   scheduler=make_scheduler(config), max_concurrent_trials=max_concurrent(config))
    return fit(tuner, expected, ctx.failures)


def _begin_confirm(ctx: StageContext, confirm_name: str) -> dict[str, Any]:
    """Choose each method's configuration from the search runs: the state entry's new fields."""
    from study.stages import choose_configurations

    choices = choose_configurations(ctx.config, ctx.tracker.tracking_uri, ctx.parent_run_id, ctx.log)
    for choice in choices:
        ctx.log(f"confirm: {choice.describe()}")
    return {"stage": rf.STAGE_CONFIRM, "confirm_tune_name": confirm_name,
            "chosen": [choice.as_dict() for choice in choices]}


def _run_confirm(ctx: StageContext, confirm_name: str, specs: list[TrialSpec], *, resume: bool) -> bool:
    if not specs:
        ctx.log("confirm stage: no method has a configuration to confirm")
        return True
    path = _join(ctx.storage_path, confirm_name)
    if resume and tune.Tuner.can_restore(path):
        return fit(restore(ctx, confirm_name), len(specs), ctx.failures)
    if resume:  # it stopped before Tune saved its state: runs Tune cannot continue would be duplicates
        _discard_confirm_runs(ctx)
    seeds = sorted({s for spec in specs for s in spec.seeds})
    ctx.log(f"study {ctx.config.name}: confirm stage: {len(specs)} trials (each chosen configuration on seeds "
            f"{seeds}), Tune experiment {path}")
    param_space = {"study": constants(ctx, rf.STAGE_CONFIRM),
                   "trial": tune.grid_search([spec.as_dict() for spec in specs])}
    tuner = make_tuner(ctx, confirm_name, param_space, len(specs), label="confirm ",
                   max_concurrent_trials=ctx.config.resources.max_concurrent_trials)
    return fit(tuner, len(specs), ctx.failures)


def _discard_confirm_runs(ctx: StageContext) -> None:
    for run in ctx.tracker.find_runs(ctx.experiment_id, {rf.TAG_PARENT_RUN: ctx.parent_run_id,
                                                         rf.TAG_STAGE: rf.STAGE_CONFIRM}):
        ctx.log(f"deleting confirm run {run.info.run_id}: its Tune trial was never saved")
        ctx.tracker.call(ctx.tracker.client.delete_run, run.info.run_id)


