"""One Ray Tune trial: build data, model and method; train epoch by epoch; report each epoch's
metrics with a checkpoint to Tune; log everything to the trial's MLflow run.

A trial trains one configuration for one seed (grid search) or for every seed of the study
(Optuna search: the seeds are never tuned, so each sampled configuration is trained once per
seed, in lockstep, and Tune sees the mean over seeds). Training advances one epoch at a time:
each epoch is a ``study.train.fit`` call that resumes from the previous epoch's checkpoint,
which is exactly the continuous run (tests/test_study_trial.py checks this for every method)
and lets the trial interleave seeds and know when it has finished.

The Tune config of a trial (built by :mod:`study.runner`)::

    {"trial": {"method", "arch", "dataset", "seeds": [..], "params": {..}, "train": {..}},
     "study": {"name", "config_hash", "git_commit", "train": {..}, "data": {..},
               "model": {..}, "cpus_per_trial", "tracking": {"uri", "experiment_id",
               "parent_run_id"} or None, "hooks": {..}}}

``trial.train`` holds the method's overrides of ``study.train`` (``methods.<m>.train`` in the
study file); the trial trains with, and logs as ``train.*`` params, the merged settings.

Fault tolerance: every report carries a checkpoint; a retried or restored trial continues
from it, finds its MLflow run by the tag ``study.trial_id`` (so it never opens a second one)
and logs only the epochs that run has not logged yet. A non-finite loss ends the trial with
status ``diverged``, normally, so the rest of the study goes on.

Testing hooks (``study.hooks``, set by ``run_study(hooks=...)``, never by a study file):
``fail_at_epoch = k`` makes a trial that did not start from a checkpoint raise right after
reporting epoch k, so its retry starts from that checkpoint; ``sleep_after_epoch = s`` slows
trials down so that a test can interrupt a study in the middle.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from study import data as data_registry
from study import models
from study.methods import build_method, make_params
from study import runformat as rf
from study.settings import AUTO, STUDY_AXES, TrainConfig, choose_device
from study.tracking import Tracker, table_csv
from study.train import fit, method_context, seed_everything

CHECKPOINT_FILE = "trial.pt"
#: The train settings a study gives its trials (the seed is the trial's own).
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in STUDY_AXES)


class TrialError(RuntimeError):
    """Raised by the testing hook ``fail_at_epoch``."""


# -- where a trial reports: Ray Tune, or a fake in tests ------------------------------------------


class Session(Protocol):
    trial_id: str

    def gpu_ids(self) -> list[Any]: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None: ...


class TuneSession:
    """The Ray Tune side: ray.tune.report / get_checkpoint / Checkpoint (never ray.train.*)."""

    def __init__(self) -> None:
        from ray import tune

        self.trial_id = tune.get_context().get_trial_id()

    def gpu_ids(self) -> list[Any]:
        import ray

        return list(ray.get_gpu_ids())

    def load_checkpoint(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as folder:
            torch.save(checkpoint, Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable."""
    Trial(config, TuneSession()).run()


class _Capture:
    """The fit callback of one epoch step: keeps the record and the checkpoint."""

    record: dict[str, Any]
    state: dict[str, Any]

    def on_epoch_end(self, record: dict[str, Any], checkpoint: Any) -> None:
        self.record, self.state = record, checkpoint()


# -- one seed -----------------------------------------------------------------------------------


class SeedRun:
    """One seed of a trial: its data, its training state, its MLflow run."""

    def __init__(self, trial: Trial, seed: int, device: str) -> None:
        self.trial, self.seed = trial, seed
        study = trial.study
        data_settings = study["data"]
        self.data = data_registry.load_dataset(
            trial.dataset, root=data_settings.get("root"), val_fraction=data_settings["val_fraction"],
            seed=seed, download=data_settings.get("download", False), **trial.data_options,
        ).to(device)
        self.config = TrainConfig(**{**{k: trial.train[k] for k in TRAIN_FIELDS}, "seed": seed, "device": device})
        self.context = method_context(self.data, self.config)
        self.state: dict[str, Any] | None = None  # fit's checkpoint after the last epoch
        self.record: dict[str, Any] | None = None  # the last epoch's record
        self.layers: list[dict[str, Any]] = []
        self.status = "running"
        self.done = False
        self.closed = False
        self.run_id: str | None = None
        self.logged = 0
        if trial.tracker is not None:
            self._open_run(device)

    @property
    def epoch(self) -> int:
        return int(self.state["state"]["epoch"]) if self.state else 0

    @property
    def key(self) -> str:
        """The trial id in MLflow: the Tune trial id, plus the seed when a trial has several."""
        if len(self.trial.seeds) == 1:
            return self.trial.trial_id
        return f"{self.trial.trial_id}-s{self.seed}"

    # -- MLflow ----------------------------------------------------------------------------------
    def _open_run(self, device: str) -> None:
        trial, tracker = self.trial, self.trial.tracker
        assert tracker is not None and trial.tracking is not None
        experiment_id, parent = trial.tracking["experiment_id"], trial.tracking["parent_run_id"]
        existing = tracker.find_runs(experiment_id, {rf.TAG_TRIAL_ID: self.key, rf.TAG_PARENT_RUN: parent})
        if existing:  # a retry or a resumed study: keep logging into the same run
            run = existing[-1]
            self.run_id = run.info.run_id
            tracker.reopen(self.run_id)
            attempts = int(run.data.tags.get(rf.TAG_ATTEMPTS, "1")) + 1
            tracker.set_tags(self.run_id, {rf.TAG_ATTEMPTS: str(attempts)})
            self.logged = tracker.last_epoch(self.run_id)
        else:
            tags = {
                rf.TAG_PARENT_RUN: parent,
                rf.TAG_ROLE: rf.ROLE_TRIAL,
                rf.TAG_TRIAL_ID: self.key,
                rf.TAG_TUNE_TRIAL_ID: trial.trial_id,
                rf.TAG_STUDY_NAME: trial.study.get("name", ""),
                rf.TAG_CONFIG_HASH: trial.study.get("config_hash", ""),
                rf.TAG_STATUS: rf.RUNNING,
                rf.TAG_ATTEMPTS: "1",
                rf.TAG_STAGE: trial.study.get("stage", rf.STAGE_SEARCH),
            }
            if trial.study.get("git_commit"):
                tags[rf.TAG_GIT_COMMIT] = trial.study["git_commit"]
            name = f"{trial.method}-s{self.seed}-{trial.trial_id}"
            self.run_id = tracker.create_run(experiment_id, name, tags)
        tracker.set_tags(self.run_id, {rf.TAG_DEVICE: device})
        params = rf.trial_params(
            method=trial.method, arch=trial.arch, dataset=trial.dataset, seed=self.seed,
            method_params=vars(make_params(trial.method, trial.params)),
            train={k: trial.train[k] for k in TRAIN_FIELDS},
            data={"val_fraction": trial.study["data"]["val_fraction"], **trial.data_options},
            model=trial.model_options,
        )
        tracker.log_params(self.run_id, params)

    def _log_epoch(self) -> None:
        tracker = self.trial.tracker
        assert self.record is not None
        epoch = int(self.record["epoch"])
        if tracker is None or self.run_id is None or epoch <= self.logged:
            return  # already logged before a retry
        tracker.log_metrics(self.run_id, rf.numeric_metrics(self.record), step=epoch)
        self.logged = epoch

    def close(self) -> None:
        """The seed is done: artifacts, the status tag, and the run ends FINISHED."""
        tracker = self.trial.tracker
        if tracker is not None and self.run_id is not None and not self.closed:
            history = self.state["state"]["history"] if self.state else []
            tracker.log_text(self.run_id, table_csv(self.layers, rf.LAYER_COLUMNS), rf.LAYERS_CSV)
            tracker.log_text(self.run_id, table_csv(history), rf.HISTORY_CSV)
            tracker.finish(self.run_id, self.status)
        self.closed = True

    def fail(self, err: BaseException) -> None:
        tracker = self.trial.tracker
        if tracker is not None and self.run_id is not None and not self.closed:
            try:
                tracker.finish(self.run_id, rf.FAILED, "FAILED", error=f"{type(err).__name__}: {err}"[:500])
            except Exception:  # never hide the original error
                pass

    # -- training ----------------------------------------------------------------------------------
    def step(self) -> None:
        """Train one more epoch, resuming from the last one (bit-for-bit the continuous run)."""
        trial = self.trial
        options = dict(trial.model_options)
        if self.state is not None:
            options.pop("pretrained", None)  # the checkpoint overwrites the weights anyway
        seed_everything(self.seed)  # the initial weights depend on the seed
        model = models.build_model(trial.arch, self.data.input_shape, self.data.num_classes, options)
        method = build_method(trial.method, trial.params, self.context)
        capture = _Capture()
        result = fit(model, method, self.data, replace(self.config, epochs=self.epoch + 1),
                     callbacks=[capture], resume=self.state)
        self.record, self.state, self.layers = capture.record, capture.state, result.layers
        patience_stop = bool(self.config.patience) and (
            self.state["state"].get("epochs_above_target", 0) >= self.config.patience
        )
        if result.status == "diverged":
            self.status, self.done = "diverged", True
        elif self.epoch >= self.config.epochs or patience_stop:
            self.status, self.done = rf.FINISHED, True
        self._log_epoch()

    def checkpoint(self) -> dict[str, Any]:
        return {"seed": self.seed, "fit": self.state, "record": self.record, "layers": self.layers,
                "status": self.status, "done": self.done}

    def restore(self, saved: dict[str, Any]) -> None:
        if saved["seed"] != self.seed:
            raise ValueError(f"checkpoint is for seed {saved['seed']}, this run has seed {self.seed}")
        self.state, self.record, self.layers = saved["fit"], saved["record"], saved["layers"]
        self.status, self.done = saved["status"], saved["done"]


# -- the trial ----------------------------------------------------------------------------------


class Trial:
    def __init__(self, config: dict[str, Any], session: Session) -> None:
        spec, self.study = config["trial"], config["study"]
        self.session = session
        self.trial_id = session.trial_id
        self.method: str = spec["method"]
        self.arch: str = spec["arch"]
        self.dataset: str = spec["dataset"]
        self.seeds: list[int] = list(spec["seeds"])
        self.params: dict[str, Any] = dict(spec.get("params") or {})
        # the study's train settings with this method's overrides: what the trial uses and logs
        self.train: dict[str, Any] = {**self.study["train"], **(spec.get("train") or {})}
        self.data_options = dict((self.study["data"].get("options") or {}).get(self.dataset) or {})
        self.model_options = dict((self.study["model"].get("options") or {}).get(self.arch) or {})
        self.tracking: dict[str, Any] | None = self.study.get("tracking")
        self.tracker = Tracker(self.tracking["uri"]) if self.tracking else None
        self.hooks: dict[str, Any] = dict(self.study.get("hooks") or {})

    def run(self) -> None:
        device = choose_device(self.train.get("device", AUTO), self.session.gpu_ids())
        torch.set_num_threads(max(1, int(self.study.get("cpus_per_trial", 1))))
        saved = self.session.load_checkpoint()
        seeds: list[SeedRun] = []
        try:
            for seed in self.seeds:
                seeds.append(SeedRun(self, seed, device))
            if saved is not None:
                for run, state in zip(seeds, saved["seeds"]):
                    run.restore(state)
                if all(run.done for run in seeds):  # it had finished; say so again
                    for run in seeds:
                        run.close()
                    self.session.report(self.summary(seeds), self.checkpoint(seeds))
                    return
            while not all(run.done for run in seeds):
                for run in seeds:
                    if not run.done:
                        run.step()
                final = all(run.done for run in seeds)
                if final:  # close before the last report: Tune may stop the trial right after it
                    for run in seeds:
                        run.close()
                self.session.report(self.summary(seeds), self.checkpoint(seeds))
                self._testing_hooks(seeds, resumed=saved is not None)
        except Exception as err:
            for run in seeds:
                run.fail(err)
            raise

    def _testing_hooks(self, seeds: list[SeedRun], *, resumed: bool) -> None:
        """For tests only: ``fail_at_epoch`` (raise once, in a trial that did not start from a
        checkpoint, right after reporting that epoch) and ``sleep_after_epoch`` (seconds)."""
        fail_at = self.hooks.get("fail_at_epoch")
        if fail_at is not None and not resumed and max(r.epoch for r in seeds) == fail_at:
            raise TrialError(f"testing hook: trial {self.trial_id} fails once after epoch {fail_at}")
        if self.hooks.get("sleep_after_epoch"):
            time.sleep(float(self.hooks["sleep_after_epoch"]))

    def checkpoint(self, seeds: list[SeedRun]) -> dict[str, Any]:
        return {"version": 1, "trial_id": self.trial_id, "seeds": [run.checkpoint() for run in seeds]}

    def summary(self, seeds: list[SeedRun]) -> dict[str, Any]:
        """What Tune sees each epoch: the mean over seeds of every numeric metric of each seed's
        latest record (a seed that stopped early keeps its last one), plus bookkeeping."""
        records = [rf.numeric_metrics(run.record) for run in seeds if run.record is not None]
        keys = [k for k in records[0] if all(k in r for r in records)]
        out: dict[str, Any] = {k: sum(r[k] for r in records) / len(records) for k in keys}
        out["epoch"] = max(run.epoch for run in seeds)
        out["final"] = all(run.done for run in seeds)
        out["num_seeds"] = len(seeds)
        out["diverged_seeds"] = sum(run.status == "diverged" for run in seeds)
        if len(seeds) == 1:
            out["phase"] = seeds[0].record["phase"] if seeds[0].record else ""
            out["status"] = seeds[0].status
        return out
