"""The commands that read a study's runs: ``study report``, ``status``, ``export``, ``compare``
and ``move``, and the checks ``study run`` makes before it trains (a study that is already
complete; the study index). Each finds its runs through :func:`study.locate.locate` (study
file, study folder or experiment name; never creating a store) and imports what it needs
when it runs, so ``study --help`` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from study.cli import _examples, _Help, console


def _locate(args: argparse.Namespace, target: str | None = None, check: Any = None) -> Any:
    from study.locate import locate

    found = locate(target or args.target, sets=getattr(args, "set", None) or (),
                   tracking_uri=getattr(args, "tracking_uri", None), experiment=getattr(args, "experiment", None),
                   check=check)
    for note in found.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    return found


def _load(found: Any) -> tuple[Any, Any]:
    """The runs, and the study they were made by (the file's, else the parent run's study.yaml)."""
    from analysis.runs import load_runs
    from study import runformat as rf
    from study.schema import study_from_dict

    runs = load_runs(found.tracking_uri, found.experiment)
    study = found.study
    if study is None and runs.study is not None:
        study = study_from_dict(runs.study, f"{rf.STUDY_YAML} of parent run {runs.parent_run_id}")
    return runs, study


# -- study report ---------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Resolve the report's inputs once, then write it. The runs come from :func:`_locate`;
    the folder is ``<output folder>/report`` (``./report-<experiment>`` for an experiment
    name given with a tracking URI); the selection target is the study's
    ``train.target_error`` (the file's, else the one the parent run logged, validated the
    same way). ``--out`` and ``--target-error`` win. ``--reference`` must name a method of
    the study (checked before the runs are read when a study file names the methods)."""
    from analysis.matched import choose_reference
    from analysis.report import make_report
    from analysis.sections import slug

    def check(study: Any) -> None:  # a study file's --reference, before any run is looked for
        if args.reference is not None:
            choose_reference(study.methods, args.reference)

    found = _locate(args, check=check)
    runs, study = _load(found)
    if args.out:
        out = Path(args.out)
    elif found.folder is not None:
        out = found.folder / "report"
    else:
        out = Path(f"report-{slug(found.experiment)}")
    written = make_report(runs, out, target_error=args.target_error,
                          study_target=study.train.target_error if study else None,
                          reference=args.reference)
    print(written / "report.html")
    print_key_tables(written)
    return 0


def show_table(display: Any, title: str) -> None:
    """A table of strings on stdout: drawn by rich on a terminal, as Markdown otherwise (a log
    or a pipe, where a drawn table would wrap at 80 columns)."""
    from rich.console import Console
    from rich.table import Table

    from analysis.tables import to_markdown

    out = Console()
    if not out.is_terminal:
        print(f"{title}\n\n{to_markdown(display)}")
        return
    table = Table(title=title, title_justify="left")
    for col in display.columns:
        numeric = display[col].astype(str).str.match(r"^[\d.,×x%—± \[\]/-]*$").all()
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    out.print(table)


def print_key_tables(report: Path) -> None:
    """The measured rows of each Table 1 the report wrote (``tables/table_<arch>_<dataset>.csv``),
    compact: method, setting, epoch, seeds, nonzero weights, compression, test and validation
    error."""
    import numpy as np
    import pandas as pd

    from analysis.tables import DASH, MEASURED, fmt_count, fmt_error, fmt_ratio

    for path in sorted((report / "tables").glob("table_*.csv")):
        rows = pd.read_csv(path, keep_default_na=False, na_values=[""])
        rows = rows[rows["source"] == MEASURED]
        if rows.empty:
            continue
        arch, _, dataset = path.stem[len("table_"):].partition("_")
        target = float(rows["target_error"].iloc[0])
        lines = []
        for _, r in rows.iterrows():
            if not r["met_target"]:
                lines.append([r["method"], f"no point at validation error ≤ {target:.2f}%", *[DASH] * 6])
                continue
            lines.append([r["method"], r["setting"] if isinstance(r["setting"], str) else "", f"{int(r['epoch'])}",
                          f"{int(r['n_seeds'])}", fmt_count(r["nonzero"]), fmt_ratio(r["compression"]),
                          fmt_error(r["test_error"], r["test_error_std"]),
                          f"{r['val_error']:.2f}" if np.isfinite(r["val_error"]) else DASH])
        display = pd.DataFrame(lines, columns=["Method", "Setting", "Epoch", "Seeds", "Nonzero", "Compression (×)",
                                               "Test error (%)", "Val. error (%)"])
        show_table(display, f"{arch} on {dataset}: each method at its operating point "
                   f"(validation error ≤ {target:.2f}%)")


# -- study status ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from study.status import format_status, study_status

    found = _locate(args)
    status = study_status(found)
    for line in format_status(status):
        print(line)
    return 0


# -- study export ---------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from analysis.export import export_runs
    from analysis.sections import slug

    found = _locate(args)
    runs, _ = _load(found)
    out = Path(args.out) if args.out else (found.folder / "export" if found.folder is not None
                                           else Path(f"export-{slug(found.experiment)}"))
    for path in export_runs(runs, out, args.format):
        print(path)
    return 0


# -- study compare --------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare_results, display_table, settings_differ
    from analysis.matched_text import fmt_target
    from analysis.results import study_results

    found_a, found_b = _locate(args, args.a), _locate(args, args.b)
    runs_a, study_a = _load(found_a)
    runs_b, _ = _load(found_b)
    a = study_results(runs_a, target_error=args.target_error,
                      study_target=study_a.train.target_error if study_a else None, reference=args.reference)
    b = study_results(runs_b, targets=a.targets, reference=a.reference)
    frame = compare_results(a, b)
    if frame.empty:
        raise ValueError(f"nothing to compare: neither {args.a} nor {args.b} has a method with a "
                         f"sparsify-phase trajectory at a finite target")
    display = display_table(frame)
    targets = ", ".join(f"{arch}/{dataset} {fmt_target(t.value)} ({t.source})"
                        for (arch, dataset), t in sorted(a.targets.items()))
    print(f"A = {args.a} (experiment {found_a.experiment!r}, parent run {runs_a.parent_run_id})")
    print(f"B = {args.b} (experiment {found_b.experiment!r}, parent run {runs_b.parent_run_id})")
    print(f"Compression at matched validation error, both read at A's target: {targets}. "
          "B/A: ratio of the seeds' geometric mean compressions, 95 % bootstrap interval, "
          "two-sided permutation p; a difference is called only when the interval excludes 1 and p < 0.05.")
    show_table(display, "Compression at matched validation error: A and B")
    for change in settings_differ(frame):
        print(f"chosen setting changed: {change}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        print(args.out)
    return 0


# -- study move -----------------------------------------------------------------------------------


def cmd_move(args: argparse.Namespace) -> int:
    from study.relocate import move_study

    dst = move_study(args.src, args.dst)
    print(f"moved {Path(args.src).resolve()} to {dst}; its store and the study index point there now")
    return 0


# -- study run's checks ---------------------------------------------------------------------------


def already_complete(config: Any) -> str | None:
    """The message ``study run`` prints instead of training a study whose latest run (same
    config hash) is complete; None when it should run."""
    from study import runformat as rf
    from study.locate import Located
    from study.status import previous_run, study_status

    entry = previous_run(config)
    if entry is None or not entry.get("complete"):
        return None
    status = study_status(Located(config.resolved_tracking_uri, config.experiment_name, config.output_path, config))
    counts = ", ".join(f"{n} {s}" for s, n in status.counts.items() if n) or "no trial runs"
    failed = status.counts.get(rf.FAILED, 0)
    retry = f", or --resume to retry its {failed} failed trial{'s' if failed > 1 else ''}" if failed else ""
    return (f"study {config.name} already complete: run {entry['tune_name']} (started {entry.get('started', '?')}) "
            f"ended with {counts}, in {config.output_path} (use --force to run it again{retry})")


def record_in_index(config: Any, file: str) -> None:
    from study import index
    from study.locate import index_entry

    warning = index.record(index_entry(config, file))
    if warning:
        console.print(warning, highlight=False, soft_wrap=True)


# -- the parsers -------------------------------------------------------------------------------------

TARGET_HELP = "study YAML file, study output folder, or MLflow experiment name"


def _lookup_options(p: argparse.ArgumentParser, sets: dict[str, Any]) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study's; "
                   "see the README's section on finding a study's runs)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the study's)")
    p.add_argument("--set", **{**sets, "help": "with a study file: " + sets["help"]})


def add_parsers(sub: argparse._SubParsersAction, sets: dict[str, Any]) -> None:
    """``report``, ``status``, ``export``, ``compare`` and ``move``."""
    where = ("A study file finds its runs in the folder its output_dir names (relative to the working "
             "directory), else in the newest folder `study run` recorded for it in the study index "
             "($STUDY_INDEX, default ~/.cache/sensitivity-study/index.json).")
    p = sub.add_parser(
        "report", help="tables and figures from a study's finished runs", formatter_class=_Help,
        description="Turn finished runs into Pareto fronts, per-layer profiles, training curves "
        "and tables (Markdown, LaTeX, CSV; figures as PNG and PDF); print the path of report.html and "
        "each method at its operating point.\n" + where,
        epilog=_examples("study report configs/quickstart.yaml",
                         "study report runs/quickstart --target-error 2.5 --reference decay",
                         "study report quickstart --tracking-uri sqlite:////abs/runs/quickstart/mlflow.db"))
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("--out", default=None, help="report folder (default: <output folder>/report; "
                   "./report-<experiment> for an experiment name)")
    p.add_argument("--target-error", type=float, default=None,
                   help="validation error (%%) an operating point may not exceed (default: the study's "
                   "train.target_error, else the best validation error of `none` + 0.5)")
    p.add_argument("--reference", default=None, metavar="METHOD",
                   help="the method every other is compared with at matched validation error "
                   "(default: decay when the study has it, else weight-decay)")
    _lookup_options(p, sets)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "status", help="where a study stands: trials by status, progress, resume", formatter_class=_Help,
        description="Show the latest run of a study: its stage, trials by status, progress in epochs, "
        "last update, the MLflow URI and whether `study run FILE --resume` would do anything. "
        "Starts nothing.\n" + where,
        epilog=_examples("study status configs/quickstart.yaml", "study status runs/quickstart"))
    p.add_argument("target", help=TARGET_HELP)
    _lookup_options(p, sets)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "export", help="a study's trials, epochs and layers frames as CSV or Parquet", formatter_class=_Help,
        description="Write the three frames of analysis.runs.load_runs (trials, epochs, layers) as "
        "<out>/trials.<format>, epochs.<format> and layers.<format>, without making figures.\n" + where,
        epilog=_examples("study export configs/quickstart.yaml",
                         "study export runs/quickstart --format parquet --out /tmp/quickstart"))
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format")
    p.add_argument("--out", default=None, help="folder (default: <output folder>/export; "
                   "./export-<experiment> for an experiment name)")
    _lookup_options(p, sets)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "compare", help="two studies' compression at matched validation error, side by side",
        formatter_class=_Help,
        description="Compare two studies (e.g. before and after a change): per method, the compression "
        "at matched validation error in A and in B, both at A's target, and B/A with its 95 % interval, "
        "p and verdict. A and B are each a study file, a study folder or an experiment name.",
        epilog=_examples("study compare runs/quickstart-before runs/quickstart",
                         "study compare configs/quickstart.yaml runs/quickstart-new --target-error 4 --out cmp.csv"))
    p.add_argument("a", metavar="A", help=TARGET_HELP + " (the baseline)")
    p.add_argument("b", metavar="B", help=TARGET_HELP + " (compared with A)")
    p.add_argument("--target-error", type=float, default=None,
                   help="validation error (%%) both are read at (default: A's, as `study report A` resolves it)")
    p.add_argument("--reference", default=None, metavar="METHOD",
                   help="each study's reference method (default: decay, else weight-decay)")
    p.add_argument("--out", default=None, metavar="CSV", help="also write the numbers to this CSV file")
    p.set_defaults(func=cmd_compare, set=None, tracking_uri=None, experiment=None)

    p = sub.add_parser(
        "move", help="move a study folder; its MLflow store follows", formatter_class=_Help,
        description="Move a study's output folder and rewrite the artifact locations its own mlflow.db "
        "stores, so that report, status and export work at the new place (a copied folder is fixed "
        "the first time one of them opens it). Updates the study index.",
        epilog=_examples("study move runs/quickstart /data/studies/quickstart",
                         "study move runs/quickstart archive/      # into an existing folder"))
    p.add_argument("src", help="the study folder (it holds mlflow.db or study.json)")
    p.add_argument("dst", help="the new path, or an existing folder to move it into")
    p.set_defaults(func=cmd_move)
