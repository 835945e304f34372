"""Compression at matched validation error, and its difference to a reference method. Pure.

The question a study answers is "does method A sparsify more than method B at equal error?".
The operating-point table picks one epoch per method from the seed means; this module reads
every seed's own trajectory at one validation error, the target of the report
(``selection.resolve_targets``), and puts an uncertainty on each number.

**Which runs.** Per method (and architecture and data set): the seeds of one configuration,
in the rows ``runs.prefer_confirm`` keeps: its confirm runs when it has any, else its search
runs. The configuration is the one the operating-point rule chose
(``selection.chosen_configs``); a method that never met the target uses its configuration
with the lowest mean validation error, so that the report can say how far it stayed.

**The matched point of one seed.** Its sparsify-phase epochs (``pareto.CANDIDATE_PHASES``)
with finite validation error, test error and compression (``pareto.valid_rows``), in epoch
order, form a piecewise-linear path in (validation error v, log compression y). The matched
compression is the largest y on that path at which v ≤ target:

- on each segment the points with v ≤ target form one sub-segment, so the largest y lies at
  an epoch with v ≤ target or where the segment crosses v = target (y interpolated
  linearly there, i.e. compression geometrically);
- a non-monotone path (error that falls again after a rise, compression that drops) is
  handled the same way: every part of the path at or under the target counts, and the
  largest compression anywhere on it wins; ties go to the lower validation error, then the
  earlier position;
- the target is never reached (every epoch has v > target): NaN, and the report says so;
- the largest y is the last epoch, still under the target: the run ended before its error
  reached the target, so the value is a lower bound (``lower_bound``; the report says so).

Test error at the matched point is interpolated on the same segment, at the same fraction.

**Aggregates over seeds.** Seeds that never reach the target are counted and named, and left
out of the means. Per method: mean compression with a 95 % percentile bootstrap interval
(``scipy.stats.bootstrap``), test error mean ± sample std.

**Against the reference.** The reference is ``decay`` (the sensitivity update without S) when
the study has it, else ``weight-decay``, or the one ``study report --reference`` names. The
ratio is exp(mean log c_A − mean log c_ref), the ratio of the seeds' geometric mean
compressions: it is symmetric (A/B = 1/(B/A)) and its bootstrap, which resamples seeds within
each method independently, is always defined (every compression is ≥ 1). The p-value is a
two-sided permutation test of the difference in mean log compression
(``scipy.stats.permutation_test``, exact when there are at most 9,999 relabellings). The
verdict calls a difference established only when the 95 % interval excludes 1 *and* p < 0.05;
an interval that includes 1 is "no detectable difference" whatever p says.

**Few seeds.** With 2–3 seeds per method these numbers describe the seeds, nothing more: a
bootstrap resample of 3 values takes only 10 distinct means, so the interval is coarse and,
with no small-sample correction, too narrow; and a permutation test of 3 vs 3 seeds has 20
relabellings, so its smallest possible two-sided p is 0.1 (``smallest_p``): it can never reach
0.05 and the verdict cannot be "established". The report says so where it applies. The
random draws use a fixed seed, so a report is reproducible.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd
from scipy import stats

from analysis.pareto import CANDIDATE_PHASES, valid_rows
from analysis.selection import TARGET_GROUP, Target, chosen_configs
from study import runformat as rf

#: The reference when ``--reference`` is not given: the first of these the study has.
REFERENCE_ORDER: tuple[str, ...] = ("decay", "weight-decay")
CONFIDENCE = 0.95
ALPHA = 0.05
N_RESAMPLES = 9999
RANDOM_SEED = 0

#: Verdicts of a comparison with the reference.
MORE, LESS = "more", "less"
NO_DIFFERENCE = "no detectable difference"
NOT_ESTABLISHED = "not established"
NO_DATA = "no data"

#: The per-seed frame's columns.
SEED_COLUMNS: tuple[str, ...] = (
    "method", "config", "setting", "stage", "seed", "run_id", "status", "n_epochs", "reached",
    "lower_bound", "compression", "test_error", "val_error", "epoch", "best_val_error")
#: The per-method frame's columns.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "method", "reference", "target_error", "stage", "setting", "n_seeds", "n_reached",
    "n_lower_bound", "best_val_error", "compression_mean", "compression_lo", "compression_hi",
    "test_error_mean", "test_error_std", "ratio", "ratio_lo", "ratio_hi", "p_value", "p_min",
    "n_reference", "verdict")


# -- the reference ---------------------------------------------------------------------------
def choose_reference(methods: Iterable[str], requested: str | None = None) -> str | None:
    """``requested`` when it is one of ``methods`` (else a one-line ValueError naming them);
    without one, the first of ``REFERENCE_ORDER`` in ``methods``; None when there is none."""
    methods = sorted(set(methods))
    if requested is not None:
        if requested not in methods:
            raise ValueError(f"--reference {requested!r} is not a method of this study; "
                             f"choose one of {methods}")
        return requested
    return next((m for m in REFERENCE_ORDER if m in methods), None)


# -- one seed ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchedPoint:
    """Where one trajectory meets the target; NaN numbers when it never does."""

    compression: float
    test_error: float
    val_error: float
    position: float     # index along the path: 2.5 = half way from its 3rd to its 4th point
    lower_bound: bool   # the largest compression is the last point, still under the target

    @property
    def reached(self) -> bool:
        return bool(np.isfinite(self.compression))


def matched_point(val_error: Sequence[float], compression: Sequence[float],
                  test_error: Sequence[float], target: float) -> MatchedPoint:
    """The largest compression on the path through (validation error, log compression), in
    the given (epoch) order, at which validation error ≤ ``target`` (module docstring)."""
    v = np.asarray(val_error, dtype=float)
    c = np.asarray(compression, dtype=float)
    te = np.asarray(test_error, dtype=float)
    if not (len(v) == len(c) == len(te)):
        raise ValueError(f"trajectories of unequal length: {len(v)}, {len(c)}, {len(te)}")
    y = np.log(c)
    # candidates: (log compression, validation error, position, test error, compression);
    # at an epoch the logged compression itself, so that no exp(log(c)) rounding creeps in
    found = [(y[i], v[i], float(i), te[i], c[i]) for i in range(len(v)) if v[i] <= target]
    for i in range(len(v) - 1):
        if (v[i] - target) * (v[i + 1] - target) < 0:  # the segment crosses the target
            s = (target - v[i]) / (v[i + 1] - v[i])
            at = y[i] + s * (y[i + 1] - y[i])
            found.append((at, float(target), i + s, te[i] + s * (te[i + 1] - te[i]), np.exp(at)))
    if not found:
        return MatchedPoint(np.nan, np.nan, np.nan, np.nan, False)
    best = min(found, key=lambda cand: (-cand[0], cand[1], cand[2]))
    last = len(v) - 1
    return MatchedPoint(float(best[4]), float(best[3]), float(best[1]), float(best[2]),
                        bool(best[2] == last and v[last] < target))


def seed_points(epochs: pd.DataFrame, configs: Mapping[str, str], target: float) -> pd.DataFrame:
    """One row per method (of ``configs``: method → configuration) and run of that
    configuration in ``epochs`` (one architecture and data set, e.g. ``prefer_confirm``'s
    rows): its matched point at ``target`` (``SEED_COLUMNS``)."""
    if epochs.empty or not configs:
        return pd.DataFrame(columns=list(SEED_COLUMNS))
    part = epochs[epochs["config"].isin(set(configs.values()))]
    part = part[part[rf.PHASE].isin(CANDIDATE_PHASES)]
    part = part[valid_rows(part)] if len(part) else part
    rows = []
    for method, config in configs.items():
        runs = part[(part[rf.METHOD] == method) & (part["config"] == config)]
        for run_id, run in runs.groupby("run_id", sort=False):
            run = run.sort_values(rf.EPOCH)
            point = matched_point(run[rf.VAL_ERROR], run[rf.COMPRESSION], run[rf.TEST_ERROR], target)
            first = run.iloc[0]
            rows.append({
                "method": method, "config": config, "setting": first.get("setting", ""),
                "stage": first.get("stage", rf.STAGE_SEARCH), "seed": first.get(rf.SEED, np.nan),
                "run_id": run_id, "status": first.get("status", ""), "n_epochs": len(run),
                "reached": point.reached, "lower_bound": point.lower_bound,
                "compression": point.compression, "test_error": point.test_error,
                "val_error": point.val_error,
                # the matched point's epoch, fractional between two epochs
                "epoch": (float(np.interp(point.position, np.arange(len(run)), run[rf.EPOCH]))
                          if point.reached else np.nan),
                "best_val_error": float(run[rf.VAL_ERROR].min()),
            })
    out = pd.DataFrame(rows, columns=list(SEED_COLUMNS))
    return out.sort_values(["method", "seed"], kind="stable").reset_index(drop=True)


# -- statistics over seeds -----------------------------------------------------------------------
def _rng() -> np.random.Generator:
    return np.random.default_rng(RANDOM_SEED)


def _diff_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean; NaN with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return np.nan, np.nan
    res = stats.bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                          method="percentile", vectorized=True, rng=_rng())
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def ratio_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """exp(mean log a − mean log b) and its 95 % percentile bootstrap interval, resampling
    ``a`` and ``b`` independently; NaN interval when either has fewer than 2 values, NaN
    ratio when either is empty."""
    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    if not len(la) or not len(lb):
        return np.nan, np.nan, np.nan
    ratio = float(np.exp(la.mean() - lb.mean()))
    if len(la) < 2 or len(lb) < 2:
        return ratio, np.nan, np.nan
    res = stats.bootstrap((la, lb), _diff_of_means, n_resamples=N_RESAMPLES,
                          confidence_level=CONFIDENCE, method="percentile", vectorized=True,
                          paired=False, rng=_rng())
    ci = res.confidence_interval
    return ratio, float(np.exp(ci.low)), float(np.exp(ci.high))


def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided permutation-test p of the difference in mean log value between ``a`` and
    ``b`` (exact up to ``N_RESAMPLES`` relabellings); NaN when either has fewer than 2
    values (scipy's test needs 2; 1 vs 3 could not go below p = 0.5 anyway)."""
    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    if len(la) < 2 or len(lb) < 2:
        return np.nan
    res = stats.permutation_test((la, lb), _diff_of_means, permutation_type="independent",
                                 vectorized=True, n_resamples=N_RESAMPLES,
                                 alternative="two-sided", rng=_rng())
    return float(res.pvalue)


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p an exact permutation test of ``n_a`` vs ``n_b`` distinct
    values can give: 2 / C(n_a + n_b, n_a), at most 1 (3 vs 3: 0.1; 2 vs 2: 1/3)."""
    if n_a < 1 or n_b < 1:
        return np.nan
    return min(1.0, 2 / comb(n_a + n_b, n_a))


def verdict(ratio: float, lo: float, hi: float, p: float, alpha: float = ALPHA) -> str:
    """``MORE``/``LESS`` only when the interval excludes 1 and p < ``alpha``;
    ``NO_DIFFERENCE`` when the interval includes 1; ``NOT_ESTABLISHED`` otherwise (the
    interval excludes 1 but p does not agree, or there is no interval); ``NO_DATA`` without
    a ratio."""
    if not np.isfinite(ratio):
        return NO_DATA
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return NOT_ESTABLISHED
    if lo <= 1 <= hi:
        return NO_DIFFERENCE
    if np.isfinite(p) and p < alpha:
        return MORE if lo > 1 else LESS
    return NOT_ESTABLISHED


def compare(seeds: pd.DataFrame, reference: str | None, target: float) -> pd.DataFrame:
    """Per method of ``seeds`` (``seed_points``): seed counts, mean compression with its
    interval, test error mean ± std, and, against ``reference``, the ratio with its interval,
    p, the smallest possible p and the verdict (``SUMMARY_COLUMNS``)."""
    ref = seeds[(seeds["method"] == reference) & seeds["reached"]] if reference else seeds.iloc[0:0]
    ref_c = ref["compression"].to_numpy(dtype=float)
    rows = []
    for method, part in seeds.groupby("method", sort=False):
        hit = part[part["reached"].astype(bool)]
        c = hit["compression"].to_numpy(dtype=float)
        te = hit["test_error"].to_numpy(dtype=float)
        lo, hi = mean_interval(c)
        row = {
            "method": method, "reference": reference or "", "target_error": float(target),
            "stage": "+".join(sorted(set(part["stage"]))),
            "setting": part["setting"].iloc[0], "n_seeds": len(part), "n_reached": len(hit),
            "n_lower_bound": int(hit["lower_bound"].sum()),
            "best_val_error": float(part["best_val_error"].min()),
            "compression_mean": float(c.mean()) if len(c) else np.nan,
            "compression_lo": lo, "compression_hi": hi,
            "test_error_mean": float(te.mean()) if len(te) else np.nan,
            "test_error_std": float(te.std(ddof=1)) if len(te) > 1 else np.nan,
            "ratio": np.nan, "ratio_lo": np.nan, "ratio_hi": np.nan, "p_value": np.nan,
            "p_min": np.nan, "n_reference": len(ref_c), "verdict": NO_DATA,
        }
        if reference and method != reference and len(c) and len(ref_c):
            ratio, rlo, rhi = ratio_interval(c, ref_c)
            p = permutation_p(c, ref_c)
            row.update(ratio=ratio, ratio_lo=rlo, ratio_hi=rhi, p_value=p,
                       p_min=smallest_p(len(c), len(ref_c)), verdict=verdict(ratio, rlo, rhi, p))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return out


def matched_frames(epochs: pd.DataFrame, agg: pd.DataFrame, selected: pd.DataFrame,
                   targets: Mapping[tuple, Target | float],
                   reference: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per architecture and data set with a finite target: ``seed_points`` for the seeds of
    each method's ``chosen_configs`` and ``compare`` against ``reference``; both frames
    with ``arch`` and ``dataset`` in front. ``epochs``: the rows the report aggregates
    (``runs.prefer_confirm``); ``agg``, ``selected``: its seed aggregates and operating points."""
    seeds, summary = [], []
    for key, target in sorted(targets.items()):
        value = float(target.value if isinstance(target, Target) else target)
        if not np.isfinite(value):
            continue
        where = dict(zip(TARGET_GROUP, key))

        def part(df: pd.DataFrame) -> pd.DataFrame:
            if df.empty or any(c not in df.columns for c in where):
                return df.iloc[0:0]
            return df[np.logical_and.reduce([df[c] == v for c, v in where.items()])]

        s = seed_points(part(epochs), chosen_configs(part(agg), part(selected)), value)
        c = compare(s, reference, value)
        for frame, out in ((s, seeds), (c, summary)):
            for i, (col, v) in enumerate(where.items()):
                frame.insert(i, col, v)
            out.append(frame)
    empty = pd.DataFrame(columns=[*TARGET_GROUP, *SEED_COLUMNS]), pd.DataFrame(
        columns=[*TARGET_GROUP, *SUMMARY_COLUMNS])
    seeds, summary = [f for f in seeds if len(f)], [f for f in summary if len(f)]
    return (pd.concat(seeds, ignore_index=True) if seeds else empty[0],
            pd.concat(summary, ignore_index=True) if summary else empty[1])
