"""Where a study stands (``study status FILE_OR_FOLDER``), read from its state file
(``study.json``), its MLflow runs and its Tune experiment, without starting anything.

It says: the latest run of the study and its stage (search or confirm, with the
configurations the confirm stage retrains), its trials by status (MLflow child runs of the
parent run; a run stopped by an interrupted study is ``interrupted``), progress in epochs
(a run that ended counts as complete: it will not train more), when it last changed, the
MLflow URI, and whether ``study run FILE --resume`` would do anything. ``study run`` uses
:func:`previous_run` to refuse to train a complete study again silently.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study import runformat as rf
from study.locate import Located
from study.state import STATE_FILE, latest_run

#: A trial run whose study was interrupted: tag ``running``, MLflow state KILLED.
INTERRUPTED_TRIAL = "interrupted"
#: The order ``study status`` lists trial states in.
TRIAL_STATES: tuple[str, ...] = (rf.FINISHED, rf.DIVERGED, rf.PRUNED, rf.FAILED, rf.RUNNING, INTERRUPTED_TRIAL)


def trial_state(tag: str | None, mlflow_status: str) -> str:
    """A trial run's state for status: its ``status`` tag, except that a run still tagged
    ``running`` whose MLflow run ended was stopped: ``interrupted`` when it was killed (an
    interrupted study), ``failed`` when it failed."""
    if tag in (rf.FINISHED, rf.DIVERGED, rf.PRUNED, rf.FAILED):
        return tag
    if mlflow_status == "KILLED":
        return INTERRUPTED_TRIAL
    return rf.MLFLOW_STATES.get(mlflow_status, rf.RUNNING)


@dataclass
class Status:
    name: str
    located: Located
    entry: dict[str, Any] | None  # the latest run in study.json
    runs: int = 0  # entries in study.json
    parent_run_id: str | None = None
    parent_state: str | None = None  # MLflow status of the parent run
    counts: dict[str, int] = field(default_factory=dict)
    expected_runs: int | None = None
    epochs_done: int = 0
    epochs_total: int | None = None
    last_update: float | None = None  # seconds since the epoch
    resume: str = ""

    @property
    def stage(self) -> str:
        return (self.entry or {}).get("stage", rf.STAGE_SEARCH)

    @property
    def complete(self) -> bool:
        return bool((self.entry or {}).get("complete"))


def _study_of(located: Located, client: Any, parent_run_id: str | None) -> Any:
    """The validated study: the file's, else the one the parent run logged (None if neither)."""
    if located.study is not None:
        return located.study
    if parent_run_id is None:
        return None
    import tempfile

    import yaml

    from study.schema import study_from_dict

    rf.quiet_downloads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_run_id, rf.STUDY_YAML, tmp)
            return study_from_dict(yaml.safe_load(Path(path).read_text()), rf.STUDY_YAML)
    except Exception:
        return None


def _expected(study: Any, entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """How many trial runs (one per seed) the latest run makes, and their epochs in all."""
    from study.plan import grid_trials, search_trial_count

    if study is None:
        return None, None
    epochs = study.train.epochs
    if study.search.kind == "grid":
        specs = grid_trials(study)
        runs = len(specs)
        total = sum(int(s.train.get("epochs", epochs)) for s in specs)
    else:
        runs = search_trial_count(study) * len(study.seeds)
        total = runs * epochs
    seeds = entry.get("confirm_seeds") or []
    if seeds:
        chosen = entry.get("chosen")
        configs = ([c["trial"] for c in chosen] if chosen is not None else
                   [{"train": study.method_train(m)} for m in study.methods
                    for _ in study.archs for _ in study.datasets])
        runs += len(configs) * len(seeds)
        total += sum(int((c.get("train") or {}).get("epochs", epochs)) for c in configs) * len(seeds)
    return runs, total


def study_status(located: Located) -> Status:
    """Read everything ``study status`` shows (raises ValueError when the study never ran)."""
    from mlflow import MlflowClient

    folder = located.folder
    entry = latest_run(folder) if folder is not None else None
    name = located.study.name if located.study is not None else located.experiment
    status = Status(name=name, located=located, entry=entry)
    if folder is not None and (folder / STATE_FILE).is_file():
        from study.state import read_state

        status.runs = len(read_state(folder)["runs"])
    client = MlflowClient(tracking_uri=located.tracking_uri)
    experiment = client.get_experiment_by_name(located.experiment)
    if experiment is None and entry is None:
        raise ValueError(f"study {name!r} has not run: no experiment {located.experiment!r} at "
                         f"{located.tracking_uri}" + (f" and no {folder / STATE_FILE}" if folder else ""))
    parent = _parent(client, experiment, entry)
    if parent is not None:
        status.parent_run_id = parent.info.run_id
        status.parent_state = parent.info.status
        status.last_update = (parent.info.end_time or parent.info.start_time or 0) / 1000 or None
        _count(status, client, experiment.experiment_id, parent.info.run_id)
    study = _study_of(located, client, status.parent_run_id)
    if entry is not None:
        status.expected_runs, status.epochs_total = _expected(study, entry)
        status.resume = resume_note(status, study)
    if folder is not None and (folder / STATE_FILE).is_file():
        status.last_update = max(status.last_update or 0, (folder / STATE_FILE).stat().st_mtime)
    return status


def _parent(client: Any, experiment: Any, entry: dict[str, Any] | None) -> Any:
    if experiment is None:
        return None
    if entry is not None and entry.get("parent_run_id"):
        try:
            return client.get_run(entry["parent_run_id"])
        except Exception:  # a store the state file does not belong to
            pass
    found = client.search_runs([experiment.experiment_id], f"tags.`{rf.TAG_ROLE}` = '{rf.ROLE_PARENT}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def _count(status: Status, client: Any, experiment_id: str, parent_run_id: str) -> None:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{rf.TAG_PARENT_RUN}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    counts: dict[str, int] = {}
    latest = status.last_update or 0
    for run in runs:
        state = trial_state(run.data.tags.get(rf.TAG_STATUS), run.info.status)
        counts[state] = counts.get(state, 0) + 1
        epochs = int(run.data.metrics.get(rf.EPOCH, 0) or 0)
        if state in (rf.RUNNING, INTERRUPTED_TRIAL):
            status.epochs_done += epochs
            if state == rf.RUNNING:  # a running run changes with every epoch it logs
                history = client.get_metric_history(run.info.run_id, rf.EPOCH)
                if history:
                    latest = max(latest, history[-1].timestamp / 1000)
        else:
            status.epochs_done += int(_run_epochs(run) or epochs)
        latest = max(latest, (run.info.end_time or run.info.start_time or 0) / 1000)
    status.counts = counts
    status.last_update = latest or None


def _run_epochs(run: Any) -> int | None:
    """The epochs a run would have trained to its end (an ended run counts as complete)."""
    value = run.data.params.get(f"{rf.TRAIN_PREFIX}epochs")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def tune_path(located: Located, study: Any, tune_name: str) -> str:
    """A Tune experiment of the study: under its storage path, or ``<folder>/ray``."""
    if study is not None and study.storage_path:
        root = study.resolved_storage_path
    else:
        root = str((located.folder or Path(".")) / "ray")
    return f"{root.rstrip('/')}/{tune_name}"


def resume_note(status: Status, study: Any) -> str:
    """What ``study run FILE --resume`` would do with the latest run."""
    entry = status.entry or {}
    tune_name = entry.get("tune_name", "?")
    failed = status.counts.get(rf.FAILED, 0)
    if status.complete:
        if failed:
            return (f"--resume would retry the {failed} failed trial{'s' if failed > 1 else ''} of {tune_name} "
                    f"(from their last checkpoints)")
        return "nothing to resume: the latest run is complete"
    if status.parent_state == "RUNNING":
        return (f"the study looks busy (its parent run is RUNNING): if it was killed, --resume continues "
                f"{tune_name} at its {status.stage} stage")
    from ray import tune

    name = entry.get("confirm_tune_name") if status.stage == rf.STAGE_CONFIRM else tune_name
    path = tune_path(status.located, study, name or tune_name)
    if status.stage == rf.STAGE_SEARCH and not tune.Tuner.can_restore(path):
        return f"--resume cannot continue {tune_name}: no Tune experiment state in {path}"
    return f"--resume continues {tune_name} at its {status.stage} stage"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def format_status(status: Status, now: float | None = None) -> list[str]:
    """The lines ``study status`` prints."""
    now = time.time() if now is None else now
    loc, entry = status.located, status.entry or {}
    lines = [f"study {status.name}" + (f": {loc.study.description}" if loc.study is not None
                                       and loc.study.description else "")]
    lines += [f"  note        {note}" for note in loc.notes]
    if loc.folder is not None:
        lines.append(f"  folder      {loc.folder}")
    lines.append(f"  MLflow      {loc.tracking_uri}, experiment {loc.experiment!r}"
                 + (f", parent run {status.parent_run_id} ({status.parent_state})" if status.parent_run_id else ""))
    if entry:
        state = "complete" if status.complete else "not complete"
        confirm = f", then confirm on seeds {entry['confirm_seeds']}" if entry.get("confirm_seeds") else ""
        lines.append(f"  latest run  {entry.get('tune_name')} (started {entry.get('started', '?')}; "
                     f"{status.runs} run{'s' if status.runs != 1 else ''} of this study in all): "
                     f"{entry.get('search', '?')} search{confirm}; {status.stage} stage, {state}")
        for choice in entry.get("chosen") or []:
            trial = choice["trial"]
            params = rf.params_text(trial.get("params") or {})
            met = "" if choice.get("met_target", True) else " (no configuration met the target)"
            lines.append(f"    confirm   {trial['method']} on {trial['arch']}/{trial['dataset']}: "
                         f"{params or 'its one configuration'}{met}")
    else:
        lines.append(f"  latest run  no {STATE_FILE}" + (f" in {loc.folder}" if loc.folder else "")
                     + ": the runs below are all MLflow knows")
    ended = sum(n for s, n in status.counts.items() if s not in (rf.RUNNING, INTERRUPTED_TRIAL))
    counts = ", ".join(f"{status.counts.get(s, 0)} {s}" for s in TRIAL_STATES
                       if status.counts.get(s) or s in (rf.FINISHED, rf.FAILED))
    expected = status.expected_runs
    if expected is not None:
        started = sum(status.counts.values())
        counts += f", {max(expected - started, 0)} not started" if expected > started else ""
        lines.append(f"  trials      {ended}/{expected} ended: {counts} (one MLflow run per trial and seed)")
    else:
        lines.append(f"  trials      {counts}")
    if status.epochs_total:
        pct = 100 * status.epochs_done / status.epochs_total
        lines.append(f"  progress    {status.epochs_done}/{status.epochs_total} epochs ({pct:.0f}%)")
    if status.last_update:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.last_update))
        lines.append(f"  last update {stamp} ({_ago(max(now - status.last_update, 0))})")
    if status.resume:
        lines.append(f"  resume      {status.resume}")
    if rf.is_local_uri(loc.tracking_uri):
        lines.append(f"  browse      mlflow ui --backend-store-uri {loc.tracking_uri}")
    return lines


def previous_run(config: Any) -> dict[str, Any] | None:
    """The latest run of this study in its output folder when it has the same config hash
    (the same study file, ``--set`` included), else None."""
    entry = latest_run(config.output_path)
    if entry is None or entry.get("config_hash") != config.config_hash():
        return None
    return entry
