"""The study file: a validated schema, YAML loading, ``--set`` overrides and the trial plan.

A study is one YAML file. Every field has a default that works on a laptop, so the smallest
study file is ``{}``. Unknown fields are errors that name the field and the valid ones, and
method names, method parameters, data set and architecture options are checked against the
registries, so ``study validate`` catches typos before any trial starts.

Each method's parameters are given as one of:

- a scalar: a fixed value (``threshold: 1.0e-3``);
- a list: the grid values (``grid``) or the categorical choices (``optuna``);
- ``{choices: [...]}``: the same as a list;
- ``{low, high, log: false, step: null}``: a range Optuna samples from; in a ``grid`` search
  it also needs ``num`` and becomes ``num`` evenly spaced values (log-spaced with ``log``).

The seeds are never tuned: in a grid search they are one more grid axis; in an Optuna search
each sampled configuration is trained once per seed, in lockstep inside one trial, and the
objectives are the means over the seeds (see :mod:`study.trial`).

A method's entry may also hold the reserved key ``train``: fixed values that override fields of
the global ``train`` block for that method's trials only (``sparse-vd: {train: {optimizer: adam,
lr: 1.0e-3}}``). It is not searched; no method parameter may be called ``train``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from study import runformat as rf
from study.options import check_options, coerce, option_defaults
from study.settings import AUTO, DEVICE_HELP, STUDY_AXES, VAL_FRACTION, TrainConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
TRAIN_KEY = "train"  # reserved in a method's entry: that method's train overrides


# -- YAML ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-5`` is a float (YAML 1.1 wants ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def apply_overrides(raw: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "methods.l1.lam=[1e-4, 1e-3]"]`` applied to a raw study dict.

    Keys are dotted paths (missing levels are created); values are parsed as YAML, so lists,
    numbers, booleans and ``null`` work. The result is validated later like the file itself.
    """
    out = copy.deepcopy(raw)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE with a dotted key (e.g. train.lr=0.01), got {item!r}")
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"--set {key}: {where} is {child!r}, not a section")
            node = child
        node[parts[-1]] = parse_yaml(value) if value.strip() else None
    return out


# -- the schema ------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _train_settings() -> type[_Section]:
    """The ``train`` block, derived from :class:`study.settings.TrainConfig` (the one
    definition of the fields, defaults, bounds and help): without the seed, a study axis, and
    with ``device: auto``."""
    hints = typing.get_type_hints(TrainConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in STUDY_AXES:
            continue
        default, description = (AUTO, DEVICE_HELP) if f.name == "device" else (f.default, f.metadata["help"])
        fields[f.name] = (hints[f.name], Field(default, description=description, **f.metadata["bounds"]))
    return create_model("TrainSettings", __base__=_Section, __module__=__name__, __doc__=_train_settings.__doc__,
                        **fields)


TrainSettings = _train_settings()


class DataSettings(_Section):
    val_fraction: float = Field(VAL_FRACTION, ge=0, lt=1, description="fraction of the training set held out")
    root: str | None = Field(None, description="data root (default $STUDY_DATA_ROOT or ~/.cache/...)")
    download: bool = False
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per data set name")


class ModelSettings(_Section):
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per architecture name")


class Objective(_Section):
    metric: str = "val_error"
    mode: Literal["min", "max"] = "min"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if not rf.is_objective_metric(value):
            raise ValueError(f"unknown metric {value!r}; valid: {', '.join(rf.OBJECTIVE_METRICS)}, "
                             f"{rf.REMAINING_PREFIX}<layer>")
        return value


class SearchSettings(_Section):
    kind: Literal["grid", "optuna"] = "grid"
    sampler: Literal["tpe", "nsga2"] = "tpe"
    num_samples: int = Field(8, ge=1, description="Optuna: configurations to sample")
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    seed: int = Field(0, description="the sampler's seed")
    population_size: int | None = Field(None, ge=2, description="NSGA-II population (default 50)")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[Objective]) -> list[Objective]:
        names = [o.metric for o in value]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}")
        return value


class SchedulerSettings(_Section):
    kind: Literal["none", "asha"] = "none"
    metric: str | None = Field(None, description="default: the first objective")
    mode: Literal["min", "max"] | None = None
    grace_period: int = Field(3, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(3.0, ge=2)


class ResourceSettings(_Section):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions share a GPU, e.g. 0.25")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as resources allow")
    num_cpus: int | None = Field(None, ge=1, description="in-process Ray only: CPUs to use (default all)")
    num_gpus: int | None = Field(None, ge=0, description="in-process Ray only: GPUs to use (default all)")
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial, from its last checkpoint")
    checkpoints_to_keep: int = Field(1, ge=1)


class StudyConfig(_Section):
    name: str = Field("study", pattern=NAME_PATTERN)
    description: str = ""
    datasets: list[str] = Field(default_factory=lambda: ["digits"], min_length=1)
    archs: list[str] = Field(default_factory=lambda: ["lenet300"], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"none": {}, "sensitivity-unspec": {}, "sensitivity-spec": {}}, min_length=1
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    output_dir: str | None = Field(None, description="default runs/<name>, relative to the working directory")
    storage_path: str | None = Field(
        None, description="Ray Tune results and checkpoints: default <output_dir>/ray; on a multi-node "
        "cluster a folder every node shares, or a URI such as s3://bucket/path")
    tracking_uri: str | None = Field(None, description="default sqlite:///<abs output_dir>/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment, default the name")

    @field_validator("datasets", "archs", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("methods", mode="before")
    @classmethod
    def _method_list(cls, value: Any) -> Any:
        # `methods: [none, l1]` is shorthand for every method with its default parameters.
        if isinstance(value, (list, tuple)):
            return {str(name): {} for name in value}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        # `seeds: 3` means seeds 0, 1, 2.
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"seeds: a count must be >= 1, got {value}")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    @model_validator(mode="after")
    def _check_registries(self) -> StudyConfig:
        check_registries(self)
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def output_path(self) -> Path:
        """The output folder, absolute."""
        return Path(self.output_dir or f"runs/{self.name}").expanduser().resolve()

    @property
    def resolved_storage_path(self) -> str:
        """Where Tune keeps results and checkpoints: an absolute path or a URI."""
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path
        if self.storage_path:
            return str(Path(self.storage_path).expanduser().resolve())
        return str(self.output_path / "ray")

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @property
    def resolved_tracking_uri(self) -> str:
        return rf.resolve_tracking_uri(self.tracking_uri, self.output_path)

    @property
    def scheduler_objective(self) -> Objective:
        first = self.search.objectives[0]
        metric = self.scheduler.metric or first.metric
        mode = self.scheduler.mode or (first.mode if metric == first.metric else "min")
        return Objective(metric=metric, mode=mode)

    def config_hash(self) -> str:
        """A short hash of everything that changes results (not where they go or how fast)."""
        design = self.model_dump(
            mode="json", exclude={"output_dir", "storage_path", "tracking_uri", "experiment", "resources"}
        )
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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
    for method, params in config.methods.items():
        method_class(method)  # unknown method -> ValueError listing the valid ones
        if not isinstance(params, dict):
            raise ValueError(f"methods.{method}: expected a mapping of parameter -> values, got {params!r}")
        params = {p: spec for p, spec in params.items() if p != TRAIN_KEY}
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
            for combo in grid_combinations(spaces):
                _check_combination(method, combo)
        else:
            fixed = {p: s.values[0] for p, s in spaces.items() if s.kind == "fixed"}
            for p, s in spaces.items():
                candidates = s.values if s.kind != "range" else (s.low, s.high)
                for value in candidates:
                    _check_combination(method, {**fixed, p: value})
        out[method] = spaces
    return out


def method_train(config: StudyConfig, method: str) -> dict[str, Any]:
    """The checked ``train`` overrides of one method (``methods.<method>.train``), typed like the
    global block; ``{}`` when it has none."""
    where = f"methods.{method}.{TRAIN_KEY}"
    spec = (config.methods.get(method) or {}).get(TRAIN_KEY)
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping of train field -> value, got {spec!r}")
    valid = list(TrainSettings.model_fields)
    for key, value in spec.items():
        if key not in valid:
            raise ValueError(f"unknown field '{where}.{key}'; valid: {', '.join(valid)}")
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"{where}.{key}: train overrides are fixed values, not searched; got {value!r} "
                             f"(use one study per value)")
    try:
        checked = TrainSettings.model_validate(spec)
    except ValidationError as err:
        raise ValueError("; ".join(
            f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )) from None
    return {key: getattr(checked, key) for key in spec}


def effective_train(config: StudyConfig, method: str) -> TrainSettings:
    """The train settings ``method``'s trials use: the global block with its overrides applied."""
    return config.train.model_copy(update=method_train(config, method))


def check_registries(config: StudyConfig) -> None:
    """Names and options against the data set, model and method registries."""
    from study import data as data_registry
    from study import models

    for name in config.datasets:
        if name not in data_registry.DATASETS:
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(data_registry.dataset_names())}")
    for name in config.archs:
        if name not in models.MODELS:
            raise ValueError(f"unknown arch {name!r}; valid: {', '.join(models.model_names())}")
    for name, options in config.data.options.items():
        if name not in config.datasets:
            raise ValueError(f"data.options.{name}: {name!r} is not one of the study's datasets {config.datasets}")
        defaults = option_defaults(data_registry.DATASETS[name])
        check_options(f"data.options.{name}", defaults, dict(options or {}))
    for name, options in config.model.options.items():
        if name not in config.archs:
            raise ValueError(f"model.options.{name}: {name!r} is not one of the study's archs {config.archs}")
        defaults = {**option_defaults(models.MODELS[name]), **models.COMMON_OPTIONS}
        check_options(f"model.options.{name}", defaults, dict(options or {}))
    method_spaces(config)
    for method in config.methods:
        method_train(config, method)
    if config.search.kind == "optuna":
        if len(config.datasets) != 1 or len(config.archs) != 1:
            raise ValueError(
                "an optuna search takes one dataset and one arch (write one study per pair); "
                f"got datasets {config.datasets}, archs {config.archs}"
            )
        if config.search.sampler == "nsga2" and len(config.search.objectives) < 2:
            raise ValueError("search.sampler nsga2 is a multi-objective sampler: give two or more objectives")
    if config.scheduler.kind == "asha" and config.scheduler.metric is not None:
        Objective(metric=config.scheduler.metric)  # known metric?


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
            train = method_train(config, method)
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
    train = method_train(config, method)
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
    overridden = [m for m in config.methods if method_train(config, m)]
    if overridden:
        summary += f" (methods with their own train settings: {', '.join(overridden)})"
    summary += (f"\nresources: {r.cpus_per_trial:g} CPU + {r.gpus_per_trial:g} GPU per trial, "
                f"max concurrent {r.max_concurrent_trials or 'as resources allow'}, retries {r.max_failures}")
    summary += (f"\noutput: {config.output_path} (Tune: {config.resolved_storage_path}); MLflow {config.resolved_tracking_uri}, "
                f"experiment {config.experiment_name!r}; config hash {config.config_hash()}")
    return "\n".join(lines) + "\n" + summary


# -- loading ---------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, source: str) -> str:
    messages = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            valid = _valid_fields(e["loc"][:-1])
            messages.append(f"unknown field {loc!r}" + (f"; valid: {', '.join(valid)}" if valid else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            messages.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(messages)


def _valid_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = StudyConfig
    for part in loc:
        info = model.model_fields.get(str(part))
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def study_from_dict(raw: dict[str, Any] | None, source: str = "study") -> StudyConfig:
    """Validate a raw study mapping; errors become one ValueError naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a study file must be a mapping at the top level, got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_validation_error(err, source)) from None


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read, override and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    try:
        with open(path) as stream:  # a file object: YAML errors then name the file
            raw = yaml.load(stream, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study file must be a mapping at the top level")
    return study_from_dict(apply_overrides(raw, overrides), str(path))
