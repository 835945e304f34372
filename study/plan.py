"""What a study expands to: each method's parameter spaces, its search budget, the trials of a
grid search and of a confirm stage, and the plan that ``study validate`` prints. (One concept,
the expansion of a study file, over 400 lines: the spaces, budgets and trials are what the plan
prints, and splitting them would split one set of rules across files.)

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


def typed_param(method: str, param: str, value: Any) -> Any:
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
            low, high = typed_param(method, param, spec["low"]), typed_param(method, param, spec["high"])
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
        values = tuple(typed_param(method, param, v) for v in spec)
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{where}: values repeat: {list(values)}")
        return ParamSpace(param, "choice", values=values)
    return ParamSpace(param, "fixed", values=(typed_param(method, param, spec),))


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


# -- equal budgets ------------------------------------------------------------------------------

#: Why a method is exempt from ``search.budget_per_method``.
EXEMPT_REASON = "no parameters to search"


def nothing_to_search(method: str) -> bool:
    """A method without parameters (``none``): it has one configuration, whatever the budget.
    A method whose parameters the study fixes is not exempt: fixing them is a budget of one."""
    from study.methods import default_params

    return not default_params(method)


@dataclass(frozen=True)
class Budget:
    """How many configurations of one method the search compares on validation error."""

    method: str
    configurations: int | None  # None: sampled from the study's shared Optuna pool
    exempt: bool = False

    def describe(self) -> str:
        if self.configurations is None:
            return "sampled"
        return f"{self.configurations}*" if self.exempt else str(self.configurations)


def method_budgets(config: StudyConfig, spaces: dict[str, dict[str, ParamSpace]] | None = None
                   ) -> dict[str, Budget]:
    """Each method's search budget: its grid size (grid), ``budget_per_method`` (optuna with
    equal budgets; 1 for an exempt method), or None (optuna sampling methods from one pool)."""
    spaces = spaces if spaces is not None else method_spaces(config)
    per_method = config.search.budget_per_method
    out: dict[str, Budget] = {}
    for method, params in spaces.items():
        exempt = per_method is not None and nothing_to_search(method)
        if config.search.kind == "grid":
            size: int | None = len(grid_combinations(params))
        elif per_method is None:
            size = None
        else:
            size = 1 if exempt else per_method
        out[method] = Budget(method, size, exempt)
    return out


def check_budgets(config: StudyConfig, spaces: dict[str, dict[str, ParamSpace]]) -> None:
    """With ``search.budget_per_method: N``: in a grid search every method not exempt must have
    a grid of exactly N configurations, unless ``search.allow_unequal``; a one-line error
    names each method's grid size. In an Optuna search (N samples per method by construction)
    a method not exempt must have something to sample, or it would train one configuration
    N times."""
    s = config.search
    if s.budget_per_method is None:
        return
    if s.kind == "optuna":
        for method, params in spaces.items():
            if not nothing_to_search(method) and all(p.kind == "fixed" for p in params.values()):
                raise ValueError(f"methods.{method}: every parameter is fixed, so search.budget_per_method "
                                 f"({s.budget_per_method}) would train its one configuration "
                                 f"{s.budget_per_method} times; give it a list or range to search")
        return
    if s.allow_unequal:
        return
    budgets = method_budgets(config, spaces)
    counted = {m: b.configurations for m, b in budgets.items() if not b.exempt}
    if all(n == s.budget_per_method for n in counted.values()):
        return
    sizes = ", ".join(f"{m} {n}" for m, n in counted.items())
    exempt = [m for m, b in budgets.items() if b.exempt]
    note = f" ({', '.join(exempt)}: exempt, {EXEMPT_REASON})" if exempt else ""
    raise ValueError(f"search.budget_per_method is {s.budget_per_method} but the methods' grid sizes are "
                     f"{sizes}{note}; give every method {s.budget_per_method} configurations or set "
                     f"search.allow_unequal: true")


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


def confirm_trials(chosen: list[TrialSpec], seeds: list[int]) -> list[TrialSpec]:
    """The confirm stage: each chosen configuration (its ``seeds`` ignored) once per confirm
    seed, one seed per trial."""
    return [TrialSpec(c.method, c.arch, c.dataset, [seed], dict(c.params), dict(c.train))
            for c in chosen for seed in seeds]


def search_trial_count(config: StudyConfig) -> int:
    """How many Tune trials the search stage runs."""
    if config.search.kind == "grid":
        return len(grid_trials(config))
    if config.search.budget_per_method is None:
        return config.search.num_samples
    return sum(int(b.configurations or 0) for b in method_budgets(config).values())


@dataclass
class PlanRow:
    dataset: str
    arch: str
    method: str
    configurations: int | str  # the method's budget: "4", "1*" (exempt) or "sampled"
    seeds: int
    trials: int | str
    space: str
    confirm: int = 0  # confirm-stage trials


def _describe_method(config: StudyConfig, method: str, spaces: dict[str, ParamSpace]) -> str:
    """``lam=[0.001, 0.002], threshold=0.02``, plus ``; train: optimizer=adam, lr=0.001``."""
    text = ", ".join(f"{p}={s.describe()}" for p, s in spaces.items()) or "defaults"
    train = config.method_train(method)
    if train:
        text += "; train: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in train.items())
    return text


def plan(config: StudyConfig) -> list[PlanRow]:
    """How many configurations and trials of which method: the rows `study validate` prints."""
    spaces = method_spaces(config)
    budgets = method_budgets(config, spaces)
    confirm = len(config.confirm.seeds) if config.confirm is not None else 0
    grid = config.search.kind == "grid"
    pairs = list(itertools.product(config.datasets, config.archs)) if grid else [
        (config.datasets[0], config.archs[0])]
    rows = []
    for dataset, arch in pairs:
        for method, params in spaces.items():
            budget = budgets[method]
            n = budget.configurations
            if grid:
                trials: int | str = int(n or 0) * len(config.seeds)
            else:  # optuna: a trial trains every seed of its configuration
                trials = "sampled" if n is None else int(n)
            shown: int | str = n if n is not None and not budget.exempt else budget.describe()
            rows.append(PlanRow(dataset, arch, method, shown, len(config.seeds), trials,
                                _describe_method(config, method, params), confirm))
    return rows


def describe_plan(config: StudyConfig) -> str:
    """A plain-text summary of the expanded plan: the search stage, then the confirm stage."""
    rows = plan(config)
    head = ("dataset", "arch", "method", "configs", "seeds", "trials")
    if config.confirm is not None:
        head += ("confirm",)
    head += ("parameters",)
    table = [head] + [(r.dataset, r.arch, r.method, str(r.configurations), str(r.seeds), str(r.trials))
                      + ((str(r.confirm),) if config.confirm is not None else ()) + (r.space,) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table]
    t, s, r = config.train, config.search, config.resources
    stage = "search stage (study.stage=search): " if config.confirm is not None else ""
    if s.kind == "grid":
        summary = f"{stage}grid search: {search_trial_count(config)} trials (each one seed)"
    else:
        objectives = ", ".join(f"{o.metric} {o.mode}" for o in s.objectives)
        if s.budget_per_method is None:
            sampled = f"{s.num_samples} sampled configurations"
        else:
            sampled = (f"one Optuna study per method, {s.budget_per_method} sampled configurations each "
                       f"({search_trial_count(config)} in all)")
        summary = (f"{stage}optuna search ({s.sampler}, seed {s.seed}): {sampled}, "
                   f"each trained for {len(config.seeds)} seed(s) in one trial; objectives: {objectives} "
                   f"(means over seeds)")
    summary += _budget_line(config, rows)
    sched = config.scheduler
    if sched.kind == "asha":
        rule = (f"Pareto rank over {', '.join(f'{o.metric} {o.mode}' for o in s.objectives)} at each rung "
                f"(a trial on the rung's front is never stopped)" if s.multi_objective else
                f"{config.scheduler_objective.metric} {config.scheduler_objective.mode}")
        if s.budget_per_method is not None:
            rule += ", each method's trials judged against its own method's only"
        summary += (f"\nASHA: {rule}, grace period {sched.grace_period} epochs, "
                    f"reduction factor {sched.reduction_factor:g}")
    if config.confirm is not None:
        n_confirm = sum(r.confirm for r in rows)
        target = (f"validation error <= {t.target_error}%" if t.target_error is not None
                  else "the report's default target")
        summary += (f"\nconfirm stage (study.stage=confirm): per method, the configuration the report's selection "
                    f"rule picks from the search runs (highest mean compression at {target}; a method that misses "
                    f"the target: its lowest mean validation error) is retrained on seeds {config.confirm.seeds}: "
                    f"{n_confirm} trials, not stopped early")
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


def _budget_line(config: StudyConfig, rows: list[PlanRow]) -> str:
    """What the configs column means for the budgets."""
    s = config.search
    if s.budget_per_method is None:
        return ""
    exempt = sorted({r.method for r in rows if str(r.configurations).endswith("*")})
    text = f"\nequal budgets: {s.budget_per_method} configurations per method"
    if exempt:
        text += f"; * exempt ({EXEMPT_REASON}): {', '.join(exempt)} trains its one configuration"
    if s.allow_unequal:
        sizes = {r.method: r.configurations for r in rows}
        if len({v for m, v in sizes.items() if m not in exempt}) > 1:
            text += " (search.allow_unequal: the grids differ, as the configs column shows)"
    return text
