"""A study's loaded runs → one folder of figures, tables, report.md and report.html, also
logged as artifacts (under ``report/``) on the study's parent MLflow run.

Works on a study that is still running or has failed trials: failed and superseded trials
are listed but left out of the aggregates; a configuration's epoch counts as an operating
point only once every one of its other trials has reached it (see ``pareto.aggregate_seeds``).

The entry point is ``make_report(runs, out_dir, target_error=..., study_target=...)``, with
values already resolved: ``study report`` (``study.cli.cmd_report``) finds the runs, the
folder and the study's target from the validated study file or the study's own parent run.
The frames come from :func:`analysis.results.study_results` (each method's confirm runs
where it has any, else its search runs: seed aggregates, fronts, operating points and the
compression at matched validation error against the reference method); this module adds,
for the selection view, the same from the search runs alone (``selection_frames``);
:mod:`analysis.sections` writes the prose and figures into an
:class:`analysis.document.Document`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from analysis import sections, tables
from analysis.document import Document
from analysis.pareto import pareto_front
from analysis.results import aggregate, select, study_results
from analysis.runs import Runs
from analysis.selection import GROUP, Target, reference_points
from study import runformat as rf

ARTIFACT_PATH = "report"


def make_report(
    runs: Runs,
    out_dir: str | Path,
    *,
    target_error: float | None = None,
    study_target: float | None = None,
    literature: str | Path | bool | None = True,
    log_artifacts: bool = True,
    reference: str | None = None,
) -> Path:
    """Write figures, tables, report.md and report.html into ``out_dir``; return it.

    The selection target (validation error, %): ``target_error`` (``--target-error``), else
    ``study_target`` (the study's ``train.target_error``), else derived from the unpruned
    reference (see ``selection.resolve_targets``).
    ``literature``: True for ``configs/literature.yaml``, a path, or False for none.
    ``log_artifacts``: also log the folder to the parent run (when the runs came from MLflow).
    ``reference``: the method the matched comparison compares against (default ``decay``,
    else ``weight-decay``; see ``matched.choose_reference``).
    """
    res = study_results(runs, target_error=target_error, study_target=study_target, reference=reference)
    out = Path(out_dir)
    fig_dir, tab_dir = out / "figures", out / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tab_dir.mkdir(parents=True, exist_ok=True)
    entries = ([] if literature is False else
               tables.load_literature(None if literature in (True, None) else literature))
    usable, agg, points, front = res.usable, res.agg, res.points, res.front
    targets, selected = res.targets, res.selected
    search = selection_frames(runs.usable_epochs(), res.carry, targets, (agg, selected, res.unpruned))

    agg.to_csv(tab_dir / "points.csv", index=False)
    front.to_csv(tab_dir / "pareto_front.csv", index=False)
    search["front"].to_csv(tab_dir / "pareto_selection.csv", index=False)
    selected.to_csv(tab_dir / "operating_points.csv", index=False)
    runs.trials.to_csv(tab_dir / "trials.csv", index=False)

    doc = Document()
    title = f"Study report: {runs.experiment}"
    doc.heading(1, title)
    sections.summary(doc, runs, targets)
    sections.unfinished(doc, runs)
    if agg.empty:
        doc.para("No trial has logged a complete epoch yet, so there is nothing to aggregate.")
    usable_ids = set(usable["run_id"])
    for (arch, dataset), target in sorted(targets.items()):
        part = sections.Slice.of(arch, dataset, target, runs.layers_of(arch), agg=agg,
                                 points=points, front=front, selected=selected,
                                 reference=res.unpruned, stages=res.stages,
                                 matched_seeds=res.matched_seeds, matched=res.matched,
                                 **{f"search_{k}": v for k, v in search.items()})
        sections.arch_section(doc, part, runs, entries, usable_ids, fig_dir, tab_dir)
    sections.files(doc, out)
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(title))
    if log_artifacts:
        log_report(runs, out)
    return out


def selection_frames(usable: pd.DataFrame, carry: list[str], targets: dict[tuple, Target],
                     report_frames: tuple[pd.DataFrame, ...]) -> dict[str, pd.DataFrame]:
    """The selection view's frames, from the search runs only (where each method's
    configuration and epoch were chosen): ``points`` (candidates), ``front`` (non-dominated
    on **validation** error and compression), ``selected`` (the rule applied to them) and
    ``reference`` (the unpruned method's best validation error). A study without confirm runs
    reuses the report's own aggregate, operating points and reference (``report_frames``)."""
    if "stage" in usable.columns and (usable["stage"] == rf.STAGE_CONFIRM).any():
        agg = aggregate(usable[usable["stage"] == rf.STAGE_SEARCH], carry)
        selected, reference = select(agg, targets), reference_points(agg)
    else:
        agg, selected, reference = report_frames
    points = agg[agg["candidate"].astype(bool)]
    front = pareto_front(points, x="compression_mean", y="val_error_mean", by=GROUP)
    return {"points": points, "front": front, "selected": selected, "reference": reference}


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
