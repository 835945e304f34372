"""A study's runs as files, without a report: the three frames of :func:`analysis.runs.load_runs`
(``trials``, ``epochs``, ``layers``) as CSV or Parquet, for pandas, R, DuckDB or a spreadsheet.

Parquet keeps the column types (numbers, booleans, timestamps); a column whose values mix
types (a param logged as a number by some runs and as text by others) is written as text.
Parquet goes through ``pyarrow`` (a dependency; MLflow needs it too).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.runs import Runs

FORMATS: tuple[str, ...] = ("csv", "parquet")
FRAMES: tuple[str, ...] = ("trials", "epochs", "layers")


def _parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that mix Python types (or hold lists) become text; missing stays missing."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        values = out[col].dropna()
        kinds = {type(v) for v in values}
        if len(kinds) > 1 or kinds - {str}:
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return out


def export_runs(runs: Runs, out_dir: str | Path, fmt: str = "csv") -> list[Path]:
    """Write ``trials``, ``epochs`` and ``layers`` into ``out_dir`` as ``<frame>.<fmt>``;
    returns the paths."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FRAMES:
        frame: pd.DataFrame = getattr(runs, name)
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            _parquet_ready(frame).to_parquet(path, index=False)
        paths.append(path)
    return paths
