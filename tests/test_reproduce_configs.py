"""The MNIST configs (issue 11): the reproduction studies and the full-protocol ones compare the
sensitivity methods with their matched control at the same λ and T, read MNIST from the shared
data layout, and the reproduction studies cover two minibatch readings of S."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.runformat import split_variant
from study.schema import load_study

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["reproduce_lenet300", "reproduce_lenet5", "lenet300_mnist", "lenet5_mnist"]
SENSITIVITY = ("sensitivity-spec", "sensitivity-unspec")


def _study(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)  # data.root is relative to the working directory
    return load_study(REPO / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("name", CONFIGS)
def test_decay_is_the_matched_control(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(name, monkeypatch)
    decay = study.methods["decay"]
    for method, params in study.methods.items():
        if split_variant(method)[0] in SENSITIVITY:
            assert (params["lam"], params["threshold"]) == (decay["lam"], decay["threshold"]), method


@pytest.mark.parametrize("name", CONFIGS)
def test_mnist_from_the_shared_layout(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(name, monkeypatch)
    assert study.datasets == ["mnist"]
    assert Path(study.data.resolved_root) == (REPO / "../shared/data/mnist").resolve()
    if not (REPO / "../shared/data/mnist").is_dir():
        pytest.skip("../shared/data/mnist is absent: the data check needs it")
    from study.data import check_available

    check_available("mnist", root=study.data.resolved_root)


@pytest.mark.parametrize("name", ["reproduce_lenet300", "reproduce_lenet5"])
def test_reproduction_readings_and_budgets(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(name, monkeypatch)
    readings = {base: set() for base in SENSITIVITY}
    for method, params in study.methods.items():
        base = split_variant(method)[0]
        if base in readings:
            readings[base].add(params["aggregate"])
    assert all(len(r) >= 2 for r in readings.values()), readings
    assert {"decay", "weight-decay", "magnitude"} <= set(study.methods)
    assert study.search.budget_per_method == 1 and len(study.seeds) >= 2
