"""Whole studies on an in-process Ray (one session for the file): a grid study end to end,
a crashed trial retried from its checkpoint, and an interrupted study resumed."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from study.runner import read_state, run_study
from study.tracking import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _runs(config: Any) -> tuple[list[Any], list[Any]]:
    tracker = Tracker(config.resolved_tracking_uri)
    experiment = tracker.client.get_experiment_by_name(config.experiment_name)
    runs = tracker.client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("study.role") == "trial"]
    return parents, children


def _steps(config: Any, run_id: str, key: str = "val_error") -> list[int]:
    client = Tracker(config.resolved_tracking_uri).client
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_grid_study_end_to_end(ray_session: Any, tiny_study: Any) -> None:
    config = tiny_study("grid", methods={"none": {}, "l1": {"lam": [1e-4, 1e-3]}}, seeds=[0, 1])
    outcome = run_study(config, source_text="name: grid\n")
    assert outcome.complete
    assert outcome.statuses == {"finished": 6}

    parents, children = _runs(config)
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.info.run_id == outcome.parent_run_id
    assert parent.data.tags["study.name"] == "grid"
    assert parent.data.params["study.config_hash"] == config.config_hash()
    client = Tracker(config.resolved_tracking_uri).client
    assert {"study.yaml", "study.source.yaml"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}

    assert len(children) == 6
    assert {(r.data.params["method"], r.data.params.get("lam"), r.data.params["seed"]) for r in children} == {
        ("none", None, "0"), ("none", None, "1"),
        ("l1", "0.0001", "0"), ("l1", "0.0001", "1"), ("l1", "0.001", "0"), ("l1", "0.001", "1"),
    }
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert _steps(config, run.info.run_id) == [1, 2]
        assert {"remaining_pct.fc1", "compression", "phase_index", "test_loss"} <= set(run.data.metrics)
    assert len({r.data.tags["study.trial_id"] for r in children}) == 6
    (entry,) = read_state(config.output_path)["runs"]
    assert entry["complete"] and entry["parent_run_id"] == parent.info.run_id

    # ... and the analysis side reports on this real study.
    from study import cli

    out = config.output_path / "report"
    assert cli.main(["report", config.experiment_name, "--tracking-uri", config.resolved_tracking_uri,
                     "--out", str(out), "--target-error", "100"]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert list((out / "figures").glob("pareto*.png")) and list((out / "figures").glob("pareto*.pdf"))
    assert list((out / "figures").glob("layer_profile*.png"))
    (table,) = (out / "tables").glob("table_lenet300_digits.md")
    text = table.read_text()
    assert "| L1 | this study |" in text and "| None (unpruned) | this study |" in text


def test_crashed_trial_is_retried_from_its_checkpoint(ray_session: Any, tiny_study: Any) -> None:
    # checkpoints every 2 epochs: at epoch 2 (also the phase change), where the trial crashes, and at 3
    config = tiny_study("crash", methods={"l1": {}}, train={"epochs": 3, "reach_epochs": 2},
                        resources={"checkpoint_every": 2})
    outcome = run_study(config, hooks={"fail_at_epoch": 2})
    assert outcome.complete and outcome.statuses == {"finished": 1}
    _, (run,) = _runs(config)
    assert run.data.tags["study.attempts"] == "2"  # it did crash, and the retry reused the run
    assert run.info.status == "FINISHED"
    assert _steps(config, run.info.run_id) == [1, 2, 3]
    # Tune saw epochs 1, 2 then 3: the retry started from the epoch-2 checkpoint, not from scratch
    (trial_dir,) = [p for p in Path(outcome.tune_path).iterdir() if p.is_dir() and p.name.startswith("l1-")]
    reported = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
    assert reported == [1, 2, 3]


def test_crash_between_checkpoints_retrains_without_logging_twice(ray_session: Any, tiny_study: Any) -> None:
    """Checkpoints at epoch 1 (the phase change) and at the end (every 10 epochs: the default);
    a crash after epoch 3: the retry continues from epoch 1 and re-trains epochs 2 and 3. Tune
    rolls its iteration and its results back to the checkpoint, so both Tune and MLflow hold
    each epoch once: MLflow the first attempt's values, Tune the retry's, which are the same."""
    config = tiny_study("crash-between", methods={"l1": {}}, train={"epochs": 4})
    assert config.resources.checkpoint_every > 3
    outcome = run_study(config, hooks={"fail_at_epoch": 3})
    assert outcome.complete and outcome.statuses == {"finished": 1}
    _, (run,) = _runs(config)
    assert run.data.tags["study.attempts"] == "2" and run.info.status == "FINISHED"
    assert _steps(config, run.info.run_id) == [1, 2, 3, 4]
    (trial_dir,) = [p for p in Path(outcome.tune_path).iterdir() if p.is_dir() and p.name.startswith("l1-")]
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [r["training_iteration"] for r in results] == [1, 2, 3, 4]
    client = Tracker(config.resolved_tracking_uri).client
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert logged == [r["val_loss"] for r in results]  # epochs 2 and 3 re-trained bit-for-bit


def test_interrupted_study_resumes_without_duplicate_runs(ray_session: Any, tiny_study: Any) -> None:
    config = tiny_study("resume", methods={"none": {}, "l1": {}}, seeds=[0, 1], train={"epochs": 4},
                        resources={"max_concurrent_trials": 1})
    tracker = Tracker(config.resolved_tracking_uri)
    experiment_id = tracker.experiment_id(config.experiment_name)

    def interrupt_mid_trial() -> None:
        # Ctrl-C for Tune (SIGUSR1 works the same): once some trial has logged 2 epochs
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = tracker.find_runs(experiment_id, {"study.role": "trial"})
            if any(r.data.metrics.get("epoch", 0) >= 2 for r in runs):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=interrupt_mid_trial, daemon=True)
    watcher.start()
    first = run_study(config, hooks={"sleep_after_epoch": 0.5})
    watcher.join(timeout=5)
    assert not first.complete
    parents, children = _runs(config)
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert 1 <= len(children) < 4
    assert all(r.info.status != "RUNNING" for r in children)

    second = run_study(config, resume=True)
    assert second.complete and second.parent_run_id == first.parent_run_id
    assert second.statuses == {"finished": 4}
    parents, children = _runs(config)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4  # no duplicate, none lost
    assert len({r.data.tags["study.trial_id"] for r in children}) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert _steps(config, run.info.run_id) == [1, 2, 3, 4]  # every epoch logged exactly once
    assert len(read_state(config.output_path)["runs"]) == 1


def test_resume_needs_a_previous_run(tiny_study: Any) -> None:
    with pytest.raises(ValueError, match="nothing to resume"):
        run_study(tiny_study("never-ran"), resume=True)
