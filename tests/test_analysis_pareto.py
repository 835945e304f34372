"""Pareto fronts and seed aggregation (analysis/pareto.py): hand-computed cases and random
point sets checked against the brute-force definition (tests/references.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import aggregate_seeds, front_mask, pareto_front, valid_rows
from references import brute_force_front, is_dominated


def _pts(rows, by=None):
    df = pd.DataFrame(rows, columns=["name", "compression", "test_error"])
    if by is not None:
        df["method"] = by
    return df


def test_is_dominated_definition():
    assert is_dominated((1.0, 2.0), [(2.0, 2.0)])          # more compression, same error
    assert is_dominated((1.0, 2.0), [(1.0, 1.0)])          # same compression, less error
    assert not is_dominated((1.0, 2.0), [(1.0, 2.0)])      # an identical point does not dominate
    assert not is_dominated((1.0, 2.0), [(2.0, 3.0), (0.5, 1.0)])  # trade-offs do not
    assert is_dominated((1.0, 2.0), [(0.5, 2.0)], maximize_x=False)


def test_front_by_hand_with_ties_and_duplicates():
    df = _pts([
        ("F", 0.5, 0.5),
        ("A", 1.0, 1.0),
        ("B", 2.0, 2.0),   # same x as C, higher error: dominated
        ("C", 2.0, 1.5),
        ("G", 2.0, 1.5),   # duplicate of C: both stay
        ("D", 3.0, 3.0),
        ("E", 3.0, 3.0),   # duplicate of D: both stay
        ("H", 1.0, 1.2),   # same x as A, higher error: dominated
        ("I", 0.5, 1.5),   # dominated by F (same x) and by A
        ("N", math.nan, 0.1),  # not comparable: never on the front
    ])
    front = pareto_front(df, by=())
    assert set(front["name"]) == {"F", "A", "C", "G", "D", "E"}
    assert list(front["compression"]) == sorted(front["compression"])  # sorted by x
    assert set(brute_force_front(df, by=())["name"]) == set(front["name"])


def test_equal_error_larger_compression_wins():
    df = _pts([("a", 1.0, 2.0), ("b", 4.0, 2.0), ("c", 8.0, 2.0)])
    assert set(pareto_front(df, by=())["name"]) == {"c"}


def test_front_is_per_group():
    df = pd.concat([_pts([("a1", 1, 1.0), ("a2", 2, 2.0)], by="m1"),
                    _pts([("b1", 1, 0.5), ("b2", 3, 5.0)], by="m2")], ignore_index=True)
    # b1 would dominate a1 across groups, but fronts are per method.
    assert set(pareto_front(df, by=["method"])["name"]) == {"a1", "a2", "b1", "b2"}
    assert set(pareto_front(df, by=())["name"]) == {"b1", "a2", "b2"}


def test_minimize_both_option():
    df = _pts([("a", 1.0, 1.0), ("b", 2.0, 0.5), ("c", 0.5, 3.0)])
    front = pareto_front(df, by=(), maximize_x=False)
    assert set(front["name"]) == {"a", "b", "c"}  # each trades one axis for the other
    df2 = _pts([("a", 1.0, 1.0), ("b", 2.0, 2.0)])
    assert set(pareto_front(df2, by=(), maximize_x=False)["name"]) == {"a"}


@pytest.mark.parametrize("seed", range(40))
def test_random_point_sets_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # Small integer grids make exact ties and duplicates common.
    df = pd.DataFrame({
        "method": rng.choice(["a", "b", "c"], size=n),
        "compression": rng.integers(1, 8, size=n).astype(float),
        "test_error": rng.integers(0, 8, size=n).astype(float),
    })
    if seed % 5 == 0:
        df.loc[rng.integers(0, n), "test_error"] = np.nan
    fast = front_mask(df, by=["method"])
    brute = pd.Series(False, index=df.index)
    brute[brute_force_front(df, by=["method"]).index] = True
    pd.testing.assert_series_equal(fast, brute, check_names=False)
    # Every point off the front is dominated by a front point of its group.
    for i in df.index[~fast & df["test_error"].notna()]:
        group = df[(df["method"] == df.loc[i, "method"]) & fast]
        assert is_dominated((df.loc[i, "compression"], df.loc[i, "test_error"]),
                            group[["compression", "test_error"]].to_numpy())


def _epochs(rows):
    cols = ["run_id", "config", "method", "seed", "epoch", "phase", "train_loss",
            "val_error", "test_error", "compression", "remaining_pct.fc1"]
    return pd.DataFrame(rows, columns=cols)


def test_aggregate_seeds_hand_computed():
    ep = _epochs([
        # config A, two seeds, two epochs
        ("r1", "A", "m", 0, 1, "sparsify", 0.1, 2.0, 2.1, 10.0, 10.0),
        ("r2", "A", "m", 1, 1, "sparsify", 0.1, 4.0, 4.3, 30.0, 30.0),
        ("r1", "A", "m", 0, 2, "sparsify", 0.1, 3.0, 3.0, 20.0, 5.0),
        ("r2", "A", "m", 1, 2, "reach", 0.1, 5.0, 5.0, 20.0, 5.0),   # phases differ: mixed
        # config B, one seed reached epoch 2, the other diverged there
        ("r3", "B", "m", 0, 1, "sparsify", 0.1, 1.0, 1.0, 2.0, 50.0),
        ("r4", "B", "m", 1, 1, "sparsify", 0.2, 1.0, 1.2, 2.0, 50.0),
        ("r3", "B", "m", 0, 2, "sparsify", 0.1, 1.0, 1.0, 4.0, 25.0),
        ("r4", "B", "m", 1, 2, "sparsify", math.nan, 90.0, 90.0, 4.0, 25.0),
    ])
    agg = aggregate_seeds(ep).set_index(["config", "epoch"])
    a1 = agg.loc[("A", 1)]
    assert a1["n_seeds"] == 2 and a1["n_trials"] == 2
    assert a1["test_error_mean"] == pytest.approx(3.2)
    assert a1["test_error_std"] == pytest.approx(math.sqrt(((2.1 - 3.2) ** 2 + (4.3 - 3.2) ** 2) / 1))
    assert a1["compression_mean"] == pytest.approx(20.0)
    assert a1["compression_std"] == pytest.approx(math.sqrt(200.0))
    assert a1["remaining_pct.fc1_mean"] == pytest.approx(20.0)
    assert a1["method"] == "m"
    assert a1["complete"] and a1["candidate"]
    a2 = agg.loc[("A", 2)]
    assert a2["phase"] == "mixed" and a2["complete"] and not a2["candidate"]
    b2 = agg.loc[("B", 2)]
    # The diverged seed's epoch (non-finite train loss) does not count: one seed left.
    assert b2["n_seeds"] == 1 and b2["n_trials"] == 2
    assert not b2["complete"] and not b2["candidate"]
    assert b2["test_error_mean"] == pytest.approx(1.0)
    assert math.isnan(b2["test_error_std"])
    assert "seed_mean" not in agg.columns and "run_id" not in agg.columns


def test_valid_rows_keeps_trials_that_log_no_train_loss():
    ep = _epochs([
        ("r1", "A", "m", 0, 1, "sparsify", math.nan, 1.0, 1.0, 2.0, 0.5),
        ("r2", "A", "m", 1, 1, "sparsify", 0.1, math.nan, 1.0, 2.0, 0.5),
    ])
    assert list(valid_rows(ep)) == [True, False]


def test_aggregate_rejects_missing_columns():
    with pytest.raises(ValueError, match="compression"):
        aggregate_seeds(pd.DataFrame({"config": ["A"], "epoch": [1], "test_error": [1.0],
                                      "val_error": [1.0]}))
