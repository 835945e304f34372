"""Managing studies without training: the study index, finding a study's runs from anywhere
(never creating a store), moved and copied study folders, `study status`, `study export`,
`study compare` and the parent run's summary, on synthetic studies written to MLflow the way
`study run` writes them (tests/fake_study.py). Whole studies on Ray: test_study_lifecycle.py."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from study import cli, index  # noqa: E402
from study import runformat as rf  # noqa: E402
from study.locate import NotFound, locate  # noqa: E402
from study.relocate import relocate, stale_roots  # noqa: E402
from study.state import write_state  # noqa: E402
from study.status import format_status, study_status, trial_state  # noqa: E402

import fake_study  # noqa: E402  (tests/)


@pytest.fixture
def study_index(tmp_path, monkeypatch) -> Path:
    """A fresh, empty study index for this test."""
    path = tmp_path / "index" / "index.json"
    monkeypatch.setenv(index.INDEX_ENV, str(path))
    return path


def _study_file(folder: Path, name: str, output_dir: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    raw = {"name": name, "output_dir": output_dir, "methods": {"none": {}, "l1": {"lam": [1e-4, 1e-3]}},
           "train": {"epochs": 6, "reach_epochs": 2, "target_error": 2.0}, **fields}
    path.write_text(yaml.safe_dump(raw))
    return path


def _fake_folder(folder: Path, experiment: str = "fake", *, state: dict | None = None, **kwargs) -> dict[str, str]:
    """A study folder as `study run` leaves it: mlflow.db, mlartifacts/ and study.json."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = fake_study.make_fake_study(rf.sqlite_uri(folder / rf.STORE_FILE), experiment,
                                     artifact_location=(folder / rf.ARTIFACTS_DIR).as_uri(), **kwargs)
    if state is not None:
        write_state(folder, {"runs": [{"parent_run_id": ids["parent"], **state}]})
    return ids


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A finished study's folder (read-only for the tests: they copy it to change it)."""
    from study.schema import study_from_dict
    from study.tracking import Tracker

    folder = tmp_path_factory.mktemp("done") / "runs" / "done"
    study = study_from_dict(fake_study.study_dict("done", 6, 2, "lenet300", "mnist", 2.0))
    ids = _fake_folder(folder, "done", running=False, state={
        "tune_name": "done-20260101-000000", "config_hash": study.config_hash(), "search": "grid",
        "started": "2026-01-01T00:00:00", "complete": True, "stage": "search", "confirm_seeds": None})
    Tracker(rf.sqlite_uri(folder / "mlflow.db")).finish(ids["parent"], rf.FINISHED)
    return folder, ids


# -- the index -------------------------------------------------------------------------------------


def test_the_index_records_and_finds_studies(tmp_path, study_index) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    file = tmp_path / "s.yaml"
    entry = index.Entry("s", "h1", str(a), rf.sqlite_uri(a / "mlflow.db"), "s", str(file))
    assert index.record(entry) is None
    assert index.record(index.Entry("s", "h1", str(b), rf.sqlite_uri(b / "mlflow.db"), "s", str(file))) is None
    assert index.record(entry) is None  # the same file and folder again: moves to the end, once
    assert [e.output_dir for e in index.read_index()] == [str(b), str(a)]
    assert [e.output_dir for e in index.find(file=file)] == [str(a), str(b)]  # newest first
    assert [e.output_dir for e in index.find(file=tmp_path / "moved.yaml", name="s", config_hash="h1")] == [
        str(a), str(b)]  # a study file that moved: same name and hash
    assert index.find(file=tmp_path / "moved.yaml", name="s", config_hash="other") == []
    shutil.rmtree(a)
    assert [e.output_dir for e in index.find(file=file)] == [str(b)]  # folders that are gone are skipped
    assert json.loads(study_index.read_text())["version"] == 1


def test_an_unusable_index_never_stops_a_study(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(index.INDEX_ENV, str(blocker / "index.json"))
    warning = index.record(index.Entry("s", "h", str(tmp_path), "sqlite:////x.db", "s"))
    assert warning is not None and "could not record the study in the index" in warning
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    monkeypatch.setenv(index.INDEX_ENV, str(garbled))
    assert index.read_index() == [] and index.find(name="s") == []


def test_the_index_keeps_the_newest_entries(tmp_path, study_index, monkeypatch) -> None:
    monkeypatch.setattr(index, "MAX_ENTRIES", 3)
    for i in range(5):
        index.record(index.Entry("s", "h", str(tmp_path / f"f{i}"), "sqlite:////x.db", "s", f"/f{i}.yaml"))
    assert [e.file for e in index.read_index()] == ["/f2.yaml", "/f3.yaml", "/f4.yaml"]


# -- finding a study's runs ------------------------------------------------------------------------


def test_a_study_that_never_ran_is_found_nowhere_and_no_store_is_made(tmp_path, study_index, monkeypatch, capsys):
    file = _study_file(tmp_path / "configs", "never", "runs/never")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(NotFound, match="no runs of study 'never' found: looked in .*runs/never/mlflow.db"):
        locate(file)
    for command in ("report", "status", "export"):
        assert cli.main([command, str(file)]) == 2
        err = capsys.readouterr().err.replace("\n", " ")
        assert "no runs of study 'never' found" in err and str(study_index) in err and "Traceback" not in err
    assert not (elsewhere / "runs").exists()  # nothing made: no runs/never/mlflow.db
    assert cli.main(["report", "never"]) == 2
    assert "has no study of that name; give --tracking-uri" in capsys.readouterr().err.replace("\n", " ")
    assert cli.main(["status", "never", "--tracking-uri", str(tmp_path / "none.db")]) == 2
    assert f"no MLflow store at {tmp_path / 'none.db'}" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "none.db").exists()


def test_a_study_file_finds_its_runs_from_another_folder_through_the_index(tmp_path, study_index, monkeypatch):
    file = _study_file(tmp_path / "configs", "far", "runs/far")
    work = tmp_path / "work"
    monkeypatch.chdir(_mkdir(work))
    from study.cli_runs import record_in_index
    from study.schema import load_study

    config = load_study(file)
    record_in_index(config, str(file))  # what `study run` does before it starts
    folder = work / "runs" / "far"
    (_mkdir(folder) / "mlflow.db").touch()  # finding needs the store only to exist
    # here the working directory's rule finds it
    here = locate(file)
    assert (here.folder, here.tracking_uri, here.notes) == (folder, rf.sqlite_uri(folder / "mlflow.db"), [])
    # from another folder, the index does
    monkeypatch.chdir(_mkdir(tmp_path / "other"))
    found = locate(file)
    assert found.folder == folder and found.experiment == "far" and found.own_store
    assert "found 'far' in the study index" in found.notes[0]
    assert not (tmp_path / "other" / "runs").exists()
    by_name = locate("far")  # an experiment name, through the index
    assert by_name.folder == folder and by_name.tracking_uri == found.tracking_uri


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- moved and copied folders --------------------------------------------------------------------


def _artifact_locations(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return ([loc for (loc,) in con.execute("select artifact_location from experiments")]
                + [uri for (uri,) in con.execute("select artifact_uri from runs")])


def test_a_copied_study_folder_reports_and_logs_into_itself(tmp_path, study_index, done, capsys):
    original = tmp_path / "cluster" / "runs" / "done"
    shutil.copytree(done[0], original)
    relocate(original)  # as if it had been made there
    copy = tmp_path / "laptop" / "done"
    shutil.copytree(original, copy)
    assert stale_roots(copy) == [(original / "mlartifacts").as_uri()] and stale_roots(original) == []
    shutil.rmtree(tmp_path / "cluster")  # the laptop has only the copy
    assert cli.main(["report", str(copy)]) == 0
    out = capsys.readouterr()
    assert "the study folder moved" in out.err.replace("\n", " ")
    assert out.out.splitlines()[0] == str(copy / "report" / "report.html")
    assert "lenet300 on mnist: each method at its operating point" in out.out
    db_locations = _artifact_locations(copy / "mlflow.db")
    assert all(loc.startswith((copy / "mlartifacts").as_uri()) for loc in db_locations if "mlartifacts" in loc)
    assert list((copy / "mlartifacts").rglob("report/report.html"))  # logged into the copy
    assert not (tmp_path / "cluster").exists()
    assert relocate(copy) == []  # nothing left to do


def test_study_move_moves_the_folder_its_store_and_its_index_entry(tmp_path, study_index, done, capsys):
    src = tmp_path / "runs" / "fake"
    shutil.copytree(done[0], src)
    index.record(index.Entry("fake", "h", str(src), rf.sqlite_uri(src / "mlflow.db"), "fake",
                             str(tmp_path / "fake.yaml")))
    _mkdir(tmp_path / "archive")
    assert cli.main(["move", str(src), str(tmp_path / "archive")]) == 0
    dst = tmp_path / "archive" / "fake"
    assert f"to {dst}" in capsys.readouterr().out
    assert not src.exists() and (dst / "mlflow.db").is_file()
    (entry,) = index.read_index()
    assert entry.output_dir == str(dst) and entry.tracking_uri == rf.sqlite_uri(dst / "mlflow.db")
    assert stale_roots(dst) == []
    assert cli.main(["export", str(dst), "--out", str(tmp_path / "exported")]) == 0
    assert "the study folder moved" not in capsys.readouterr().err
    for bad, message in (([str(tmp_path / "nope"), str(tmp_path / "x")], "is not a folder"),
                         ([str(tmp_path / "archive"), str(tmp_path / "x")], "is not a study folder"),
                         ([str(dst), str(dst / "inner")], "into itself")):
        assert cli.main(["move", *bad]) == 2
        assert message in capsys.readouterr().err.replace("\n", " ")


# -- status ----------------------------------------------------------------------------------------


def test_status_of_a_finished_study(study_index, done, capsys) -> None:
    folder, ids = done
    assert cli.main(["status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "latest run  done-20260101-000000" in out and "search stage, complete" in out
    # the fake study: 13 runs of its 14 (weight-decay's second seed never started)
    assert "13/14 ended: 10 finished, 1 diverged, 1 pruned, 1 failed, 1 not started" in out
    assert "study done" in out and f"folder      {folder}" in out
    assert "resume      --resume would retry the 1 failed trial" in out
    assert f"parent run {ids['parent']} (FINISHED)" in out
    assert f"browse      mlflow ui --backend-store-uri {rf.sqlite_uri(folder / 'mlflow.db')}" in out
    assert "progress    " in out and "last update " in out


def test_status_of_an_interrupted_study(tmp_path, study_index) -> None:
    folder = tmp_path / "runs" / "cut"
    ids = _fake_folder(folder, "cut", running=True, state={
        "tune_name": "cut-20260101-000000", "config_hash": "x", "search": "grid", "started": "2026-01-01T00:00:00",
        "complete": False, "stage": "confirm", "confirm_seeds": [10, 11],
        "chosen": [{"trial": {"method": "l1", "arch": "lenet300", "dataset": "mnist", "seeds": [0, 1],
                              "params": {"lam": 1e-4, "threshold": 1e-3}, "train": {}},
                    "config": "c", "met_target": False, "target": 2.0}]})
    from study.tracking import Tracker

    tracker = Tracker(rf.sqlite_uri(folder / "mlflow.db"))
    running = ids[fake_study.trial_id("sensitivity-spec", {"lam": 1e-5, "threshold": 1e-3}, 1)]
    tracker.call(tracker.client.set_terminated, running, status="KILLED")  # as run_study leaves it
    tracker.finish(ids["parent"], rf.INTERRUPTED, "KILLED")
    status = study_status(locate(folder))
    assert status.counts[status_interrupted := "interrupted"] == 1 and status_interrupted not in (rf.STATUSES)
    text = "\n".join(format_status(status, now=status.last_update + 30))
    assert "confirm stage, not complete" in text and "then confirm on seeds [10, 11]" in text
    assert "confirm   l1 on lenet300/mnist: lam=1e-4 T=1e-3 (no configuration met the target)" in text
    assert "(30 s ago)" in text
    assert "--resume" in text  # what it would do: continue the confirm stage
    assert "4 interrupted" not in text and "1 interrupted" in text


def test_trial_states_for_status() -> None:
    assert trial_state(rf.FINISHED, "FINISHED") == rf.FINISHED
    assert trial_state(rf.RUNNING, "RUNNING") == rf.RUNNING
    assert trial_state(rf.RUNNING, "KILLED") == "interrupted"
    assert trial_state(rf.RUNNING, "FAILED") == rf.FAILED
    assert trial_state(None, "FINISHED") == rf.FINISHED


# -- export ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_the_three_frames(tmp_path, study_index, done, fmt, capsys) -> None:
    from analysis.runs import load_runs

    folder = tmp_path / "done"
    shutil.copytree(done[0], folder)
    assert cli.main(["export", str(folder), "--format", fmt]) == 0
    paths = capsys.readouterr().out.split()
    assert paths == [str(folder / "export" / f"{name}.{fmt}") for name in ("trials", "epochs", "layers")]
    runs = load_runs(rf.sqlite_uri(folder / "mlflow.db"), "done")
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    for name in ("trials", "epochs", "layers"):
        frame, back = getattr(runs, name), read(folder / "export" / f"{name}.{fmt}")
        assert back.shape == frame.shape and list(back.columns) == list(frame.columns)
    epochs = read(folder / "export" / f"epochs.{fmt}")
    assert epochs["compression"].tolist() == pytest.approx(runs.epochs["compression"].tolist())
    if fmt == "parquet":
        trials = read(folder / "export" / "trials.parquet")
        assert trials["failed"].dtype == bool and str(trials["start_time"].dtype).startswith("datetime64")
    assert not list(folder.glob("report*"))  # no figures


# -- compare -----------------------------------------------------------------------------------------


def test_compare_reads_both_studies_at_the_same_target(tmp_path, study_index, capsys) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    _fake_folder(before, "q", trials=fake_study.MATCHED_TRIALS, running=False)
    _fake_folder(after, "q", trials=fake_study.MATCHED_TRIALS, confirm=fake_study.MATCHED_CONFIRM, running=False,
                 target_error=3.0)
    out_csv = tmp_path / "cmp.csv"
    assert cli.main(["compare", str(before), str(after), "--out", str(out_csv)]) == 0
    out = capsys.readouterr()
    assert "both read at A's target: lenet300/mnist 2 % (the study's target_error)" in out.out.replace("\n", " ")
    frame = pd.read_csv(out_csv)
    assert set(frame["method"]) == {"none", "sensitivity-spec", "decay", "weight-decay", "l0"}
    assert (frame["target_error"] == 2.0).all()  # A's target, not B's 3.0
    spec = frame.set_index("method").loc["sensitivity-spec"]
    assert spec["n_seeds_a"] == 2 and spec["n_seeds_b"] == 3  # B: its confirm runs
    assert spec["stage_b"] == "confirm" and spec["stage_a"] == "search"
    import numpy as np

    from analysis.matched import ratio_interval

    assert spec["change"] == pytest.approx(np.exp(np.log(spec["compression_mean_b"]) - np.log(spec["compression_mean_a"])),
                                           rel=0.05)  # geometric vs arithmetic means, close here
    l0 = frame.set_index("method").loc["l0"]
    assert l0["n_reached_a"] == 0 and np.isnan(l0["change"])
    assert "| l0 " in out.out and "target not reached (0/2 seeds)" in out.out  # Markdown when piped
    assert ratio_interval([2.0], [1.0])[0] == pytest.approx(2.0)


# -- the parent run's summary -----------------------------------------------------------------------


def test_summary_metrics_follow_the_report(done) -> None:
    from analysis.results import study_results, summary_metrics
    from analysis.runs import load_runs

    runs = load_runs(rf.sqlite_uri(done[0] / "mlflow.db"), "done")
    results = study_results(runs, study_target=2.0, matched=False)
    metrics = summary_metrics(runs, results)
    assert metrics["trials.finished"] == 10 and metrics["trials.failed"] == 1 and metrics["trials.running"] == 0
    assert metrics["trials.diverged"] == 1 and metrics["trials.pruned"] == 1
    assert metrics["target_error"] == 2.0
    selected = results.selected.set_index("method")
    for method in selected.index[selected["met_target"].astype(bool)]:
        assert metrics[f"compression_at_target.{method}"] == selected.loc[method, "compression_mean"]
        assert metrics[f"test_error_at_target.{method}"] == selected.loc[method, "test_error_mean"]
    assert not any(k.startswith("compression_at_target.") and k.endswith(m) for k in metrics
                   for m in selected.index[~selected["met_target"].astype(bool)])
    assert results.matched.empty


def test_a_summary_that_fails_is_a_warning(mlflow_uri) -> None:
    from types import SimpleNamespace

    from study.summary import log_parent_summary
    from study.tracking import Tracker

    messages: list[str] = []
    config = SimpleNamespace(experiment_name="no-such-experiment", train=SimpleNamespace(target_error=None))
    log_parent_summary(Tracker(mlflow_uri), config, "no-such-run", messages.append)
    assert len(messages) == 1 and messages[0].startswith("warning: the parent run's summary metrics were not logged")


# -- study run on a study that is already complete --------------------------------------------------


class _Ran(Exception):
    """Raised by the stand-in for run_study: the study would have trained."""


def test_a_complete_study_is_not_trained_again_without_force(tmp_path, study_index, done, monkeypatch, capsys):
    import study.runner

    folder = tmp_path / "done"
    shutil.copytree(done[0], folder)
    raw = fake_study.study_dict("done", 6, 2, "lenet300", "mnist", 2.0)
    file = tmp_path / "done.yaml"
    file.write_text(yaml.safe_dump({**raw, "output_dir": str(folder)}))

    def run_study(config, **kwargs):
        raise _Ran(kwargs)

    monkeypatch.setattr(study.runner, "run_study", run_study)
    assert cli.main(["run", str(file), "--quiet"]) == 0
    err = capsys.readouterr().err.replace("\n", " ")
    assert "study done already complete: run done-20260101-000000" in err
    assert "(use --force to run it again, or --resume to retry its 1 failed trial)" in err
    with pytest.raises(_Ran):
        cli.main(["run", str(file), "--force", "--quiet"])
    with pytest.raises(_Ran):
        cli.main(["run", str(file), "--resume", "--quiet"])
    # another study file (another config hash) in the same folder runs
    file.write_text(yaml.safe_dump({**raw, "output_dir": str(folder), "seeds": [0, 1, 2]}))
    with pytest.raises(_Ran):
        cli.main(["run", str(file), "--quiet"])
    # `study run` recorded the study in the index before it started
    assert [e.output_dir for e in index.find(file=file)] == [str(folder)]
