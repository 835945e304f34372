"""Figures for the report, each saved as PNG and PDF. Matplotlib object API (no pyplot, so
no global backend or figure state) with seaborn's paper style and colour-blind palette.

Each function takes ready-made frames (seed-aggregated, see ``pareto.aggregate_seeds``) and
returns a ``Figure``, or None when there is nothing to draw.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis.runs import sens_column
from analysis.selection import REFERENCE_METHOD
from analysis.tables import METHOD_LABELS, method_label, sorted_methods

#: The sensitivity statistics ``sensitivity_figure`` draws.
Q10, Q50, Q90, FRAC_GE1 = (sens_column(s) for s in ("q10", "q50", "q90", "frac_ge1"))


@contextmanager
def paper_style():
    """Seaborn's whitegrid + paper context, fonts large enough for a printed column."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15),
          "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight"}
    with mpl.rc_context(rc):
        yield


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """The same colour for a method in every figure."""
    palette = sns.color_palette("colorblind", 10)
    known = list(METHOD_LABELS)
    extra = sorted(m for m in set(methods) if m not in known)
    return {m: palette[(known.index(m) if m in known else len(known) + extra.index(m)) % 10]
            for m in methods}


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight")
    return paths


def _times(value: float, _pos) -> str:
    return f"{value:g}×"


def _nan0(values) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)


def pareto_figure(points: pd.DataFrame, front: pd.DataFrame, selected: pd.DataFrame,
                  reference: pd.DataFrame, *, title: str = "") -> Figure | None:
    """Compression (log x) against test error: every candidate point faint, the front per
    method as a line with seed error bars (±1 std, both axes), the selected operating point
    as a star, and the unpruned ``none`` reference as a dashed line with its ±1 std band."""
    methods = sorted_methods(m for m in points["method"] if m != REFERENCE_METHOD)
    if not methods and reference.empty:
        return None
    colors = method_colors(methods)
    with paper_style():
        fig = Figure(figsize=(6.5, 4.2))
        ax = fig.subplots()
        for m in methods:
            c = colors[m]
            pts = points[points["method"] == m]
            ax.scatter(pts["compression_mean"], pts["test_error_mean"], s=10, color=c,
                       alpha=0.25, linewidths=0)
            fr = front[front["method"] == m].sort_values("compression_mean")
            ax.errorbar(fr["compression_mean"], fr["test_error_mean"],
                        xerr=_nan0(fr["compression_std"]), yerr=_nan0(fr["test_error_std"]),
                        fmt="-o", color=c, ms=3.5, lw=1.4, elinewidth=0.8, capsize=2,
                        label=method_label(m))
            sel = selected[(selected["method"] == m) & selected["met_target"]]
            ax.scatter(sel["compression_mean"], sel["test_error_mean"], marker="*", s=170,
                       color=c, edgecolors="black", linewidths=0.7, zorder=5)
        handles, labels = ax.get_legend_handles_labels()
        for _, ref in reference.iterrows():
            y, s = float(ref["test_error_mean"]), float(np.nan_to_num(ref["test_error_std"]))
            line = ax.axhline(y, ls="--", color="0.35", lw=1.2)
            if s > 0:
                ax.axhspan(y - s, y + s, color="0.5", alpha=0.15, lw=0)
            handles.append(line)
            labels.append(f"{method_label(REFERENCE_METHOD)}: {y:.2f}%")
        handles.append(Line2D([], [], marker="*", ls="", color="0.6", markeredgecolor="black",
                              markersize=11))
        labels.append("selected operating point")
        handles.append(Line2D([], [], marker="o", ls="", color="0.6", alpha=0.35, markersize=4))
        labels.append("other points (faint)")
        ax.set_xscale("log")
        # Errors spanning more than a factor 5 (a method that breaks down) read better on a
        # log axis; otherwise keep it linear like the paper's tables.
        shown = pd.concat([front["test_error_mean"], reference["test_error_mean"]]).astype(float)
        shown = shown[np.isfinite(shown) & (shown > 0)]
        log_y = len(shown) > 0 and shown.max() / shown.min() > 5
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, p: f"{v:g}"))
        # Ticks at 1, 2, 5, 10, 20, ...: a front spanning less than a decade still gets labels.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_times))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
        if ax.get_xlim()[0] > 1.0 or not methods:
            ax.set_xlim(left=0.8)
        ax.set_xlabel("Compression |θ| / |θ≠0| (×, log scale)")
        ax.set_ylabel("Top-1 test error (%, log scale)" if log_y else "Top-1 test error (%)")
        if title:
            ax.set_title(title)
        ax.legend(handles, labels, fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def layer_profile_figure(selected: pd.DataFrame, layers: Sequence[str], *,
                         title: str = "") -> Figure | None:
    """Remaining weights per layer (%, log y) for each method at its selected operating
    point, ±1 std over seeds; each bar is labelled with its value."""
    chosen = selected[selected["met_target"] & (selected["method"] != REFERENCE_METHOD)]
    cols = [f"remaining.{layer}_mean" for layer in layers]
    if chosen.empty or not layers or not all(c in chosen.columns for c in cols):
        return None
    methods = sorted_methods(chosen["method"])
    colors = method_colors(methods)
    width = 0.8 / len(methods)
    x = np.arange(len(layers))
    with paper_style():
        fig = Figure(figsize=(max(5.0, 1.1 * len(layers) * max(1, len(methods)) ** 0.5 + 2), 3.8))
        ax = fig.subplots()
        for i, m in enumerate(methods):
            row = chosen[chosen["method"] == m].iloc[0]
            heights = np.array([100 * float(row[f"remaining.{l}_mean"]) for l in layers])
            errs = _nan0([100 * float(row.get(f"remaining.{l}_std", np.nan)) for l in layers])
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, np.clip(heights, 1e-3, None), width * 0.95, yerr=errs, capsize=2,
                   color=colors[m], label=method_label(m), error_kw={"elinewidth": 0.7})
            if len(layers) * len(methods) <= 36:
                for px, h, e in zip(pos, heights, errs):
                    ax.annotate(f"{h:.3g}", (px, max(h + e, 1e-3)), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=6, rotation=90)
        # Log axis from the decade below the smallest bar to 100 % (plus room for labels), so
        # bars of 80 % and 90 % are not cut off and 1 % and 2 % stay apart.
        ax.set_yscale("log")
        lowest = np.nanmin([100 * float(chosen[c].min()) for c in cols])
        ax.set_ylim(10 ** math.floor(math.log10(max(lowest, 1e-3))), 300)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, p: f"{v:g}" if v <= 100 else ""))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
        ax.set_xticks(x, list(layers), rotation=0 if len(layers) <= 8 else 60)
        ax.set_xlabel("Layer (input → output)")
        ax.set_ylabel("Remaining weights (%, log scale)")
        if title:
            ax.set_title(title)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def training_curves_figure(curves: pd.DataFrame, *, metric: str = "test_loss",
                           ylabel: str = "Test loss (cross-entropy)",
                           title: str = "") -> Figure | None:
    """``metric`` per epoch, one line per method (mean over seeds, ±1 std band).

    ``curves``: seed-aggregated rows (one configuration per method) with ``epoch``,
    ``method``, ``<metric>_mean`` and ``<metric>_std``."""
    col = f"{metric}_mean"
    if curves.empty or col not in curves.columns or not np.isfinite(curves[col]).any():
        return None
    methods = sorted_methods(curves["method"])
    colors = method_colors(methods)
    with paper_style():
        fig = Figure(figsize=(6.5, 3.8))
        ax = fig.subplots()
        for m in methods:
            c = curves[curves["method"] == m].sort_values("epoch")
            mean = c[col].to_numpy(dtype=float)
            std = _nan0(c[f"{metric}_std"])
            style = "--" if m == REFERENCE_METHOD else "-"
            ax.plot(c["epoch"], mean, style, color=colors[m], lw=1.5, label=method_label(m))
            ax.fill_between(c["epoch"], mean - std, mean + std, color=colors[m], alpha=0.18, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def sensitivity_figure(stats: pd.DataFrame, layers: Sequence[str], *,
                       title: str = "") -> Figure | None:
    """Per method (rows): left, median sensitivity S per epoch and layer, with the 10th and
    90th percentiles dashed (log y, S = 1 dotted; zeros drawn at the bottom of the axis);
    right, the share of weights with S ≥ 1 (%).

    ``stats``: rows per (method, epoch, layer) with ``sens_q10``, ``sens_q50``, ``sens_q90``,
    ``sens_frac_ge1`` (already averaged over seeds)."""
    if stats.empty or not all(c in stats.columns for c in (Q10, Q50, Q90, FRAC_GE1)):
        return None
    stats = stats.dropna(subset=[Q50])
    methods = sorted_methods(stats["method"])
    if not methods:
        return None
    order = [l for l in layers if l in set(stats["layer"])] + sorted(
        set(stats["layer"]) - set(layers))
    # S = 0 (e.g. a 10th percentile of exactly zero) cannot sit on a log axis: draw it at a
    # floor a decade below the smallest positive value.
    values = stats[[Q10, Q50, Q90]].to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = positive.min() / 10 if positive.size else 1e-12
    palette = dict(zip(order, sns.color_palette("viridis", len(order))))
    with paper_style():
        fig = Figure(figsize=(8.0, 2.9 * len(methods) + 0.5), layout="constrained")
        fig.get_layout_engine().set(wspace=0.08)
        axes = fig.subplots(len(methods), 2, squeeze=False, sharex=True)
        for (left, right), m in zip(axes, methods):
            part = stats[stats["method"] == m]
            for layer in order:
                s = part[part["layer"] == layer].sort_values("epoch")
                if s.empty:
                    continue
                c = palette[layer]
                left.plot(s["epoch"], s[Q50].clip(lower=floor), color=c, lw=1.6,
                          label=layer)
                for q in (Q10, Q90):  # thin lines: bands of many layers overlap
                    left.plot(s["epoch"], s[q].clip(lower=floor), color=c, lw=0.8, ls="--")
                right.plot(s["epoch"], 100 * s[FRAC_GE1], color=c, lw=1.4, label=layer)
            left.axhline(1.0, ls=":", color="black", lw=1)
            left.set_yscale("log", nonpositive="mask")
            left.set_ylabel("Sensitivity S\n(median; dashed: 10th, 90th pct.)")
            right.set_ylabel("Weights with S ≥ 1 (%)")
            left.set_title(method_label(m), loc="left", fontsize="medium")
            right.set_ylim(bottom=0)
            if not (part[FRAC_GE1].fillna(0) > 0).any():
                right.text(0.5, 0.5, "no weight reached S ≥ 1", transform=right.transAxes,
                           ha="center", va="center", fontsize="small", color="0.3")
        for ax in axes[-1]:
            ax.set_xlabel("Epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][1].legend(title="Layer", fontsize="small", loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), frameon=False)
        if title:
            fig.suptitle(title)
    return fig
