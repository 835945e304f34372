"""The report's figures. Each function takes ready-made frames (seed-aggregated, see
``pareto.aggregate_seeds``) and returns a ``Figure``, or None when there is nothing to draw;
``figstyle.save`` writes it as PNG and PDF.
(One concept over 400 lines: the report's figures, which share one style, one palette and one
selection of runs; the style itself is analysis.figstyle.)

- ``pareto_selection_figure``: the selection view. Validation error against compression, one
  panel per method (small multiples, the other methods' fronts in grey behind), its front, its
  selected point and the target: the quantities the selection rule reads.
- ``operating_points_figure``: the reporting view. Each method's selected point, test error and
  compression with ±1 std over seeds, one row per method; "none selected" rows say so.
- ``layer_profile_figure``: remaining % per layer at each selected point, as dots; below it the
  neurons left per layer, when the runs counted them.
- ``training_curves_figure``: one panel per method, the phase change marked.
- ``sensitivity_figure``: per sensitivity method, the epoch-mean S per layer on an axis that
  shows zeros at 0, and the shares of weights with S ≥ 1 and with S = 0.

A method without a selected point is named as such in the legend or panel of every figure.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.figstyle import (CONTEXT_COLOR, REFERENCE_COLOR, compression_axis, label_bottom,
                               log_error_axis, method_colors, method_markers, nan0, paper_style,
                               panel_grid, zero_aware_log_axis)
from analysis.runs import sens_column
from analysis.selection import REFERENCE_METHOD
from analysis.tables import method_label, sorted_methods
from study import runformat as rf

#: The sensitivity statistics ``sensitivity_figure`` draws.
Q10, Q50, Q90, FRAC_GE1, FRAC_ZERO = (sens_column(s)
                                      for s in ("q10", "q50", "q90", "frac_ge1", "frac_zero"))
NONE_SELECTED = "none selected"
_STAR = {"marker": "*", "s": 190, "edgecolors": "black", "linewidths": 0.7, "zorder": 6}


def _met(selected: pd.DataFrame, method: str) -> pd.DataFrame:
    if selected.empty or "met_target" not in selected.columns:
        return selected.iloc[0:0]
    return selected[(selected["method"] == method) & selected["met_target"].astype(bool)]


def _legend_below(fig: Figure, handles: list, labels: list[str], ncols: int = 3) -> None:
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small",
               frameon=False)


# -- the selection view -------------------------------------------------------------------------
def pareto_selection_figure(points: pd.DataFrame, front: pd.DataFrame, selected: pd.DataFrame,
                            reference: pd.DataFrame, target: float, *,
                            title: str = "") -> Figure | None:
    """Validation error against compression (log x), one panel per method: its candidate
    points faint, its front (non-dominated on validation error) as a line with ±1 std error
    bars, its selected point as a star, the target as a dotted line, the unpruned reference
    dashed; the other methods' fronts in grey behind. ``points``, ``front`` and ``selected``
    come from the runs the selection read (the search runs)."""
    methods = sorted_methods(m for m in pd.concat([points["method"], front["method"]])
                             if m != REFERENCE_METHOD)
    if not methods:
        return None
    colors, markers = method_colors(methods), method_markers(methods)
    shown = pd.concat([front["val_error_mean"], reference.get("val_error_mean", pd.Series()),
                       pd.Series([target])]).astype(float)
    shown = shown[np.isfinite(shown)]
    with paper_style():
        ncols = min(3, len(methods))
        rows = -(-len(methods) // ncols)
        fig = Figure(figsize=(2.9 * ncols + 0.6, 2.3 * rows + 1.3), layout="constrained")
        axes = panel_grid(fig, len(methods), ncols=ncols)
        for ax, m in zip(axes, methods):
            for other in methods:
                fo = front[front["method"] == other].sort_values("compression_mean")
                if other != m and len(fo):
                    ax.plot(fo["compression_mean"], fo["val_error_mean"], "-", color=CONTEXT_COLOR,
                            lw=0.9, zorder=1)
            pts = points[points["method"] == m]
            ax.scatter(pts["compression_mean"], pts["val_error_mean"], s=9, color=colors[m],
                       alpha=0.3, linewidths=0, zorder=2)
            fr = front[front["method"] == m].sort_values("compression_mean")
            ax.errorbar(fr["compression_mean"], fr["val_error_mean"],
                        xerr=nan0(fr["compression_std"]), yerr=nan0(fr["val_error_std"]),
                        fmt="-", marker=markers[m], color=colors[m], ms=3.5, lw=1.3,
                        elinewidth=0.7, capsize=1.5, zorder=3)
            _reference_line(ax, reference, "val_error")
            if np.isfinite(target):
                ax.axhline(target, ls=":", color="black", lw=1.0, zorder=2)
            sel = _met(selected, m)
            if not sel.empty:
                ax.scatter(sel["compression_mean"], sel["val_error_mean"], color=colors[m], **_STAR)
            name = method_label(m)
            if sel.empty:
                ax.set_title(f"{name}: {NONE_SELECTED}", loc="left", fontsize="small")
                ax.text(0.97, 0.95, f"no point with val. error ≤ {target:.2f}%",
                        transform=ax.transAxes, ha="right", va="top", fontsize="x-small",
                        color="0.3")
            else:
                ax.set_title(name, loc="left", fontsize="small")
        compression_axis(axes[0])
        log_error_axis(axes[0], shown)
        if len(shown):
            lo, hi = float(shown.min()), float(shown.max())
            pad = (hi / lo) ** 0.1 if axes[0].get_yscale() == "log" and lo > 0 else None
            axes[0].set_ylim(*((lo / pad, hi * pad) if pad else
                               (max(0.0, lo - 0.08 * (hi - lo + 1)), hi + 0.15 * (hi - lo + 1))))
        if axes[0].get_xlim()[0] > 1.0:
            axes[0].set_xlim(left=0.8)
        label_bottom(axes, "Compression |θ| / |θ≠0| (×, log)", ncols=ncols)
        fig.supylabel("Top-1 validation error (%)", fontsize="medium")
        handles = [Line2D([], [], color="0.2", marker="o", ms=3.5, lw=1.3),
                   Line2D([], [], color=CONTEXT_COLOR, lw=0.9),
                   Line2D([], [], marker="*", ls="", color="0.55", markeredgecolor="black",
                          markersize=11),
                   Line2D([], [], marker="o", ls="", color="0.55", alpha=0.35, markersize=4),
                   Line2D([], [], ls=":", color="black")]
        labels = ["this method's front (±1 std over seeds)", "the other methods' fronts",
                  "selected: highest compression at val. error ≤ target",
                  "other operating points (faint)", f"target: val. error ≤ {target:.2f}%"]
        if not reference.empty:
            handles.append(Line2D([], [], ls="--", color=REFERENCE_COLOR))
            labels.append(f"{method_label(REFERENCE_METHOD)} (±1 std)")
        _legend_below(fig, handles, labels)
        if title:
            fig.suptitle(title)
    return fig


def _reference_line(ax, reference: pd.DataFrame, metric: str, vertical: bool = False) -> None:
    """The unpruned reference's ``metric`` as a dashed line with its ±1 std band."""
    for _, ref in reference.iterrows():
        v = float(ref[f"{metric}_mean"])
        s = float(np.nan_to_num(ref.get(f"{metric}_std", np.nan)))
        (ax.axvline if vertical else ax.axhline)(v, ls="--", color=REFERENCE_COLOR, lw=1.1,
                                                zorder=2)
        if s > 0:
            (ax.axvspan if vertical else ax.axhspan)(v - s, v + s, color=REFERENCE_COLOR,
                                                    alpha=0.12, lw=0, zorder=1)


# -- the reporting view ---------------------------------------------------------------------------
def operating_points_figure(selected: pd.DataFrame, reference: pd.DataFrame,
                            stages: Mapping[str, str] | None = None, *,
                            title: str = "") -> Figure | None:
    """One row per method: at its selected operating point, the test error (left) and the
    compression (right, log), each mean ± 1 std over seeds; the unpruned reference's test
    error dashed with its ±1 std band. A method without a selected point keeps its row, marked
    "none selected". ``stages``: method → the stage its runs come from, added to its label."""
    if selected.empty or "met_target" not in selected.columns:
        return None
    methods = sorted_methods(m for m in selected["method"] if m != REFERENCE_METHOD)
    if not methods or not selected["met_target"].astype(bool).any():
        return None
    colors, markers = method_colors(methods), method_markers(methods)
    y = {m: len(methods) - 1 - i for i, m in enumerate(methods)}  # first method on top
    stages = stages or {}
    with paper_style():
        fig = Figure(figsize=(7.6, 0.42 * len(methods) + 1.5), layout="constrained")
        ax_err, ax_cmp = fig.subplots(1, 2, sharey=True, width_ratios=(1.25, 1.0))
        labels = []
        for m in methods:
            sel = _met(selected, m)
            target = float(selected.loc[selected["method"] == m, "target_error"].iloc[0])
            if sel.empty:
                ax_err.text(0.5, y[m], f"{NONE_SELECTED}\n(val. error > {target:.2f}% at every "
                            "point)", transform=ax_err.get_yaxis_transform(), va="center",
                            ha="center", fontsize="x-small", color="0.3", style="italic",
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
                labels.append(method_label(m))
                continue
            row = sel.iloc[0]
            style = dict(fmt=markers[m], color=colors[m], ms=6.5, mec="black", mew=0.5,
                         capsize=2.5, elinewidth=1.1)
            ax_err.errorbar(row["test_error_mean"], y[m],
                            xerr=nan0([row.get("test_error_std", np.nan)]), **style)
            ax_cmp.errorbar(row["compression_mean"], y[m],
                            xerr=nan0([row.get("compression_std", np.nan)]), **style)
            n = row.get("n_seeds", np.nan)
            detail = ", ".join(s for s in (stages.get(m, ""),
                                           "" if pd.isna(n) else f"n={int(n)}") if s)
            labels.append(method_label(m) + (f" ({detail})" if detail else ""))
        _reference_line(ax_err, reference, "test_error", vertical=True)
        ax_err.set_yticks([y[m] for m in methods], labels)
        ax_err.set_ylim(-0.6, len(methods) - 0.4)
        ax_err.set_xlabel("Top-1 test error (%)")
        compression_axis(ax_cmp)
        if ax_cmp.get_xlim()[0] > 1.0:
            ax_cmp.set_xlim(left=0.8)
        ax_cmp.set_xlabel("Compression |θ| / |θ≠0| (×, log)")
        for ax in (ax_err, ax_cmp):
            ax.grid(axis="y", visible=False)
        handles = [Line2D([], [], marker="o", color="0.3", ls="-", ms=5)]
        legend = ["selected operating point, mean ± 1 std over seeds"]
        if not reference.empty:
            ref = reference.iloc[0]
            handles.append(Line2D([], [], ls="--", color=REFERENCE_COLOR))
            legend.append(f"{method_label(REFERENCE_METHOD)}: {float(ref['test_error_mean']):.2f}%"
                          " (±1 std band)")
        _legend_below(fig, handles, legend, ncols=2)
        if title:
            fig.suptitle(title)
    return fig


# -- the layer profile ------------------------------------------------------------------------------
def has_neuron_profile(selected: pd.DataFrame, layers: Sequence[str]) -> bool:
    """Whether the selected points carry ``neurons.<layer>`` means (runs that counted them)."""
    cols = [f"{rf.neurons_key(layer)}_mean" for layer in layers]
    return bool(layers) and all(c in selected.columns for c in cols) and \
        selected[cols].notna().to_numpy().any()


def _profile_dots(ax, chosen: pd.DataFrame, methods: list[str], layers: Sequence[str], key,
                  colors: Mapping[str, str], markers: Mapping[str, str], label: bool) -> np.ndarray:
    """One dot per method and layer, ±1 std over seeds, side by side within each layer; returns
    the values drawn (for the axis)."""
    x = np.arange(len(layers))
    offsets = np.linspace(-0.3, 0.3, len(methods)) if len(methods) > 1 else np.zeros(1)
    drawn = []
    for off, m in zip(offsets, methods):
        row = chosen[chosen["method"] == m].iloc[0]
        ys = np.array([float(row.get(f"{key(layer)}_mean", np.nan)) for layer in layers])
        errs = nan0([float(row.get(f"{key(layer)}_std", np.nan)) for layer in layers])
        lower = np.minimum(errs, ys * 0.95)  # a log axis has no room below zero
        ax.plot(x + off, ys, "-", color=colors[m], lw=0.7, alpha=0.45, zorder=2)
        ax.errorbar(x + off, ys, yerr=[lower, errs], fmt=markers[m], color=colors[m], ms=6,
                    mec="black", mew=0.5, capsize=2, elinewidth=0.9, zorder=3,
                    label=method_label(m) if label else None)
        drawn.append(ys)
    for edge in x[:-1] + 0.5:
        ax.axvline(edge, color="0.85", lw=0.8, zorder=0)
    ax.grid(axis="x", visible=False)
    return np.concatenate(drawn) if drawn else np.array([])


def layer_profile_figure(selected: pd.DataFrame, layers: Sequence[str], *, title: str = "",
                         widths: Mapping[str, float] | None = None) -> Figure | None:
    """Remaining weights per layer (%, log y) for each method at its selected operating point,
    ±1 std over seeds: dots, side by side within each layer (a dot's position is its value;
    a bar's length would mean nothing on a log axis). Methods without a selected point are
    listed in the legend as "none selected".

    When the runs counted neurons (``neurons.<layer>``), a second panel below shows the units
    left in each layer (counts, log y), with ``widths`` (the layer's units) as grey dashes."""
    cols = [f"{rf.remaining_key(layer)}_mean" for layer in layers]
    if selected.empty or "met_target" not in selected.columns:
        return None
    chosen = selected[selected["met_target"].astype(bool) & (selected["method"] != REFERENCE_METHOD)]
    if chosen.empty or not layers or not all(c in chosen.columns for c in cols):
        return None
    methods = sorted_methods(chosen["method"])
    unselected = sorted_methods(set(selected["method"]) - set(methods) - {REFERENCE_METHOD})
    colors = method_colors([*methods, *unselected])
    markers = method_markers([*methods, *unselected])
    neurons = has_neuron_profile(chosen, layers)
    x = np.arange(len(layers))
    with paper_style():
        width = max(5.0, 1.15 * len(layers) + 1.5) + 2.6
        fig = Figure(figsize=(width, 6.6 if neurons else 3.9), layout="constrained")
        axes = fig.subplots(2 if neurons else 1, 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        values = _profile_dots(ax, chosen, methods, layers, rf.remaining_key, colors, markers, True)
        zero_aware_log_axis(ax, values)
        ax.set_ylim(top=130)
        ax.set_ylabel("Remaining weights (%, log scale)")
        if neurons:
            low = axes[1]
            counts = _profile_dots(low, chosen, methods, layers, rf.neurons_key, colors, markers, False)
            if widths:
                tops = [float(widths.get(layer, np.nan)) for layer in layers]
                low.hlines(tops, x - 0.42, x + 0.42, colors="0.55", linestyles="--", lw=1.0, zorder=1,
                           label="the layer's units")
                counts = np.concatenate([counts, tops])
                low.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            zero_aware_log_axis(low, counts)
            low.set_ylabel("Remaining neurons (count, log scale)")
        bottom = axes[-1]
        bottom.set_xticks(x, list(layers), rotation=0 if len(layers) <= 8 else 60)
        bottom.set_xlim(-0.5, len(layers) - 0.5)
        bottom.set_xlabel("Layer (input → output)")
        handles, labels = ax.get_legend_handles_labels()
        for m in unselected:
            handles.append(Line2D([], [], ls="", marker=markers[m], color=colors[m], mfc="none"))
            labels.append(f"{method_label(m)}: {NONE_SELECTED}")
        ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
        if title:
            ax.set_title(title)
    return fig


# -- training curves -----------------------------------------------------------------------------
def first_pruning_epoch(curve: pd.DataFrame) -> tuple[float, float]:
    """(first epoch in which any seed is in the sparsify phase, first in which all are): the
    phase change of one configuration's seed-aggregated curve; NaN when it never prunes or
    logged no phase."""
    phase = curve.sort_values("epoch").set_index("epoch")["phase"] if "phase" in curve else pd.Series()
    any_ = phase.index[phase.isin([rf.SPARSIFY, "mixed"])]
    all_ = phase.index[phase == rf.SPARSIFY]
    return (float(any_.min()) if len(any_) else np.nan, float(all_.min()) if len(all_) else np.nan)


def training_curves_figure(curves: pd.DataFrame, *, metric: str = "test_loss",
                           ylabel: str = "Test loss (cross-entropy)",
                           title: str = "") -> Figure | None:
    """``metric`` per epoch, one panel per method (mean over seeds, ±1 std band), the unpruned
    reference dashed in every panel; the reach phase is shaded and a vertical line marks the
    first sparsify epoch (hatched where the seeds changed phase at different epochs).

    ``curves``: seed-aggregated rows (one configuration per method) with ``epoch``,
    ``method``, ``phase``, ``<metric>_mean`` and ``<metric>_std``."""
    col = f"{metric}_mean"
    if curves.empty or col not in curves.columns or not np.isfinite(curves[col].astype(float)).any():
        return None
    methods = sorted_methods(curves["method"])
    panels = [m for m in methods if m != REFERENCE_METHOD] or methods
    colors = method_colors(methods)
    ref = curves[curves["method"] == REFERENCE_METHOD].sort_values("epoch")
    with paper_style():
        ncols = min(3, len(panels))
        rows = -(-len(panels) // ncols)
        fig = Figure(figsize=(2.9 * ncols + 0.6, 2.1 * rows + 1.1), layout="constrained")
        axes = panel_grid(fig, len(panels), ncols=ncols)
        first_epoch = float(curves["epoch"].min())
        hatched = False
        for ax, m in zip(axes, panels):
            c = curves[curves["method"] == m].sort_values("epoch")
            start, settled = first_pruning_epoch(c)
            if np.isfinite(start):
                ax.axvspan(first_epoch - 0.5, start - 0.5, color="0.93", lw=0, zorder=0)
                ax.axvline(start - 0.5, color="black", ls="-.", lw=0.9, zorder=1)
                if np.isfinite(settled) and settled > start:
                    hatched = True
                    ax.axvspan(start - 0.5, settled - 0.5, facecolor="none", edgecolor="0.6",
                               hatch="///", lw=0, zorder=0)
            if m != REFERENCE_METHOD and len(ref):
                ax.plot(ref["epoch"], ref[col], "--", color=REFERENCE_COLOR, lw=1.1, zorder=2)
            mean = c[col].to_numpy(dtype=float)
            std = nan0(c[f"{metric}_std"]) if f"{metric}_std" in c else np.zeros(len(c))
            ax.plot(c["epoch"], mean, "-", color=colors[m], lw=1.6, zorder=3)
            ax.fill_between(c["epoch"], mean - std, mean + std, color=colors[m], alpha=0.22,
                            lw=0, zorder=2)
            ax.set_title(method_label(m), loc="left", fontsize="small")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        label_bottom(axes, "Epoch", ncols=ncols)
        fig.supylabel(ylabel, fontsize="medium")
        handles = [Line2D([], [], color="0.3", lw=1.6), Patch(color="0.93"),
                   Line2D([], [], color="black", ls="-.", lw=0.9)]
        labels = ["mean ± 1 std over seeds", "reach phase (no pruning)",
                  "pruning starts (first sparsify epoch)"]
        if hatched:
            handles.append(Patch(facecolor="none", edgecolor="0.6", hatch="///"))
            labels.append("seeds change phase at different epochs")
        if len(ref) and panels != [REFERENCE_METHOD]:
            handles.insert(1, Line2D([], [], ls="--", color=REFERENCE_COLOR))
            labels.insert(1, method_label(REFERENCE_METHOD))
        _legend_below(fig, handles, labels)
        if title:
            fig.suptitle(title)
    return fig


# -- sensitivity statistics -------------------------------------------------------------------------
def sensitivity_figure(stats: pd.DataFrame, layers: Sequence[str], *,
                       title: str = "") -> Figure | None:
    """Per method (rows): left, the median sensitivity S per epoch and layer, with the 10th
    and 90th percentiles dashed, on an axis that is logarithmic but draws S = 0 at 0 (symlog,
    linear below the smallest positive decade; S = 1 dotted); right, the share of weights with
    S ≥ 1 (solid) and with S = 0 (dashed), in %.

    ``stats``: rows per (method, epoch, layer) with ``sens_q10``, ``sens_q50``, ``sens_q90``,
    ``sens_frac_ge1`` and, where logged, ``sens_frac_zero`` (already averaged over seeds)."""
    if stats.empty or not all(c in stats.columns for c in (Q10, Q50, Q90, FRAC_GE1)):
        return None
    stats = stats.dropna(subset=[Q50])
    methods = sorted_methods(stats["method"])
    if not methods:
        return None
    order = [l for l in layers if l in set(stats["layer"])] + sorted(
        set(stats["layer"]) - set(layers))
    has_zero = FRAC_ZERO in stats.columns and stats[FRAC_ZERO].notna().any()
    palette = dict(zip(order, sns.color_palette("viridis", len(order))))
    with paper_style():
        fig = Figure(figsize=(8.0, 2.9 * len(methods) + 0.7), layout="constrained")
        fig.get_layout_engine().set(wspace=0.08)
        axes = fig.subplots(len(methods), 2, squeeze=False, sharex=True)
        for (left, right), m in zip(axes, methods):
            part = stats[stats["method"] == m]
            for layer in order:
                s = part[part["layer"] == layer].sort_values("epoch")
                if s.empty:
                    continue
                c = palette[layer]
                left.plot(s["epoch"], s[Q50], color=c, lw=1.6, label=layer)
                for q in (Q10, Q90):  # thin lines: bands of many layers overlap
                    left.plot(s["epoch"], s[q], color=c, lw=0.8, ls="--")
                right.plot(s["epoch"], 100 * s[FRAC_GE1], color=c, lw=1.4, label=layer)
                if has_zero:
                    right.plot(s["epoch"], 100 * s[FRAC_ZERO], color=c, lw=1.1, ls="--")
            left.axhline(1.0, ls=":", color="black", lw=1)
            linthresh = zero_aware_log_axis(left, part[[Q10, Q50, Q90]].to_numpy().ravel())
            if linthresh is not None:
                left.axhspan(0, linthresh, color="0.94", lw=0, zorder=0)
            left.set_ylabel("Sensitivity S\n(median; dashed: 10th, 90th pct.)")
            right.set_ylabel("Weights (%)\nsolid: S ≥ 1" + ("; dashed: S = 0" if has_zero else ""))
            left.set_title(method_label(m), loc="left", fontsize="medium")
            right.set_ylim(bottom=0)
            if not (part[FRAC_GE1].fillna(0) > 0).any():  # its lines lie on the axis
                right.set_ylim(0, right.get_ylim()[1] * 1.18)  # room for the words
                right.text(0.97, 0.95, "no weight reached S ≥ 1", transform=right.transAxes,
                           ha="right", va="top", fontsize="small", color="0.3",
                           bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        for ax in axes[-1]:
            ax.set_xlabel("Epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][1].legend(title="Layer", fontsize="small", loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), frameon=False)
        if title:
            fig.suptitle(title)
    return fig
