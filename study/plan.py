"""What a study expands to: each method's parameter spaces, the trials of a grid search, and
the plan that ``study validate`` prints.

Each method's parameters (``methods.<method>.<param>`` in the study file) are given as one of:

- a scalar: a fixed value (``threshold: 1.0e-3``);
- a list: the grid values (``grid``) or the categorical choices (``optuna``);
- ``{choices: [...]}``: the same as a list;
- ``{low, high, log: false, step: null}``: a range Optuna samples from; in a ``grid`` search
  it also needs ``num`` and becomes ``num`` evenly spaced values (log-spaced with ``log``).

Values take the declared type of the method's parameter, and every value the study can produce
is checked by building the method's ``Params`` (the schema runs :func:`method_spaces` when it
validates a study). The seeds are never tuned: in a grid search they are one more grid axis; in
an Optuna search each sampled configuration is trained once per seed, in lockstep inside one
trial, and the objectives are the means over the seeds (see :mod:`study.trial`; the Optuna
space itself is :mod:`study.search`).

This module reads a :class:`study.schema.StudyConfig` but does not import it (the schema
imports this module to check the parameters).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from study.options import coerce

if TYPE_CHECKING:
    from study.schema import StudyConfig


# -- method parameter spaces -----------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpace:
    """One method parameter: fixed, a list of values/choices, or a numeric range."""

    name: str
    kind: Literal["fixed", "choice", "range"]
    values: tuple[Any, ...] = ()  # fixed: one value; choice: the choices
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    num: int | None = None
    integer: bool = False

    def grid_values(self) -> list[Any]:
        if self.kind != "range":
            return list(self.values)
        if self.num is None:
            raise ValueError(f"{self.name}: a range in a grid search needs num (how many values)")
        assert self.low is not None and self.high is not None
        if self.num == 1:
            points = [self.low]
        elif self.log:
            a, b = math.log10(self.low), math.log10(self.high)
            points = [10 ** (a + (b - a) * i / (self.num - 1)) for i in range(self.num)]
        else:
            points = [self.low + (self.high - self.low) * i / (self.num - 1) for i in range(self.num)]
        if self.integer:
            return sorted({int(round(p)) for p in points})
        return [float(f"{p:.6g}") for p in points]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.values[0]!r}"
        if self.kind == "choice":
            return "[" + ", ".join(repr(v) for v in self.values) + "]"
        extra = ", log" if self.log else ""
        extra += f", step {self.step}" if self.step else ""
        extra += f", {self.num} values" if self.num else ""
        return f"{self.low}..{self.high}{extra}"


_RANGE_KEYS = {"low", "high", "log", "step", "num"}


def _typed(method: str, param: str, value: Any) -> Any:
    """``value`` as the declared type of ``method``'s parameter (strings parsed, int -> float)."""
    from study.methods import param_types

    return coerce(value, param_types(method)[param], f"methods.{method}.{param}")


def parse_param_space(method: str, param: str, spec: Any) -> ParamSpace:
    """Turn one entry of ``methods.<method>`` into a checked :class:`ParamSpace`."""
    where = f"methods.{method}.{param}"
    if isinstance(spec, dict):
        if set(spec) == {"choices"} or set(spec) == {"values"}:
            spec = list(spec.get("choices", spec.get("values")))
        else:
            unknown = sorted(set(spec) - _RANGE_KEYS)
            if unknown or not {"low", "high"} <= set(spec):
                raise ValueError(
                    f"{where}: a range needs low and high (optional: log, step, num), or use "
                    f"{{choices: [...]}}; got keys {sorted(spec)}"
                )
            low, high = _typed(method, param, spec["low"]), _typed(method, param, spec["high"])
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
            if not numeric:
                raise ValueError(f"{where}: a range needs a numeric parameter, {param} is {low!r}")
            if not low < high:
                raise ValueError(f"{where}: low ({low}) must be below high ({high})")
            log = bool(spec.get("log", False))
            if log and low <= 0:
                raise ValueError(f"{where}: a log range needs low > 0, got {low}")
            if log and spec.get("step") is not None:
                raise ValueError(f"{where}: a range takes log or step, not both")
            num = spec.get("num")
            if num is not None and (not isinstance(num, int) or num < 1):
                raise ValueError(f"{where}: num must be an integer >= 1, got {num!r}")
            return ParamSpace(
                param, "range", low=low, high=high, log=log, step=spec.get("step"), num=num,
                integer=isinstance(low, int) and isinstance(high, int),
            )
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{where}: an empty list of values")
        values = tuple(_typed(method, param, v) for v in spec)
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{where}: values repeat: {list(values)}")
        return ParamSpace(param, "choice", values=values)
    return ParamSpace(param, "fixed", values=(_typed(method, param, spec),))


def method_spaces(config: StudyConfig) -> dict[str, dict[str, ParamSpace]]:
    """Every method's parameter spaces, checked against the registry: names, types, and each
    value the study can produce (every grid combination, or every choice and range end)."""
    from study.methods import default_params, method_class

    out: dict[str, dict[str, ParamSpace]] = {}
    for method in config.methods:
        method_class(method)  # unknown method -> ValueError listing the valid ones
        params = config.method_params(method)
        valid = list(default_params(method))
        for param in params:
            if param not in valid:
                raise ValueError(
                    f"unknown parameter {param!r} for method {method!r} (methods.{method}.{param}); "
                    f"valid: {', '.join(valid) or '(none)'}"
                )
        spaces = {p: parse_param_space(method, p, spec) for p, spec in params.items()}
        if config.search.kind == "grid":
            for space in spaces.values():
                if space.kind == "range" and space.num is None:
                    raise ValueError(
                        f"methods.{method}.{space.name}: a range in a grid search needs num "
                        f"(or use search.kind: optuna)"
                    )
        for combo in candidate_combinations(config.search.kind, spaces):
            _check_combination(method, combo)
        out[method] = spaces
    return out


def candidate_combinations(kind: str, spaces: dict[str, ParamSpace]) -> list[dict[str, Any]]:
    """The parameter combinations a study of ``kind`` checks: every grid combination, or (Optuna)
    the fixed values with each choice and each range end of one parameter at a time."""
    if kind == "grid":
        return grid_combinations(spaces)
    fixed = {p: s.values[0] for p, s in spaces.items() if s.kind == "fixed"}
    return [{**fixed, p: value} for p, s in spaces.items()
            for value in (s.values if s.kind != "range" else (s.low, s.high))] or [fixed]


def _check_combination(method: str, params: dict[str, Any]) -> None:
    from study.methods import make_params

    try:
        make_params(method, params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"methods.{method} with {params}: {err}") from None


def grid_combinations(spaces: dict[str, ParamSpace]) -> list[dict[str, Any]]:
    """The Cartesian product of every parameter's grid values (one empty dict if none)."""
    names = list(spaces)
    axes = [spaces[n].grid_values() for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*axes)]


# -- the plan ---------------------------------------------------------------------------------


@dataclass
class TrialSpec:
    """What one trial trains: one configuration, for one seed (grid) or every seed (optuna).
    ``train`` holds the method's overrides of the study's train settings."""

    method: str
    arch: str
    dataset: str
    seeds: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "arch": self.arch, "dataset": self.dataset,
                "seeds": list(self.seeds), "params": dict(self.params), "train": dict(self.train)}


def grid_trials(config: StudyConfig) -> list[TrialSpec]:
    """Every trial of a grid search: datasets × archs × methods × their grids × seeds."""
    spaces = method_spaces(config)
    trials = []
    for dataset, arch in itertools.product(config.datasets, config.archs):
        for method, params in spaces.items():
            train = config.method_train(method)
            for combo in grid_combinations(params):
                for seed in config.seeds:
                    trials.append(TrialSpec(method, arch, dataset, [seed], combo, dict(train)))
    return trials


@dataclass
class PlanRow:
    dataset: str
    arch: str
    method: str
    configurations: int | str
    seeds: int
    trials: int | str
    space: str


def _describe_method(config: StudyConfig, method: str, spaces: dict[str, ParamSpace]) -> str:
    """``lam=[0.001, 0.002], threshold=0.02``, plus ``; train: optimizer=adam, lr=0.001``."""
    text = ", ".join(f"{p}={s.describe()}" for p, s in spaces.items()) or "defaults"
    train = config.method_train(method)
    if train:
        text += "; train: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in train.items())
    return text


def plan(config: StudyConfig) -> list[PlanRow]:
    """How many trials of which method: the rows `study validate` prints."""
    spaces = method_spaces(config)
    rows = []
    if config.search.kind == "grid":
        counts = Counter((t.dataset, t.arch, t.method) for t in grid_trials(config))
        for (dataset, arch, method), n in counts.items():
            space = _describe_method(config, method, spaces[method])
            rows.append(PlanRow(dataset, arch, method, n // len(config.seeds), len(config.seeds), n, space))
    else:
        for method, params in spaces.items():
            space = _describe_method(config, method, params)
            rows.append(PlanRow(config.datasets[0], config.archs[0], method, "sampled", len(config.seeds),
                                "sampled", space))
    return rows


def describe_plan(config: StudyConfig) -> str:
    """A plain-text summary of the expanded plan."""
    rows = plan(config)
    head = ("dataset", "arch", "method", "configs", "seeds", "trials", "parameters")
    table = [head] + [(r.dataset, r.arch, r.method, str(r.configurations), str(r.seeds), str(r.trials), r.space)
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table]
    t, s, r = config.train, config.search, config.resources
    if s.kind == "grid":
        total = sum(int(r_.trials) for r_ in rows)
        summary = f"grid search: {total} trials (each one seed)"
    else:
        objectives = ", ".join(f"{o.metric} {o.mode}" for o in s.objectives)
        summary = (f"optuna search ({s.sampler}, seed {s.seed}): {s.num_samples} sampled configurations, "
                   f"each trained for {len(config.seeds)} seed(s) in one trial; objectives: {objectives} "
                   f"(means over seeds)")
    sched = config.scheduler
    if sched.kind == "asha":
        obj = config.scheduler_objective
        summary += (f"\nASHA: {obj.metric} {obj.mode}, grace period {sched.grace_period} epochs, "
                    f"reduction factor {sched.reduction_factor:g}")
    summary += (f"\ntraining: {t.epochs} epochs (reach {t.reach_epochs}"
                + (f" or val error <= {t.target_error}%" if t.target_error is not None else "")
                + f"), batch {t.batch_size}, {t.optimizer} lr {t.lr:g} momentum {t.momentum:g}, "
                f"seeds {config.seeds}, val fraction {config.data.val_fraction:g}")
    overridden = [m for m in config.methods if config.method_train(m)]
    if overridden:
        summary += f" (methods with their own train settings: {', '.join(overridden)})"
    summary += (f"\nresources: {r.cpus_per_trial:g} CPU + {r.gpus_per_trial:g} GPU per trial, "
                f"max concurrent {r.max_concurrent_trials or 'as resources allow'}, retries {r.max_failures}")
    summary += (f"\noutput: {config.output_path} (Tune: {config.resolved_storage_path}); MLflow {config.resolved_tracking_uri}, "
                f"experiment {config.experiment_name!r}; config hash {config.config_hash()}")
    return "\n".join(lines) + "\n" + summary


