"""The run format (study/runformat.py): the names and URI rules the writer and the reader share."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from study import runformat as rf


def test_the_reader_side_imports_no_torch() -> None:
    code = ("import sys, study.runformat, analysis.runs, analysis.pareto, analysis.selection; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numeric_metrics_codes_the_phase_and_drops_non_numbers() -> None:
    record = {"epoch": 3, "phase": "sparsify", "val_error": 1.5, "flag": True, "name": "x"}
    assert rf.numeric_metrics(record) == {"epoch": 3.0, "phase_index": 1.0, "val_error": 1.5}
    assert rf.PHASE_NAMES[int(rf.numeric_metrics({"phase": "reach"})["phase_index"])] == "reach"


def test_per_layer_metric_names_round_trip() -> None:
    assert rf.layer_of_metric(rf.remaining_key("features.10")) == "features.10"
    assert rf.layer_of_metric(rf.sens_key("fc1", "q50")) == "fc1"
    assert rf.layer_of_metric("sens.fc1.unknown_stat") is None
    assert rf.layer_of_metric("val_error") is None
    assert rf.is_objective_metric("remaining_pct.fc1") and not rf.is_objective_metric("epoch_seconds")
    assert rf.remaining_key("fc1") == "remaining_pct.fc1"   # in %, as the tables print it
    assert rf.legacy_remaining("remaining.fc1") == "remaining_pct.fc1"
    assert rf.legacy_remaining("remaining_pct.fc1") is None


def test_trial_params_flatten_the_settings() -> None:
    params = rf.trial_params(method="l1", arch="lenet5", dataset="digits", seed=1,
                             method_params={"lam": 1e-4}, train={"lr": 0.1},
                             data={"shape": (1, 8, 8)}, model={})
    assert params == {"method": "l1", "arch": "lenet5", "dataset": "digits", "seed": "1",
                      "lam": "0.0001", "train.lr": "0.1", "data.shape": "1x8x8"}


def test_tracking_uris_are_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert rf.resolve_tracking_uri(None, "out") == f"sqlite:///{tmp_path}/out/mlflow.db"
    assert rf.absolute_tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path}/rel.db"
    assert rf.absolute_tracking_uri("store.sqlite") == f"sqlite:///{tmp_path}/store.sqlite"
    assert rf.absolute_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert rf.absolute_tracking_uri("postgresql://u@h/db") == "postgresql://u@h/db"
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / rf.STORE_FILE).touch()
    assert rf.folder_tracking_uri("study") == f"sqlite:///{tmp_path}/study/mlflow.db"
    assert rf.is_local_uri(rf.folder_tracking_uri("study"))


def test_neuron_names_and_the_architecture_string() -> None:
    assert rf.neurons_key("conv1") == "neurons.conv1"
    assert rf.layer_of_metric(rf.neurons_key("features.10")) == "features.10"
    assert rf.architecture(784, [112, 43, 10]) == "784-112-43-10"
    assert rf.architecture(64.0, [103.4, 60.6, 10.0]) == "64-103-61-10"  # means over seeds, rounded
    record = {rf.EPOCH: 1, rf.ARCHITECTURE: "64-3-2", rf.INPUTS: 64, rf.neurons_key("fc1"): 3}
    assert rf.numeric_metrics(record) == {rf.EPOCH: 1.0, rf.INPUTS: 64.0, "neurons.fc1": 3.0}  # no string
