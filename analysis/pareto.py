"""Seed aggregation and Pareto fronts of error against compression. Pure pandas/numpy.

Every (trial, epoch) of the sparsify phase is a candidate operating point. Seeds of one
configuration (all params except the seed) are aggregated epoch by epoch into mean and
standard deviation. A point is on the front of its group (method, architecture, data set)
when no other point of the group dominates it: error no higher, compression no lower, and
strictly better in at least one of the two. Identical points do not dominate each other,
so duplicates on the front are all kept.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.runs import FLAG_STATUSES, TRIAL_INFO_COLUMNS, UNKNOWN_PHASE
from study import runformat as rf
from study.runformat import KEY_METRICS, LAYER_METRIC_PREFIXES, STANDARD_METRICS

#: Columns that describe one trial or one epoch rather than a configuration.
NOT_CARRIED: frozenset[str] = frozenset({
    *TRIAL_INFO_COLUMNS, "superseded", *FLAG_STATUSES,
    *rf.SEED_PARAMS, *rf.NON_CONFIG_PARAMS, rf.EPOCH, rf.PHASE, rf.PHASE_INDEX_METRIC,
})

#: Candidate phases: "unknown" is a trial that logged no ``phase_index`` at all.
CANDIDATE_PHASES: frozenset[str] = frozenset({rf.SPARSIFY, UNKNOWN_PHASE})


def _metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns
            if c in STANDARD_METRICS or c.startswith(LAYER_METRIC_PREFIXES)]


def _phase_of(phases: pd.Series) -> str:
    values = set(phases.dropna())
    if not values:
        return "unknown"
    return values.pop() if len(values) == 1 else "mixed"


def valid_rows(epochs: pd.DataFrame) -> pd.Series:
    """Rows that measure a usable network: finite ``KEY_METRICS``, and a finite train loss
    for trials that log one (a non-finite loss is the epoch a trial diverged)."""
    ok = pd.Series(np.isfinite(epochs[list(KEY_METRICS)].to_numpy(dtype=float)).all(axis=1),
                   index=epochs.index)
    if "train_loss" in epochs.columns:
        loss = epochs["train_loss"].astype(float)
        trial = epochs["run_id"] if "run_id" in epochs.columns else epochs.get("seed")
        logs_loss = loss.notna().groupby(trial).transform("any") if trial is not None else True
        ok &= ~logs_loss | np.isfinite(loss)
    return ok


def aggregate_seeds(
    epochs: pd.DataFrame,
    *,
    by: Sequence[str] = ("config",),
    metrics: Sequence[str] | None = None,
    carry: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per configuration and epoch.

    ``epochs`` has one row per trial × epoch (``Runs.epochs``, usually without failed trials).
    Only ``valid_rows`` count. Output: one row per (``by``, epoch) with

    - ``<metric>_mean`` and ``<metric>_std`` (sample std, ddof=1; NaN with one seed);
    - ``n_seeds``: rows that counted; ``n_trials``: distinct trials of the configuration;
    - ``complete``: every trial of the configuration counted at this epoch;
    - ``phase``: the common phase of those rows, or ``"mixed"``;
    - ``candidate``: complete and in the sparsify phase (an operating point);
    - the ``carry`` columns (default: every column that describes the configuration).
    """
    by = list(by)
    missing = [c for c in [*by, "epoch", *KEY_METRICS] if c not in epochs.columns]
    if missing:
        raise ValueError(f"epochs frame lacks columns {missing}; it has {list(epochs.columns)}")
    metrics = list(metrics) if metrics is not None else _metric_columns(epochs)
    if carry is None:
        carry = [c for c in epochs.columns
                 if c not in NOT_CARRIED and c not in metrics and c not in by]
    carry = [c for c in carry if c not in by]

    valid = epochs[valid_rows(epochs)].astype({m: float for m in metrics})
    keys = [*by, "epoch"]
    if valid.empty:
        columns = [*keys, *carry, "phase", "n_seeds", "n_trials", "complete", "candidate",
                   *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]
        return pd.DataFrame(columns=columns)

    grouped = valid.groupby(keys, sort=True, dropna=False)
    mean = grouped[metrics].mean()
    std = grouped[metrics].std(ddof=1)
    out = pd.concat([mean.add_suffix("_mean"), std.add_suffix("_std")], axis=1)
    # Interleave mean/std per metric so the CSV reads naturally.
    out = out[[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    out.insert(0, "n_seeds", grouped.size())
    if "phase" in valid.columns:
        out.insert(0, "phase", grouped["phase"].agg(_phase_of))
    else:
        out.insert(0, "phase", "unknown")
    if carry:
        first = grouped[carry].first()
        out = pd.concat([first, out], axis=1)
    out = out.reset_index()

    trial_col = "run_id" if "run_id" in epochs.columns else None
    if trial_col is not None:
        n_trials = epochs.groupby(by, dropna=False)[trial_col].nunique().rename("n_trials")
    else:  # without trial ids, seeds identify trials
        n_trials = epochs.groupby(by, dropna=False)["seed"].nunique().rename("n_trials")
    out = out.merge(n_trials.reset_index(), on=by, how="left")
    out["complete"] = out["n_seeds"] == out["n_trials"]
    out["candidate"] = out["complete"] & out["phase"].isin(CANDIDATE_PHASES)
    return out


def _front_positions(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Non-dominated flags for x maximized, y minimized. O(n log n) sweep.

    Points are visited from the largest x down, one distinct x at a time. Within a group of
    equal x only the smallest y can survive (others are dominated by it), and it survives when
    it is strictly below every y seen at a larger x.
    """
    keep = np.zeros(len(xs), dtype=bool)
    order = np.lexsort((ys, -xs))  # x descending, then y ascending
    best_y = np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        group = order[i:j]
        group_min = ys[group].min()
        if group_min < best_y:
            keep[group[ys[group] == group_min]] = True
            best_y = group_min
        i = j
    return keep


def front_mask(
    df: pd.DataFrame,
    x: str = "compression",
    y: str = "test_error",
    by: Sequence[str] = (),
    *,
    maximize_x: bool = True,
    minimize_y: bool = True,
) -> pd.Series:
    """Boolean Series aligned with ``df``: True for rows on the front of their ``by`` group.

    Rows with a non-finite x or y are never on the front.
    """
    mask = pd.Series(False, index=df.index)
    if df.empty:
        return mask
    xs_all = df[x].to_numpy(dtype=float) * (1.0 if maximize_x else -1.0)
    ys_all = df[y].to_numpy(dtype=float) * (1.0 if minimize_y else -1.0)
    finite = np.isfinite(xs_all) & np.isfinite(ys_all)
    positions = np.arange(len(df))
    if by:
        groups = df.groupby(list(by), sort=False, dropna=False).indices.values()
    else:
        groups = [positions]
    flags = np.zeros(len(df), dtype=bool)
    for idx in groups:
        idx = np.asarray(idx)[finite[np.asarray(idx)]]
        if len(idx):
            flags[idx] = _front_positions(xs_all[idx], ys_all[idx])
    mask[:] = flags
    return mask


def pareto_front(
    df: pd.DataFrame,
    x: str = "compression",
    y: str = "test_error",
    by: Sequence[str] = ("arch", "dataset", "method"),
    *,
    maximize_x: bool = True,
    minimize_y: bool = True,
) -> pd.DataFrame:
    """The non-dominated rows of ``df`` per ``by`` group, sorted by group and then by x."""
    by = [c for c in by if c in df.columns]
    for col in (x, y):
        if col not in df.columns:
            raise ValueError(f"no column {col!r}; columns are {list(df.columns)}")
    mask = front_mask(df, x, y, by, maximize_x=maximize_x, minimize_y=minimize_y)
    return df[mask].sort_values([*by, x, y], kind="stable")
