"""study.trial without Ray: epoch stepping, checkpoints, retries, MLflow logging, statuses.

A fake session stands in for Ray Tune: it keeps the reports and round-trips each checkpoint
through torch.save/torch.load as Tune does through a folder.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
import torch

from study import data as data_registry
from study import models
from study.methods import METHODS, build_method
from study.settings import TrainConfig, choose_device
from study.tracking import Tracker
from study.train import fit, method_context, seed_everything
from study.trial import SeedRun, Trial, TrialError


class FakeSession:
    def __init__(self, trial_id: str = "trial_00000", checkpoint: bytes | None = None) -> None:
        self.trial_id = trial_id
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[bytes] = []
        self.last: bytes | None = checkpoint

    def gpu_ids(self) -> list[Any]:
        return []

    def load_checkpoint(self) -> dict[str, Any] | None:
        if self.last is None:
            return None
        return torch.load(io.BytesIO(self.last), weights_only=False)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.reports.append(metrics)
        self.last = buffer.getvalue()
        self.checkpoints.append(self.last)


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
def test_epoch_stepping_equals_one_continuous_run(method: str) -> None:
    """The trial trains one fit() call per epoch, resuming from the last checkpoint; for every
    registered method that must be the continuous run (it checks each method's state_dict)."""
    bundle = data_registry.load_dataset("synthetic", seed=0, shape="1x8x8", n_train=400, n_test=100)
    config = TrainConfig(epochs=3, reach_epochs=1, batch_size=64, lr=0.1, seed=5)
    context = method_context(bundle, config)

    def build() -> tuple[Any, Any]:
        seed_everything(config.seed)
        return models.build_model("lenet300", bundle.input_shape, bundle.num_classes), build_method(method, {}, context)

    model, m = build()
    continuous = fit(model, m, bundle, config).history
    state, stepped = None, []
    for epoch in range(1, config.epochs + 1):
        model, m = build()

        class Keep:
            def on_epoch_end(self, record: dict, checkpoint: Any) -> None:
                self.record, self.state = record, checkpoint()

        keep = Keep()
        fit(model, m, bundle, dataclasses.replace(config, epochs=epoch), callbacks=[keep], resume=state)
        state = keep.state
        stepped.append(keep.record)
    for a, b in zip(continuous, stepped):
        for key, value in a.items():
            if key == "epoch_seconds":
                continue
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (method, a["epoch"], key)
            else:
                assert b[key] == value, (method, a["epoch"], key)


def test_trial_logs_one_mlflow_run_with_every_epoch(trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-basic")
    config = trial_config("sensitivity-spec", {"lam": 1e-3}, [0], tracking=tracking, train={"epochs": 3})
    session = FakeSession()
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


def test_crash_once_then_retry_continues_from_the_checkpoint(trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-crash")
    config = trial_config("l1", {}, [0], tracking=tracking, hooks={"fail_at_epoch": 2}, train={"epochs": 4})
    session = FakeSession()
    with pytest.raises(TrialError):
        Trial(config, session).run()
    (run,) = _children(mlflow_uri, tracking)
    assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"

    # Ray's retry: a new trial object with the last checkpoint (epoch 2)
    Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4]  # no epoch trained twice
    (run,) = _children(mlflow_uri, tracking)  # the same MLflow run, reopened
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["study.attempts"] == "2"
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3, 4]

    # the retried trajectory is the uninterrupted one
    clean = FakeSession("other")
    Trial(trial_config("l1", {}, [0], train={"epochs": 4}), clean).run()
    assert [r["val_loss"] for r in clean.reports] == pytest.approx([r["val_loss"] for r in session.reports])


def test_retry_skips_epochs_mlflow_already_has(trial_config: Any, mlflow_uri: str) -> None:
    """A crash after logging epoch k but before its checkpoint: the retry trains epoch k again
    but does not log it twice."""
    tracking = _tracking(mlflow_uri, "trial-relog")
    config = trial_config("none", {}, [0], tracking=tracking, train={"epochs": 3})
    first = FakeSession()
    Trial(config, first).run()
    (run,) = _children(mlflow_uri, tracking)
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    # replay from the epoch-1 checkpoint, as if epochs 2-3 were logged and then the process died
    replay = FakeSession(checkpoint=first.checkpoints[0])
    Trial(config, replay).run()
    assert [r["epoch"] for r in replay.reports] == [2, 3]
    (run,) = _children(mlflow_uri, tracking)
    assert _steps(mlflow_uri, run.info.run_id) == [1, 2, 3]
    assert run.info.status == "FINISHED"


def test_diverged_trial_ends_normally_with_status_diverged(trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-diverged")
    config = trial_config("none", {}, [0], tracking=tracking, train={"epochs": 5, "lr": 1e12})
    session = FakeSession()
    Trial(config, session).run()  # no exception: the study goes on
    assert session.reports[-1]["status"] == "diverged" and session.reports[-1]["final"] is True
    assert len(session.reports) < 5
    (run,) = _children(mlflow_uri, tracking)
    assert run.data.tags["status"] == "diverged" and run.info.status == "FINISHED"


def test_several_seeds_train_in_lockstep_and_report_the_mean(trial_config: Any, mlflow_uri: str) -> None:
    tracking = _tracking(mlflow_uri, "trial-seeds")
    config = trial_config("weight-decay", {}, [0, 1], tracking=tracking, train={"epochs": 2})
    session = FakeSession("opt_00003")
    Trial(config, session).run()
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert session.reports[-1]["num_seeds"] == 2
    runs = _children(mlflow_uri, tracking)
    assert sorted(r.data.tags["study.trial_id"] for r in runs) == ["opt_00003-s0", "opt_00003-s1"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    mean = sum(r.data.metrics["val_loss"] for r in runs) / 2
    assert session.reports[-1]["val_loss"] == pytest.approx(mean)
    assert all(r.data.tags["study.tune_trial_id"] == "opt_00003" for r in runs)


def test_patience_stop_matches_the_continuous_run(trial_config: Any) -> None:
    config = trial_config("none", {}, [0], train={"epochs": 8, "reach_epochs": 1, "target_error": 0.0,
                                                  "patience": 2})
    session = FakeSession()
    Trial(config, session).run()
    bundle = data_registry.load_dataset("digits", seed=0)
    seed_everything(0)
    model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
    train = TrainConfig(epochs=8, reach_epochs=1, target_error=0.0, patience=2, batch_size=128, lr=0.1, seed=0)
    context = method_context(bundle, train)
    history = fit(model, build_method("none", {}, context), bundle, train).history
    assert len(session.reports) == len(history) < 8
    assert session.reports[-1]["final"] is True


def test_choose_device() -> None:
    assert choose_device("auto", []) == "cpu"
    assert choose_device("cpu", [0]) == "cpu"
    if not torch.cuda.is_available():
        assert choose_device("auto", [0]) == "cpu"


def test_seed_run_checkpoint_rejects_another_seed(trial_config: Any) -> None:
    trial = Trial(trial_config("none", {}, [0]), FakeSession())
    run = SeedRun(trial, 0, "cpu")
    with pytest.raises(ValueError, match="seed"):
        run.restore({"seed": 1})


def test_a_method_train_override_is_what_its_trial_uses_and_logs(tiny_study: Any, mlflow_uri: str) -> None:
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
        session = FakeSession(f"{method}_00000")
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
