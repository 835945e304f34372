"""Independent references the analysis tests check against: Pareto dominance and fronts
written straight from the definition (O(n²), see analysis/pareto.py for the fast front), and
a LaTeX compile of a table (when a TeX engine is installed)."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def is_dominated(
    point: tuple[float, float],
    others: np.ndarray | Sequence[tuple[float, float]],
    *,
    maximize_x: bool = True,
    minimize_y: bool = True,
) -> bool:
    """Brute force: does any of ``others`` dominate ``point`` = (x, y)?

    b dominates a when b is at least as good in both coordinates and strictly better in one.
    An identical point does not dominate.
    """
    x, y = point
    sx = 1.0 if maximize_x else -1.0
    sy = 1.0 if minimize_y else -1.0
    for ox, oy in np.asarray(others, dtype=float).reshape(-1, 2):
        better_or_equal = sx * ox >= sx * x and sy * oy <= sy * y
        strictly = sx * ox > sx * x or sy * oy < sy * y
        if better_or_equal and strictly:
            return True
    return False


def brute_force_front(
    df: pd.DataFrame,
    x: str = "compression",
    y: str = "test_error",
    by: Sequence[str] = ("arch", "dataset", "method"),
) -> pd.DataFrame:
    """O(n²) reference for ``pareto_front``: each finite row checked against its group."""
    by = [c for c in by if c in df.columns]
    keep = []
    groups = df.groupby(by, sort=False, dropna=False) if by else [(None, df)]
    for _, group in groups:
        pts = group[[x, y]].to_numpy(dtype=float)
        ok = np.isfinite(pts).all(axis=1)
        for label, p, fine in zip(group.index, pts, ok):
            if fine and not is_dominated((p[0], p[1]), pts[ok]):
                keep.append(label)
    return df.loc[keep].sort_values([*by, x, y], kind="stable")


def assert_latex_compiles(table_tex: str, folder: Path) -> None:
    """Compile ``table_tex`` in a minimal document (booktabs) in ``folder``; without
    ``pdflatex`` on PATH there is nothing to compile with, and the check passes."""
    engine = shutil.which("pdflatex")
    if engine is None:
        return
    doc = folder / "table.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n"
                   "\\usepackage{booktabs}\n\\begin{document}\n" + table_tex + "\\end{document}\n")
    result = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                            cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (folder / "table.pdf").stat().st_size > 1000
