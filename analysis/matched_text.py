"""The matched comparison (:mod:`analysis.matched`) in words and as a table. Pure.

``sentence`` says one method's result in one sentence, e.g. "sensitivity-spec reaches 1.01×
[0.93, 1.09] the compression of decay at 5 % validation error (p = 0.8, 3 vs 3 seeds): no
detectable difference." It calls a difference real only when ``matched.verdict`` does (the
95 % interval excludes 1 and p < 0.05), and it says when the target was never reached, when
seeds were left out, when values are lower bounds and when the seeds are too few for the
test to reach 0.05. ``display_table`` and ``caption`` give the same numbers as the table
``tables/matched_<arch>_<dataset>.{md,csv,tex}``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.matched import ALPHA, LESS, MORE, NO_DATA, NO_DIFFERENCE
from analysis.tables import DASH, fmt_error, sorted_methods


def fmt_x(value: float) -> str:
    """A compression or a ratio: 3 significant digits (1.01, 12.3, 0.934)."""
    return f"{value:.3g}" if np.isfinite(value) else DASH


def fmt_interval(lo: float, hi: float) -> str:
    """``[0.93, 1.09]``, or "" without an interval."""
    return f"[{fmt_x(lo)}, {fmt_x(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if np.isfinite(p) else DASH


def fmt_target(target: float) -> str:
    """A validation error in %: ``5 %``, ``2.15 %``."""
    return f"{target:.2f}".rstrip("0").rstrip(".") + " %"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _with_interval(value: float, lo: float, hi: float) -> str:
    return f"{fmt_x(value)}× {fmt_interval(lo, hi)}".rstrip()


def caveats(row: Mapping) -> list[str]:
    """Seeds that never reach the target (left out) and values that are lower bounds."""
    out = []
    n, hit, bound = int(row["n_seeds"]), int(row["n_reached"]), int(row["n_lower_bound"])
    if n > hit:
        out.append(f"{n - hit} of its {_seeds(n)} never reach the target and are left out")
    if bound:
        out.append("every run ended still under the target, so the compression is a lower bound"
                   if bound == hit else f"{bound} of the {hit} runs ended still under the target, "
                   "so their compression is a lower bound")
    return out


def sentence(row: Mapping) -> str:
    """One method of ``matched.compare``'s frame in one sentence (module docstring)."""
    method, ref, target = row["method"], row["reference"], fmt_target(row["target_error"])
    if not row["n_reached"]:
        who = f"{method} (the reference)" if ref and method == ref else method
        return (f"{who} does not reach {target} validation error in any of its "
                f"{_seeds(int(row['n_seeds']))} (lowest: {fmt_target(row['best_val_error'])}): "
                "no compression at matched error.")
    notes = "".join(f"; {c}" for c in caveats(row))
    own = _with_interval(row["compression_mean"], row["compression_lo"], row["compression_hi"])
    if not ref or method == ref or row["verdict"] == NO_DATA:
        who = f"{method} (the reference)" if ref and method == ref else method
        text = (f"{who} reaches {own} compression at {target} validation error "
                f"({_seeds(int(row['n_reached']))}{notes})")
        return text + (f"; no seed of {ref} reaches it, so there is no ratio." if ref and method != ref
                       else ".")
    n_a, n_b = int(row["n_reached"]), int(row["n_reference"])
    ratio = _with_interval(row["ratio"], row["ratio_lo"], row["ratio_hi"])
    p, p_min = float(row["p_value"]), float(row["p_min"])
    counts = f"{n_a} vs {_seeds(n_b)}"
    if np.isfinite(p):
        floor = (f"; {fmt_p(p_min)} is the smallest p possible with {counts}"
                 if np.isfinite(p_min) and p_min >= ALPHA else "")
        stats = f"p = {fmt_p(p)}, {counts}{floor}"
    else:
        stats = counts
    head = (f"{method} reaches {ratio} the compression of {ref} at {target} validation error "
            f"({stats}{notes})")
    verdict = row["verdict"]
    if verdict == MORE:
        tail = f"more compression than {ref}"
    elif verdict == LESS:
        tail = f"less compression than {ref}"
    elif verdict == NO_DIFFERENCE:
        tail = "no detectable difference" + (" (the interval includes 1)"
                                              if np.isfinite(p) and p < ALPHA else "")
    elif not np.isfinite(p):
        tail = "too few seeds for an interval and a test; not established"
    else:
        tail = "the interval excludes 1 but the permutation test does not confirm it; not established"
    return f"{head}: {tail}."


def in_method_order(summary: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(sorted_methods(summary["method"]))}
    return summary.sort_values("method", key=lambda s: s.map(order), kind="stable")


def sentences(summary: pd.DataFrame) -> list[str]:
    """One sentence per method, in the tables' method order."""
    return [sentence(row) for _, row in in_method_order(summary).iterrows()]


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``matched.compare``'s frame (one architecture and data set) as strings, in method
    order."""
    ref = next((r for r in summary["reference"] if r), "") if len(summary) else ""
    rows = []
    for _, r in in_method_order(summary).iterrows():
        seeds = f"{int(r['n_reached'])}/{int(r['n_seeds'])}"
        if r["n_lower_bound"]:
            seeds += f", {int(r['n_lower_bound'])} lower bound" + ("s" if r["n_lower_bound"] > 1 else "")
        own = (_with_interval(r["compression_mean"], r["compression_lo"], r["compression_hi"])
               .replace("×", "").replace("  ", " ") if r["n_reached"] else DASH)
        if ref and r["method"] == ref:
            ratio, p, verdict = "reference", DASH, ""
        elif np.isfinite(r["ratio"]):
            ratio = (_with_interval(r["ratio"], r["ratio_lo"], r["ratio_hi"])
                     .replace("×", "").replace("  ", " "))
            floor = r["p_value"] <= r["p_min"] * (1 + 1e-9)  # scipy's p carries rounding
            p = fmt_p(r["p_value"]) + (" (smallest possible)" if floor else "")
            verdict = r["verdict"]
        else:
            ratio, p, verdict = DASH, DASH, r["verdict"] if ref else ""
        rows.append([r["method"], r["stage"], r["setting"], seeds, own,
                     fmt_error(float(r["test_error_mean"]), float(r["test_error_std"])),
                     ratio, p, verdict])
    vs = f"vs {ref} (×) [95 % CI]" if ref else "vs reference (×)"
    return pd.DataFrame(rows, columns=["Method", "Runs", "Setting", "Seeds at target",
                                       "Compression (×) [95 % CI]", "Test error (%)", vs, "p",
                                       "Verdict"])


def caption(name: str, target: float, reference: str | None) -> str:
    """The matched table's caption (``name``: e.g. "lenet300 on mnist")."""
    text = (f"{name}. Compression at matched validation error (≤ {fmt_target(target)}): per "
            "seed, read off its sparsify-phase trajectory by interpolation in (validation error, "
            "log compression), the largest compression at which the validation error is at most "
            "the target; mean over the seeds that reach the target, with a 95 % percentile "
            "bootstrap interval; test error at the same point, mean ± std.")
    if reference:
        text += (f" Ratio vs {reference}: exp(mean log compression − that of {reference}), the "
                 "bootstrap resampling seeds within each method; p: two-sided permutation test "
                 "on log compression. A difference is called only when the interval excludes 1 "
                 "and p < 0.05.")
    return text


def small_sample_notes(summary: pd.DataFrame) -> list[str]:
    """What 2–3 seeds per method can and cannot show, when it applies."""
    notes = []
    if len(summary) and (summary["n_reached"].between(2, 3)).any():
        notes.append("With 2–3 seeds per method the intervals describe those seeds: a bootstrap "
                     "resample of 3 values takes only 10 distinct means, so the interval is "
                     "coarse and, with no small-sample correction, too narrow.")
    if len(summary) and (summary["p_min"] >= ALPHA).any():
        notes.append("A permutation test of so few seeds cannot reach p < 0.05 (3 vs 3 seeds "
                     "have 20 relabellings, so the smallest possible p is 0.1; 2 vs 2: 0.33), so "
                     "no difference can be established with them.")
    return notes
