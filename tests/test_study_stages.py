"""Tune, then confirm: which configuration each method's confirm stage retrains (on a synthetic
study in MLflow), and whole studies on an in-process Ray with equal budgets and a confirm stage:
both stages run under one parent run with their tags and seeds, the report compares the confirm
runs at matched error, and a study interrupted in either stage resumes without duplicated runs."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

from study import runformat as rf
from study.runner import read_state, run_study, write_state
from study.schema import study_from_dict
from study.stages import choose_configurations
from study.tracking import Tracker

import fake_study  # noqa: E402  (tests/)


@pytest.mark.slow
def test_the_confirm_stage_retrains_the_configuration_the_report_selects(tmp_path: Path) -> None:
    """The chosen configuration is the one at the method's operating point in the report's
    table, typed as the method declares it; a method that never meets the target (l0 here)
    gets its lowest-validation-error configuration and says so."""
    from analysis.report import make_report
    from analysis.runs import load_runs

    uri = rf.sqlite_uri(tmp_path / "mlflow.db")
    ids = fake_study.make_fake_study(uri, "fake", trials=fake_study.MATCHED_TRIALS, running=False,
                                     target_error=2.0)
    config = study_from_dict(fake_study.study_dict("fake", 6, 2, "lenet300", "mnist", 2.0, fake_study.MATCHED_TRIALS))
    messages: list[str] = []
    choices = {c.spec.method: c for c in choose_configurations(config, uri, ids["parent"], messages.append)}
    assert set(choices) == set(config.methods) and not messages

    out = make_report(load_runs(uri, "fake"), tmp_path / "report", study_target=2.0, literature=False,
                      log_artifacts=False)
    table = pd.read_csv(out / "tables" / "operating_points.csv").set_index("method")
    for method, choice in choices.items():
        assert choice.met_target == bool(table.loc[method, "met_target"]), method
        assert choice.target == 2.0
        if choice.met_target:
            assert choice.config == table.loc[method, "config"], method
        assert (choice.spec.arch, choice.spec.dataset, choice.spec.seeds) == ("lenet300", "mnist", [0, 1])
    assert not choices["l0"].met_target and "no configuration met the target 2%" in choices["l0"].describe()
    assert choices["l0"].spec.params == {"lam": 1e-4}
    spec = choices["sensitivity-spec"].spec.params
    assert spec in ({"lam": 1e-5, "threshold": 1e-3}, {"lam": 1e-4, "threshold": 1e-3})
    assert all(isinstance(v, float) for v in spec.values())
    assert choices["none"].spec.params == {}


# -- whole studies on Ray ------------------------------------------------------------------------


def _children(config: Any) -> list[Any]:
    tracker = Tracker(config.resolved_tracking_uri)
    experiment = tracker.client.get_experiment_by_name(config.experiment_name)
    runs = tracker.client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(rf.TAG_ROLE) == rf.ROLE_TRIAL]


def _steps(config: Any, run_id: str) -> list[int]:
    client = Tracker(config.resolved_tracking_uri).client
    return [m.step for m in client.get_metric_history(run_id, rf.VAL_ERROR)]


def _interrupt_when(config: Any, stage: str, epoch: int) -> threading.Thread:
    """Ctrl-C for Tune (SIGUSR1 works the same) once a run of ``stage`` has logged ``epoch``."""
    tracker = Tracker(config.resolved_tracking_uri)
    experiment_id = tracker.experiment_id(config.experiment_name)

    def watch() -> None:
        deadline = time.time() + 200
        while time.time() < deadline:
            runs = tracker.find_runs(experiment_id, {rf.TAG_ROLE: rf.ROLE_TRIAL, rf.TAG_STAGE: stage})
            if any(r.data.metrics.get(rf.EPOCH, 0) >= epoch for r in runs):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def _config(tiny_study: Callable[..., Any], name: str, epochs: int = 3, **fields: Any) -> Any:
    """Equal budgets of 2 for decay and sensitivity-spec (none is exempt), then a confirm stage;
    target 100 %, so every point meets it and the highest compression wins: λ = 5e-2."""
    return tiny_study(
        name, methods={"none": {}, "decay": {"lam": [1e-4, 5e-2], "threshold": 2e-2},
                       "sensitivity-spec": {"lam": [1e-4, 5e-2], "threshold": 2e-2}},
        search={"budget_per_method": 2}, train={"epochs": epochs, "reach_epochs": 1, "target_error": 100.0},
        **fields)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_study_interrupted_in_its_search_resumes_it_then_confirms(ray_session: Any, tiny_study: Any) -> None:
    config = _config(tiny_study, "stages", seeds=[0], confirm={"seeds": [2, 3]},
                     resources={"max_concurrent_trials": 1})
    watcher = _interrupt_when(config, rf.STAGE_SEARCH, 2)
    first = run_study(config, hooks={"sleep_after_epoch": 0.3})
    watcher.join(timeout=5)
    assert not first.complete and first.stage == rf.STAGE_SEARCH
    (entry,) = read_state(config.output_path)["runs"]
    assert entry["stage"] == rf.STAGE_SEARCH and not entry.get("chosen")
    assert all(r.data.tags[rf.TAG_STAGE] == rf.STAGE_SEARCH for r in _children(config))

    second = run_study(config, resume=True)
    assert second.complete and second.stage == rf.STAGE_CONFIRM and second.parent_run_id == first.parent_run_id
    children = _children(config)
    search = [r for r in children if r.data.tags[rf.TAG_STAGE] == rf.STAGE_SEARCH]
    confirm = [r for r in children if r.data.tags[rf.TAG_STAGE] == rf.STAGE_CONFIRM]
    assert len(search) == 1 + 2 * 2 and len(confirm) == 3 * 2  # none exempt; 3 methods x 2 fresh seeds
    assert len({r.data.tags[rf.TAG_TRIAL_ID] for r in children}) == len(children)
    for run in children:
        assert run.data.tags[rf.TAG_PARENT_RUN] == first.parent_run_id and run.data.tags["status"] == "finished"
        assert _steps(config, run.info.run_id) == [1, 2, 3]
    assert {r.data.params["seed"] for r in search} == {"0"}
    assert {(r.data.params["method"], r.data.params.get("lam"), r.data.params["seed"]) for r in confirm} == {
        (m, lam, s) for m, lam in (("none", None), ("decay", "0.05"), ("sensitivity-spec", "0.05"))
        for s in ("2", "3")}
    (entry,) = read_state(config.output_path)["runs"]
    assert entry["complete"] and entry["stage"] == rf.STAGE_CONFIRM and entry["confirm_seeds"] == [2, 3]
    assert {c["trial"]["method"]: c["trial"]["params"] for c in entry["chosen"]} == {
        "none": {}, "decay": {"lam": 0.05, "threshold": 0.02}, "sensitivity-spec": {"lam": 0.05, "threshold": 0.02}}
    assert all(c["met_target"] for c in entry["chosen"])

    # the report compares the confirm runs at matched error, against decay
    from study import cli

    out = config.output_path / "report"
    assert cli.main(["report", config.experiment_name, "--tracking-uri", config.resolved_tracking_uri,
                     "--out", str(out)]) == 0
    matched = (out / "tables" / "matched_lenet300_digits.md").read_text()
    assert "| sensitivity-spec | confirm |" in matched and "| decay | confirm |" in matched
    assert "vs decay" in matched
    assert "sensitivity-spec reaches" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_study_interrupted_in_its_confirm_stage_resumes_without_duplicate_runs(
        ray_session: Any, tiny_study: Any) -> None:
    config = _config(tiny_study, "confirm-resume", seeds=[0], confirm={"seeds": [1, 2]},
                     resources={"max_concurrent_trials": 1})
    watcher = _interrupt_when(config, rf.STAGE_CONFIRM, 2)
    first = run_study(config, hooks={"sleep_after_epoch": 0.3})
    watcher.join(timeout=5)
    assert not first.complete and first.stage == rf.STAGE_CONFIRM
    (entry,) = read_state(config.output_path)["runs"]
    assert entry["stage"] == rf.STAGE_CONFIRM and not entry["complete"]
    before = _children(config)
    assert len([r for r in before if r.data.tags[rf.TAG_STAGE] == rf.STAGE_SEARCH]) == 5
    assert 1 <= len([r for r in before if r.data.tags[rf.TAG_STAGE] == rf.STAGE_CONFIRM]) < 6
    assert all(r.info.status != "RUNNING" for r in before)

    second = run_study(config, resume=True)
    assert second.complete and second.parent_run_id == first.parent_run_id
    assert second.statuses == {"finished": 5 + 6}
    children = _children(config)
    confirm = [r for r in children if r.data.tags[rf.TAG_STAGE] == rf.STAGE_CONFIRM]
    assert len(children) == 11 and len(confirm) == 6  # the search was not run again, no confirm run twice
    assert len({r.data.tags[rf.TAG_TRIAL_ID] for r in children}) == 11
    assert {(r.data.params["method"], r.data.params["seed"]) for r in confirm} == {
        (m, s) for m in ("none", "decay", "sensitivity-spec") for s in ("1", "2")}
    for run in children:
        assert run.info.status == "FINISHED"
        assert _steps(config, run.info.run_id) == [1, 2, 3]  # every epoch logged exactly once
    (entry,) = read_state(config.output_path)["runs"]
    assert entry["complete"]

    # stopped after the confirm stage began but before Tune saved its state: the confirm runs
    # Tune cannot continue are deleted and the stage starts again, still one run per trial
    shutil.rmtree(Path(second.confirm_tune_path))
    write_state(config.output_path, {"runs": [{**entry, "complete": False}]})
    third = run_study(config, resume=True)
    assert third.complete and third.statuses == {"finished": 5 + 6}
    again = _children(config)
    assert len(again) == 11 and {r.info.run_id for r in again} >= {r.info.run_id for r in children if
                                                                    r.data.tags[rf.TAG_STAGE] == rf.STAGE_SEARCH}
    assert not {r.info.run_id for r in again} & {r.info.run_id for r in confirm}
