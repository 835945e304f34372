"""Optuna searches: the define-by-run space, pruned vs complete trials, equal budgets (one
Optuna study per method), ASHA by Pareto rank in a multi-objective search, and a tiny
multi-objective (NSGA-II) study with ASHA on Ray, whose Optuna study is read back afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import itertools
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from optuna.trial import TrialState

from study.pareto_asha import ParetoASHA, keeps, pareto_ranks
from study.plan import describe_plan
from study.runner import load_optuna_study, run_study
from study.search import OptunaSpace, PerMethodSearch, StudyOptunaSearch, make_scheduler, make_searcher
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


def test_equal_budgets_give_every_method_its_own_optuna_study_and_the_same_count(
        tiny_study: Any, tmp_path: Path) -> None:
    config = tiny_study("budget", seeds=[0, 1], search={"kind": "optuna", "sampler": "tpe", "budget_per_method": 3},
                        methods={"none": {}, "decay": {"lam": {"low": 1e-4, "high": 1e-2, "log": True}},
                                 "l1": {"lam": {"low": 1e-6, "high": 1e-3, "log": True}, "threshold": [1e-3, 1e-2]}})
    search = make_searcher(config, config.output_path, "budget-run")
    assert isinstance(search, PerMethodSearch)
    suggested = []
    for i in range(7):
        spec = search.suggest(f"t{i}")["trial"]
        suggested.append(spec["method"])
        assert spec["seeds"] == [0, 1]
        search.on_trial_complete(f"t{i}", result={"val_error": 10.0 + i, "epoch": 2, "final": True})
        if i == 3:  # Tune saves the searcher with the experiment state and restores it on --resume
            search.save(str(tmp_path / "searcher.pkl"))
            search = make_searcher(config, config.output_path, "budget-run")
            search.restore(str(tmp_path / "searcher.pkl"))
    assert search.suggest("t7") == Searcher.FINISHED
    # the methods take turns; none (no parameters) is exempt and trains its one configuration once
    assert suggested == ["none", "decay", "l1", "decay", "l1", "decay", "l1"]
    for method in ("decay", "l1"):  # one Optuna study per method, each told its own trials
        study = load_optuna_study(config.output_path, f"budget-run.{method}")
        assert len(study.trials) == 3 and {t.state for t in study.trials} == {TrialState.COMPLETE}
        assert "method" not in study.trials[0].params
        assert all(k.startswith(f"{method}.") for t in study.trials for k in t.params)
    # the same sampler and seed for each method: the first draw of a fresh study is reproducible
    draws = {}
    for name in ("a", "b"):
        fresh = make_searcher(config, config.output_path, f"again-{name}")
        draws[name] = [fresh.suggest(f"{name}{i}")["trial"]["params"] for i in range(3)]
    assert draws["a"] == draws["b"]


def test_pareto_ranks_match_a_brute_force_definition() -> None:
    rng = np.random.default_rng(0)
    points = rng.integers(0, 4, size=(30, 2)).astype(float)  # many ties
    points[3] = [np.nan, 9.0]
    ranks = pareto_ranks(points)

    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(a >= b) and np.any(a > b))

    complete = [i for i in range(30) if i != 3]
    for i in complete:  # rank r: dominated by some point of rank r - 1, by none of rank >= r
        dominators = [ranks[j] for j in complete if dominates(points[j], points[i])]
        assert all(r < ranks[i] for r in dominators)
        assert ranks[i] == 0 or ranks[i] - 1 in dominators
    assert ranks[3] == max(ranks[complete]) + 1  # a NaN objective ranks after every complete point


def test_pareto_asha_never_stops_a_trial_on_the_front() -> None:
    """At a rung, a trial that trades error for compression is on the front: Ray's ASHA on the
    first objective stops it, the Pareto-rank rule keeps it and stops the dominated trial."""
    objectives = [("val_error", "min"), ("compression", "max")]
    pareto = ParetoASHA(objectives, max_t=8, grace_period=2, reduction_factor=2)
    single = ASHAScheduler(metric="val_error", mode="min", max_t=8, grace_period=2, reduction_factor=2)
    results = [  # (trial, val_error, compression) reaching the first rung, epoch 2, in this order
        ("accurate", 3.0, 1.5), ("middle", 4.0, 3.0), ("dominated", 6.0, 2.0), ("sparse", 9.0, 12.0)]
    decisions: dict[str, dict[str, str]] = {"pareto": {}, "single": {}}
    for name, val_error, compression in results:
        trial = SimpleNamespace(trial_id=name)
        result = {"training_iteration": 2, "val_error": val_error, "compression": compression}
        single.on_trial_add(None, trial)
        decisions["pareto"][name] = pareto.on_trial_result(None, trial, result)
        decisions["single"][name] = single.on_trial_result(None, trial, result)
    assert decisions["single"]["sparse"] == TrialScheduler.STOP  # the bias this rule removes
    assert decisions["pareto"]["sparse"] == TrialScheduler.CONTINUE
    assert decisions["pareto"]["dominated"] == TrialScheduler.STOP
    assert decisions["pareto"]["accurate"] == decisions["pareto"]["middle"] == TrialScheduler.CONTINUE
    # exhaustively: whatever was recorded before, a result on the rung's front always continues
    grid = [(float(e), float(c)) for e, c in itertools.product(range(4), range(4))]
    for recorded in itertools.combinations(grid, 4):
        for new in grid:
            points = np.array([*recorded, new])
            on_front = pareto_ranks(points)[-1] == 0
            if on_front:
                assert keeps(recorded, new, 3.0)
    # the study uses it for every multi-objective ASHA search, and Ray's ASHA otherwise
    assert pareto.num_stopped == 1 and pareto.metric is None


def test_make_scheduler_judges_every_objective_and_each_method_against_its_own(tiny_study: Any) -> None:
    multi = _search(tiny_study, methods={"l1": {"lam": {"low": 1e-5, "high": 1e-3, "log": True}}},
                    scheduler={"kind": "asha", "grace_period": 1})
    scheduler = make_scheduler(multi)
    assert isinstance(scheduler, ParetoASHA) and scheduler.objectives == [("val_error", "min"), ("compression", "max")]
    assert not scheduler.per_method
    one = tiny_study("one", scheduler={"kind": "asha", "grace_period": 1})
    assert isinstance(make_scheduler(one), ASHAScheduler) and make_scheduler(one).metric == "val_error"
    # equal budgets: rungs per method, so a method whose trials are all worse than another
    # method's still trains its best ones on
    equal = tiny_study("equal", search={"kind": "optuna", "budget_per_method": 4},
                       methods={"l1": {"lam": {"low": 1e-5, "high": 1e-3, "log": True}},
                                "decay": {"lam": {"low": 1e-4, "high": 1e-2, "log": True}}},
                       scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2})
    scheduler = make_scheduler(equal)
    assert isinstance(scheduler, ParetoASHA) and scheduler.per_method
    assert scheduler.objectives == [("val_error", "min")]

    def report(name: str, method: str, val_error: float) -> str:
        trial = SimpleNamespace(trial_id=name, config={"trial": {"method": method}})
        return scheduler.on_trial_result(None, trial, {"training_iteration": 1, "val_error": val_error})

    assert report("d1", "decay", 5.0) == report("d2", "decay", 4.0) == TrialScheduler.CONTINUE
    assert report("d3", "decay", 9.0) == TrialScheduler.STOP  # the worst decay trial so far
    assert report("l1-a", "l1", 20.0) == TrialScheduler.CONTINUE  # the first l1 trial: its rung is empty
    assert report("l1-b", "l1", 30.0) == TrialScheduler.STOP
    assert "ASHA: val_error min, each method's trials judged against its own method's only" in describe_plan(equal)


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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_equal_budget_search_on_ray_with_pareto_asha(ray_session: Any, tiny_study: Any) -> None:
    config = tiny_study(
        "equal", seeds=[0], train={"epochs": 3, "reach_epochs": 1},
        search={"kind": "optuna", "sampler": "nsga2", "budget_per_method": 3, "objectives": OBJECTIVES,
                "population_size": 2},
        methods={"none": {}, "decay": {"lam": {"low": 1e-4, "high": 1e-1, "log": True}, "threshold": 2e-2},
                 "l1": {"lam": {"low": 1e-5, "high": 1e-2, "log": True}, "threshold": 2e-2}},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    outcome = run_study(config)
    assert outcome.complete and outcome.optuna_study is None
    assert set(outcome.optuna_studies) == {"decay", "l1"}
    tracker = Tracker(config.resolved_tracking_uri)
    children = tracker.find_runs(outcome.experiment_id, {"mlflow.parentRunId": outcome.parent_run_id})
    by_method: dict[str, list] = {}
    for run in children:
        by_method.setdefault(run.data.params["method"], []).append(run)
        assert run.data.tags["study.stage"] == "search"
    assert {m: len(r) for m, r in by_method.items()} == {"none": 1, "decay": 3, "l1": 3}
    for method in ("decay", "l1"):
        study = load_optuna_study(config.output_path, method=method)
        assert study.study_name == outcome.optuna_studies[method] and len(study.trials) == 3
        assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
        tune_ids = {t.user_attrs["tune_trial_id"] for t in study.trials}
        assert tune_ids == {r.data.tags["study.tune_trial_id"] for r in by_method[method]}
    with pytest.raises(ValueError, match="one Optuna study per method; method=None, valid: decay, l1"):
        load_optuna_study(config.output_path)
