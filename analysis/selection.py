"""The operating-point rule used by the tables. Pure pandas.

Rule: per method (and architecture and data set), among the candidate points (seed-aggregated,
complete, sparsify phase), take the one with the highest mean compression whose mean
validation error is at most the target error. Ties go to the lower mean validation error,
then the earlier epoch, then the configuration key, so the choice is deterministic and never
looks at test error. A method with no such point still gets a row, flagged
``met_target = False``.

The target comes from, in order (``resolve_targets``): ``--target-error``; the study's
``train.target_error``; otherwise the best mean validation error of the unpruned ``none``
method (or of any method, without one) plus ``DEFAULT_TOLERANCE`` percentage points. Where the
first two come from (the study file, or the study's run in MLflow) is for the caller to say:
``study report`` reads them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

GROUP: tuple[str, ...] = ("arch", "dataset", "method")
TARGET_GROUP: tuple[str, ...] = ("arch", "dataset")
DEFAULT_TOLERANCE = 0.5  # percentage points above the best unpruned validation error
REFERENCE_METHOD = "none"


@dataclass(frozen=True)
class Target:
    value: float
    source: str  # a short phrase for the report: "--target-error", "study", ...


def _group_keys(df: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return [c for c in by if c in df.columns]


def resolve_targets(
    points: pd.DataFrame,
    *,
    explicit: float | None = None,
    study: float | None = None,
    by: Sequence[str] = TARGET_GROUP,
    val: str = "val_error_mean",
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[tuple, Target]:
    """One target (validation error, %) per architecture/data set present in ``points``:
    ``explicit`` (``--target-error``), else ``study`` (the study's ``train.target_error``),
    else derived from the points."""
    keys = _group_keys(points, by)
    targets: dict[tuple, Target] = {}
    if points.empty:
        return targets
    for key, group in points.groupby(keys, sort=True, dropna=False) if keys else [((), points)]:
        key = key if isinstance(key, tuple) else (key,)
        if explicit is not None:
            targets[key] = Target(float(explicit), "--target-error")
            continue
        if study is not None:
            targets[key] = Target(float(study), "the study's target_error")
            continue
        complete = group[group["complete"].astype(bool)] if "complete" in group else group
        reference = complete[complete["method"] == REFERENCE_METHOD] if "method" in group else complete
        name = f"'{REFERENCE_METHOD}'"
        if not np.isfinite(reference[val].to_numpy(dtype=float)).any():
            reference, name = complete, "any method"
        if not np.isfinite(reference[val].to_numpy(dtype=float)).any():
            targets[key] = Target(float("nan"), "no complete point yet")
            continue
        best = float(np.nanmin(reference[val].to_numpy(dtype=float)))
        targets[key] = Target(
            best + tolerance, f"best validation error of {name} ({best:.2f}%) + {tolerance:g} points"
        )
    return targets


def _target_for(key: tuple, group_cols: list[str], target_cols: list[str],
                target_error: float | Mapping[tuple, float | Target]) -> float:
    if not isinstance(target_error, Mapping):
        return float(target_error)
    tkey = tuple(key[group_cols.index(c)] for c in target_cols)
    if tkey not in target_error:
        raise ValueError(f"no target error for {dict(zip(target_cols, tkey))}; "
                         f"targets given for {list(target_error)}")
    value = target_error[tkey]
    return float(value.value if isinstance(value, Target) else value)


def select_operating_points(
    points: pd.DataFrame,
    target_error: float | Mapping[tuple, float | Target],
    *,
    by: Sequence[str] = GROUP,
    target_by: Sequence[str] = TARGET_GROUP,
    x: str = "compression_mean",
    val: str = "val_error_mean",
) -> pd.DataFrame:
    """One row per ``by`` group: the chosen point, or an empty row with ``met_target`` False.

    ``points``: the seed-aggregated frame (``pareto.aggregate_seeds``); rows whose
    ``candidate`` column is False are ignored. ``target_error``: one value for all, or a
    mapping from ``target_by`` values (e.g. ``("lenet300", "mnist")``) to a value.
    """
    group_cols = _group_keys(points, by)
    target_cols = [c for c in target_by if c in group_cols]
    for col in (x, val):
        if col not in points.columns:
            raise ValueError(f"no column {col!r}; columns are {list(points.columns)}")
    rows = []
    grouping = points.groupby(group_cols, sort=True, dropna=False) if group_cols else [((), points)]
    for key, group in grouping:
        key = key if isinstance(key, tuple) else (key,)
        target = _target_for(key, group_cols, target_cols, target_error)
        pool = group[group["candidate"].astype(bool)] if "candidate" in group else group
        pool = pool[np.isfinite(pool[x].astype(float)) & (pool[val].astype(float) <= target)]
        if pool.empty:
            row = pd.Series(dict(zip(group_cols, key)), dtype=object)
            row["met_target"] = False
        else:
            order = [x, val] + [c for c in ("epoch", "config") if c in pool.columns]
            ascending = [False, True] + [True] * (len(order) - 2)
            row = pool.sort_values(order, ascending=ascending, kind="stable").iloc[0].copy()
            row["met_target"] = True
        row["target_error"] = target
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    if out.empty:
        return pd.DataFrame(columns=[*group_cols, "met_target", "target_error"])
    out["met_target"] = out["met_target"].astype(bool)
    return out


def reference_points(
    points: pd.DataFrame,
    *,
    method: str = REFERENCE_METHOD,
    by: Sequence[str] = TARGET_GROUP,
    val: str = "val_error_mean",
) -> pd.DataFrame:
    """The unpruned reference per architecture/data set: the complete ``method`` point
    (any phase) with the lowest mean validation error. Empty when the study has no ``none``."""
    if "method" not in points.columns:
        return points.iloc[0:0]
    ref = points[(points["method"] == method) & points.get("complete", True)]
    ref = ref[np.isfinite(ref[val].astype(float))]
    if ref.empty:
        return ref
    keys = _group_keys(ref, by)
    order = [val] + [c for c in ("epoch", "config") if c in ref.columns]
    ref = ref.sort_values(order, kind="stable")
    return ref.groupby(keys, sort=True, dropna=False).head(1) if keys else ref.head(1)


def chosen_configs(agg: pd.DataFrame, selected: pd.DataFrame) -> dict[str, str]:
    """One configuration per method (of one architecture and data set): the one at its
    operating point, or else the one with the lowest mean validation error at any complete
    epoch. The training curves and the matched comparison read these."""
    chosen: dict[str, str] = {}
    for _, row in selected.iterrows():
        if row["met_target"] and isinstance(row.get("config"), str):
            chosen[row["method"]] = row["config"]
    complete = agg[agg["complete"].astype(bool)] if "complete" in agg else agg
    for method, part in complete.groupby("method"):
        if method not in chosen and np.isfinite(part["val_error_mean"].astype(float)).any():
            chosen[method] = part.loc[part["val_error_mean"].astype(float).idxmin(), "config"]
    return chosen
