"""A study's results as frames, computed once: what ``study report`` writes out, what
``study compare`` sets side by side, what ``study report`` prints and what the parent run's
summary metrics hold.

``study_results(runs, ...)`` takes each method's confirm runs where it has any, else its
search runs (``runs.prefer_confirm``), and computes: seed aggregates (``agg``), candidate
points and their test-error fronts, the selection targets, the operating points
(``selected``), the unpruned reference, and the compression at matched validation error per
seed and per method against the reference method (:mod:`analysis.matched`). Pure: no files.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import matched as matching
from analysis.pareto import aggregate_seeds, pareto_front
from analysis.runs import Runs, prefer_confirm, stages_used
from analysis.selection import (GROUP, TARGET_GROUP, Target, reference_points, resolve_targets,
                                select_operating_points)
from study import runformat as rf
from study.runformat import KEY_METRICS

#: The aggregated frame of a study that has not logged a complete epoch yet.
EMPTY_POINTS_COLUMNS: tuple[str, ...] = (
    "config", "epoch", *GROUP, "phase", "n_seeds", "n_trials", "complete", "candidate",
    "compression_mean", "compression_std", "val_error_mean", "test_error_mean", "test_error_std")


@dataclass
class Results:
    usable: pd.DataFrame  # the epoch rows the numbers come from (prefer_confirm of usable epochs)
    stages: pd.DataFrame  # which stage and seeds each method's rows come from
    carry: list[str]  # the columns aggregates carry along (setting, config params)
    agg: pd.DataFrame  # every configuration × epoch, seed-aggregated; ``on_front`` marks the fronts
    points: pd.DataFrame  # the candidate operating points
    front: pd.DataFrame  # their test-error fronts
    targets: dict[tuple, Target]  # (arch, dataset) -> the selection target
    selected: pd.DataFrame  # the operating point per method
    unpruned: pd.DataFrame  # the unpruned reference
    reference: str | None  # the matched comparison's reference method
    matched_seeds: pd.DataFrame
    matched: pd.DataFrame  # compression at matched validation error, per method


def study_methods(runs: Runs) -> set[str]:
    """The methods of the study: those of its runs and those its logged study names."""
    methods = set(runs.trials["method"]) if "method" in runs.trials.columns else set()
    return methods | set((runs.study or {}).get("methods") or {})


def study_results(runs: Runs, *, target_error: float | None = None, study_target: float | None = None,
                  reference: str | None = None, targets: dict[tuple, Target] | None = None,
                  matched: bool = True) -> Results:
    """The report's frames; the target and reference as ``analysis.report.make_report`` takes
    them. ``targets`` (another study's, for ``study compare``) replaces the resolved ones;
    ``matched=False`` leaves the matched comparison (its bootstraps) out: empty frames."""
    reference = matching.choose_reference(study_methods(runs), reference)
    usable = prefer_confirm(runs.usable_epochs())
    stages = stages_used(usable)
    carry = [c for c in ("setting", *runs.config_params) if c in usable.columns]
    agg = aggregate(usable, carry)
    points = agg[agg["candidate"].astype(bool)]
    front = pareto_front(points, x="compression_mean", y="test_error_mean", by=GROUP)
    agg["on_front"] = agg.index.isin(front.index)
    if targets is None:
        targets = resolve_targets(agg, explicit=target_error, study=study_target)
    selected = select(agg, targets)
    unpruned = reference_points(agg)
    if matched:
        matched_seeds, comparison = matching.matched_frames(usable, agg, selected, targets, reference)
    else:
        matched_seeds, comparison = pd.DataFrame(columns=[*TARGET_GROUP, *matching.SEED_COLUMNS]), pd.DataFrame(
            columns=[*TARGET_GROUP, *matching.SUMMARY_COLUMNS])
    return Results(usable, stages, carry, agg, points, front, targets, selected, unpruned, reference,
                   matched_seeds, comparison)


def aggregate(epochs: pd.DataFrame, carry: list[str]) -> pd.DataFrame:
    if all(c in epochs.columns for c in KEY_METRICS):
        return aggregate_seeds(epochs, carry=carry)
    return pd.DataFrame(columns=list(EMPTY_POINTS_COLUMNS))  # nothing logged yet


def select(agg: pd.DataFrame, targets: dict[tuple, Target]) -> pd.DataFrame:
    keys = [c for c in TARGET_GROUP if c in agg.columns]
    if len(agg) and keys:  # only the architectures and data sets a target was resolved for
        agg = agg[[tuple(k) in targets for k in agg[keys].itertuples(index=False)]]
    if agg.empty:
        return pd.DataFrame(columns=[*GROUP, "met_target", "target_error"])
    return select_operating_points(agg, targets)


def summary_metrics(runs: Runs, results: Results) -> dict[str, float]:
    """The parent run's summary: trials by status (``trials.<status>``) and, per method at its
    operating point, compression and test error (``compression_at_target.<method>``,
    ``test_error_at_target.<method>``; with ``<arch>.<dataset>.`` before the method when the
    study has several), and each target (``target_error``, same rule)."""
    out: dict[str, float] = {}
    counts = runs.trials["status"].value_counts() if len(runs.trials) else pd.Series(dtype=int)
    for status in rf.STATUSES:
        out[f"{rf.SUMMARY_TRIALS_PREFIX}{status}"] = float(counts.get(status, 0))
    several = len(results.targets) > 1
    for (arch, dataset), target in results.targets.items():
        where = f"{arch}.{dataset}." if several else ""
        out[f"{rf.SUMMARY_TARGET}{'.' + where[:-1] if several else ''}"] = float(target.value)
    sel = results.selected
    if len(sel) and "met_target" in sel.columns:
        for _, row in sel[sel["met_target"].astype(bool)].iterrows():
            where = f"{row['arch']}.{row['dataset']}." if several else ""
            out[f"{rf.SUMMARY_COMPRESSION_PREFIX}{where}{row['method']}"] = float(row["compression_mean"])
            out[f"{rf.SUMMARY_TEST_ERROR_PREFIX}{where}{row['method']}"] = float(row["test_error_mean"])
    return out
