"""study.trial without Ray: epoch stepping, scheduled checkpoints, retries, damaged checkpoints,
MLflow logging, statuses.

A fake session stands in for Ray Tune: it keeps the reports and copies each checkpoint folder
into its own storage, as Tune does; the trial itself reads the files back (weights_only=True).
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from study import data as data_registry
from study import models
from study.methods import METHODS, build_method
from study.settings import TrainConfig, choose_device
from study.tracking import Tracker
from study.train import Trainer, fit, method_context, seed_everything
from study.checkpoint import (CHECKPOINT_FILE, PREVIOUS_FILE, CheckpointError, CheckpointSchedule,
                              CheckpointWarning)
from study.trial import SeedRun, Trial, TrialError


class FakeSession:
    def __init__(self, storage: Path, trial_id: str = "trial_00000", checkpoint: Path | None = None) -> None:
        self.storage, self.trial_id = Path(tempfile.mkdtemp(dir=storage, prefix=trial_id)), trial_id
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []  # Tune's copies, oldest first
        self.checkpointed: list[int] = []  # the epochs whose report carried a checkpoint
        self.last: Path | None = checkpoint

    def gpu_ids(self) -> list[Any]:
        return []

    @contextlib.contextmanager
    def restored(self) -> Iterator[tuple[Path, str] | None]:
        yield None if self.last is None else (self.last, str(self.last))

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint is not None:
            self.last = self.storage / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint, self.last)
            self.checkpoints.append(self.last)
            self.checkpointed.append(metrics["epoch"])


@pytest.fixture
def fake(tmp_path: Path) -> Any:
    """``session(trial_id=..., checkpoint=...)`` -> a FakeSession keeping its checkpoints in tmp_path."""
    def make(trial_id: str = "trial_00000", checkpoint: Path | None = None) -> FakeSession:
        return FakeSession(tmp_path, trial_id, checkpoint)

    return make


def _every(n: int, seconds: float | None = None) -> dict[str, Any]:
    """The study constants' checkpoint schedule (resources.checkpoint_every / _seconds)."""
    return {"every": n, "seconds": seconds}


def _without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "epoch_seconds"}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Bit-for-bit equal records (NaN equals NaN), wall-clock times aside."""
    a, b = _without_time(a), _without_time(b)
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y) for x, y in
        ((a[k], b[k]) for k in a))


def _tracking(mlflow_uri: str, name: str) -> dict[str, str]:
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.experiment_id(name)
    parent = tracker.create_run(experiment_id, "parent", {"study.role": "parent"})
    return {"uri": mlflow_uri, "experiment_id": experiment_id, "parent_run_id": parent}


def _children(mlflow_uri: str, tracking: dict[str, str]) -> list[Any]:
    return Tracker(mlflow_uri).find_runs(tracking["experiment_id"], {"mlflow.parentRunId": tracking["parent_run_id"]})


def _steps(mlflow_uri: str, run_id: str, key: str = "val_error") -> list[int]:
    return [m.step for m in Tracker(mlflow_uri).client.get_metric_history(run_id, key)]


@pytest.mark.parametrize("method", list(METHODS))
def test_restored_trainer_equals_one_continuous_run(method: str) -> None:
    """A trial's trainer restored from its checkpoint (saved, loaded with weights_only=True, into
    a freshly built model, method and trainer) after every epoch, while another seed's trainer
    steps in between, is bit-for-bit the continuous run, for every registered method (the
    checkpoint holds each method's state_dict, and each trainer its own RNG stream)."""
    bundle = data_registry.load_dataset("synthetic", seed=0, shape="1x8x8", n_train=400, n_test=100)
    config = TrainConfig(epochs=3, reach_epochs=1, batch_size=64, lr=0.1, seed=5)
    other = TrainConfig(epochs=3, reach_epochs=1, batch_size=64, lr=0.1, seed=6)

    def build(config: TrainConfig) -> Trainer:
        seed_everything(config.seed)
        model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
        return Trainer(model, build_method(method, {}, method_context(bundle, config)), bundle, config)

    def plain(config: TrainConfig) -> list[dict[str, Any]]:
        seed_everything(config.seed)
        model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
        return fit(model, build_method(method, {}, method_context(bundle, config)), bundle, config).history

    continuous, continuous_other = plain(config), plain(other)
    neighbour = build(other)
    saved, stepped = None, []
    for _ in range(config.epochs):
        trainer = build(config)
        if saved is not None:
            trainer.load_state_dict(torch.load(io.BytesIO(saved), weights_only=True))
        stepped.append(trainer.run_epoch())
        neighbour.run_epoch()
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        saved = buffer.getvalue()
    assert trainer.done and trainer.stop_reason == "epochs"
    assert len(stepped) == len(continuous)
    for a, b in zip(continuous, stepped):
        assert _same(a, b), (method, a["epoch"], _without_time(a), _without_time(b))
    for a, b in zip(continuous_other, neighbour.history):
        assert _same(a, b), (method, "the other seed", a["epoch"])


def test_trial_logs_one_mlflow_run_with_every_epoch(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-basic")
    config = trial_config("sensitivity-spec", {"lam": 1e-3}, [0], tracking=tracking, train={"epochs": 3})
    session = fake()
    Trial(config, session).run()

    assert [r["epoch"] for r in session.reports] == [1, 2, 3]
    assert [r["final"] for r in session.reports] == [False, False, True]
    assert session.reports[-1]["status"] == "finished"
    (run,) = _children(mlflow_uri, tracking)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["status"] == "finished" and tags["study.role"] == "trial"
    assert tags["study.trial_id"] == "trial_00000"
    assert params["method"] == "sensitivity-spec" and params["seed"] == "0" and params["arch"] == "lenet300"
    assert float(params["lam"]) == 1e-3 and "threshold" in params and params["train.epochs"] == "3"
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    for key in ("remaining_pct.fc1", "phase_index", "compression", "test_loss", "sens.fc1.q50", "sens.fc2.frac_ge1"):
        assert key in metrics, key
    client = Tracker(mlflow_uri).client
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"layers.csv", "history.csv"}
    layers = client.download_artifacts(run.info.run_id, "layers.csv")
    lines = open(layers).read().splitlines()
    assert lines[0] == "layer,total,nonzero,bias_total,bias_nonzero,remaining_pct" and len(lines) == 4


def test_crash_once_then_retry_continues_from_the_checkpoint(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    """The failure comes on a checkpoint epoch (every 2 epochs): nothing is trained twice."""
    tracking = _tracking(mlflow_uri, "trial-crash")
    config = trial_config("l1", {}, [0], tracking=tracking, hooks={"fail_at_epoch": 3}, train={"epochs": 4},
                          resources={"checkpoint_every": 2})
    session = fake()
    with pytest.raises(TrialError):
        Trial(config, session).run()
    (run,) = _children(mlflow_uri, tracking)
    assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"

    # Ray's retry: a new trial object with the last checkpoint (epoch 3)
    assert session.checkpointed == [1, 3]  # the phase change (reach_epochs=1), then every 2 epochs
    Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4]  # no epoch trained twice
    (run,) = _children(mlflow_uri, tracking)  # the same MLflow run, reopened
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["study.attempts"] == "2"
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3, 4]

    # the retried trajectory is the uninterrupted one
    clean = fake("other")
    Trial(trial_config("l1", {}, [0], train={"epochs": 4}), clean).run()
    assert [r["val_loss"] for r in clean.reports] == pytest.approx([r["val_loss"] for r in session.reports])


@pytest.mark.parametrize("method", ["l1", "sparse-vd"])  # sparse-vd draws noise every step
def test_crash_between_checkpoints_retrains_the_epochs_after_the_last_one(
        fake: Any, trial_config: Any, mlflow_uri: str, method: str) -> None:
    """Checkpoints every 3 epochs, a crash after epoch 3: the retry continues from the epoch-1
    checkpoint (the phase change), re-trains epochs 2-3 bit-for-bit, logs neither twice, and
    the MLflow history is the uninterrupted run's."""
    tracking = _tracking(mlflow_uri, f"trial-crash-between-{method}")
    fields = dict(train={"epochs": 6}, resources={"checkpoint_every": 3})
    config = trial_config(method, {}, [0], tracking=tracking, hooks={"fail_at_epoch": 3}, **fields)
    session = fake()
    with pytest.raises(TrialError):
        Trial(config, session).run()
    assert session.checkpointed == [1]
    Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 2, 3, 4, 5, 6]
    assert session.checkpointed == [1, 4, 6]
    first, again = session.reports[1:3], session.reports[3:5]
    assert all(_same(a, b) for a, b in zip(first, again))  # bit-for-bit: skipping their logging is honest

    (run,) = _children(mlflow_uri, tracking)
    assert run.info.status == "FINISHED" and run.data.tags["study.attempts"] == "2"
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3, 4, 5, 6]
    clean = fake("clean")
    Trial(trial_config(method, {}, [0], **fields), clean).run()
    client = Tracker(mlflow_uri).client
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert logged == [r["val_loss"] for r in clean.reports]
    history = open(client.download_artifacts(run.info.run_id, "history.csv")).read().splitlines()
    assert len(history) == 1 + 6  # the header and every epoch once


def test_checkpoints_follow_the_schedule(fake: Any, trial_config: Any) -> None:
    """Every epoch is reported; checkpoints come every n epochs, at the phase change and at the end."""
    session = fake()
    Trial(trial_config("none", {}, [0], train={"epochs": 9, "reach_epochs": 2},
                       resources={"checkpoint_every": 3}), session).run()
    assert [r["epoch"] for r in session.reports] == list(range(1, 10))
    assert session.checkpointed == [2, 5, 8, 9]  # phase change at 2, then 3 epochs apart, the end
    # by time only: a tiny interval checkpoints every epoch
    session = fake("by-time")
    config = trial_config("none", {}, [0], train={"epochs": 3}, resources={"checkpoint_every": 0})
    config["study"]["checkpoint"]["seconds"] = 1e-9
    Trial(config, session).run()
    assert session.checkpointed == [1, 2, 3]


def test_mlflow_has_every_epoch_up_to_a_checkpoint_before_tune_gets_it(
        fake: Any, trial_config: Any, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs go to MLflow in batches (at checkpoints, at the end, and every
    MLFLOW_FLUSH_SECONDS), never later than the checkpoint that covers them: a trial killed
    after a checkpoint, with no chance to flush, re-trains only epochs MLflow may lack."""
    tracking = _tracking(mlflow_uri, "trial-flush")
    session = fake()
    seen: dict[int, list[int]] = {}
    report = session.report

    def check(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if checkpoint is not None:
            (run,) = _children(mlflow_uri, tracking)
            seen[metrics["epoch"]] = _steps(mlflow_uri, run.info.run_id)
        report(metrics, checkpoint)

    session.report = check  # type: ignore[method-assign]
    calls: list[int] = []
    log_steps = Tracker.log_steps
    monkeypatch.setattr(Tracker, "log_steps", lambda self, run_id, steps: calls.append(1) or log_steps(
        self, run_id, list(steps)))
    monkeypatch.setattr("study.trial.MLFLOW_FLUSH_SECONDS", 3600.0)
    Trial(trial_config("none", {}, [0], tracking=tracking, train={"epochs": 7},
                       resources={"checkpoint_every": 3}), session).run()
    assert seen == {1: [1], 4: [1, 2, 3, 4], 7: list(range(1, 8))}
    assert len(calls) == 3  # one call per checkpoint, not one per epoch


def test_a_trial_stopped_by_tune_sends_its_queued_epochs(
        fake: Any, trial_config: Any, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune stops a trial (ASHA) by raising SystemExit in tune.report; the epochs MLflow has not
    got yet go out before the trial ends, since a stopped trial is never trained again."""
    tracking = _tracking(mlflow_uri, "trial-stopped")
    session = fake()
    report = session.report

    def stop_at_3(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        report(metrics, checkpoint)
        if metrics["epoch"] == 3:
            raise SystemExit(0)  # what ray.tune.report does once Tune has decided to stop the trial

    session.report = stop_at_3  # type: ignore[method-assign]
    monkeypatch.setattr("study.trial.MLFLOW_FLUSH_SECONDS", 3600.0)
    with pytest.raises(SystemExit):
        Trial(trial_config("none", {}, [0], tracking=tracking, train={"epochs": 6}), session).run()
    assert session.checkpointed == [1]
    (run,) = _children(mlflow_uri, tracking)
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    assert run.data.tags["status"] == "running"  # the driver's callback marks it pruned


def test_checkpoint_schedule() -> None:
    schedule = CheckpointSchedule(every=4, seconds=60.0)
    assert not schedule.due(3, 59.0, phase_changed=False, final=False)
    assert schedule.due(4, 0.0, phase_changed=False, final=False)
    assert schedule.due(1, 60.0, phase_changed=False, final=False)
    assert schedule.due(1, 0.0, phase_changed=True, final=False)
    assert schedule.due(1, 0.0, phase_changed=False, final=True)
    assert not CheckpointSchedule(every=0, seconds=None).due(100, 1e6, phase_changed=False, final=False)


def _crash_after_two_checkpoints(fake: Any, trial_config: Any, mlflow_uri: str, name: str) -> tuple[Any, Any]:
    """A trial with checkpoints at epochs 1 and 3 (every 2) that crashes after epoch 4."""
    tracking = _tracking(mlflow_uri, name)
    config = trial_config("l1", {}, [0], tracking=tracking, hooks={"fail_at_epoch": 4}, train={"epochs": 5},
                          resources={"checkpoint_every": 2})
    session = fake()
    with pytest.raises(TrialError):
        Trial(config, session).run()
    assert session.checkpointed == [1, 3]
    return config, session


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(
        fake: Any, trial_config: Any, mlflow_uri: str, damage: str) -> None:
    config, session = _crash_after_two_checkpoints(fake, trial_config, mlflow_uri, f"trial-damaged-{damage}")
    newest = session.last / CHECKPOINT_FILE
    assert (session.last / PREVIOUS_FILE).is_file()
    if damage == "garbage":
        newest.write_bytes(b"this is not a checkpoint" * 100)
    else:
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(CheckpointWarning, match=rf"{newest}.*continuing from the checkpoint before it"):
        Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4, 2, 3, 4, 5]  # from epoch 1, not 3
    assert all(_same(a, b) for a, b in zip(session.reports[1:4], session.reports[4:7]))
    tracking = config["study"]["tracking"]
    (run,) = _children(mlflow_uri, tracking)
    assert run.info.status == "FINISHED" and _steps(mlflow_uri, run.info.run_id) == [1, 2, 3, 4, 5]
    client = Tracker(mlflow_uri).client
    history = open(client.download_artifacts(run.info.run_id, "history.csv")).read().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4", "5"]


def test_unreadable_checkpoints_stop_the_trial_with_one_line(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    config, session = _crash_after_two_checkpoints(fake, trial_config, mlflow_uri, "trial-unreadable")
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE):
        (session.last / name).write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError) as caught:
        Trial(config, session).run()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{session.last}/{CHECKPOINT_FILE}" in message and f"{session.last}/{PREVIOUS_FILE}" in message


def test_a_checkpoint_of_another_version_is_refused_with_one_line(fake: Any, trial_config: Any, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save({"version": 1, "seeds": []}, folder / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match=rf"{folder}/{CHECKPOINT_FILE} is not a trial checkpoint of version 2 "
                                              r"\(found version 1;"):
        Trial(trial_config("none", {}, [0]), fake(checkpoint=folder)).run()


class _Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_runs_no_code(fake: Any, trial_config: Any, tmp_path: Path) -> None:
    """Checkpoints load with weights_only=True: a pickle that would run code is refused."""
    folder, marker = tmp_path / "crafted", tmp_path / "ran"
    folder.mkdir()
    torch.save({"version": 2, "seeds": [_Payload(marker)]}, folder / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match=rf"cannot read the trial checkpoint {folder}/{CHECKPOINT_FILE}"):
        Trial(trial_config("none", {}, [0]), fake(checkpoint=folder)).run()
    assert not marker.exists()
    torch.load(folder / CHECKPOINT_FILE, weights_only=False)  # the payload is real: loaded unsafely it runs
    assert marker.exists()


def test_retry_skips_epochs_mlflow_already_has(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    """A crash after logging epoch k but before its checkpoint: the retry trains epoch k again
    but does not log it twice."""
    tracking = _tracking(mlflow_uri, "trial-relog")
    config = trial_config("none", {}, [0], tracking=tracking, train={"epochs": 3})
    first = fake()
    Trial(config, first).run()
    (run,) = _children(mlflow_uri, tracking)
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    # replay from the epoch-1 checkpoint, as if epochs 2-3 were logged and then the process died
    replay = fake(checkpoint=first.checkpoints[0])
    Trial(config, replay).run()
    assert [r["epoch"] for r in replay.reports] == [2, 3]
    (run,) = _children(mlflow_uri, tracking)
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    assert run.info.status == "FINISHED"


def test_diverged_trial_ends_normally_with_status_diverged(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-diverged")
    config = trial_config("none", {}, [0], tracking=tracking, train={"epochs": 5, "lr": 1e12})
    session = fake()
    Trial(config, session).run()  # no exception: the study goes on
    assert session.reports[-1]["status"] == "diverged" and session.reports[-1]["final"] is True
    assert len(session.reports) < 5
    (run,) = _children(mlflow_uri, tracking)
    assert run.data.tags["status"] == "diverged" and run.info.status == "FINISHED"


def test_several_seeds_train_in_lockstep_and_report_the_mean(fake: Any, trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-seeds")
    config = trial_config("weight-decay", {}, [0, 1], tracking=tracking, train={"epochs": 2})
    session = fake("opt_00003")
    Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert session.reports[-1]["num_seeds"] == 2
    runs = _children(mlflow_uri, tracking)
    assert sorted(r.data.tags["study.trial_id"] for r in runs) == ["opt_00003-s0", "opt_00003-s1"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    mean = sum(r.data.metrics["val_loss"] for r in runs) / 2
    assert session.reports[-1]["val_loss"] == pytest.approx(mean)
    assert all(r.data.tags["study.tune_trial_id"] == "opt_00003" for r in runs)


def test_patience_stop_matches_the_continuous_run(fake: Any, trial_config: Any) -> None:
    config = trial_config("none", {}, [0], train={"epochs": 8, "reach_epochs": 1, "target_error": 0.0,
                                                  "patience": 2})
    session = fake()
    Trial(config, session).run()
    bundle = data_registry.load_dataset("digits", seed=0)
    seed_everything(0)
    model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
    train = TrainConfig(epochs=8, reach_epochs=1, target_error=0.0, patience=2, batch_size=128, lr=0.1, seed=0)
    context = method_context(bundle, train)
    history = fit(model, build_method("none", {}, context), bundle, train).history
    assert len(session.reports) == len(history) < 8
    assert session.reports[-1]["final"] is True
    assert session.checkpointed == [1, len(history)]  # the phase change and the end


def test_choose_device() -> None:
    assert choose_device("auto", []) == "cpu"
    assert choose_device("cpu", [0]) == "cpu"
    if not torch.cuda.is_available():
        assert choose_device("auto", [0]) == "cpu"


def test_seed_run_checkpoint_rejects_another_seed(fake: Any, trial_config: Any) -> None:
    trial = Trial(trial_config("none", {}, [0]), fake())
    run = SeedRun(trial, 0, "cpu")
    with pytest.raises(ValueError, match="seed"):
        run.restore({"seed": 1})


def test_a_method_train_override_is_what_its_trial_uses_and_logs(fake: Any, tiny_study: Any, mlflow_uri: str) -> None:
    """``methods.<m>.train`` reaches that method's trials only: their TrainConfig and their
    ``train.*`` params (so the analysis, which groups runs by params, tells them apart)."""
    from study.plan import grid_trials
    from study.runner import _study_constants
    from study.search import OptunaSpace

    config = tiny_study(methods={"none": {}, "sparse-vd": {"warmup_epochs": 1, "train": {"optimizer": "adam",
                                                                                          "lr": 1e-3}}})
    tracking = _tracking(mlflow_uri, "trial-train-override")
    study = _study_constants(config, tracking, None, None)
    specs = {t.method: t for t in grid_trials(config)}
    for method in ("none", "sparse-vd"):
        trial_config = {"trial": specs[method].as_dict(), "study": study}
        session = fake(f"{method}_00000")
        trial = Trial(trial_config, session)
        expected = dict(optimizer="adam", lr=1e-3) if method == "sparse-vd" else dict(optimizer="sgd", lr=0.1)
        assert SeedRun(trial, 0, "cpu").config == TrainConfig(epochs=2, reach_epochs=1, batch_size=128, seed=0,
                                                              device="cpu", **expected)
        trial.run()
        assert session.reports[-1]["status"] == "finished"
    runs = {r.data.params["method"]: r.data.params for r in _children(mlflow_uri, tracking)}
    assert (runs["sparse-vd"]["train.optimizer"], float(runs["sparse-vd"]["train.lr"])) == ("adam", 1e-3)
    assert (runs["none"]["train.optimizer"], float(runs["none"]["train.lr"])) == ("sgd", 0.1)
    assert runs["sparse-vd"]["train.epochs"] == runs["none"]["train.epochs"] == "2"  # not overridden

    # an Optuna search passes the same fixed overrides (the method is the only sampled choice here)
    import optuna

    space = OptunaSpace(tiny_study(methods=config.methods, search={"kind": "optuna"}))
    assert space(optuna.trial.FixedTrial({"method": "sparse-vd"}))["trial"]["train"] == {"optimizer": "adam",
                                                                                         "lr": 1e-3}
    assert space(optuna.trial.FixedTrial({"method": "none"}))["trial"]["train"] == {}
