"""Optuna searches: the define-by-run space, pruned vs complete trials, and a tiny
multi-objective (NSGA-II) study with ASHA on Ray, whose Optuna study is read back afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from study.runner import load_optuna_study, run_study
from study.search import OptunaSpace, StudyOptunaSearch, make_searcher
from study.tracking import Tracker

OBJECTIVES = [{"metric": "val_error", "mode": "min"}, {"metric": "compression", "mode": "max"}]


def _search(tiny_study: Any, **fields: Any) -> Any:
    return tiny_study("opt", search={"kind": "optuna", "sampler": "nsga2", "num_samples": 4, "objectives": OBJECTIVES,
                                     "population_size": 2}, **fields)


def test_space_samples_a_method_then_its_own_parameters(tiny_study: Any) -> None:
    config = _search(tiny_study, seeds=[3, 4], methods={
        "sensitivity-unspec": {"lam": {"low": 1e-5, "high": 1e-2, "log": True}, "threshold": [1e-3, 1e-2]},
        "magnitude": {"rounds": {"low": 1, "high": 4}, "quality": 1.5},
    })
    space = OptunaSpace(config)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        spec = space(trial)["trial"]
        seen.add(spec["method"])
        assert spec["seeds"] == [3, 4] and spec["dataset"] == "digits" and spec["arch"] == "lenet300"
        if spec["method"] == "sensitivity-unspec":
            assert 1e-5 <= spec["params"]["lam"] <= 1e-2 and spec["params"]["threshold"] in (1e-3, 1e-2)
            assert set(trial.params) == {"method", "sensitivity-unspec.lam", "sensitivity-unspec.threshold"}
        else:
            assert spec["params"]["quality"] == 1.5 and spec["params"]["rounds"] in (1, 2, 3, 4)
            assert isinstance(spec["params"]["rounds"], int)
        study.tell(trial, [1.0, 1.0])
    assert seen == {"sensitivity-unspec", "magnitude"}


def test_trials_stopped_early_are_pruned_not_complete() -> None:
    search = StudyOptunaSearch(
        space=lambda t: {"trial": {"x": t.suggest_float("x", 0, 1)}},
        metric=["val_error", "compression"], mode=["min", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", result={"val_error": 5.0, "compression": 2.0, "epoch": 3, "final": True})
    search.on_trial_complete("b", result={"val_error": 9.0, "compression": 1.5, "epoch": 1, "final": False})
    a, b = search._ot_study.trials
    assert a.state == TrialState.COMPLETE and a.values == [5.0, 2.0]
    assert b.state == TrialState.PRUNED and b.values is None
    assert b.user_attrs["last_val_error"] == 9.0 and b.user_attrs["tune_trial_id"] == "b"


def test_single_objective_search_is_persisted_and_prunes_with_its_last_value(tiny_study: Any, tmp_path: Path) -> None:
    config = tiny_study("single", search={"kind": "optuna", "sampler": "tpe", "num_samples": 3},
                        methods={"l1": {"lam": {"low": 1e-5, "high": 1e-3, "log": True}}})
    search = make_searcher(config, config.output_path, "single-run")
    suggested = search.suggest("a")
    assert suggested["trial"]["method"] == "l1" and 1e-5 <= suggested["trial"]["params"]["lam"] <= 1e-3
    search.on_trial_result("a", {"val_error": 40.0, "training_iteration": 1})
    search.on_trial_complete("a", result={"val_error": 40.0, "epoch": 1, "final": False})
    search.suggest("b")
    # Tune saves the searcher with the experiment state and restores it on --resume
    search.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(config, config.output_path, "single-run")
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("b", result={"val_error": 12.0, "epoch": 2, "final": True})
    study = load_optuna_study(config.output_path, "single-run")  # read back from optuna.db
    a, b = study.trials
    assert a.state == TrialState.PRUNED and a.value == 40.0
    assert b.state == TrialState.COMPLETE and study.best_trial.number == b.number


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_multi_objective_study_on_ray(ray_session: Any, tiny_study: Any) -> None:
    config = _search(
        tiny_study, seeds=[0, 1], train={"epochs": 3, "reach_epochs": 1},
        methods={"sensitivity-unspec": {"lam": {"low": 1e-4, "high": 1e-2, "log": True}, "threshold": 2e-2},
                 "l1": {"lam": {"low": 1e-5, "high": 1e-3, "log": True}, "threshold": 2e-2}},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    outcome = run_study(config)
    assert outcome.complete and outcome.optuna_study is not None

    study = load_optuna_study(config.output_path)  # persisted next to the results
    assert study.study_name == outcome.optuna_study and len(study.directions) == 2
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)
    assert study.best_trials and {t.number for t in study.best_trials} <= {t.number for t in complete}

    # every sampled configuration ran for both seeds, each seed its own MLflow run
    tracker = Tracker(config.resolved_tracking_uri)
    children = tracker.find_runs(outcome.experiment_id, {"mlflow.parentRunId": outcome.parent_run_id})
    assert len(children) == 8
    for trial in study.trials:
        runs = [r for r in children if r.data.tags["study.tune_trial_id"] == trial.user_attrs["tune_trial_id"]]
        assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
        assert {r.data.params["method"] for r in runs} == {trial.params["method"]}
        expected = "pruned" if trial.state == TrialState.PRUNED else "finished"
        assert {r.data.tags["status"] for r in runs} == {expected}
        assert all(r.info.status == "FINISHED" for r in runs)
        if trial.state == TrialState.COMPLETE:
            mean_error = sum(r.data.metrics["val_error"] for r in runs) / 2
            assert trial.values[0] == pytest.approx(mean_error)
