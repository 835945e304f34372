"""The method registry: name → Method class. Adding a method is one file plus one line here."""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from baselines.decay import Decay
from baselines.gmp import GradualMagnitude
from baselines.l0 import L0HardConcrete
from baselines.l1 import L1
from baselines.lobster import Lobster
from baselines.magnitude import Magnitude
from baselines.none import NoRegularization
from baselines.sparse_vd import SparseVD
from baselines.weight_decay import WeightDecay
from study.method import Method, MethodContext, MethodParams
from study.options import coerce
from study.runformat import VARIANT_SEP, split_variant
from study.sensitivity import SensitivitySpec, SensitivityUnspec
from study.serene import Serene

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
        Lobster,
        Serene,
    )
}


_VARIANT_LABEL = re.compile(r"[A-Za-z0-9_.-]+")


def method_names() -> list[str]:
    return list(METHODS)


def method_class(name: str) -> type[Method]:
    """The class of a registered method, or of a variant ``<method>@<label>`` (the same method
    under its own settings, a row of its own in reports: see ``runformat.VARIANT_SEP``)."""
    base, variant = split_variant(name)
    if base not in METHODS:
        raise ValueError(f"unknown method {base!r}; valid: {', '.join(METHODS)} "
                         f"(a variant is <method>{VARIANT_SEP}<label>)")
    if VARIANT_SEP in name and not _VARIANT_LABEL.fullmatch(variant):
        raise ValueError(f"bad variant label {variant!r} in {name!r}: use letters, digits, '_', '.' or '-', "
                         f"e.g. {base}{VARIANT_SEP}sum")
    return METHODS[base]


def param_types(name: str) -> dict[str, Any]:
    """The declared type of each of ``name``'s parameters (its ``Params`` annotations)."""
    return typing.get_type_hints(method_class(name).Params)


def make_params(name: str, values: dict[str, Any] | None = None) -> MethodParams:
    """Build ``name``'s typed Params from a dict (strings allowed); unknown keys are errors."""
    cls = method_class(name)
    params_cls = cls.Params
    hints = param_types(name)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    values = dict(values or {})
    unknown = sorted(set(values) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise ValueError(f"unknown parameter {unknown[0]!r} for method {name!r}; valid: {valid}")
    coerced = {k: coerce(v, hints[k], k) for k, v in values.items()}
    return params_cls(**coerced)


def build_method(name: str, params: dict[str, Any] | None, context: MethodContext) -> Method:
    cls = method_class(name)
    return cls(make_params(name, params), context)


def default_params(name: str) -> dict[str, Any]:
    return dataclasses.asdict(method_class(name).Params())
