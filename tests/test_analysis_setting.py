"""The report's Setting label (analysis/setting.py): a method's searched or study-set params
and its train overrides, from params as MLflow logs them (strings)."""
from __future__ import annotations

import pandas as pd

from analysis.setting import setting_labels, short

TRAIN = {"epochs": 20, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0, "seed": 0,
         "device": "auto", "target_error": 5.0}
STUDY = {"train": TRAIN, "methods": {
    "none": {},
    "sensitivity-spec": {"lam": [1.0e-3, 2.0e-3], "threshold": 2.0e-2},
    "magnitude": {"quality": 1.0, "rounds": 3, "retrain_epochs": 3},
    "gmp": {"target_sparsity": 0.9, "steps": 6},
    "sparse-vd": {"kl_scale": 0.1, "train": {"optimizer": "adam", "lr": 1.0e-3}},
    "l1": {},
}}


def _row(method: str, seed: int = 0, train: dict | None = None, **params) -> dict:
    logged = {f"train.{k}": str(v) for k, v in {**TRAIN, "seed": seed, **(train or {})}.items()}
    return {"method": method, "arch": "lenet300", "dataset": "digits", "seed": str(seed),
            **{k: str(v) for k, v in params.items()}, **logged, "data.val_fraction": "0.1"}


ROWS = [
    _row("none"),
    _row("sensitivity-spec", lam=0.001, threshold=0.02, output="logits"),
    _row("sensitivity-spec", seed=1, lam=0.002, threshold=0.02, output="logits"),
    _row("magnitude", lam=0.0, quality=1.0, rounds=3, retrain_epochs=3, start=5),
    _row("gmp", lam=0.0, target_sparsity=0.9, steps=6, frequency=1),
    _row("sparse-vd", train={"optimizer": "adam", "lr": 0.001}, kl_scale=0.1, warmup_epochs=5.0),
    _row("l1", lam=0.0001, threshold=0.01),
]


def _labels(study=STUDY, rows=ROWS) -> dict[str, list[str]]:
    raw = pd.DataFrame(rows)
    out: dict[str, list[str]] = {}
    for method, label in zip(raw["method"], setting_labels(raw, raw["method"], study)):
        out.setdefault(method, []).append(label)
    return out


def test_labels_name_the_searched_and_study_set_params_and_the_train_overrides():
    labels = _labels()
    assert labels["none"] == [""]
    # Searched (lam) and set (threshold) by the study; output left at its default: not named.
    assert labels["sensitivity-spec"] == ["lam=0.001, threshold=0.02", "lam=0.002, threshold=0.02"]
    # Magnitude and GMP: their own settings, not the lam=0.0 they log; start is a default.
    assert labels["magnitude"] == ["quality=1, rounds=3, retrain_epochs=3"]
    assert labels["gmp"] == ["target_sparsity=0.9, steps=6"]
    # Sparse VD: the Adam override, named like its MLflow params, in the study's order.
    assert labels["sparse-vd"] == ["kl_scale=0.1, train.optimizer=adam, train.lr=0.001"]
    # L1 with its defaults: the key settings (nonzero) still say what it ran with.
    assert labels["l1"] == ["lam=0.0001, threshold=0.01"]


def test_without_the_study_file_the_trials_say_what_varies_and_what_is_unusual():
    labels = _labels(study=None)
    assert labels["sensitivity-spec"] == ["lam=0.001, threshold=0.02", "lam=0.002, threshold=0.02"]
    assert labels["magnitude"] == [""] and labels["gmp"] == [""]   # lam=0.0 says nothing
    # The train block most trials share stands in for the study's.
    assert labels["sparse-vd"] == ["train.lr=0.001, train.optimizer=adam"]


def test_numbers_print_short_only_when_they_stay_the_same_number():
    assert [short(v) for v in ("5.0", "1e-05", "0.001", "adam", "0.123456789")] == [
        "5", "1e-05", "0.001", "adam", "0.123456789"]
