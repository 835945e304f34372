"""The study file: its validated schema, YAML loading, ``--set`` overrides, errors that name
the field, and the checks against the registries. (One concept, the study file, over 400
lines: every section and every check of a field lives next to its definition.)

A study is one YAML file. Every field has a default that works on a laptop, so the smallest
study file is ``{}``. Unknown fields are errors that name the field and the valid ones, and
method names, method parameters, data set and architecture options are checked against the
registries, so ``study validate`` catches typos before any trial starts. The ``train`` block is
derived from :class:`study.settings.TrainConfig`, the trainer's own settings.

A method's entry holds its parameters (the forms are in :mod:`study.plan`, which expands a
study into trials) and may also hold the reserved key ``train``: fixed values that override
fields of the global ``train`` block for that method's trials only (``sparse-vd: {train:
{optimizer: adam, lr: 1.0e-3}}``). It is not searched; no method parameter may be called
``train``; and it may not set ``target_error``: every method is compared at the study's one
target (``train.target_error``), which the report's selection uses.

Two sections shape a fair comparison: ``search.budget_per_method`` (every method searched with
the same number of configurations; grids of other sizes are rejected by
:func:`study.plan.check_budgets` unless ``search.allow_unequal``) and ``confirm.seeds`` (the
chosen configurations retrained on fresh seeds, none of them a search seed; see
:mod:`study.stages`). In a multi-objective search ASHA judges every objective by Pareto rank
(:mod:`study.pareto_asha`), so ``scheduler.metric`` is refused there.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from study import runformat as rf
from study.options import check_options, option_defaults
from study.plan import check_budgets, method_spaces
from study.preflight import check_device_name, check_phases
from study.settings import ARCH, AUTO, DATASET, DEVICE_HELP, STUDY_AXES, VAL_FRACTION, TrainConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
TRAIN_KEY = "train"  # reserved in a method's entry: that method's train overrides
#: Train fields a method may not override: every method is compared at the study's one target.
STUDY_WIDE_TRAIN = ("target_error",)


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


def yaml_problem(err: yaml.YAMLError, lines: bool = True) -> str:
    """PyYAML's multi-line error as one line: what is wrong and where (``line L, column C``,
    or only the column for a one-line value)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None)
    where = ""
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if lines else f" at column {mark.column + 1}"
    return f"{problem}{where}" + (f" ({context})" if context else "")


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
        try:
            node[parts[-1]] = parse_yaml(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item}: not a valid YAML value: {yaml_problem(err, lines=False)}") from None
    return out


# -- the schema ------------------------------------------------------------------------------


def _distinct_seeds(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError(f"seeds repeat: {value}")
    return value


#: A list of seeds, none repeated (the study's, and the confirm stage's).
Seeds = Annotated[list[int], AfterValidator(_distinct_seeds)]


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

    @property
    def resolved_root(self) -> str | None:
        """``root`` made absolute against the working directory (None: the loader's default)."""
        return str(Path(self.root).expanduser().resolve()) if self.root else None


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
    num_samples: int = Field(8, ge=1, description="Optuna: configurations to sample (in all; budget_per_method "
                             "replaces it)")
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    seed: int = Field(0, description="the sampler's seed")
    population_size: int | None = Field(None, ge=2, description="NSGA-II population (default 50)")
    budget_per_method: int | None = Field(
        None, ge=1, description="equal budgets: every method searched with this many configurations (grid: "
        "each method's grid size must be this; optuna: one Optuna study per method, this many samples each); "
        "a method without parameters (none) is exempt and trains its one configuration")
    allow_unequal: bool = Field(False, description="grid with budget_per_method: run grids of different sizes")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[Objective]) -> list[Objective]:
        names = [o.metric for o in value]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}")
        return value

    @model_validator(mode="after")
    def _budget_options(self) -> SearchSettings:
        # num_samples is not checked against budget_per_method, which replaces it: a validated
        # study (study.yaml on the parent run) holds both and must validate again
        if self.allow_unequal and self.budget_per_method is None:
            raise ValueError("search.allow_unequal only applies with search.budget_per_method")
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


class ConfirmSettings(_Section):
    """The confirm stage: after the search, each method's configuration chosen by the report's
    validation selection rule is retrained on these fresh seeds (tagged ``study.stage=confirm``)."""

    seeds: Seeds = Field(min_length=1, description="fresh seeds, none of them a search seed")



class SchedulerSettings(_Section):
    kind: Literal["none", "asha"] = "none"
    metric: str | None = Field(None, description="one objective: default the search's; several objectives: "
                               "not allowed, ASHA ranks trials by Pareto rank over all of them")
    mode: Literal["min", "max"] | None = None
    grace_period: int = Field(3, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(3.0, ge=2)


#: Trial checkpoint schedule defaults: a checkpoint every 10 epochs or 2 minutes, whichever
#: comes first (a crash re-trains at most that much; see the README's Performance section).
CHECKPOINT_EVERY = 10
CHECKPOINT_SECONDS = 120.0


class ResourceSettings(_Section):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions share a GPU, e.g. 0.25")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as resources allow")
    num_cpus: int | None = Field(None, ge=1, description="in-process Ray only: CPUs to use (default all)")
    num_gpus: int | None = Field(None, ge=0, description="in-process Ray only: GPUs to use (default all)")
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial, from its last checkpoint")
    checkpoints_to_keep: int = Field(1, ge=1)
    # A trial reports every epoch; a checkpoint goes with the report on this schedule (and at the
    # phase change and the end): a restarted trial re-trains the epochs since its last one.
    checkpoint_every: int = Field(CHECKPOINT_EVERY, ge=0,
                                  description="epochs between a trial's checkpoints (0: by time only)")
    checkpoint_seconds: float | None = Field(CHECKPOINT_SECONDS, gt=0,
                                             description="seconds after which the next epoch checkpoints "
                                                         "(null: by epochs only)")


class StudyConfig(_Section):
    name: str = Field("study", pattern=NAME_PATTERN)
    description: str = ""
    datasets: list[str] = Field(default_factory=lambda: [DATASET], min_length=1)
    archs: list[str] = Field(default_factory=lambda: [ARCH], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"none": {}, "sensitivity-unspec": {}, "sensitivity-spec": {}}, min_length=1
    )
    seeds: Seeds = Field(default_factory=lambda: [0], min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    confirm: ConfirmSettings | None = Field(None, description="retrain each method's chosen configuration on "
                                            "fresh seeds after the search")
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


    @model_validator(mode="after")
    def _fresh_confirm_seeds(self) -> StudyConfig:
        if self.confirm is not None:
            reused = sorted(set(self.confirm.seeds) & set(self.seeds))
            if reused:
                raise ValueError(f"confirm.seeds {self.confirm.seeds} reuse the search seeds {self.seeds} "
                                 f"({', '.join(map(str, reused))}): confirm on fresh seeds")
        return self

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
        """The one metric ASHA judges in a single-objective search (a multi-objective search's
        ASHA ranks trials by Pareto rank over every objective: :mod:`study.pareto_asha`)."""
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

    # -- a method's entry --------------------------------------------------------------------
    def method_params(self, method: str) -> dict[str, Any]:
        """The parameter specs of ``methods.<method>`` (its entry without the ``train`` key)."""
        return {p: spec for p, spec in self.methods[method].items() if p != TRAIN_KEY}

    def method_train(self, method: str) -> dict[str, Any]:
        """The checked ``train`` overrides of one method (``methods.<method>.train``), typed like
        the global block; ``{}`` when it has none."""
        where = f"methods.{method}.{TRAIN_KEY}"
        spec = (self.methods.get(method) or {}).get(TRAIN_KEY)
        if spec is None:
            return {}
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a mapping of train field -> value, got {spec!r}")
        valid = [name for name in TrainSettings.model_fields if name not in STUDY_WIDE_TRAIN]
        for key, value in spec.items():
            if key in STUDY_WIDE_TRAIN:
                raise ValueError(f"{where}.{key}: every method is compared at the study's one target, so set "
                                 f"train.{key} for the whole study, not per method")
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

    def effective_train(self, method: str) -> TrainSettings:
        """The train settings ``method``'s trials use: the global block with its overrides applied."""
        return self.train.model_copy(update=self.method_train(method))


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
    spaces = method_spaces(config)
    check_budgets(config, spaces)
    from study.methods import method_class
    from study.train import check_prune_schedule

    for method in config.methods:
        own = config.method_train(method)
        where = f"methods.{method}.train.device" if "device" in own else "train.device"
        check_device_name(config.effective_train(method).device, where)
        check_prune_schedule(method_class(method), config.effective_train(method).prune_schedule)
    check_phases(config, spaces)
    if config.search.kind == "optuna":
        if len(config.datasets) != 1 or len(config.archs) != 1:
            raise ValueError(
                "an optuna search takes one dataset and one arch (write one study per pair); "
                f"got datasets {config.datasets}, archs {config.archs}"
            )
        if config.search.sampler == "nsga2" and len(config.search.objectives) < 2:
            raise ValueError("search.sampler nsga2 is a multi-objective sampler: give two or more objectives")
    if config.scheduler.kind == "asha" and config.search.multi_objective and (
            config.scheduler.metric is not None or config.scheduler.mode is not None):
        objectives = ", ".join(o.metric for o in config.search.objectives)
        raise ValueError(f"scheduler.metric/mode: in a multi-objective search ({objectives}) ASHA judges every "
                         f"objective by Pareto rank, so that it never stops a trial on the front; leave "
                         f"scheduler.metric and scheduler.mode unset")
    if config.scheduler.kind == "asha" and config.scheduler.metric is not None:
        Objective(metric=config.scheduler.metric)  # known metric?


# -- loading ---------------------------------------------------------------------------------


def _override_of(loc: tuple[Any, ...], message: str, overrides: Sequence[str]) -> tuple[str, bool] | None:
    """The last ``--set`` that gave the field at ``loc`` its value (its key is ``loc`` or holds
    it: ``train={...}`` for train.epochs), and whether its key is exactly ``loc``. An error of
    the whole study (no ``loc``) belongs to the ``--set`` whose key its message names."""
    path = tuple(str(p) for p in loc)
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        parts = tuple(key.strip().split("."))
        if path and (path[: len(parts)] == parts or parts[: len(path)] == path):
            return item, path == parts
        if not path and (re.search(rf"(?<![\w.-]){re.escape(key.strip())}(?![\w-])", message)
                         or any(f"'{name}'" in message for name in _names(parts[-1], value))):
            return item, False
    return None


def _names(key: str, value: str) -> list[str]:
    """The names a ``--set`` brings in: its last key part and the strings of its value."""
    try:
        parsed = parse_yaml(value)
    except yaml.YAMLError:
        parsed = None
    items = parsed if isinstance(parsed, list) else list(parsed) if isinstance(parsed, dict) else [parsed]
    return [key] + [v for v in items if isinstance(v, str)]


def _format_validation_error(err: ValidationError, source: str, overrides: Sequence[str] = ()) -> str:
    """One line: each problem with the field and the value given (when short); a value that came
    from ``--set`` is named by that assignment instead of the file."""
    messages = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            valid = _valid_fields(e["loc"][:-1])
            text = f"unknown field {loc!r}" + (f"; valid: {', '.join(valid)}" if valid else "")
            exact = False
        else:
            text = e["msg"].removeprefix("Value error, ")
            override = _override_of(e["loc"], text, overrides)
            exact = override is not None and override[1]
            value = e.get("input")
            if (not exact and isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60
                    and "got " not in text):
                text += f", got {value!r}"
            text = f"{loc}: {text}" if loc and not exact else text
        override = _override_of(e["loc"], text, overrides)
        messages.append(f"--set {override[0]}: {text}" if override else f"{source}: {text}")
    return "; ".join(messages)


def _valid_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = StudyConfig
    for part in loc:
        info = model.model_fields.get(str(part))
        annotation = getattr(info, "annotation", None)
        # an optional section (confirm: ConfirmSettings | None) names the model's fields too
        options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        if not (len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel)):
            return []
        model = options[0]
    return list(model.model_fields)


def study_from_dict(raw: dict[str, Any] | None, source: str = "study", overrides: Sequence[str] = ()) -> StudyConfig:
    """Validate a raw study mapping; errors become one ValueError naming the field (and the
    ``--set`` assignment among ``overrides`` that gave it its value)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a study file must be a mapping at the top level, got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_validation_error(err, source, overrides)) from None


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read, override and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    try:
        with open(path) as stream:  # a file object: YAML errors then name the file
            raw = yaml.load(stream, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study file must be a mapping at the top level")
    return study_from_dict(apply_overrides(raw, overrides), str(path), overrides)
