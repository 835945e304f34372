"""What every report figure shares: the paper style, one colour and one marker per method,
the panel grid of small multiples, log axes that can show zeros, and saving as PNG and PDF.

Matplotlib's object API only (no pyplot, so no global backend or figure state), with seaborn's
paper style and colour-blind palette.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.selection import REFERENCE_METHOD
from analysis.tables import METHOD_LABELS

#: The unpruned reference is drawn in dark grey (dashed) in every figure, never in a method's
#: colour, so the palette's grey is left out of the methods' colours.
REFERENCE_COLOR = (0.25, 0.25, 0.25)
#: Drawn behind a panel's own method: the other methods' curves, for context.
CONTEXT_COLOR = (0.78, 0.78, 0.78)
_MARKERS = ("o", "s", "D", "v", "^", "<", ">", "P", "X", "h", "p", "*", "d", "H", "8")


@contextmanager
def paper_style():
    """Seaborn's whitegrid + paper context, fonts large enough for a printed column."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15),
          "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight"}
    with mpl.rc_context(rc):
        yield


def _method_index(methods: Sequence[str]) -> dict[str, int]:
    """Known methods by their place in ``METHOD_LABELS`` (the reference left out), others after
    them alphabetically: the same index, so the same colour and marker, in every figure."""
    known = [m for m in METHOD_LABELS if m != REFERENCE_METHOD]
    extra = sorted(m for m in set(methods) if m not in known and m != REFERENCE_METHOD)
    return {m: known.index(m) if m in known else len(known) + extra.index(m)
            for m in methods if m != REFERENCE_METHOD}


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """The same colour for a method in every figure; the reference is dark grey."""
    # colour-blind safe first, then the darker shades of the same hues (markers keep those apart)
    palette = [c for name in ("colorblind", "dark")
               for i, c in enumerate(sns.color_palette(name, 10)) if i != 7]  # no grey
    out = {m: palette[i % len(palette)] for m, i in _method_index(methods).items()}
    if REFERENCE_METHOD in methods:
        out[REFERENCE_METHOD] = REFERENCE_COLOR
    return out


def method_markers(methods: Sequence[str]) -> dict[str, str]:
    """The same marker for a method in every figure, so that methods stay apart in grey print
    and where their points coincide."""
    out = {m: _MARKERS[(i + 1) % len(_MARKERS)] for m, i in _method_index(methods).items()}
    if REFERENCE_METHOD in methods:
        out[REFERENCE_METHOD] = _MARKERS[0]
    return out


def panel_grid(fig: Figure, n: int, *, ncols: int = 3, sharex: bool = True,
               sharey: bool = True) -> list[Axes]:
    """``n`` panels of small multiples, ``ncols`` per row; unused cells are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = list(fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    # Shared axes label only the outer panels; a hidden cell leaves the panel above it at the
    # bottom edge, so that one keeps its tick labels.
    for i, ax in enumerate(axes[:n]):
        if i + ncols >= n:
            ax.xaxis.set_tick_params(labelbottom=True)
    return axes[:n]


def label_bottom(axes: Sequence[Axes], label: str, *, ncols: int = 3) -> None:
    """The x label of small multiples, on the panels at the bottom of each column (a figure
    legend below the panels would collide with one ``supxlabel``)."""
    ncols = max(1, min(ncols, len(axes)))
    for i, ax in enumerate(axes):
        if i + ncols >= len(axes):
            ax.set_xlabel(label)


def times(value: float, _pos=None) -> str:
    """A compression tick: ``10×``."""
    return f"{value:g}×"


def compression_axis(ax: Axes, axis: str = "x") -> None:
    """Log scale with ticks at 1, 2, 5, 10, 20, ... (a range under a decade still gets labels)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(times))
    target.set_minor_formatter(NullFormatter())


def zero_aware_log_axis(ax: Axes, values, axis: str = "y") -> float | None:
    """A log axis for ``values`` ≥ 0. Without zeros: plain log. With zeros: symlog, linear
    from 0 to the decade below the smallest positive value and logarithmic above, so that a
    zero is drawn at 0 (labelled) instead of at an invented floor. Returns that linear
    threshold, or None for a plain log axis (or no positive value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    positive = v[v > 0]
    set_scale = ax.set_yscale if axis == "y" else ax.set_xscale
    target = ax.yaxis if axis == "y" else ax.xaxis
    if not positive.size:
        return None
    if not (v == 0).any():
        set_scale("log")
        target.set_major_formatter(FuncFormatter(lambda x, p: f"{x:g}"))
        return None
    linthresh = 10.0 ** math.floor(math.log10(positive.min()))
    set_scale("symlog", linthresh=linthresh, linscale=0.4)
    target.set_major_formatter(FuncFormatter(lambda x, p: "0" if x == 0 else f"{x:g}"))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, None)
    return linthresh


def log_error_axis(ax: Axes, values) -> bool:
    """Errors spanning more than a factor 5 (a method that breaks down) read better on a log
    axis; otherwise keep it linear like the paper's tables. Returns whether it is log."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() > 5:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, p: f"{x:g}"))
        return True
    return False


def nan0(values) -> np.ndarray:
    """Error bars: a missing std (one seed) draws no bar."""
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight")
    return paths
