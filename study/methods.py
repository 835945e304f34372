"""The method registry: name → Method class. Adding a method is one file plus one line here."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from baselines.decay import Decay
from baselines.gmp import GradualMagnitude
from baselines.l0 import L0HardConcrete
from baselines.l1 import L1
from baselines.magnitude import Magnitude
from baselines.none import NoRegularization
from baselines.sparse_vd import SparseVD
from baselines.weight_decay import WeightDecay
from study.method import Method, MethodContext, MethodParams
from study.sensitivity import SensitivitySpec, SensitivityUnspec

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        NoRegularization,
        SensitivityUnspec,
        SensitivitySpec,
        WeightDecay,
        Decay,
        L1,
        Magnitude,
        L0HardConcrete,
        SparseVD,
        GradualMagnitude,
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}") from None


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """Turn a command-line string into the dataclass field's declared type."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in options:
            raise ValueError(f"invalid value {where}={value!r}; valid: {', '.join(map(str, options))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return coerce_value(value, inner[0], where) if len(inner) == 1 else value
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid value {where}={value!r}; valid: true, false")
    if annotation in (int, float):
        try:
            return annotation(float(value)) if annotation is int and float(value).is_integer() else annotation(value)
        except ValueError:
            raise ValueError(f"invalid value {where}={value!r}; expected a number") from None
    return value


def make_params(name: str, values: dict[str, Any] | None = None) -> MethodParams:
    """Build ``name``'s typed Params from a dict (strings allowed); unknown keys are errors."""
    cls = method_class(name)
    params_cls = cls.Params
    hints = typing.get_type_hints(params_cls)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    values = dict(values or {})
    unknown = sorted(set(values) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise ValueError(f"unknown parameter {unknown[0]!r} for method {name!r}; valid: {valid}")
    coerced = {k: coerce_value(v, hints[k], k) for k, v in values.items()}
    return params_cls(**coerced)


def build_method(name: str, params: dict[str, Any] | None, context: MethodContext) -> Method:
    cls = method_class(name)
    return cls(make_params(name, params), context)


def default_params(name: str) -> dict[str, Any]:
    return dataclasses.asdict(method_class(name).Params())
