"""Issue 13 items 1-3: exit codes that tell the truth, checks before launch, one-line errors.

The fast tests need no Ray: every bad ``--set`` value, device and data error is one line on
stderr that names the value, with exit code 2; the sparsify-phase and threshold checks; the exit
code of each way `study run` can end. The slow ones run real studies on the in-process Ray: a
study stopped by SIGINT or SIGTERM, and one whose data is damaged (a setup error no retry can
fix: one attempt, one line, the study stops, failures counted though no MLflow run exists).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from study import cli
from study import data as data_registry
from study.methods import METHODS, make_params
from study.preflight import check_device, check_study, largest_initial_weight, phase_error
from study.runner import StudyOutcome, read_state, run_study
from study.schema import study_from_dict
from study.tracking import Tracker

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no CUDA GPU, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# -- item 3: one-line errors ----------------------------------------------------------------------


@pytest.mark.parametrize("assignment, expected", [
    ("seeds=[0,1", "not a valid YAML value: expected ',' or ']'"),  # a YAML syntax error
    ("methods.l1.lam=[1e-4,", "not a valid YAML value"),
    ("trian.epochs=5", "unknown field 'trian'; valid: name, description"),  # an unknown key
    ("train.epoch=3", "unknown field 'train.epoch'; valid: epochs, batch_size"),
    ("train.epochs=abc", "Input should be a valid integer"),  # wrong types and values
    ("train.epochs=1.5", "Input should be a valid integer"),
    ("train.optimizer=rmsprop", "Input should be 'sgd' or 'adam'"),
    ("train={epochs: x}", "train.epochs: Input should be a valid integer, unable to parse string as an "
                          "integer, got 'x'"),
    ("seeds=[0,0]", "seeds repeat: [0, 0]"),
    ("datasets=[mnist9]", "unknown dataset 'mnist9'; valid: digits"),
    ("methods.decay.lamda=1", "unknown parameter 'lamda' for method 'decay'"),
    ("train.device=gpu", "train.device='gpu' is not a device; valid: auto, cpu, cuda, cuda:N"),
])
def test_every_bad_set_value_is_one_line_naming_it(assignment: str, expected: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["validate", QUICKSTART, "--set", assignment]) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --set {assignment}: "), line  # names the value as it was given
    assert expected in line


def test_a_yaml_syntax_error_in_a_study_file_is_one_line_with_its_place(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods: {l1: {lam: [1e-4}\n")
    assert cli.main(["validate", str(bad)]) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert f"{bad}: not valid YAML: " in line and "line 2, column" in line


def test_a_device_this_machine_lacks_is_one_line(no_gpu: None, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--device", "cuda", "--epochs", "1"]) == cli.EXIT_BAD_INPUT
    assert "--device=cuda but torch finds no CUDA GPU on this machine; use auto or cpu" in _one_error_line(capsys)
    assert cli.main(["train", "--device", "gpu0"]) == cli.EXIT_BAD_INPUT
    assert "--device='gpu0' is not a device; valid: auto, cpu, cuda, cuda:N" in _one_error_line(capsys)
    assert cli.main(["validate", QUICKSTART, "--set", "train.device=cuda"]) == cli.EXIT_BAD_INPUT
    assert "train.device=cuda but torch finds no CUDA GPU" in _one_error_line(capsys)
    assert cli.main(["validate", QUICKSTART, "--set", "resources.gpus_per_trial=0.5"]) == cli.EXIT_BAD_INPUT
    assert "resources.gpus_per_trial=0.5 but this machine has no GPU" in _one_error_line(capsys)
    # a cluster's nodes have their own devices: not checked here
    assert cli.main(["validate", QUICKSTART, "--set", "train.device=cuda", "--address", "10.0.0.1:6379"]) == 0


def test_check_device_counts_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        check_device(ok)
    with pytest.raises(ValueError, match=r"device=cuda:2 but this machine has 2 CUDA GPU\(s\): cuda:0, cuda:1"):
        check_device("cuda:2")


# -- item 2: checks before launch -------------------------------------------------------------------


def test_a_sparsify_phase_that_never_starts_is_rejected(capsys: pytest.CaptureFixture) -> None:
    never = ["--set", "train.epochs=5", "--set", "train.reach_epochs=10", "--set", "train.target_error=null"]
    assert cli.main(["validate", QUICKSTART, *never]) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert "train.reach_epochs=10 >= train.epochs=5 and no train.target_error" in line
    assert "the sparsify phase, in which decay prunes, never starts" in line
    # a target error can end phase 1 early; methods that act alike in both phases need no phase 2
    assert cli.main(["validate", QUICKSTART, *never[:4]]) == 0
    assert cli.main(["validate", QUICKSTART, *never, "--set", "methods=[none, l0, sparse-vd]",
                     "--set", "search.budget_per_method=null"]) == 0
    # nor does a threshold method with threshold 0 (configs/generalization.yaml)
    assert cli.main(["validate", QUICKSTART, *never, "--set", "methods={l1: {threshold: 0}}",
                     "--set", "search.budget_per_method=null"]) == 0
    # a method's own train block counts, and is named
    with pytest.raises(ValueError, match=r"methods.l1.train.epochs=3 and no train.target_error"):
        study_from_dict({"methods": {"none": {}, "l1": {"train": {"epochs": 3}}}, "train": {"reach_epochs": 3}})


def test_which_methods_expect_a_sparsify_phase() -> None:
    expects = {name: cls.expects_sparsify_phase(make_params(name)) for name, cls in METHODS.items()}
    assert {name for name, yes in expects.items() if not yes} == {"none", "l0", "sparse-vd"}
    assert not METHODS["sensitivity-spec"].expects_sparsify_phase(make_params("sensitivity-spec", {"threshold": 0}))
    assert phase_error("gmp", {}, 5, 5, None, ("e", "r", "t")) is not None
    assert phase_error("gmp", {}, 5, 5, 3.0, ("e", "r", "t")) is None  # the target may start phase 2


def test_a_threshold_above_every_initial_weight_warns(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--method", "sensitivity-spec", "--param", "threshold=2", "--epochs", "1",
                     "--reach-epochs", "0", "--batch-size", "256", "--quiet"]) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert "warning: --param threshold=2 is above the largest initial |w| of lenet300 (0.125)" in err
    assert "every weight is pruned at the end of the first sparsify epoch" in err
    assert cli.main(["validate", QUICKSTART, "--set", "methods.decay.threshold=[0.5, 0.05]",
                     "--set", "search.allow_unequal=true"]) == 0
    err = capsys.readouterr().err
    assert "warning: methods.decay.threshold=0.5 is above the largest initial |w| of lenet300 on digits" in err
    assert "sensitivity" not in err  # the shipped thresholds are fine


def test_largest_initial_weight_is_the_default_init_bound() -> None:
    """LeNet-300-100 on the 8x8 digits: PyTorch draws a Linear layer's weights from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the smallest fan-in (fc1, 64) has the widest range."""
    from study.models import build_model

    torch.manual_seed(0)
    value = largest_initial_weight(build_model("lenet300", (1, 8, 8), 10))
    assert 0.12 < value <= 1 / 8  # fc1: fan-in 64


def test_input_spec_is_the_loaded_shape() -> None:
    for name, options in (("digits", {}), ("synthetic", {"shape": "3x8x8", "num_classes": 4, "n_train": 20,
                                                         "n_test": 5})):
        bundle = data_registry.load_dataset(name, **options)
        assert data_registry.input_spec(name, **options) == (bundle.input_shape, bundle.num_classes)
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"
    if root.is_dir():
        bundle = data_registry.load_dataset("mnist10k", root=root)
        assert data_registry.input_spec("mnist10k") == (bundle.input_shape, bundle.num_classes)


def test_missing_data_stops_a_study_before_ray_starts(tmp_path: Path, tiny_study: Any,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    config = tiny_study("nodata", datasets=["mnist"], data={"root": str(tmp_path / "empty")})
    monkeypatch.setattr("study.runner.init_ray", lambda *a, **k: pytest.fail("Ray must not start"))
    with pytest.raises(data_registry.DataNotFoundError, match="mnist: the four idx files"):
        run_study(config)
    assert not config.output_path.exists()  # nothing written either
    assert cli.main(["validate", QUICKSTART, "--set", "datasets=[mnist]", "--set", f"data.root={tmp_path}",
                     "--set", "output_dir=" + str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    assert f"not found in any of: {tmp_path}" in _one_error_line(capsys)
    # download: true would fetch them; a cluster's nodes may have them (a warning)
    assert check_study(study_from_dict({"datasets": ["mnist"], "data": {"root": str(tmp_path), "download": True}})) == []
    (warning,) = check_study(study_from_dict({"datasets": ["mnist"], "data": {"root": str(tmp_path)}}), "head:6379")
    assert warning.startswith("warning: not on this machine (the cluster's nodes may have it): mnist:")


# -- item 1: the exit code of each way a study ends ----------------------------------------------


def _outcome(tmp_path: Path, **fields: Any) -> StudyOutcome:
    return StudyOutcome(output_dir=tmp_path, tune_path=str(tmp_path / "ray"), tracking_uri="sqlite:///x.db",
                        experiment_id="1", parent_run_id="p", log_path=tmp_path / "logs" / "x.log",
                        **{"complete": True, **fields})


@pytest.mark.parametrize("fields, code, line", [
    ({"statuses": {"finished": 3, "diverged": 1, "pruned": 2}}, 0, None),
    ({"statuses": {"finished": 3, "failed": 1}}, 1, "some trials failed (tracebacks: "),
    ({"statuses": {"failed": 1}, "complete": False, "error": "DataFileError: x"}, 1, "error: DataFileError: x"),
    ({"statuses": {"finished": 1, "running": 1}, "complete": False, "interrupted": "SIGTERM"}, 130,
     f"interrupted: continue with study run {QUICKSTART} --resume"),
])
def test_study_run_exit_codes(fields: dict[str, Any], code: int, line: str | None, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("study.runner.run_study", lambda config, **kwargs: _outcome(tmp_path, **fields))
    # a folder of its own: the repository's runs/quickstart may hold a complete run (not retrained)
    assert cli.main(["run", QUICKSTART, "--quiet", "--set", f"output_dir={tmp_path / 'out'}"]) == code
    err = capsys.readouterr().err
    assert (line in err) if line else ("error" not in err and "interrupted" not in err)


def test_study_train_exit_codes_are_the_table() -> None:
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_DIVERGED, cli.EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)
    assert cli.main(["train", "--epochs", "2", "--reach-epochs", "1", "--batch-size", "256", "--quiet"]) == 0
    assert cli.main(["train", "--epochs", "2", "--reach-epochs", "1", "--lr", "1e30", "--quiet"]) == cli.EXIT_DIVERGED


# -- item 1 and 2 on a real Ray: signals and a trial that cannot succeed ------------------------------


def _runs(config: Any) -> tuple[list[Any], list[Any]]:
    tracker = Tracker(config.resolved_tracking_uri)
    experiment = tracker.client.get_experiment_by_name(config.experiment_name)
    runs = tracker.client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return ([r for r in runs if r.data.tags.get("study.role") == "parent"],
            [r for r in runs if r.data.tags.get("study.role") == "trial"])


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_study_cleanly_and_resume_finishes_it(signum: int, ray_session: Any,
                                                                  tiny_study: Any) -> None:
    config = tiny_study(f"signal{signum}", methods={"none": {}, "l1": {}}, seeds=[0, 1], train={"epochs": 4},
                        resources={"max_concurrent_trials": 2})
    tracker = Tracker(config.resolved_tracking_uri)
    experiment_id = tracker.experiment_id(config.experiment_name)

    def signal_mid_trial() -> None:  # once a trial has logged its second epoch, as a user would
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(r.data.metrics.get("epoch", 0) >= 2 for r in tracker.find_runs(experiment_id, {"study.role": "trial"})):
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.2)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=signal_mid_trial, daemon=True)
    watcher.start()
    first = run_study(config, hooks={"sleep_after_epoch": 0.5})
    watcher.join(timeout=5)
    assert first.interrupted == signal.Signals(signum).name and not first.complete and first.error is None
    (parent,), children = _runs(config)
    assert parent.info.status == "KILLED" and parent.data.tags["status"] == "interrupted"
    assert children and all(r.info.status != "RUNNING" for r in children)  # none left RUNNING
    assert [r["complete"] for r in read_state(config.output_path)["runs"]] == [False]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back

    second = run_study(config, resume=True)
    assert second.complete and second.interrupted is None and second.statuses == {"finished": 4}
    (parent,), children = _runs(config)
    assert parent.info.status == "FINISHED" and len(children) == 4
    client = tracker.client
    for run in children:  # no duplicated run, no history with gaps or repeated epochs
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_error")] == [1, 2, 3, 4]
    assert [r["complete"] for r in read_state(config.output_path)["runs"]] == [True]


def _damaged_mnist10k(root: Path) -> Path:
    """mnist10k's two files, present (check_available passes) but the images file has the labels'
    magic number: a DataFileError when a trial loads it."""
    root.mkdir(parents=True)
    (root / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2049, 10, 28, 28) + bytes(10))
    (root / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 10) + bytes(10))
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_that_cannot_succeed_stops_the_study_after_one_attempt(ray_session: Any, tiny_study: Any,
                                                                       tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture) -> None:
    root = _damaged_mnist10k(tmp_path / "data")
    config = tiny_study("damaged", datasets=["mnist10k"], data={"root": str(root)}, methods={"l1": {}},
                        resources={"max_failures": 2})
    outcome = run_study(config)
    expected = f"DataFileError: {root / 't10k-images-idx3-ubyte'}: idx magic number is 2049"
    assert outcome.error is not None and outcome.error.startswith(expected)
    assert not outcome.complete and outcome.interrupted is None
    # the trial died before it opened an MLflow run, and still counts as failed
    (parent,), children = _runs(config)
    assert children == [] and outcome.statuses == {"failed": 1} and outcome.failed == 1
    assert parent.info.status == "FAILED" and parent.data.tags["error"].startswith(expected)
    # one attempt, not max_failures + 1
    (error_file,) = Path(outcome.tune_path).glob("*/error.txt")
    assert error_file.read_text().count("Failure #") == 1
    # the terminal gets one line per event; the tracebacks go to the log file
    err = capfd.readouterr().err
    assert f"l1 s0: FAILED: {expected}" in err
    assert f"stopping the study: a retry cannot fix this error (tracebacks: {outcome.log_path})" in err
    assert "Traceback" not in err
    assert "Traceback" in outcome.log_path.read_text()
    # Tune writes its results as JSON only: no TensorBoard or CSV files nothing reads
    assert not list(Path(outcome.tune_path).rglob("progress.csv")) and not list(
        Path(outcome.tune_path).rglob("events.out.tfevents*"))
    assert json.loads((config.output_path / "study.json").read_text())["runs"][0]["complete"] is False
