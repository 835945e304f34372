"""What `study run` and `study train` show while they work (study/progress.py): trial states, the
epochs, elapsed time and ETA of a stage, the live view, the line per ended trial, the callback's
state surviving a pickle, and the progress bar within a long epoch."""
from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import pytest
from rich.console import Console

from study import progress
from study import runformat as rf
from study.progress import (EpochPrinter, StageProgress, StageView, clock, ended_line, ended_state, eta_seconds,
                            render, trial_label, trial_state)


def _trial(trial_id: str, status: str, epoch: int | None = None, *, method: str = "l1", params=None, seeds=(0,),
           epochs: int | None = None, **result) -> SimpleNamespace:
    spec = {"method": method, "params": params or {}, "seeds": list(seeds), "train": {}}
    if epochs is not None:
        spec["train"]["epochs"] = epochs
    last = {rf.EPOCH: epoch, **result} if epoch is not None else {}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last,
                           config={"trial": spec, "study": {"train": {"epochs": 10}}})


def test_clock_and_eta() -> None:
    assert [clock(s) for s in (None, 0, 42.4, 187, 3720)] == ["?", "0s", "42s", "3m07s", "1h02m"]
    assert eta_seconds(done=10, total=40, baseline=0, elapsed=20.0) == pytest.approx(60.0)
    # a resumed stage: 30 epochs were done before; 10 trained here in 20 s; 20 left
    assert eta_seconds(done=40, total=60, baseline=30, elapsed=20.0) == pytest.approx(40.0)
    assert eta_seconds(done=5, total=60, baseline=5, elapsed=20.0) is None  # no rate yet


def test_trial_states() -> None:
    assert trial_state("PENDING", None) == progress.PENDING
    assert trial_state("RUNNING", {}) == trial_state("PAUSED", {}) == rf.RUNNING
    assert trial_state("ERROR", {"final": True}) == rf.FAILED
    assert trial_state("TERMINATED", {"final": True}) == rf.FINISHED
    assert trial_state("TERMINATED", {"final": False}) == rf.PRUNED  # stopped by the scheduler
    assert ended_state({"final": True, "diverged_seeds": 1, "num_seeds": 1}) == rf.DIVERGED
    assert ended_state({"final": True, "diverged_seeds": 1, "num_seeds": 3}) == rf.FINISHED


def test_trial_labels_are_the_run_names() -> None:
    assert trial_label({"method": "sensitivity-spec", "params": {"lam": 1e-3, "threshold": 0.02},
                        "seeds": [0]}) == "sensitivity-spec lam=1e-3 T=0.02 s0"
    assert trial_label({"method": "decay", "params": {"lam": 1e-4}, "seeds": [0, 1, 2]}) == "decay lam=1e-4 s0,1,2"
    assert rf.run_name("sensitivity-spec", {"lam": 1e-3, "threshold": 0.02}, 10, rf.STAGE_CONFIRM) == (
        "sensitivity-spec lam=1e-3 T=0.02 s10 confirm")
    assert [rf.short_number(v) for v in (0.001, 0.02, 1e-5, 3.0, 1.5e-4, 2.5e6, "adam")] == [
        "1e-3", "0.02", "1e-5", "3", "1.5e-4", "2.5e6", "adam"]


def test_a_stage_counts_trials_epochs_and_time() -> None:
    stage = StageProgress(total=5, epochs=10)  # an Optuna search: 5 trials, 3 sampled so far
    trials = [_trial("a", "RUNNING", 4, params={"lam": 1e-4}, val_error=2.5, compression=3.0, phase="sparsify"),
              _trial("b", "TERMINATED", 6, final=False),  # pruned at epoch 6: counts as 10
              _trial("c", "PENDING", epochs=20)]  # its method trains 20 epochs
    stage.update(trials, now=100.0)
    assert stage.counts() == {"pending": 3, "running": 1, "finished": 0, "diverged": 0, "pruned": 1, "failed": 0}
    assert (stage.epochs_done, stage.epochs_total) == (14, 10 + 10 + 20 + 2 * 10)
    assert stage.baseline == 14 and stage.eta(now=100.0) is None
    stage.result(trials[0], {rf.EPOCH: 9, rf.PHASE: "sparsify", rf.VAL_ERROR: 2.1, rf.COMPRESSION: 5.0})
    assert stage.epochs_done == 19
    assert stage.eta(now=110.0) == pytest.approx((60 - 19) * 10 / 5)  # 5 epochs in 10 s
    (running,) = stage.running()
    assert (running.label, running.epoch, running.phase, running.compression) == ("l1 lam=1e-4 s0", 9, "sparsify", 5.0)
    stage.end(trials[0], rf.FINISHED)
    assert stage.ended == 1 and stage.counts()[rf.FINISHED] == 1 and stage.epochs_done == 20


def test_the_live_view_and_the_ended_line() -> None:
    stage = StageProgress(total=3, epochs=8, label="confirm ")
    trials = [_trial("a", "RUNNING", 3, method="decay", params={"lam": 1e-5, "threshold": 1e-3},
                     val_error=2.345, compression=4.5, phase="sparsify"),
              _trial("b", "TERMINATED", 8, final=True, val_error=2.0, compression=9.0),
              _trial("c", "ERROR", 1)]
    stage.update(trials, now=0.0)
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(render(stage, now=30.0))
    text = console.file.getvalue()
    assert "confirm stage" in text and "23/30 epochs 77%" in text  # each trial trains 10 (the study's)
    assert "trials: 0 pending · 1 running · 1 finished · 0 diverged · 0 pruned · 1 failed  (3 in all)" in text
    assert "decay lam=1e-5 T=1e-3 s0" in text and "3/10" in text and "2.35" in text and "4.50x" in text
    stage.end(trials[1], rf.FINISHED)
    line = ended_line(stage, "l1 s0", "finished", trials[1].last_result, now=30.0)
    assert line == "confirm [1/3] l1 s0: finished  epoch 8, val error 2.00%, compression 9.00x  (elapsed 30s, ETA ?)"


def test_off_a_terminal_each_ended_trial_is_one_line(capsys) -> None:
    view = StageView(StageProgress(total=2, epochs=4), live=None)
    view.start()  # stderr is captured here: not a terminal, so no live view
    assert view._live is None and view.live_wanted is False
    view.line("[1/2] l1 s0: finished")
    assert capsys.readouterr().err == "[1/2] l1 s0: finished\n"


def test_the_callback_pickles_without_its_live_view(tmp_path) -> None:
    from study.tracking import Tracker
    from study.tuners import StudyCallback

    callback = StudyCallback(Tracker(rf.sqlite_uri(tmp_path / "x.db")), "1", "parent", 4, epochs=5, live=True)
    callback.view.start()  # a live view (on the captured stderr)
    try:
        assert callback.view._live is not None and progress._ACTIVE == [callback.view]
        copy = pickle.loads(pickle.dumps(callback))  # Tune keeps its callbacks in the experiment state
    finally:
        progress.stop_all()
    assert copy.view._live is None and copy.progress.total == 4 and progress._ACTIVE == []
    old = StudyCallback.__new__(StudyCallback)  # a callback pickled before the live view existed
    old.__setstate__({"tracker": None, "experiment_id": "1", "parent_run_id": "p", "total": 3, "ended": 1,
                      "label": "confirm "})
    assert old.progress.total == 3 and old.progress.label == "confirm "


def test_a_progress_bar_appears_within_a_long_epoch_only() -> None:
    now = [0.0]
    out = io.StringIO()
    printer = EpochPrinter(3, console=Console(file=out, width=100, force_terminal=True), bar=True,
                           clock_fn=lambda: now[0])
    for t, seen in ((0.0, 100), (1.0, 200), (1.9, 300)):  # a short epoch: no bar
        now[0] = t
        printer.on_batch(seen, 1000)
    assert printer._progress is None
    now[0] = 2.5
    printer.on_batch(400, 1000)
    assert printer._progress is not None
    assert printer._progress.tasks[0].completed == 400 and printer._progress.tasks[0].total == 1000
    record = {"epoch": 1, "phase": "reach", "train_loss": 0.5, "val_error": 3.0, "test_error": 3.1,
              "compression": 1.0, "epoch_seconds": 2.6}
    printer.on_epoch_end(record, None)
    assert printer._progress is None and "   1/3       reach     0.5000" in out.getvalue()
    quiet = EpochPrinter(3, quiet=True, console=Console(file=io.StringIO()), bar=None)
    assert quiet.bar is False  # --quiet: no bar, no rows
