"""The one-line findings written under the report's figures (selected compression per method,
hardest-pruned layer, loss minima) and the check that a confirm stage retrained the starred
configuration. Pure functions of the report's frames.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import tables
from analysis.selection import REFERENCE_METHOD
from study import runformat as rf


def selected_highlights(selected: pd.DataFrame, error: str = "val_error_mean") -> list[str]:
    """Per method (not the reference): its selected compression and ``error``, or "none
    selected"."""
    out = []
    rows = selected[selected["method"] != REFERENCE_METHOD]
    for _, row in rows.iloc[sorted(range(len(rows)), key=lambda i: tables.method_sort_key(
            rows["method"].iloc[i]))].iterrows():
        label = tables.method_label(row["method"])
        out.append(f"{label} {row['compression_mean']:.1f}× at {row[error]:.2f}%"
                   if row["met_target"] else f"{label} none selected")
    return out


def confirm_mismatches(search_selected: pd.DataFrame, selected: pd.DataFrame,
                       stages: pd.DataFrame) -> list[str]:
    """Methods whose confirm runs retrain a configuration other than the one the search view
    stars (the selection rule on the search runs)."""
    if stages.empty or search_selected.empty or "config" not in selected.columns:
        return []
    confirmed = set(stages.loc[stages["stage"].str.contains(rf.STAGE_CONFIRM), "method"])
    star = {r["method"]: r.get("config") for _, r in search_selected.iterrows() if r["met_target"]}
    return [m for _, r in selected.iterrows() if (m := r["method"]) in confirmed
            and isinstance(r.get("config"), str) and star.get(m) not in (None, r["config"])]


def hardest_layers(selected: pd.DataFrame, layers: Sequence[str]) -> list[str]:
    """Per method at an operating point that meets the target: its least remaining layer."""
    out = []
    for _, row in selected[selected["met_target"]
                           & (selected["method"] != REFERENCE_METHOD)].iterrows():
        left = {l: row.get(f"{rf.remaining_key(l)}_mean", np.nan) for l in layers}
        left = {l: v for l, v in left.items() if pd.notna(v)}
        if left:
            low = min(left, key=left.get)
            out.append(f"{tables.method_label(row['method'])}: {low} ({left[low]:.3g}% left)")
    return out


def loss_minima(curves: pd.DataFrame) -> list[str]:
    """Per method: the minimum of its mean test loss, its epoch, and the last value."""
    out = []
    for m, c in curves.groupby("method") if len(curves) else []:
        c = c.sort_values("epoch")
        loss = c["test_loss_mean"].to_numpy(dtype=float) if "test_loss_mean" in c else np.array([])
        if len(loss) and np.isfinite(loss).any():
            i = int(np.nanargmin(loss))
            out.append(f"{tables.method_label(m)}: minimum {loss[i]:.3f} at epoch "
                       f"{int(c['epoch'].iloc[i])}, last {loss[-1]:.3f}")
    return out
