"""The study's parent MLflow run, summarized when the study ends: its trials by status and each
method's operating point (compression and test error at the selection target, by the report's
own rule: :func:`analysis.results.study_results`), as metrics of the parent run
(``runformat.SUMMARY_*``), so that the MLflow UI lists studies with their results.

It reads the runs back as ``study report`` does, and costs about as much as loading them. It
never fails a study: any error becomes a warning.
"""
from __future__ import annotations

from typing import Any, Callable


def log_parent_summary(tracker: Any, config: Any, parent_run_id: str, log: Callable[[str], None]) -> None:
    """Log the summary metrics on ``parent_run_id`` (a warning through ``log`` on any error)."""

    try:
        from analysis.results import study_results, summary_metrics
        from analysis.runs import load_runs

        runs = load_runs(tracker.tracking_uri, config.experiment_name, parent=parent_run_id)
        results = study_results(runs, study_target=config.train.target_error, matched=False)
        tracker.log_metrics(parent_run_id, summary_metrics(runs, results), step=0)
    except Exception as err:  # a summary is never worth a failed study
        log(f"warning: the parent run's summary metrics were not logged: {type(err).__name__}: {err}")
