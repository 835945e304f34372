"""A real study's life on an in-process Ray, as a researcher lives it: `study run` is interrupted,
`study status` says where it stands and that `--resume` continues it; `study run --resume`
finishes it; running it again says it is complete; from another folder, `study status`,
`study report` and `study export` find it through the study index; a copied folder, moved with
`study move`, still reports. Its MLflow runs carry the searched parameters in their names, and
the parent run the study's description and summary metrics."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from study import cli, index
from study import runformat as rf
from study.locate import locate
from study.status import format_status, study_status
from study.tracking import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STUDY = {
    "name": "life", "description": "a study's life, for the tests",
    "datasets": ["digits"], "archs": ["lenet300"], "seeds": [0],
    "methods": {"none": {}, "l1": {"lam": [1e-4, 1e-3]}},
    "train": {"epochs": 4, "reach_epochs": 1, "batch_size": 128, "lr": 0.1},
    "resources": {"max_concurrent_trials": 1, "checkpoint_every": 1},
    "output_dir": "runs/life",  # relative to the working directory, as users write it
}


def _status(target: Path) -> str:
    return "\n".join(format_status(study_status(locate(target))))


@pytest.fixture(scope="module")
def life(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from study.runner import run_study
    from study.schema import load_study

    root = tmp_path_factory.mktemp("life")
    file = root / "configs" / "life.yaml"
    file.parent.mkdir()
    file.write_text(yaml.safe_dump(STUDY))
    work = root / "work"
    work.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(index.INDEX_ENV, str(root / "index.json"))
        mp.chdir(work)
        config = load_study(file)
        tracker = Tracker(config.resolved_tracking_uri)

        def interrupt_mid_trial() -> None:  # as Ctrl-C would, once a trial has logged an epoch
            deadline = time.time() + 240
            while time.time() < deadline:
                if (config.output_path / "mlflow.db").is_file():
                    experiment = tracker.client.get_experiment_by_name("life")
                    runs = tracker.find_runs(experiment.experiment_id, {rf.TAG_ROLE: rf.ROLE_TRIAL}) if experiment else []
                    if any(r.data.metrics.get(rf.EPOCH, 0) >= 1 for r in runs):
                        os.kill(os.getpid(), signal.SIGUSR1)
                        return
                time.sleep(0.2)

        watcher = threading.Thread(target=interrupt_mid_trial, daemon=True)
        watcher.start()
        first = run_study(config, hooks={"sleep_after_epoch": 0.5}, source_text=file.read_text())
        watcher.join(timeout=5)
        interrupted = _status(file)
        resumed = cli.main(["run", str(file), "--resume", "--quiet"])
        finished = _status(file)
    return SimpleNamespace(root=root, file=file, work=work, folder=work / "runs" / "life", first=first,
                           interrupted=interrupted, resumed=resumed, finished=finished, config=config)


def test_status_of_an_interrupted_then_resumed_study(life: Any) -> None:
    assert not life.first.complete and life.resumed == 0
    text = life.interrupted
    assert "search stage, not complete" in text and "(KILLED)" in text  # the parent run
    assert "resume      --resume continues life-" in text and "at its search stage" in text
    trials = text.split("  trials      ")[1].splitlines()[0]
    assert trials.startswith(("0/3 ended", "1/3 ended", "2/3 ended")), trials
    assert "interrupted" in trials or "not started" in trials
    text = life.finished
    assert "search stage, complete" in text and "3/3 ended: 3 finished, 0 failed" in text
    assert "progress    12/12 epochs (100%)" in text
    assert "resume      nothing to resume: the latest run is complete" in text
    assert f"MLflow      {rf.sqlite_uri(life.folder / 'mlflow.db')}, experiment 'life'" in text


def test_run_names_description_and_summary(life: Any) -> None:
    client = Tracker(rf.sqlite_uri(life.folder / "mlflow.db")).client
    experiment = client.get_experiment_by_name("life")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(rf.TAG_ROLE) == rf.ROLE_PARENT]
    children = [r for r in runs if r.data.tags.get(rf.TAG_ROLE) == rf.ROLE_TRIAL]
    assert sorted(r.info.run_name for r in children) == ["l1 lam=1e-3 s0", "l1 lam=1e-4 s0", "none s0"]
    assert parent.info.run_name == "life"
    assert parent.data.tags[rf.TAG_DESCRIPTION] == "a study's life, for the tests"
    metrics = parent.data.metrics
    assert metrics["trials.finished"] == 3 and metrics["trials.failed"] == 0
    assert metrics["target_error"] > 0  # the best validation error of none + 0.5
    assert metrics.get("compression_at_target.none") == 1.0  # `none` prunes nothing and meets its own target


def test_running_a_complete_study_again_says_so(life: Any, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from study.state import read_state

    monkeypatch.setenv(index.INDEX_ENV, str(life.root / "index.json"))
    monkeypatch.chdir(life.work)
    assert cli.main(["run", str(life.file)]) == 0
    err = capsys.readouterr().err.replace("\n", " ")
    assert "study life already complete: run life-" in err and "ended with 3 finished" in err
    assert "(use --force to run it again)" in err
    assert len(read_state(life.folder)["runs"]) == 1  # nothing ran


def test_status_report_and_export_find_the_study_from_another_folder(life: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(index.INDEX_ENV, str(life.root / "index.json"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status", str(life.file)]) == 0
    out = capsys.readouterr()
    assert "found 'life' in the study index" in out.err.replace("\n", " ") and f"folder      {life.folder}" in out.out
    assert cli.main(["report", str(life.file), "--target-error", "100"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(life.folder / "report" / "report.html")
    assert "lenet300 on digits: each method at its operating point" in out and "| l1 " in out
    assert cli.main(["export", str(life.file), "--format", "parquet"]) == 0
    assert (life.folder / "export" / "epochs.parquet").is_file()
    assert not (tmp_path / "runs").exists()  # nothing was made here: no runs/life/mlflow.db


def test_a_moved_study_folder_reports(life: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(index.INDEX_ENV, str(tmp_path / "index.json"))
    copy = tmp_path / "copy"
    shutil.copytree(life.folder, copy)
    assert cli.main(["move", str(copy), str(tmp_path / "laptop")]) == 0
    moved = tmp_path / "laptop"
    assert not copy.exists()
    assert cli.main(["report", str(moved), "--target-error", "100", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert list((moved / "mlartifacts").rglob("report/report.html"))  # logged into the moved folder
    assert cli.main(["status", str(moved)]) == 0
    assert "search stage, complete" in capsys.readouterr().out
