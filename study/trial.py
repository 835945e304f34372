"""One Ray Tune trial: build data, model and method once per seed; step each seed's trainer one
epoch at a time; report every epoch's metrics to Tune, with a checkpoint on a schedule; log
everything to the trial's MLflow run.
(One concept over 400 lines: one Tune trial, its seeds, their checkpoints and their MLflow
runs, which must agree with each other on every resume.)

A trial trains one configuration for one seed (grid search) or for every seed of the study
(Optuna search: the seeds are never tuned, so each sampled configuration is trained once per
seed, in lockstep, and Tune sees the mean over seeds). Each seed has one
:class:`study.train.Trainer`, built once; it is restored from a checkpoint only when Tune
restarts the trial (a crash, ``study run --resume``).

The Tune config of a trial (built by :mod:`study.runner`)::

    {"trial": {"method", "arch", "dataset", "seeds": [..], "params": {..}, "train": {..}},
     "study": {"name", "config_hash", "git_commit", "stage" (search | confirm: the trial's runs'
               study.stage tag), "train": {..}, "data": {..},
               "model": {..}, "cpus_per_trial", "checkpoint": {"every", "seconds"},
               "tracking": {"uri", "experiment_id", "parent_run_id"} or None, "hooks": {..}}}

``trial.train`` holds the method's overrides of ``study.train`` (``methods.<m>.train`` in the
study file); the trial trains with, and logs as ``train.*`` params, the merged settings.

Checkpoints (:mod:`study.checkpoint`): every epoch is reported, but a checkpoint goes with the
report only on the study's schedule (``resources.checkpoint_every`` / ``checkpoint_seconds``,
the phase change, the end); checkpoints hold tensors and plain values only, load with
``weights_only=True``, and keep the one before them to fall back to.

MLflow gets every epoch's metrics, in batches: at each checkpoint (before Tune gets it), at the
end, and at least every ``MLFLOW_FLUSH_SECONDS``.

Fault tolerance: a retried or restored trial continues from its last checkpoint and re-trains
the epochs after it, bit-for-bit the same on the CPU (tests/test_study_trial.py checks this). It
finds its MLflow run by the tag ``study.trial_id`` (so it never opens a second one) and logs only
the epochs that run has not logged yet. A non-finite loss ends the trial with status
``diverged``, normally, so the rest of the study goes on.

Testing hooks (``study.hooks``, set by ``run_study(hooks=...)``, never by a study file):
``fail_at_epoch = k`` makes a trial that did not start from a checkpoint raise right after
reporting epoch k, so its retry starts from the last checkpoint before; ``sleep_after_epoch = s``
slows trials down so that a test can interrupt a study in the middle.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol

import torch

from study import data as data_registry
from study import models
from study.checkpoint import CHECKPOINT_VERSION, CheckpointError, CheckpointFolder, CheckpointSchedule
from study.faults import one_line
from study.methods import build_method, make_params
from study.preflight import check_device
from study import runformat as rf
from study.settings import AUTO, STUDY_AXES, TrainConfig, choose_device
from study.tracking import Tracker, table_csv
from study.train import Trainer, method_context, seed_everything

#: The longest a trained epoch waits for MLflow: epochs are sent in batches, at each checkpoint
#: and at least this often (one call per epoch would cost short epochs ~15 ms each).
MLFLOW_FLUSH_SECONDS = 2.0
#: The train settings a study gives its trials (the seed is the trial's own).
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in STUDY_AXES)


class TrialError(RuntimeError):
    """Raised by the testing hook ``fail_at_epoch``."""


class SetupError(RuntimeError):
    """A trial could not be set up, and a retry would fail the same way: missing or damaged
    data, a bad option or parameter, a device the worker lacks. The driver stops the study at
    the first one (study.faults) instead of retrying it."""


#: Errors of a trial's setup (data, model, method, device) that a retry cannot fix. Anything
#: else (a crash while training, MLflow trouble, a lost worker) is retried from the checkpoint.
NOT_RETRYABLE: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, TypeError)


# -- where a trial reports: Ray Tune, or a fake in tests ------------------------------------------


class Session(Protocol):
    trial_id: str

    def gpu_ids(self) -> list[Any]: ...

    def restored(self) -> ContextManager[tuple[Path, str] | None]:
        """The folder of the checkpoint to continue from, and its name for messages; or None."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Report an epoch's metrics, with the checkpoint folder or without a checkpoint."""
        ...


class TuneSession:
    """The Ray Tune side: ray.tune.report / get_checkpoint / Checkpoint (never ray.train.*)."""

    def __init__(self) -> None:
        from ray import tune

        self.trial_id = tune.get_context().get_trial_id()

    def gpu_ids(self) -> list[Any]:
        import ray

        return list(ray.get_gpu_ids())

    @contextlib.contextmanager
    def restored(self) -> Iterator[tuple[Path, str] | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder), str(checkpoint.path)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        from ray import tune

        # Tune copies the folder to its storage before report returns
        tune.report(metrics, checkpoint=None if checkpoint is None else tune.Checkpoint.from_directory(checkpoint))


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable."""
    Trial(config, TuneSession()).run()


# -- one seed -----------------------------------------------------------------------------------


class SeedRun:
    """One seed of a trial: its data, its trainer (built once), its MLflow run."""

    def __init__(self, trial: Trial, seed: int, device: str, *, resuming: bool = False) -> None:
        self.trial, self.seed = trial, seed
        study = trial.study
        data_settings = study["data"]
        self.data = data_registry.load_dataset(
            trial.dataset, root=data_settings.get("root"), val_fraction=data_settings["val_fraction"],
            seed=seed, download=data_settings.get("download", False), **trial.data_options,
        ).to(device)
        self.config = TrainConfig(**{**{k: trial.train[k] for k in TRAIN_FIELDS}, "seed": seed, "device": device})
        options = dict(trial.model_options)
        if resuming:
            options.pop("pretrained", None)  # the checkpoint overwrites the weights anyway
        seed_everything(seed)  # the initial weights depend on the seed
        model = models.build_model(trial.arch, self.data.input_shape, self.data.num_classes, options)
        method = build_method(trial.method, trial.params, method_context(self.data, self.config))
        self.trainer = Trainer(model, method, self.data, self.config)
        self.closed = False
        self.run_id: str | None = None
        self.logged = 0  # the last epoch MLflow has or will get with the next flush
        self.pending: list[dict[str, Any]] = []  # records queued for MLflow
        if trial.tracker is not None:
            self._open_run(device)

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    @property
    def done(self) -> bool:
        return self.trainer.done

    @property
    def record(self) -> dict[str, Any] | None:
        """The last epoch's record."""
        return self.trainer.history[-1] if self.trainer.history else None

    @property
    def status(self) -> str:
        if not self.trainer.done:
            return rf.RUNNING
        return rf.DIVERGED if self.trainer.status == "diverged" else rf.FINISHED

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
            tracker.set_tags(self.run_id, {rf.TAG_ATTEMPTS: str(attempts), rf.TAG_DEVICE: device})
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
                rf.TAG_DEVICE: device,
                rf.TAG_STAGE: trial.study.get("stage", rf.STAGE_SEARCH),
            }
            if trial.study.get("git_commit"):
                tags[rf.TAG_GIT_COMMIT] = trial.study["git_commit"]
            name = rf.run_name(trial.method, trial.params, self.seed, tags[rf.TAG_STAGE])
            self.run_id = tracker.create_run(experiment_id, name, tags)
        params = rf.trial_params(
            method=trial.method, arch=trial.arch, dataset=trial.dataset, seed=self.seed,
            method_params=vars(make_params(trial.method, trial.params)),
            train={k: trial.train[k] for k in TRAIN_FIELDS},
            data={"val_fraction": trial.study["data"]["val_fraction"], **trial.data_options},
            model=trial.model_options,
        )
        tracker.log_params(self.run_id, params)

    def _log_epoch(self) -> None:
        """Queue the last epoch's metrics for MLflow (:meth:`flush` sends them)."""
        record = self.record
        assert record is not None
        epoch = int(record[rf.EPOCH])
        if self.trial.tracker is None or self.run_id is None or epoch <= self.logged:
            return  # logged before a restart: re-trained bit-for-bit, so not logged twice
        self.pending.append(record)
        self.logged = epoch

    def flush(self) -> None:
        """Send the queued epochs to MLflow in one call."""
        tracker = self.trial.tracker
        if tracker is not None and self.run_id is not None and self.pending:
            tracker.log_steps(self.run_id, [(int(r[rf.EPOCH]), rf.numeric_metrics(r)) for r in self.pending])
            if rf.ARCHITECTURE in self.pending[-1]:  # a string: a tag, not a metric
                tracker.set_tags(self.run_id, {rf.ARCHITECTURE: self.pending[-1][rf.ARCHITECTURE]})
        self.pending = []

    def close(self) -> None:
        """The seed is done: artifacts, the status tag, and the run ends FINISHED."""
        tracker = self.trial.tracker
        if tracker is not None and self.run_id is not None and not self.closed:
            self.flush()
            tracker.log_text(self.run_id, table_csv(self.trainer.layers(), rf.LAYER_COLUMNS), rf.LAYERS_CSV)
            tracker.log_text(self.run_id, table_csv(self.trainer.history), rf.HISTORY_CSV)
            tracker.finish(self.run_id, self.status)
        self.closed = True

    def fail(self, err: BaseException) -> None:
        tracker = self.trial.tracker
        if tracker is not None and self.run_id is not None and not self.closed:
            try:
                self.flush()  # the epochs trained before the error are good
                tracker.finish(self.run_id, rf.FAILED, "FAILED", error=f"{type(err).__name__}: {err}"[:500])
            except Exception:  # never hide the original error
                pass

    # -- training ----------------------------------------------------------------------------------
    def step(self) -> bool:
        """Train one more epoch and log it; returns whether the phase changes after it."""
        record = self.trainer.run_epoch()
        self._log_epoch()
        return record[rf.PHASE] != self.trainer.phase

    def checkpoint(self) -> dict[str, Any]:
        return {"seed": self.seed, "trainer": self.trainer.state_dict()}

    def restore(self, saved: dict[str, Any]) -> None:
        if saved["seed"] != self.seed:
            raise ValueError(f"checkpoint is for seed {saved['seed']}, this run has seed {self.seed}")
        self.trainer.load_state_dict(saved["trainer"])


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
        self.schedule = CheckpointSchedule(**(self.study.get("checkpoint") or {}))

    def run(self) -> None:
        device = choose_device(self.train.get("device", AUTO), self.session.gpu_ids())
        torch.set_num_threads(max(1, int(self.study.get("cpus_per_trial", 1))))
        folder = CheckpointFolder()
        seeds: list[SeedRun] = []
        try:
            with self.session.restored() as restored:
                saved = folder.restore(*restored) if restored is not None else None
            for seed in self.seeds:
                seeds.append(self._seed_run(seed, device, resuming=saved is not None))
            if saved is not None:
                if len(saved["seeds"]) != len(seeds):
                    raise CheckpointError(f"the checkpoint holds {len(saved['seeds'])} seeds, this trial has "
                                          f"{len(seeds)}")
                for run, state in zip(seeds, saved["seeds"]):
                    run.restore(state)
                if all(run.done for run in seeds):  # it had finished; say so again
                    for run in seeds:
                        run.close()
                    self.session.report(self.summary(seeds), folder.path)
                    return
            last_epoch, last_time = self._epoch(seeds), time.monotonic()
            last_flush = last_time
            while not all(run.done for run in seeds):
                phase_changed = False
                for run in seeds:
                    if not run.done:
                        phase_changed |= run.step()
                final = all(run.done for run in seeds)
                epoch, now = self._epoch(seeds), time.monotonic()
                due = self.schedule.due(epoch - last_epoch, now - last_time, phase_changed=phase_changed,
                                        final=final)
                # MLflow gets every epoch up to a checkpoint before Tune gets the checkpoint, so a
                # restart (which re-trains the epochs after it) can lose no logged epoch
                if due or now - last_flush >= MLFLOW_FLUSH_SECONDS:
                    for run in seeds:
                        run.flush()
                    last_flush = now
                if final:  # close before the last report: Tune may stop the trial right after it
                    for run in seeds:
                        run.close()
                if due:
                    folder.write(self.checkpoint(seeds))
                    last_epoch, last_time = epoch, time.monotonic()
                self.session.report(self.summary(seeds), folder.path if due else None)
                self._testing_hooks(seeds, resumed=saved is not None)
        except Exception as err:
            for run in seeds:
                run.fail(err)
            raise
        except BaseException:  # Tune stopping the trial (ASHA: SystemExit in tune.report), Ctrl-C
            for run in seeds:
                with contextlib.suppress(Exception):
                    run.flush()  # its last epochs, which it will not train again
            raise
        finally:
            folder.remove()

    def _seed_run(self, seed: int, device: str, *, resuming: bool) -> SeedRun:
        """One seed's data, model, method and run; a setup error no retry can fix becomes a
        :class:`SetupError` (one line)."""
        try:
            check_device(device, "train.device")
            return SeedRun(self, seed, device, resuming=resuming)
        except NOT_RETRYABLE as err:
            raise SetupError(one_line(err)) from err

    @staticmethod
    def _epoch(seeds: list[SeedRun]) -> int:
        return max((run.epoch for run in seeds), default=0)

    def _testing_hooks(self, seeds: list[SeedRun], *, resumed: bool) -> None:
        """For tests only: ``fail_at_epoch`` (raise once, in a trial that did not start from a
        checkpoint, right after reporting that epoch) and ``sleep_after_epoch`` (seconds)."""
        fail_at = self.hooks.get("fail_at_epoch")
        if fail_at is not None and not resumed and self._epoch(seeds) == fail_at:
            raise TrialError(f"testing hook: trial {self.trial_id} fails once after epoch {fail_at}")
        if self.hooks.get("sleep_after_epoch"):
            time.sleep(float(self.hooks["sleep_after_epoch"]))

    def checkpoint(self, seeds: list[SeedRun]) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "trial_id": self.trial_id,
                "seeds": [run.checkpoint() for run in seeds]}

    def summary(self, seeds: list[SeedRun]) -> dict[str, Any]:
        """What Tune sees each epoch: the mean over seeds of every numeric metric of each seed's
        latest record (a seed that stopped early keeps its last one), plus bookkeeping."""
        records = [rf.numeric_metrics(run.record) for run in seeds if run.record is not None]
        keys = [k for k in records[0] if all(k in r for r in records)]
        out: dict[str, Any] = {k: sum(r[k] for r in records) / len(records) for k in keys}
        out["epoch"] = self._epoch(seeds)
        out["final"] = all(run.done for run in seeds)
        out["num_seeds"] = len(seeds)
        out["diverged_seeds"] = sum(run.status == rf.DIVERGED for run in seeds)
        if len(seeds) == 1:
            out["phase"] = seeds[0].record["phase"] if seeds[0].record else ""
            out["status"] = seeds[0].status
        return out
