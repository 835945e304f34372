"""Two studies side by side (``study compare A B``), e.g. before and after a change to the code
or the study file: each method's compression at matched validation error in A and in B, and
whether B differs from A. Pure.

Both sides are read at **the same target** (A's, or the one ``--target-error`` gives), so the
numbers are matched across the studies as the report matches them across methods: per side,
the seeds of the configuration its selection rule chose, read off at that validation error
(:mod:`analysis.matched`). The change is B/A: exp(mean log compression of B's seeds − that of
A's), with its 95 % percentile bootstrap interval (seeds resampled within each study), a
two-sided permutation p, and the same verdict rule as the report's ("more"/"less" only when the
interval excludes 1 and p < 0.05).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import matched
from analysis.matched_text import fmt_interval, fmt_p, fmt_target, fmt_x
from analysis.results import Results
from analysis.selection import TARGET_GROUP
from analysis.tables import DASH, fmt_error, sorted_methods

#: ``compare_results``'s columns; ``_a`` and ``_b`` are the two studies.
SIDE_COLUMNS: tuple[str, ...] = ("setting", "stage", "n_seeds", "n_reached", "compression_mean",
                                 "compression_lo", "compression_hi", "test_error_mean",
                                 "test_error_std", "ratio", "verdict")
COLUMNS: tuple[str, ...] = (
    *TARGET_GROUP, "method", "target_error", "reference",
    *(f"{c}_{side}" for side in ("a", "b") for c in SIDE_COLUMNS),
    "change", "change_lo", "change_hi", "p_value", "change_verdict")


def _seeds(frame: pd.DataFrame, key: tuple, method: str) -> np.ndarray:
    if frame.empty:
        return np.array([])
    where = np.logical_and.reduce([frame[c] == v for c, v in zip(TARGET_GROUP, key)])
    part = frame[where & (frame["method"] == method) & frame["reached"].astype(bool)]
    return part["compression"].to_numpy(dtype=float)


def compare_results(a: Results, b: Results) -> pd.DataFrame:
    """One row per architecture, data set and method of either study's matched comparison
    (``Results.matched``); B's numbers must have been computed at A's targets
    (``study_results(..., targets=a.targets)``)."""
    keys = [*TARGET_GROUP, "method"]
    side_a = a.matched.set_index(keys) if len(a.matched) else pd.DataFrame()
    side_b = b.matched.set_index(keys) if len(b.matched) else pd.DataFrame()
    index = list(dict.fromkeys([*side_a.index, *side_b.index]))
    rows = []
    for key in index:
        *where, method = key
        row: dict = dict(zip(keys, key))
        target = a.targets.get(tuple(where)) or b.targets.get(tuple(where))
        row["target_error"] = float(target.value) if target is not None else np.nan
        row["reference"] = a.reference or b.reference or ""
        for side, frame in (("a", side_a), ("b", side_b)):
            found = key in frame.index
            for col in SIDE_COLUMNS:
                row[f"{col}_{side}"] = frame.loc[key, col] if found else np.nan
        ca = _seeds(a.matched_seeds, tuple(where), method)
        cb = _seeds(b.matched_seeds, tuple(where), method)
        change, lo, hi = matched.ratio_interval(cb, ca)
        p = matched.permutation_p(cb, ca)
        row.update(change=change, change_lo=lo, change_hi=hi, p_value=p,
                   change_verdict=matched.verdict(change, lo, hi, p))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    if out.empty:
        return out
    order = {m: i for i, m in enumerate(sorted_methods(out["method"]))}
    return out.sort_values([*TARGET_GROUP, "method"], key=lambda s: s.map(order) if s.name == "method" else s,
                           kind="stable").reset_index(drop=True)


def _side(row: pd.Series, side: str) -> str:
    n, hit = row[f"n_seeds_{side}"], row[f"n_reached_{side}"]
    if not np.isfinite(n):
        return "not in this study"
    if not hit:
        return f"target not reached (0/{int(n)} seeds)"
    text = f"{fmt_x(row[f'compression_mean_{side}'])}× {fmt_interval(row[f'compression_lo_{side}'], row[f'compression_hi_{side}'])}"
    return f"{text.rstrip()} ({int(hit)}/{int(n)} seeds)"


def display_table(frame: pd.DataFrame, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """``compare_results`` as strings: compression at the target in A and in B, B/A with its
    interval, p and the verdict, and the test errors at the matched point."""
    a, b = names
    rows = []
    for _, r in frame.iterrows():
        change = (f"{fmt_x(r['change'])} {fmt_interval(r['change_lo'], r['change_hi'])}".rstrip()
                  if np.isfinite(r["change"]) else DASH)
        rows.append([
            f"{r['arch']}/{r['dataset']}", r["method"], fmt_target(r["target_error"]),
            _side(r, "a"), _side(r, "b"), change, fmt_p(r["p_value"]),
            r["change_verdict"] if np.isfinite(r["change"]) else "",
            fmt_error(float(r["test_error_mean_a"]), float(r["test_error_std_a"])),
            fmt_error(float(r["test_error_mean_b"]), float(r["test_error_std_b"])),
        ])
    return pd.DataFrame(rows, columns=[
        "Slice", "Method", "Val. error ≤", f"{a}: compression (×) [95 % CI]",
        f"{b}: compression (×) [95 % CI]", f"{b}/{a} (×) [95 % CI]", "p", "Verdict",
        f"{a}: test error (%)", f"{b}: test error (%)"])


def settings_differ(frame: pd.DataFrame) -> list[str]:
    """Methods whose chosen setting differs between the two studies, as "method: A → B"."""
    out = []
    for _, r in frame.iterrows():
        sa, sb = r["setting_a"], r["setting_b"]
        if isinstance(sa, str) and isinstance(sb, str) and sa != sb:
            out.append(f"{r['method']}: {sa or '(defaults)'} → {sb or '(defaults)'}")
    return out
