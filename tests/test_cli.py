"""`study train` and `study list` from the command line, and every method on both LeNets."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from study.cli import main
from study.data import load_dataset
from study.methods import build_method, method_names
from study.models import build_model
from study.settings import TrainConfig
from study.train import fit, method_context


def test_train_writes_history_and_layers(tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    code = main(["train", "--dataset", "digits", "--arch", "lenet300", "--method", "sensitivity-unspec",
                 "--param", "lam=1e-3", "--param", "threshold=1e-2", "--epochs", "3", "--reach-epochs", "1",
                 "--batch-size", "128", "--seed", "0", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert [r["phase"] for r in result["history"]] == ["reach", "sparsify", "sparsify"]
    first = result["history"][0]
    for key in ("train_loss", "val_loss", "val_error", "test_loss", "test_error", "compression", "sparsity",
                "nonzero", "memory_kb", "remaining_pct.fc1", "remaining_pct.fc2", "remaining_pct.fc3", "epoch_seconds",
                "sens.fc1.q50", "sens.fc1.frac_ge1"):
        assert key in first
    assert [row["layer"] for row in result["layers"]] == ["fc1", "fc2", "fc3"]
    assert sum(row["total"] for row in result["layers"]) == 50_200
    assert result["params"] == {"lam": 1e-3, "threshold": 1e-2, "output": "logits", "aggregate": "sample",
                                "scope": "weights", "conv": "exact", "class_chunk": 0}
    last = result["history"][-1]
    assert last["nonzero"] == sum(row["nonzero"] for row in result["layers"])
    assert last["compression"] == pytest.approx(50_200 / last["nonzero"])
    err = capsys.readouterr().err
    assert "3/3" in err and "final per-layer sparsity" in err


def test_train_prints_its_parameters_as_keys_and_values_and_quiet_keeps_the_final_line(capsys) -> None:
    args = ["train", "--dataset", "digits", "--method", "sensitivity-spec", "--param", "lam=1e-4",
            "--epochs", "2", "--reach-epochs", "1", "--batch-size", "256"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ": lam=0.0001 threshold=0.03 output=logits aggregate=sample" in err and "Params(" not in err
    assert "final per-layer sparsity" in err
    assert main([*args, "--quiet"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("status finished: test error ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magic"], "unknown method 'magic'; valid: none, sensitivity-unspec"),
        (["--dataset", "mnist2"], "unknown dataset 'mnist2'; valid choices: digits, mnist10k"),
        (["--arch", "resnet"], "unknown model 'resnet'; valid choices: lenet300, lenet5"),
        (["--param", "lamda=1"], "unknown parameter 'lamda' for method 'sensitivity-unspec'; valid: aggregate"),
        (["--param", "output=probs"], "invalid value output='probs'; valid: logits, softmax"),
        (["--param", "lam"], "--param expects KEY=VALUE"),
        (["--epochs", "0"], "epochs=0"),
    ],
)
def test_bad_input_is_one_line_naming_the_choices(args, message, capsys) -> None:
    assert main(["train", "--epochs", "1", *args]) == 2  # a later --epochs wins
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ")
    assert "Traceback" not in err


def test_missing_data_root_says_where_it_looked(tmp_path, capsys) -> None:
    assert main(["train", "--dataset", "mnist10k", "--data-root", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert str(tmp_path) in err and "t10k-images-idx3-ubyte" in err


def test_list_names_every_method(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert name in out


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--arch", "--method", "--param", "--epochs", "--data-root", "--json", "--seed"):
        assert flag in out


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_option_shows_its_default_and_every_command_ends_with_examples(capsys) -> None:
    flat = " ".join(_help(["train"], capsys).split())
    for text in ("--batch-size BATCH_SIZE minibatch size (default: 32)",
                 "--momentum MOMENTUM SGD momentum (adam ignores it) (default: 0.0)",
                 "--optimizer {sgd,adam} optimizer: sgd or adam (default: sgd)",
                 "--epochs EPOCHS maximum epochs, both phases together (default: 20)",
                 "CPU runs repeat exactly (default: 0)", "cuda:N (default: auto)",
                 "stops phase 2 (default: none)"):
        assert text in flat
    flags_without_value = ("-h, --help", "--download", "--quiet", "--resume", "--show", "--force")
    for command in ([], ["train"], ["run"], ["validate"], ["list"], ["report"], ["status"], ["export"],
                    ["compare"], ["move"]):
        out = _help(command, capsys)
        options = out.split("\noptions:\n")[1].split("\nexamples:\n")[0]
        for entry in re.split(r"\n(?=  -)", options):
            entry = " ".join(entry.split())
            if not entry.startswith(flags_without_value):
                assert "(default" in entry, (command, entry)
        examples = out.split("\nexamples:\n")[1].splitlines()
        assert 2 <= len([e for e in examples if e.startswith("  study ")]) <= 3, command


def test_help_imports_neither_torch_nor_the_heavy_libraries() -> None:
    code = ("import sys, contextlib, io, study.cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    study.cli.main(['train', '--help'])\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'rich', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_shows_one_section_with_parameters_and_defaults(capsys) -> None:
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "data sets" not in out and "architectures" not in out
    assert "lam=0.001  threshold=0.03  output=logits (logits|softmax)" in out  # sensitivity's defaults
    assert "(no parameters)" in out  # none
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits               n_test=360" in out and "methods" not in out
    assert main(["list", "archs"]) == 0
    assert "lenet5               relu=False padding=auto" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["list", "models"])
    assert "invalid choice: 'models'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("arch", ["lenet300", "lenet5"])
@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_on_both_lenets(method: str, arch: str, digits) -> None:
    config = TrainConfig(epochs=2, reach_epochs=1, batch_size=256, seed=0)
    model = build_model(arch, digits.input_shape, digits.num_classes)
    result = fit(model, build_method(method, {}, method_context(digits, config)), digits, config)
    assert result.status == "finished" and len(result.history) == 2
    assert result.history[-1]["compression"] >= 1.0
    assert 0 <= result.history[-1]["test_error"] <= 100
