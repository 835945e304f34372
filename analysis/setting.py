"""The ``setting`` label of a trial: what sets its configuration apart, for the report's
"Setting" column. Pure.

A trial's label names:

- its method's own params (logged undotted; not method, arch, data set or seed) that
  - the study names for the method (``methods.<method>`` in its ``study.yaml``: the
    researcher chose them, e.g. magnitude's ``quality`` and ``rounds``, GMP's
    ``target_sparsity``),
  - take more than one value among the method's trials (searched), or
  - are a ``KEY_SETTINGS`` param (λ, T) with a nonzero value (a method that has no
    regularizer logs ``lam=0.0``: that says nothing);
- then each ``train.*`` param that differs from the study's train block (``train`` in its
  ``study.yaml``, else the value most trials share): a method's train override, e.g. sparse
  VD's ``train.optimizer=adam, train.lr=0.001``, named as the MLflow param.

Numbers print in their shortest form (``5.0`` → ``5``) when that is the same number.
Example: ``lam=0.002, threshold=0.02`` or ``warmup_epochs=5, kl_scale=0.1,
train.optimizer=adam, train.lr=0.001``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from study import runformat as rf

#: Method params always named in a label when nonzero; others only when the study names them
#: or they vary among the method's trials.
KEY_SETTINGS: tuple[str, ...] = ("lam", "threshold")
_TRAIN_KEY = "train"  # a method's train overrides in a study's ``methods.<method>`` entry


def _missing(value: Any) -> bool:
    return value is None or value in ("", "None") or (isinstance(value, float) and pd.isna(value))


def same_value(logged: Any, reference: Any) -> bool:
    """A logged param string against a value of the study: as numbers when both are numbers
    (``0.001`` = ``1e-3``), else as ``runformat.param_string`` writes them."""
    a, b = str(logged), rf.param_string(reference)
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def short(value: Any) -> str:
    """``5.0`` → ``5``, ``1e-05`` stays; text and numbers that ``g`` would round stay as they
    are."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}" if float(f"{number:g}") == number else text


def _zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _study_train(raw: pd.DataFrame, study: Mapping[str, Any] | None) -> dict[str, Any]:
    """The study's train block: from its ``study.yaml``, else the value most trials share."""
    if study and isinstance(study.get(_TRAIN_KEY), Mapping):
        return dict(study[_TRAIN_KEY])
    out = {}
    for col in raw.columns:
        if col.startswith(rf.TRAIN_PREFIX):
            values = raw[col].dropna()
            if len(values):
                out[col[len(rf.TRAIN_PREFIX):]] = values.mode().iloc[0]
    return out


def setting_labels(raw: pd.DataFrame, methods: pd.Series,
                   study: Mapping[str, Any] | None = None) -> list[str]:
    """One label per row of ``raw`` (a trial's params as logged strings, one column per param)
    for the method in ``methods`` at the same position; ``study`` is the parent's parsed
    ``study.yaml`` (None when absent)."""
    own = [c for c in raw.columns
           if "." not in c and c not in rf.CORE_PARAMS and c not in rf.SEED_PARAMS]
    skip = {*rf.SEED_PARAMS, *rf.NON_CONFIG_PARAMS}
    train_cols = [c for c in raw.columns if c.startswith(rf.TRAIN_PREFIX) and c not in skip]
    study_train = _study_train(raw, study)
    entries = (study or {}).get("methods") or {}
    shown: dict[str, list[str]] = {}
    train_order: dict[str, list[str]] = {}
    for method, part in raw.groupby(methods.to_numpy(), sort=False):
        entry = entries.get(method) if isinstance(entries, Mapping) else None
        entry = entry if isinstance(entry, Mapping) else {}
        named = [k for k in entry if k != _TRAIN_KEY and k in own]
        rest = [c for c in KEY_SETTINGS if c in own] + [c for c in own if c not in KEY_SETTINGS]
        shown[method] = [c for c in dict.fromkeys([*named, *rest]) if part[c].notna().any() and (
            c in named or part[c].nunique() > 1
            or (c in KEY_SETTINGS and not part[c].dropna().map(_zero).all()))]
        overrides = entry.get(_TRAIN_KEY) if isinstance(entry.get(_TRAIN_KEY), Mapping) else {}
        first = [f"{rf.TRAIN_PREFIX}{k}" for k in overrides if f"{rf.TRAIN_PREFIX}{k}" in train_cols]
        train_order[method] = list(dict.fromkeys([*first, *train_cols]))
    labels = []
    for method, (_, row) in zip(methods, raw.iterrows()):
        params = [f"{c}={short(row[c])}" for c in shown[method] if not _missing(row[c])]
        train = [f"{c}={short(row[c])}" for c in train_order[method]
                 if not _missing(row[c]) and c[len(rf.TRAIN_PREFIX):] in study_train
                 and not same_value(row[c], study_train[c[len(rf.TRAIN_PREFIX):]])]
        labels.append(", ".join([*params, *train]))
    return labels
