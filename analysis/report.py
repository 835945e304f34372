"""``study report``: a study's runs → one folder of figures, tables, report.md and report.html,
also logged as artifacts (under ``report/``) on the study's parent MLflow run.

Works on a study that is still running or has failed trials: failed and superseded trials
are listed but left out of the aggregates; a configuration's epoch counts as an operating
point only once every one of its other trials has reached it (see ``pareto.aggregate_seeds``).

Entry points: ``make_report(runs, out_dir, ...)`` for loaded runs; ``main(target, ...)`` for
the CLI (a study YAML, a study output folder, or an experiment name); ``python -m
analysis.report`` runs ``main`` from the command line.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import figures, tables
from analysis.pareto import aggregate_seeds, pareto_front
from analysis.runs import Runs, list_experiments, load_runs
from study.runformat import (KEY_METRICS, SENS_STATS as _SENS, STATUSES, STORE_FILE, absolute_tracking_uri,
                             folder_tracking_uri, sqlite_uri)
from analysis.selection import (GROUP, Target, reference_points, resolve_targets,
                                select_operating_points)

ARTIFACT_PATH = "report"
SENS_STATS = tuple(f"sens_{s}" for s in _SENS)  # the layers frame's columns (analysis.runs)


# -- a tiny document model rendered to both Markdown and HTML ---------------------------------
class _Doc:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def table(self, display: pd.DataFrame) -> None:
        self.blocks.append(("table", display))

    def markdown(self) -> str:
        out = []
        for kind, data in self.blocks:
            if kind == "h":
                out.append("#" * data[0] + " " + data[1])
            elif kind == "p":
                out.append(data)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in data))
            elif kind == "img":
                out.append(f"![{data[1]}]({data[0]})")
            elif kind == "table":
                out.append(tables.to_markdown(data).rstrip("\n"))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, data in self.blocks:
            if kind == "h":
                body.append(f"<h{data[0]}>{_inline(data[1])}</h{data[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(data)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in data) + "</ul>")
            elif kind == "img":
                body.append(f'<figure><img src="{html.escape(data[0])}" alt="{html.escape(data[1])}">'
                            f"</figure>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in data.columns)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r)
                               + "</tr>" for r in data.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
                 "line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
                 "th,td{border-bottom:1px solid #ccc;padding:.25em .6em;text-align:right}"
                 "th:first-child,td:first-child{text-align:left}img{max-width:100%}"
                 "code{background:#f4f4f4;padding:0 .2em}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """The little Markdown the report uses: `code`, **bold**, [text](link)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', out)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "x"


# -- helpers on the aggregated frame ---------------------------------------------------------------
def curve_configs(agg: pd.DataFrame, selected: pd.DataFrame) -> dict[str, str]:
    """One configuration per method for curves: the one at its operating point, or else the
    one with the lowest mean validation error at any complete epoch."""
    chosen: dict[str, str] = {}
    for _, row in selected.iterrows():
        if row["met_target"] and isinstance(row.get("config"), str):
            chosen[row["method"]] = row["config"]
    complete = agg[agg["complete"]] if "complete" in agg else agg
    for method, part in complete.groupby("method"):
        if method not in chosen and np.isfinite(part["val_error_mean"]).any():
            chosen[method] = part.loc[part["val_error_mean"].idxmin(), "config"]
    return chosen


def sensitivity_stats(layers: pd.DataFrame, run_ids: set[str],
                      configs: dict[str, str]) -> pd.DataFrame:
    """Seed means of the logged sensitivity quantiles per (method, epoch, layer), for the
    chosen configuration of each method that logged any."""
    cols = [c for c in SENS_STATS if c in layers.columns]
    if layers.empty or not cols:
        return pd.DataFrame(columns=["method", "epoch", "layer", *SENS_STATS])
    part = layers[layers["run_id"].isin(run_ids) & layers["config"].isin(set(configs.values()))]
    part = part.dropna(subset=cols, how="all")
    if part.empty:
        return pd.DataFrame(columns=["method", "epoch", "layer", *SENS_STATS])
    return (part.groupby(["method", "epoch", "layer"], sort=True)[cols].mean().reset_index())


def _study_target(study: dict | None) -> float | None:
    """``target_error`` at the top of a study YAML, else under ``train:``."""
    if not isinstance(study, dict):
        return None
    for value in (study.get("target_error"), (study.get("train") or {}).get("target_error")
                  if isinstance(study.get("train"), dict) else None):
        if value is not None:
            return float(value)
    return None


# -- the report --------------------------------------------------------------------------------
def make_report(
    runs: Runs,
    out_dir: str | Path,
    target_error: float | None = None,
    *,
    study_target: float | None = None,
    literature: str | Path | bool | None = True,
    log_artifacts: bool = True,
) -> Path:
    """Write figures, tables, report.md and report.html into ``out_dir``; return it.

    ``target_error`` (validation error, %) overrides ``study_target`` and the study's
    ``target_error`` (from the parent run's study.yaml); see ``selection`` for the fallbacks.
    ``literature``: True for ``configs/literature.yaml``, a path, or False for none.
    ``log_artifacts``: also log the folder to the parent run (when the runs came from MLflow).
    """
    out = Path(out_dir)
    fig_dir, tab_dir = out / "figures", out / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tab_dir.mkdir(parents=True, exist_ok=True)
    if study_target is None:
        study_target = _study_target(runs.study)
    entries = ([] if literature is False else
               tables.load_literature(None if literature in (True, None) else literature))

    usable = runs.usable_epochs()
    carry = [c for c in ("setting", *runs.config_params) if c in usable.columns]
    if all(c in usable.columns for c in KEY_METRICS):
        agg = aggregate_seeds(usable, carry=carry)
    else:  # nothing logged yet (a study that just started)
        agg = pd.DataFrame(columns=["config", "epoch", *GROUP, "phase", "n_seeds", "n_trials",
                                    "complete", "candidate", "compression_mean",
                                    "compression_std", "val_error_mean", "test_error_mean",
                                    "test_error_std"])
    points = agg[agg["candidate"].astype(bool)]
    front = pareto_front(points, x="compression_mean", y="test_error_mean", by=GROUP)
    agg["on_front"] = agg.index.isin(front.index)
    targets = resolve_targets(agg, explicit=target_error, study=study_target)
    selected = select_operating_points(agg, targets) if len(agg) else pd.DataFrame(
        columns=[*GROUP, "met_target", "target_error"])
    reference = reference_points(agg)

    agg.to_csv(tab_dir / "points.csv", index=False)
    front.to_csv(tab_dir / "pareto_front.csv", index=False)
    selected.to_csv(tab_dir / "operating_points.csv", index=False)
    runs.trials.to_csv(tab_dir / "trials.csv", index=False)

    doc = _Doc()
    title = f"Study report: {runs.experiment}"
    doc.heading(1, title)
    _summary(doc, runs, targets)
    _unfinished(doc, runs)
    if agg.empty:
        doc.para("No trial has logged a complete epoch yet, so there is nothing to aggregate.")
    usable_ids = set(usable["run_id"])
    for key in sorted(targets):
        arch, dataset = key
        _section(doc, runs, key, agg, points, front, selected, reference,
                 targets[key], entries, usable_ids, fig_dir, tab_dir)
    doc.heading(2, "Files")
    doc.items([
        "`tables/points.csv`: every configuration × epoch, seed-aggregated (mean, std, "
        "n_seeds, complete, candidate, on_front).",
        "`tables/pareto_front.csv`: the non-dominated candidate points per method, architecture "
        "and data set (test error minimized, compression maximized).",
        "`tables/operating_points.csv`: the point the rule selected per method.",
        "`tables/trials.csv`: every trial with its status, params and final metrics.",
        "`tables/table_*.{md,csv,tex}`: the paper-layout tables (LaTeX needs `booktabs`).",
        "`figures/*.{png,pdf}`: the figures above.",
    ])
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(title))
    if log_artifacts:
        log_report(runs, out)
    return out


def _summary(doc: _Doc, runs: Runs, targets: dict[tuple, Target]) -> None:
    counts = runs.trials["status"].value_counts() if len(runs.trials) else pd.Series(dtype=int)
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.items([
        f"Experiment `{runs.experiment}` at `{runs.tracking_uri}`"
        + (f", parent run `{runs.parent_run_id}`" if runs.parent_run_id else ", no parent run"),
        f"{len(runs.trials)} trials: {status}. Generated {when}.",
        *([f"The experiment holds {len(runs.parent_runs)} parent runs (one per `study run`); "
           + ("this report covers the trials of all of them."
              if runs.trials["parent_run_id"].nunique() > 1
              else f"this report covers those of `{runs.parent_run_id}` only.")]
          if len(runs.parent_runs) > 1 else []),
        "Counting: prunable weights are the weight tensors of Linear and Conv layers (biases "
        "excluded); compression = |θ|/|θ≠0|; memory = nonzero × 4 B in kB of 1000 B; errors "
        "are top-1 in %.",
        "Operating-point rule: per method, the highest mean compression (over seeds) whose "
        "mean validation error is at most the target; ties go to the lower validation error, "
        "then the earlier epoch. Test error is never used to choose; the tables report it.",
        "Aggregation: a configuration is every param except the seed; its seeds are averaged "
        "epoch by epoch. A point counts only when every non-failed trial of the configuration "
        "logged finite errors at that epoch and all were in the sparsify phase.",
        *(f"Target for {a} on {d}: validation error ≤ {t.value:.2f}% ({t.source})."
          for (a, d), t in sorted(targets.items())),
    ])


def _unfinished(doc: _Doc, runs: Runs) -> None:
    bad = runs.trials[runs.trials["status"] != "finished"]
    superseded = runs.trials[runs.trials["superseded"]]
    if bad.empty and superseded.empty:
        return
    doc.heading(2, "Trials that did not finish")
    doc.para("Failed trials (and older runs of a retried trial) are left out of every "
             "aggregate. Diverged trials count up to the epoch before they diverged, pruned "
             "trials (stopped early by the scheduler) up to where they stopped; running "
             "trials count for the epochs that all seeds have reached.")
    epochs = runs.epochs.groupby("run_id")["epoch"].max() if len(runs.epochs) else pd.Series()
    rows = []
    for _, t in pd.concat([bad, superseded]).drop_duplicates("run_id").iterrows():
        last = epochs.get(t["run_id"], np.nan)
        rows.append([t["trial_id"], t["status"] + (" (superseded)" if t["superseded"] else ""),
                     t.get("method", ""), t["setting"], t.get("seed", ""),
                     "—" if pd.isna(last) else str(int(last))])
    doc.table(pd.DataFrame(rows, columns=["Trial", "Status", "Method", "Setting", "Seed",
                                          "Last epoch"]))


def _section(doc, runs, key, agg, points, front, selected, reference, target, entries,
             usable_ids, fig_dir, tab_dir) -> None:
    arch, dataset = key
    name = f"{arch} on {dataset}"
    stem = f"{slug(arch)}_{slug(dataset)}"

    def part(df: pd.DataFrame) -> pd.DataFrame:
        if df.empty or "arch" not in df.columns:
            return df
        return df[(df["arch"] == arch) & (df["dataset"] == dataset)]

    agg_g, points_g, front_g, sel_g, ref_g = map(part, (agg, points, front, selected, reference))
    layers = runs.layers_of(arch)
    doc.heading(2, name)

    # Table
    lit = tables.literature_rows(entries, arch, dataset, layers) if entries else None
    table = tables.build_table(sel_g, layers, lit)
    caption = tables.table_caption(arch, dataset, target.value, target.source)
    paths = tables.write_table(table, layers, tab_dir, f"table_{stem}", caption=caption)
    doc.heading(3, "Table: methods at their operating points")
    doc.para(caption)
    doc.table(tables.format_table(table, layers))
    doc.para(f"Files: [Markdown](tables/{paths['md'].name}), [CSV](tables/{paths['csv'].name}), "
             f"[LaTeX](tables/{paths['tex'].name}).")

    # Pareto front
    doc.heading(3, "Pareto front: test error against compression")
    fig = figures.pareto_figure(points_g, front_g, sel_g, ref_g, title=f"{name}: error vs compression")
    text = ("Each faint dot is one configuration at one sparsify-phase epoch (mean over its "
            "seeds). Lines join each method's non-dominated points, those that no other point of "
            "the same method beats in both test error and compression, with ±1 std over seeds as "
            "error bars on both axes. Stars mark the operating points of the table. Compression "
            "is on a log axis; lower and further right is better.")
    if len(ref_g):
        r = ref_g.iloc[0]
        text += (f" The dashed line is the unpruned `none` baseline at its lowest validation "
                 f"error: {r['test_error_mean']:.2f}% test error.")
    best = [f"{tables.method_label(m)} {g['compression_mean'].max():.1f}× at "
            f"{g.loc[g['compression_mean'].idxmax(), 'test_error_mean']:.2f}%"
            for m, g in front_g.groupby("method") if m != "none"]
    if best:
        text += " Highest compression on each front: " + "; ".join(best) + "."
    _figure(doc, fig, fig_dir / f"pareto_{stem}", f"Pareto front, {name}", text,
            "No sparsify-phase point is complete yet.")

    # Layer profile
    doc.heading(3, "Per-layer pruning profile")
    fig = figures.layer_profile_figure(sel_g, layers, title=f"{name}: remaining weights per layer")
    text = ("Remaining weights in each layer (%, log scale, ±1 std over seeds) for every method "
            "at its selected operating point, layers in model order from input to output. It "
            "shows which layers each method prunes hardest.")
    hardest = []
    for _, row in sel_g[sel_g["met_target"] & (sel_g["method"] != "none")].iterrows():
        vals = {l: row.get(f"remaining.{l}_mean", np.nan) for l in layers}
        vals = {l: v for l, v in vals.items() if pd.notna(v)}
        if vals:
            low = min(vals, key=vals.get)
            hardest.append(f"{tables.method_label(row['method'])}: {low} "
                           f"({100 * vals[low]:.3g}% left)")
    if hardest:
        text += " Hardest-pruned layer: " + "; ".join(hardest) + "."
    _figure(doc, fig, fig_dir / f"layer_profile_{stem}", f"Layer profile, {name}", text,
            "No method has an operating point that meets the target yet.")

    # Training curves
    doc.heading(3, "Training curves")
    configs = curve_configs(agg_g, sel_g)
    curves = agg_g[agg_g["config"].isin(set(configs.values()))] if len(agg_g) else agg_g
    fig = figures.training_curves_figure(curves, title=f"{name}: test loss per epoch")
    text = ("Test loss (cross-entropy) per epoch, mean and ±1 std over seeds, for one "
            "configuration per method: the one at its operating point, or else the one with "
            "the lowest validation error. Both phases are shown, as in the paper's Fig. 2. A "
            "loss that climbs after its minimum means the regularizer does not prevent "
            "overfitting.")
    rises = []
    for m, c in curves.groupby("method") if len(curves) else []:
        c = c.sort_values("epoch")
        loss = c["test_loss_mean"].to_numpy(dtype=float) if "test_loss_mean" in c else np.array([])
        if len(loss) and np.isfinite(loss).any():
            i = int(np.nanargmin(loss))
            rises.append(f"{tables.method_label(m)}: minimum {loss[i]:.3f} at epoch "
                         f"{int(c['epoch'].iloc[i])}, last {loss[-1]:.3f}")
    if rises:
        text += " " + "; ".join(rises) + "."
    _figure(doc, fig, fig_dir / f"training_curves_{stem}", f"Training curves, {name}", text,
            "No test loss was logged.")

    # Sensitivity statistics
    doc.heading(3, "Sensitivity statistics")
    stats = sensitivity_stats(runs.layers, usable_ids, configs)
    fig = figures.sensitivity_figure(stats, layers, title=f"{name}: sensitivity S during training")
    text = ("For each sensitivity method (its configuration as in the training curves): per "
            "layer, the median sensitivity S of the weights over training, with the 10th and 90th "
            "percentiles dashed (log scale; a percentile of exactly 0 is drawn at the bottom of "
            "the axis), and the share of weights with S ≥ 1. "
            "The update shrinks a weight by λ·w·max(0, 1 − S), so weights with S ≥ 1 (above "
            "the dotted line) are left alone. These are the statistics the trials logged "
            "(`sens.<layer>.*`), averaged over seeds.")
    if len(stats):
        # The last logged epoch per method and layer, in method order and model layer order.
        last = stats.sort_values("epoch").groupby(["method", "layer"]).tail(1)
        position = {layer: i for i, layer in enumerate(layers)}
        last = last.assign(_m=last["method"].map(lambda m: tables.method_sort_key(m)[0]),
                           _l=last["layer"].map(position)).sort_values(["_m", "method", "_l"])
        last = last.drop(columns=["_m", "_l"])
        last.to_csv(tab_dir / f"sensitivity_{stem}.csv", index=False)  # numbers, not text
        summary = pd.DataFrame({
            "Method": last["method"].map(tables.method_label), "Layer": last["layer"],
            "Epoch": last["epoch"].astype(int),
            **{f"S {q}": last[f"sens_{q}"].map(lambda v: f"{v:.3g}")
               for q in ("q10", "q50", "q90", "mean")},
            "S ≥ 1 (%)": (100 * last["sens_frac_ge1"]).map(lambda v: f"{v:.3g}"),
        })
    _figure(doc, fig, fig_dir / f"sensitivity_{stem}", f"Sensitivity statistics, {name}", text,
            "No trial of this architecture logged sensitivity statistics.")
    if len(stats):
        doc.para("At the last logged epoch:")
        doc.table(summary)


def _figure(doc: _Doc, fig, stem: Path, alt: str, text: str, empty: str) -> None:
    if fig is None:
        doc.para(empty)
        return
    paths = figures.save(fig, stem)
    doc.image(f"figures/{paths[0].name}", alt)
    doc.para(text + f" ([PDF](figures/{paths[1].name}))")


def log_report(runs: Runs, out: Path) -> bool:
    """Log the report folder as artifacts ``report/`` of the study's parent run."""
    if not runs.tracking_uri or not runs.parent_run_id:
        warnings.warn("no parent run found (tag study.role=parent): report not logged to MLflow")
        return False
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=runs.tracking_uri).log_artifacts(
            runs.parent_run_id, str(out), artifact_path=ARTIFACT_PATH)
    except Exception as err:  # the files are written; say why they are not in MLflow
        warnings.warn(f"report written to {out} but not logged to MLflow: {err}")
        return False
    return True


# -- command line ------------------------------------------------------------------------------
def _resolve_dir(value: str | Path, base: Path) -> Path:
    """A path from a study YAML: as given (relative to the working directory), else relative
    to the YAML's folder when only that one exists."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path.resolve()
    return (base / path).resolve()


def main(target: str, out: Path | None = None, target_error: float | None = None,
         tracking_uri: str | None = None, experiment: str | None = None) -> Path:
    """Make the report for ``target``: a study YAML file, a study output folder (holding
    ``mlflow.db`` or ``mlruns/``), or an experiment name (with ``tracking_uri``).

    From a study YAML it reads, all optional (the names of study/config.py): ``name``
    (default ``study``); ``output_dir`` (default ``runs/<name>``); ``tracking_uri`` or
    ``mlflow.tracking_uri`` (default ``sqlite:///<abs output_dir>/mlflow.db``); ``experiment``
    or ``mlflow.experiment`` (default ``name``); ``target_error`` or ``train.target_error``.
    Relative paths are taken from the working directory (as ``study run`` does), or from the
    YAML's folder when only that one exists. Explicit arguments win over the YAML. The report
    goes to ``out``, default ``<output_dir>/report`` (or ``<folder>/report``, or
    ``./report-<experiment>``).
    """
    import yaml

    path = Path(target)
    study_target = None
    default_out: Path
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path} is not a study YAML (a mapping at the top level)")
        ml = cfg.get("mlflow") if isinstance(cfg.get("mlflow"), dict) else {}
        # study/config.py's default output folder is runs/<name>, relative to the working dir
        output_dir = _resolve_dir(cfg.get("output_dir") or f"runs/{cfg.get('name', 'study')}",
                                  path.parent)
        tracking_uri = (tracking_uri or cfg.get("tracking_uri") or ml.get("tracking_uri")
                        or sqlite_uri(output_dir / STORE_FILE))
        experiment = (experiment or cfg.get("experiment") or ml.get("experiment")
                      or cfg.get("name") or "study")
        study_target = _study_target(cfg)
        default_out = output_dir / "report"
    elif path.is_dir():
        tracking_uri = tracking_uri or folder_tracking_uri(path)
        if experiment is None:
            names = list_experiments(absolute_tracking_uri(tracking_uri))
            if len(names) != 1:
                raise ValueError(f"{path} holds experiments {names}; name one with --experiment")
            experiment = names[0]
        default_out = path / "report"
    else:
        experiment = experiment or str(target)
        default_out = Path(f"report-{slug(experiment)}")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ValueError(f"{target!r} is neither a study YAML nor a study folder; "
                         "give --tracking-uri for an experiment name")
    runs = load_runs(tracking_uri, experiment)
    return make_report(runs, Path(out) if out else default_out, target_error,
                       study_target=study_target)


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="study YAML, study output folder, or experiment name")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--target-error", type=float, default=None,
                        help="validation error (%%) an operating point may not exceed")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--experiment", default=None)
    args = parser.parse_args(argv)
    out = main(args.target, args.out, args.target_error, args.tracking_uri, args.experiment)
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
