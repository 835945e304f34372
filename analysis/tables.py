"""The paper's Table 1 layout, from selected operating points: Markdown, CSV and LaTeX. Pure.

One row per method at its operating point (``selection.select_operating_points``), then the
published numbers of ``configs/literature.yaml`` as rows marked "reported". Columns: remaining
weights per layer (%), total nonzero weights, memory footprint (kB), compression (×), the
remaining neurons as the L0 and SeReNe papers print them (``64-112-43-10``: the inputs still
read, then each layer's units left, means over seeds; only when the runs logged them, see
``study.sparsity``), top-1 test error (%) as mean ± std over seeds.

``build_table`` makes the numeric frame (written as CSV); ``format_table`` turns it into
strings; ``to_markdown`` and ``to_latex`` render those strings. ``write_files`` writes any
table (numbers as CSV, strings as Markdown and LaTeX, ``plain_latex`` by default): the
matched comparison's table uses it too.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import runformat as rf
from study.runformat import neurons_key, remaining_key

DEFAULT_LITERATURE = Path(__file__).resolve().parents[1] / "configs" / "literature.yaml"

#: Display order and names; methods not listed follow in alphabetical order.
METHOD_LABELS: dict[str, str] = {
    "none": "None (unpruned)",
    "sensitivity-unspec": "Sensitivity, unspecific",
    "sensitivity-spec": "Sensitivity, specific",
    "lobster": "LOBSTER (loss sensitivity)",
    "serene": "SeReNe (neuron sensitivity)",
    "decay": "Decay (sensitivity without S)",
    "weight-decay": "Weight decay (L2)",
    "l1": "L1",
    "magnitude": "Magnitude (Han et al.)",
    "l0": "L0 (Louizos et al.)",
    "sparse-vd": "Sparse VD (Molchanov et al.)",
    "gmp": "Gradual magnitude (GMP)",
}
MEASURED = "this study"
REPORTED = "reported"
DASH = "—"


def method_label(method: str) -> str:
    base, variant = rf.split_variant(method)
    label = METHOD_LABELS.get(base, base)
    return f"{label} [{variant}]" if variant else label


def method_sort_key(method: str) -> tuple[int, str, str]:
    """A variant (``<method>@<label>``) right after its method."""
    order = list(METHOD_LABELS)
    base, variant = rf.split_variant(method)
    return (order.index(base) if base in order else len(order), base, variant)


def sorted_methods(methods) -> list[str]:
    return sorted(set(methods), key=method_sort_key)


# -- literature ---------------------------------------------------------------------------------
def load_literature(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Entries of a literature YAML (default: ``configs/literature.yaml``; [] if it is absent)."""
    import yaml

    if path is None:
        if not DEFAULT_LITERATURE.is_file():
            return []
        path = DEFAULT_LITERATURE
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"literature file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("entries", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'entries' must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        for key in ("arch", "dataset", "label"):
            if key not in entry:
                raise ValueError(f"{path}: entry {i} lacks {key!r}")
    return entries


def literature_rows(entries: Sequence[dict], arch: str, dataset: str,
                    layers: Sequence[str]) -> pd.DataFrame:
    """The entries for ``arch`` on ``dataset``, in the table schema."""
    rows = []
    for e in entries:
        if e["arch"] != arch or e["dataset"] != dataset:
            continue
        remaining = e.get("remaining") or {}
        notes = [e["note"]] if e.get("note") else []
        if e.get("remaining_groups"):
            notes.append("remaining: " + ", ".join(
                f"{k} {v:g}%" for k, v in e["remaining_groups"].items()))
        if e.get("top5_error") is not None:
            notes.append(f"top-5 error {e['top5_error']:g}%")
        row = {
            "method": e.get("method") or "", "label": e["label"], "source": REPORTED,
            "setting": e.get("block", ""), "epoch": np.nan, "n_seeds": np.nan,
            **{remaining_key(layer): _num(remaining.get(layer)) for layer in layers},
            "nonzero": _num(e.get("nonzero")), "memory_kb": _num(e.get("memory_kb")),
            "compression": _num(e.get("compression")),
            **_neuron_columns(np.nan, [np.nan] * len(layers), layers),
            rf.ARCHITECTURE: str(e.get(rf.ARCHITECTURE) or ""),
            "test_error": _num(e.get("top1_error")), "test_error_std": np.nan,
            "val_error": np.nan, "target_error": np.nan, "met_target": True,
            "note": "; ".join(notes),
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=table_columns(layers))


def _num(value: Any) -> float:
    return float(value) if value is not None else np.nan


# -- the numeric table --------------------------------------------------------------------------
def table_columns(layers: Sequence[str]) -> list[str]:
    return ["method", "label", "source", "setting", "epoch", "n_seeds",
            *(remaining_key(layer) for layer in layers),
            "nonzero", "memory_kb", "compression",
            rf.INPUTS, *(neurons_key(layer) for layer in layers), rf.ARCHITECTURE,
            "test_error", "test_error_std", "val_error", "target_error", "met_target", "note"]


def _neuron_columns(inputs: float, neurons: Sequence[float], layers: Sequence[str]) -> dict[str, float]:
    return {rf.INPUTS: inputs, **{neurons_key(layer): n for layer, n in zip(layers, neurons)}}


def architecture_of(inputs: float, neurons: Sequence[float]) -> str:
    """The remaining units as a string, or "" when a count is missing (a study logged before
    the neurons were counted)."""
    values = [inputs, *neurons]
    return rf.architecture(inputs, neurons) if values and np.all(np.isfinite(values)) else ""


def measured_rows(selected: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Selected operating points (one per method) in the table schema, method order."""
    rows = []
    for _, s in selected.iterrows():
        met = bool(s.get("met_target", True))

        def get(col: str, scale: float = 1.0) -> float:
            value = s.get(col, np.nan) if met else np.nan
            return float(value) * scale if value is not None and not pd.isna(value) else np.nan

        target = float(s.get("target_error", np.nan))
        inputs, neurons = get(f"{rf.INPUTS}_mean"), [get(f"{neurons_key(layer)}_mean") for layer in layers]
        rows.append({
            "method": s["method"], "label": method_label(s["method"]), "source": MEASURED,
            "setting": s.get("setting", "") if met and isinstance(s.get("setting"), str) else "",
            "epoch": get("epoch"), "n_seeds": get("n_seeds"),
            **{remaining_key(layer): get(f"{remaining_key(layer)}_mean") for layer in layers},
            "nonzero": get("nonzero_mean"), "memory_kb": get("memory_kb_mean"),
            "compression": get("compression_mean"),
            **_neuron_columns(inputs, neurons, layers), rf.ARCHITECTURE: architecture_of(inputs, neurons),
            "test_error": get("test_error_mean"), "test_error_std": get("test_error_std"),
            "val_error": get("val_error_mean"), "target_error": target, "met_target": met,
            "note": "" if met else f"no operating point with validation error <= {target:.2f}%",
        })
    table = pd.DataFrame(rows, columns=table_columns(layers))
    order = sorted(range(len(table)), key=lambda i: method_sort_key(table["method"].iloc[i]))
    return table.iloc[order].reset_index(drop=True)


def build_table(selected: pd.DataFrame, layers: Sequence[str],
                literature: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measured rows, then the reported ones."""
    parts = [measured_rows(selected, layers)]
    if literature is not None and len(literature):
        parts.append(literature[table_columns(layers)])
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=table_columns(layers))
    return pd.concat(parts, ignore_index=True)


# -- formatting ---------------------------------------------------------------------------------
def fmt_pct(value: float) -> str:
    """Remaining %, three significant digits like the paper (2.25, 69.3, 0.93)."""
    return f"{value:.3g}" if np.isfinite(value) else DASH


def fmt_count(value: float) -> str:
    """21760 → 21.76k, 10350000 → 10.35M."""
    if not np.isfinite(value):
        return DASH
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.2f}k"
    return f"{value:.0f}"


def fmt_memory(value: float) -> str:
    if not np.isfinite(value):
        return DASH
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def fmt_ratio(value: float) -> str:
    """Compression: 103, 27.9, 1.00."""
    if not np.isfinite(value):
        return DASH
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_error(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return DASH
    return f"{mean:.2f} ± {std:.2f}" if np.isfinite(std) else f"{mean:.2f}"


NEURONS_COLUMN = "Neurons"


def display_columns(layers: Sequence[str], neurons: bool = False) -> list[str]:
    """The display columns; ``neurons`` adds the remaining-neurons column after compression."""
    return ["Method", "Source", *(f"{layer} (%)" for layer in layers), "Total nonzero",
            "Memory (kB)", "Compression (×)", *([NEURONS_COLUMN] if neurons else []),
            "Top-1 test error (%)", "Setting"]


def has_neurons(table: pd.DataFrame) -> bool:
    """Whether any row has a remaining-neurons string (runs that counted them, or a paper)."""
    return rf.ARCHITECTURE in table.columns and bool(table[rf.ARCHITECTURE].fillna("").astype(str).str.len().any())


def format_table(table: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Strings for display; missing numbers are "—", or "N/A" where a paper gives none. The
    Neurons column appears when some row has the counts (``has_neurons``)."""
    neurons = has_neurons(table)
    rows = []
    for _, r in table.iterrows():
        reported = r["source"] == REPORTED
        missing = "N/A" if reported else DASH

        def printed(value: float, fmt) -> str:
            """Published numbers keep the digits the paper printed."""
            value = float(value)
            if not np.isfinite(value):
                return missing
            return f"{value:g}" if reported else fmt(value)

        def pct(layer: str) -> str:
            return printed(r[remaining_key(layer)], fmt_pct)

        if reported:
            setting = "; ".join(s for s in (r["setting"], r["note"]) if s)
        elif r["met_target"]:
            epoch = "" if pd.isna(r["epoch"]) else f"epoch {int(r['epoch'])}"
            seeds = "" if pd.isna(r["n_seeds"]) else f"n={int(r['n_seeds'])}"
            setting = ", ".join(s for s in (r["setting"], epoch, seeds) if s)
        else:
            setting = r["note"]
        architecture = str(r.get(rf.ARCHITECTURE) or "") if not pd.isna(r.get(rf.ARCHITECTURE)) else ""
        rows.append([
            r["label"], r["source"], *(pct(layer) for layer in layers),
            fmt_count(float(r["nonzero"])), printed(r["memory_kb"], fmt_memory),
            printed(r["compression"], fmt_ratio),
            *([architecture or missing] if neurons else []),
            printed(r["test_error"], lambda v: fmt_error(v, float(r["test_error_std"]))),
            setting,
        ])
    return pd.DataFrame(rows, columns=display_columns(layers, neurons))


_NUMBER_CELL = re.compile(r"[-+]?[\d.,]+(e[-+]?\d+)?\s*[kM%×]?(\s*±\s*[\d.,]+)?|—|N/A|")


def numeric_column(display: pd.DataFrame, col: str) -> bool:
    """Whether every cell of a display column is a number (or a dash): right-aligned."""
    return all(_NUMBER_CELL.fullmatch(str(v).strip()) for v in display[col])


def to_markdown(display: pd.DataFrame) -> str:
    """A GitHub pipe table: numeric columns right-aligned, text left-aligned."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in display.columns) + " |",
             "|" + "|".join("---:" if numeric_column(display, c) else ":---"
                            for c in display.columns) + "|"]
    for row in display.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"\ensuremath{\pm}", "×": r"\ensuremath{\times}", "—": "---",
    "≤": r"\ensuremath{\leq}", "≥": r"\ensuremath{\geq}", "θ": r"\ensuremath{\theta}",
    "≠": r"\ensuremath{\neq}", "λ": r"\ensuremath{\lambda}", "−": r"\ensuremath{-}",
    "<": r"\ensuremath{<}", ">": r"\ensuremath{>}", "–": "--",
}


def latex_escape(text: Any) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(display: pd.DataFrame, layers: Sequence[str], *, caption: str = "",
             label: str = "") -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``), without the Setting column."""
    cols = [c for c in display.columns if c != "Setting"]
    n_layers = len(layers)
    spec = "ll" + "r" * (len(cols) - 2)
    header = ["Method", "Source", *(latex_escape(layer) for layer in layers), "Total",
              "Memory (kB)", r"$|\theta|/|\theta\neq0|$",
              *([NEURONS_COLUMN] if NEURONS_COLUMN in cols else []), r"Top-1 error (\%)"]
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small"]
    lines += _caption_lines(caption, label)
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    if n_layers:
        lines.append(" & ".join(["", "", r"\multicolumn{%d}{c}{Remaining (\%%)}" % n_layers]
                                + [""] * (len(cols) - 2 - n_layers)) + r" \\")
        lines.append(r"\cmidrule(lr){3-%d}" % (2 + n_layers))
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    previous = None
    for _, row in display[cols].iterrows():
        if previous is not None and row["Source"] != previous:
            lines.append(r"\midrule")
        previous = row["Source"]
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def table_caption(arch: str, dataset: str, target: float, target_source: str) -> str:
    return (
        f"{arch} on {dataset}. Operating point per method: the highest mean compression whose "
        f"mean validation error is at most {target:.2f}% (target from {target_source}); test "
        "error is reported as mean ± std over seeds. Remaining weights per layer in %; counts "
        "cover the prunable weights (Linear and Conv weight tensors, biases excluded); memory = "
        "nonzero × 4 B in kB of 1000 B; compression = |θ|/|θ≠0|. Neurons (when counted): the "
        "input units still read, then each layer's units with a nonzero incoming weight that the "
        "next layer still reads (mean over seeds). Rows marked reported are published numbers "
        "(configs/literature.yaml)."
    )


def plain_latex(display: pd.DataFrame, *, caption: str = "", label: str = "") -> str:
    """Any table of display strings as a booktabs ``table``: the first column left-aligned,
    the others right-aligned when every cell is a number (``to_markdown``'s rule)."""
    def numeric(col: str) -> bool:
        return all(_NUMBER_CELL.fullmatch(str(v).strip()) for v in display[col])

    spec = "".join("r" if i and numeric(c) else "l" for i, c in enumerate(display.columns))
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small"]
    lines += _caption_lines(caption, label)
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule",
              " & ".join(latex_escape(c) for c in display.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\"
              for row in display.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _caption_lines(caption: str, label: str) -> list[str]:
    lines = []
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + "".join(ch for ch in label if ch.isalnum() or ch in ":-._") + "}")
    return lines


def write_files(numeric: pd.DataFrame, display: pd.DataFrame, out_dir: str | Path, stem: str, *,
                caption: str = "", latex: str | None = None) -> dict[str, Path]:
    """Write ``<stem>.md`` (caption and ``display``), ``<stem>.csv`` (``numeric``) and
    ``<stem>.tex`` (``latex``, default ``plain_latex(display)``); return their paths by
    suffix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / f"{stem}.md", "csv": out_dir / f"{stem}.csv",
             "tex": out_dir / f"{stem}.tex"}
    paths["md"].write_text((f"{caption}\n\n" if caption else "") + to_markdown(display))
    numeric.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(latex if latex is not None else
                            plain_latex(display, caption=caption, label=f"tab:{stem}"))
    return paths


def write_table(table: pd.DataFrame, layers: Sequence[str], out_dir: str | Path, stem: str, *,
                caption: str = "") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex``; return their paths by suffix."""
    display = format_table(table, layers)
    return write_files(table, display, out_dir, stem, caption=caption,
                       latex=to_latex(display, layers, caption=caption, label=f"tab:{stem}"))
