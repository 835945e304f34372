"""Tune, then confirm: which configuration of each method the confirm stage retrains.

A study with ``confirm: {seeds: [...]}`` runs in two stages under one MLflow parent run:

1. **search** (runs tagged ``study.stage=search``): the grid or Optuna search on the study's
   ``seeds``, compared on validation error;
2. **confirm** (``study.stage=confirm``): per architecture, data set and method, the one
   configuration the report's selection rule picks from the search runs is retrained on the
   fresh ``confirm.seeds``, to its end (no early stopping).

The selection has one owner, ``analysis/``, and this module only calls it, on the search
runs read back with :func:`analysis.runs.load_runs`: seeds aggregated by
:func:`analysis.pareto.aggregate_seeds`; the target from
:func:`analysis.selection.resolve_targets` (the study's ``train.target_error``, else the best
validation error of ``none`` plus 0.5 points, as in ``study report``); and
:func:`analysis.selection.chosen_configs`, which takes the configuration of the method's
operating point (the highest mean compression at mean validation error ≤ the target).

**A method whose search never met the target** is confirmed anyway, with its configuration
of lowest mean validation error (the rule of ``chosen_configs``), so that the report can
say how far from the target it stays on fresh seeds; ``study run`` says so, and the state
file records ``met_target: false`` for it. A method with no complete epoch at all (every
search trial failed) is skipped, with a message.

The configurations are read back from a search run's MLflow params (the strings the trials
logged, typed by the method's declared parameter types; the parameters the study names, the
others being the method's defaults), so a confirm run logs the same params as its search
runs, seed aside, and the report groups them as one configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from study import runformat as rf
from study.plan import TrialSpec, typed_param

if TYPE_CHECKING:
    from study.schema import StudyConfig


@dataclass
class Choice:
    """One method's configuration for the confirm stage."""

    spec: TrialSpec  # its seeds: the search seeds it was chosen on
    config: str  # the report's configuration key
    met_target: bool
    target: float

    def as_dict(self) -> dict[str, Any]:
        return {"trial": self.spec.as_dict(), "config": self.config, "met_target": self.met_target,
                "target": self.target}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        return cls(TrialSpec(**data["trial"]), data["config"], bool(data["met_target"]), float(data["target"]))

    def describe(self) -> str:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in self.spec.params.items()) or "its one configuration"
        met = "" if self.met_target else f" (no configuration met the target {self.target:g}%: lowest validation error)"
        return f"{self.spec.method} on {self.spec.arch}/{self.spec.dataset}: {params}{met}"


def choose_configurations(config: StudyConfig, tracking_uri: str, parent_run_id: str,
                          log: Callable[[str], None] = print) -> list[Choice]:
    """Per architecture, data set and method: the search runs' chosen configuration."""
    from analysis.pareto import aggregate_seeds
    from analysis.runs import load_runs
    from analysis.selection import chosen_configs, resolve_targets, select_operating_points
    from study.tracking import Tracker

    runs = load_runs(tracking_uri, config.experiment_name, parent=parent_run_id)
    usable = runs.usable_epochs()
    usable = usable[usable["stage"] == rf.STAGE_SEARCH]
    if usable.empty:
        return []
    carry = [c for c in ("setting", *runs.config_params) if c in usable.columns]
    agg = aggregate_seeds(usable, carry=carry)
    targets = resolve_targets(agg, study=config.train.target_error)
    selected = select_operating_points(agg, targets)
    trials = runs.trials[runs.trials["stage"] == rf.STAGE_SEARCH]
    tracker = Tracker(tracking_uri)
    choices: list[Choice] = []
    for (arch, dataset), target in sorted(targets.items()):
        def here(df: Any) -> Any:
            return df[(df["arch"] == arch) & (df["dataset"] == dataset)]

        chosen = chosen_configs(here(agg), here(selected))
        for method in config.methods:
            if method not in chosen:
                log(f"confirm: {method} on {arch}/{dataset} has no complete search epoch; not confirmed")
                continue
            key = chosen[method]
            met = bool(here(selected).loc[here(selected)["method"] == method, "met_target"].any())
            candidates = here(trials)
            run_id = candidates.loc[candidates["config"] == key, "run_id"].iloc[0]
            logged = tracker.get_run(run_id).data.params
            # the parameters the study names (the others are the method's defaults in every run)
            params = {p: typed_param(method, p, logged[p]) for p in config.method_params(method) if p in logged}
            spec = TrialSpec(method, str(arch), str(dataset), list(config.seeds), params, config.method_train(method))
            choices.append(Choice(spec, key, met, float(target.value)))
    return choices

