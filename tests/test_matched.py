"""Compression at matched validation error (analysis/matched.py, analysis/matched_text.py):
interpolation on hand-made trajectories, bootstrap intervals and permutation tests with known
answers, the verdict and its sentence, the reference choice, the confirm-runs-preferred rule,
and a report on a synthetic tune-then-confirm study (tests/fake_study.py)."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from analysis import matched_text  # noqa: E402
from analysis.matched import (LESS, MORE, NO_DIFFERENCE, NOT_ESTABLISHED, choose_reference,  # noqa: E402
                              compare, matched_point, mean_interval, permutation_p,
                              ratio_interval, seed_points, smallest_p, verdict)
from analysis.runs import prefer_confirm, stages_used  # noqa: E402


# -- one trajectory --------------------------------------------------------------------------------
def test_monotone_trajectory_interpolates_in_log_compression():
    # compression 1 → 100 while validation error 1 → 3: half way in error is 10×, not 50.5×
    p = matched_point([1.0, 3.0], [1.0, 100.0], [1.5, 3.5], target=2.0)
    assert p.compression == pytest.approx(10.0) and p.test_error == pytest.approx(2.5)
    assert p.val_error == 2.0 and p.position == pytest.approx(0.5) and not p.lower_bound
    # three epochs, target between the 2nd and 3rd: 2 · (4/2)^0.5
    p = matched_point([1, 2, 3], [1, 2, 4], [1.1, 2.1, 3.1], target=2.5)
    assert p.compression == pytest.approx(2 * math.sqrt(2)) and p.position == pytest.approx(1.5)
    assert p.test_error == pytest.approx(2.6)
    # the target met exactly at an epoch: that epoch
    p = matched_point([1, 2, 3], [1, 2, 4], [1.1, 2.1, 3.1], target=2.0)
    assert (p.compression, p.test_error, p.position) == (pytest.approx(2.0), pytest.approx(2.1), 1.0)


def test_non_monotone_trajectory_takes_the_largest_compression_under_the_target():
    # error rises above the target, falls under it again, then rises: v = 1, 3, 1.5, 4
    p = matched_point([1, 3, 1.5, 4], [1, 2, 3, 5], [10, 30, 15, 40], target=2.0)
    # crossings: 0.5 along (1→2), 2/3 along (2→3), 0.2 along (3→5); the last is the largest
    assert p.compression == pytest.approx(3 * (5 / 3) ** 0.2)
    assert p.position == pytest.approx(2.2) and p.test_error == pytest.approx(15 + 0.2 * 25)
    # compression that falls again (a method that regrows weights): the peak under the target
    p = matched_point([1.0, 1.5, 3.0], [1.0, 8.0, 2.0], [1, 2, 3], target=2.0)
    assert p.compression == pytest.approx(8.0) and p.position == 1.0 and not p.lower_bound
    # a plateau in compression: the lower validation error wins, then the earlier epoch
    p = matched_point([1.9, 1.5, 1.5, 2.5], [4.0, 4.0, 4.0, 4.0], [7, 8, 9, 10], target=2.0)
    assert p.position == 1.0 and p.test_error == 8


def test_target_never_reached_is_nan_and_the_report_says_so():
    p = matched_point([2.5, 3.0, 4.0], [1, 2, 3], [1, 2, 3], target=2.0)
    assert not p.reached and math.isnan(p.compression) and math.isnan(p.test_error)
    seeds = seed_points(_trajectories({"l0": [[2.5, 3.0], [2.2, 2.6]]}), {"l0": "c-l0"}, 2.0)
    assert not seeds["reached"].any() and seeds["best_val_error"].tolist() == [2.5, 2.2]
    row = compare(seeds, "decay", 2.0).iloc[0]
    assert row["n_reached"] == 0 and math.isnan(row["compression_mean"])
    assert matched_text.sentence(row) == ("l0 does not reach 2 % validation error in any of its "
                                          "2 seeds (lowest: 2.2 %): no compression at matched error.")


def test_a_run_that_ends_under_the_target_is_a_lower_bound():
    p = matched_point([1.0, 1.2, 1.4], [1, 2, 3], [1, 2, 3], target=2.0)
    assert p.compression == 3 and p.lower_bound
    assert not matched_point([1.0, 1.2, 2.5], [1, 2, 3], [1, 2, 3], target=2.0).lower_bound


def _trajectories(methods: dict[str, list[list[float]]], compression=(2.0, 4.0)) -> pd.DataFrame:
    """Epoch rows: per method, one run per list of validation errors; compression doubles
    each sparsify epoch from ``compression[0]``; a reach epoch first (ignored)."""
    rows = []
    for method, runs in methods.items():
        for seed, vals in enumerate(runs):
            rows.append({"method": method, "config": f"c-{method}", "run_id": f"{method}-{seed}",
                         "seed": seed, "epoch": 0, "phase": "reach", "val_error": 0.1,
                         "test_error": 0.1, "compression": 1000.0, "stage": "search",
                         "setting": "", "status": "finished"})
            for i, v in enumerate(vals):
                rows.append({**rows[-1], "epoch": i + 1, "phase": "sparsify", "val_error": v,
                             "test_error": v + 0.1, "compression": compression[0] * 2 ** i})
    return pd.DataFrame(rows)


def test_seed_points_read_sparsify_epochs_of_the_chosen_configuration():
    epochs = _trajectories({"a": [[1.0, 3.0], [1.0, 1.0]]})
    other = epochs.assign(config="c-other", run_id=epochs["run_id"] + "x", val_error=0.0)
    seeds = seed_points(pd.concat([epochs, other]), {"a": "c-a"}, 2.0)
    # the reach epoch (compression 1000 at 0.1 %) and the other configuration do not count
    assert seeds["run_id"].tolist() == ["a-0", "a-1"] and seeds["n_epochs"].tolist() == [2, 2]
    assert seeds["compression"].tolist() == pytest.approx([2 * math.sqrt(2), 4.0])
    assert seeds["lower_bound"].tolist() == [False, True] and seeds["epoch"].tolist() == [1.5, 2.0]


# -- statistics with known answers -----------------------------------------------------------------
def test_bootstrap_intervals_with_known_answers():
    assert mean_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)           # a constant sample
    # two values a < b: resample means are a, (a+b)/2, b with probability 1/4, 1/2, 1/4
    assert mean_interval([1.0, 3.0]) == (1.0, 3.0)
    assert all(math.isnan(v) for v in mean_interval([2.0]))
    lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert 2.5 < lo < 4.5 < hi < 6.5
    assert ratio_interval([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == (pytest.approx(2.0),) * 3
    ratio, lo, hi = ratio_interval([2, 3, 4], [2, 3, 4])
    assert ratio == pytest.approx(1.0) and lo < 1 < hi
    ratio, lo, hi = ratio_interval([4.0, 4.4, 4.8], [1.0, 1.1, 1.2])
    assert ratio == pytest.approx(4.0) and 1 < lo < ratio < hi
    ratio, lo, hi = ratio_interval([4.0], [1.0, 1.1])
    assert ratio == pytest.approx(4 / math.sqrt(1.1)) and math.isnan(lo) and math.isnan(hi)


def test_permutation_test_with_known_answers():
    assert permutation_p([2, 3, 4], [2, 3, 4]) == pytest.approx(1.0)   # identical groups
    assert permutation_p([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]) == pytest.approx(1.0)
    # well separated: only the observed split (and its mirror) is as extreme
    assert permutation_p([10, 11, 12], [1, 1.1, 1.2]) == pytest.approx(0.1) == smallest_p(3, 3)
    assert permutation_p([10, 11, 12, 13, 14], [1, 1.1, 1.2, 1.3, 1.4]) == pytest.approx(2 / 252)
    assert smallest_p(2, 2) == pytest.approx(1 / 3) and smallest_p(1, 1) == 1.0
    assert math.isnan(permutation_p([1.0], [2.0, 3.0]))


def test_verdict_calls_a_difference_only_when_interval_and_test_agree():
    assert verdict(1.5, 1.2, 1.8, 0.01) == MORE and verdict(0.5, 0.4, 0.8, 0.01) == LESS
    assert verdict(1.5, 0.9, 1.8, 0.001) == NO_DIFFERENCE   # interval includes 1, p small
    assert verdict(1.5, 1.2, 1.8, 0.1) == NOT_ESTABLISHED   # interval excludes 1, p large
    assert verdict(1.5, math.nan, math.nan, math.nan) == NOT_ESTABLISHED


def _row(**kw):
    row = {"method": "sensitivity-spec", "reference": "decay", "target_error": 5.0,
           "stage": "confirm", "setting": "", "n_seeds": 3, "n_reached": 3, "n_lower_bound": 0,
           "best_val_error": 4.0, "compression_mean": 3.0, "compression_lo": 2.8,
           "compression_hi": 3.2, "test_error_mean": 4.9, "test_error_std": 0.1,
           "ratio": 1.01, "ratio_lo": 0.93, "ratio_hi": 1.09, "p_value": 0.8, "p_min": 0.1,
           "n_reference": 3, "verdict": NO_DIFFERENCE}
    row.update(kw)
    return row


def test_sentences():
    assert matched_text.sentence(_row()) == (
        "sensitivity-spec reaches 1.01× [0.93, 1.09] the compression of decay at 5 % validation "
        "error (p = 0.8, 3 vs 3 seeds; 0.1 is the smallest p possible with 3 vs 3 seeds): no "
        "detectable difference.")
    # interval includes 1 although p is small: never a difference
    text = matched_text.sentence(_row(ratio=1.3, ratio_lo=0.98, ratio_hi=1.6, p_value=0.01,
                                      n_reached=8, n_seeds=8, n_reference=8, p_min=1e-4,
                                      verdict=verdict(1.3, 0.98, 1.6, 0.01)))
    assert text.endswith("(p = 0.01, 8 vs 8 seeds): no detectable difference (the interval "
                         "includes 1).")
    assert "more" not in text
    # interval excludes 1 but p = 0.1 (3 vs 3): not established
    text = matched_text.sentence(_row(ratio=2.0, ratio_lo=1.8, ratio_hi=2.2, p_value=0.1,
                                      verdict=verdict(2.0, 1.8, 2.2, 0.1)))
    assert text.endswith("the interval excludes 1 but the permutation test does not confirm "
                         "it; not established.") and "more compression" not in text
    text = matched_text.sentence(_row(ratio=2.0, ratio_lo=1.8, ratio_hi=2.2, p_value=0.001,
                                      n_reached=6, n_seeds=7, n_reference=6, p_min=0.002,
                                      verdict=MORE))
    assert text == ("sensitivity-spec reaches 2× [1.8, 2.2] the compression of decay at 5 % "
                    "validation error (p = 0.001, 6 vs 6 seeds; 1 of its 7 seeds never reach "
                    "the target and are left out): more compression than decay.")
    ref = matched_text.sentence(_row(method="decay", n_lower_bound=3, verdict="no data"))
    assert ref == ("decay (the reference) reaches 3× [2.8, 3.2] compression at 5 % validation "
                   "error (3 seeds; every run ended still under the target, so the compression "
                   "is a lower bound).")
    no_ref = matched_text.sentence(_row(verdict="no data", ratio=math.nan, n_reference=0))
    assert no_ref.endswith("(3 seeds); no seed of decay reaches it, so there is no ratio.")
    assert matched_text.sentence(_row(method="decay", n_reached=0)).startswith(
        "decay (the reference) does not reach 5 % validation error in any of its 3 seeds (lowest: 4 %)")
    alone = matched_text.sentence(_row(reference="", verdict="no data"))
    assert alone.startswith("sensitivity-spec reaches 3× [2.8, 3.2] compression at 5 %")


def test_compare_on_separated_and_identical_groups():
    seeds = pd.DataFrame({
        "method": ["a"] * 3 + ["same"] * 3 + ["decay"] * 3, "stage": "confirm", "setting": "",
        "reached": True, "lower_bound": False, "best_val_error": 1.0,
        "compression": [20.0, 22.0, 24.0, 2.0, 2.2, 2.4, 2.0, 2.2, 2.4],
        "test_error": [1.0, 1.2, 1.4, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]})
    out = compare(seeds, "decay", 2.0).set_index("method")
    a, same = out.loc["a"], out.loc["same"]
    assert a["ratio"] == pytest.approx(10.0) and a["ratio_lo"] > 1 and a["p_value"] == pytest.approx(0.1)
    assert a["verdict"] == NOT_ESTABLISHED and a["p_min"] == pytest.approx(0.1)
    assert same["ratio"] == pytest.approx(1.0) and same["p_value"] == pytest.approx(1.0)
    assert same["verdict"] == NO_DIFFERENCE
    assert a["test_error_mean"] == pytest.approx(1.2) and a["test_error_std"] == pytest.approx(0.2)
    assert a["compression_mean"] == pytest.approx(22.0) and 20 <= a["compression_lo"] < 22 < a["compression_hi"] <= 24
    assert math.isnan(out.loc["decay", "ratio"]) and out.loc["decay", "n_reached"] == 3


# -- the reference and the stages -------------------------------------------------------------------
def test_reference_choice():
    assert choose_reference(["none", "weight-decay", "decay", "l1"]) == "decay"
    assert choose_reference(["none", "weight-decay", "l1"]) == "weight-decay"
    assert choose_reference(["none", "l1"]) is None
    assert choose_reference(["decay", "l1"], "l1") == "l1"
    with pytest.raises(ValueError) as err:
        choose_reference(["decay", "l1"], "l2")
    assert str(err.value) == "--reference 'l2' is not a method of this study; choose one of ['decay', 'l1']"


def test_confirm_runs_are_preferred_per_method():
    rows = []
    for method, stage, seeds in (("a", "search", (0, 1)), ("a", "confirm", (10, 11, 12)),
                                 ("b", "search", (0, 1)), ("c", "search", (0,))):
        for seed in seeds:
            rows.append({"arch": "x", "dataset": "d", "method": method, "stage": stage,
                         "seed": seed, "run_id": f"{method}{stage}{seed}", "epoch": 1})
    rows.append({**rows[0], "dataset": "other", "run_id": "other"})  # another data set: search
    epochs = pd.DataFrame(rows)
    kept = prefer_confirm(epochs)
    assert set(kept.loc[(kept["method"] == "a") & (kept["dataset"] == "d"), "stage"]) == {"confirm"}
    assert kept["run_id"].tolist() == ["aconfirm10", "aconfirm11", "aconfirm12", "bsearch0",
                                       "bsearch1", "csearch0", "other"]
    used = stages_used(kept).set_index(["dataset", "method"])
    assert used.loc[("d", "a"), "stage"] == "confirm" and used.loc[("d", "a"), "seeds"] == [10, 11, 12]
    assert used.loc[("d", "b"), "stage"] == "search" and used.loc[("other", "a"), "stage"] == "search"
    assert prefer_confirm(epochs.drop(columns="stage")).equals(epochs.drop(columns="stage"))
    from analysis.sections import stages_sentence
    assert stages_sentence(used.reset_index().query("dataset == 'd'")) == (
        "Runs: the confirm runs (the chosen configuration retrained on fresh seeds) for a (seeds "
        "10, 11, 12); the search runs for b, c.")


# -- a report on a tune-then-confirm study -----------------------------------------------------------
TARGET = 2.0
CONFIRMED = ("decay", "sensitivity-spec")


@pytest.fixture(scope="module")
def confirm_study(tmp_path_factory):
    import fake_study

    root = tmp_path_factory.mktemp("confirm")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fake_study.make_fake_study(uri, "tuned", artifact_location=(root / "artifacts").as_uri(),
                               target_error=TARGET, running=False,
                               trials=fake_study.MATCHED_TRIALS, confirm=fake_study.MATCHED_CONFIRM)
    return root, uri


@pytest.fixture(scope="module")
def confirm_report(confirm_study):
    from study import cli

    root, uri = confirm_study
    assert cli.main(["report", "tuned", "--tracking-uri", uri, "--out", str(root / "report")]) == 0
    return root / "report"


def _brute_force_matched(run: pd.DataFrame, target: float, steps: int = 4001) -> float:
    """The largest compression with validation error ≤ target on the path through the
    sparsify epochs, by sampling every segment densely (independent of matched_point)."""
    run = run[run["phase"] == "sparsify"].sort_values("epoch")
    v, y = run["val_error"].to_numpy(), np.log(run["compression"].to_numpy())
    t = np.linspace(0, 1, steps)
    vs = np.concatenate([v[i] + t * (v[i + 1] - v[i]) for i in range(len(v) - 1)])
    ys = np.concatenate([y[i] + t * (y[i + 1] - y[i]) for i in range(len(v) - 1)])
    ok = vs <= target
    return float(np.exp(ys[ok].max())) if ok.any() else math.nan


def test_the_report_uses_the_confirm_runs_and_compares_with_decay(confirm_report, confirm_study):
    from analysis.runs import load_runs

    _, uri = confirm_study
    runs = load_runs(uri, "tuned")
    assert set(runs.trials["stage"]) == {"search", "confirm"}
    table = pd.read_csv(confirm_report / "tables" / "table_lenet300_mnist.csv")
    measured = table[table["source"] == "this study"].set_index("method")
    for method in CONFIRMED:   # the confirm seeds only, never averaged with the search seeds
        assert measured.loc[method, "n_seeds"] == 3
    assert measured.loc["weight-decay", "n_seeds"] == 2 and measured.loc["none", "n_seeds"] == 2
    md = (confirm_report / "report.md").read_text()
    assert ("Runs: the confirm runs (the chosen configuration retrained on fresh seeds) for decay "
            "(seeds 10, 11, 12); sensitivity-spec (seeds 10, 11, 12); the search runs for l0, "
            "none, weight-decay.") in md

    seeds = pd.read_csv(confirm_report / "tables" / "matched_seeds_lenet300_mnist.csv")
    confirm = seeds[seeds["method"].isin(CONFIRMED)]
    assert sorted(confirm["seed"]) == [10, 10, 11, 11, 12, 12] and set(confirm["stage"]) == {"confirm"}
    ep = runs.epochs
    for _, s in seeds.iterrows():
        brute = _brute_force_matched(ep[ep["run_id"] == s["run_id"]], TARGET)
        if math.isnan(brute):
            assert not s["reached"]
        else:
            assert s["compression"] == pytest.approx(brute, rel=1e-3), s["run_id"]

    summary = pd.read_csv(confirm_report / "tables" / "matched_lenet300_mnist.csv").set_index("method")
    assert set(summary["reference"]) == {"decay"} and (summary["target_error"] == TARGET).all()
    spec = summary.loc["sensitivity-spec"]
    mine = seeds[seeds["method"] == "sensitivity-spec"]["compression"]
    ref = seeds[seeds["method"] == "decay"]["compression"]
    assert spec["compression_mean"] == pytest.approx(mine.mean())
    assert spec["ratio"] == pytest.approx(np.exp(np.log(mine).mean() - np.log(ref).mean()))
    assert spec["p_min"] == pytest.approx(0.1) and spec["n_reference"] == 3
    assert summary.loc["l0", "n_reached"] == 0
    # one sentence per method, in the report and in the HTML page
    html = (confirm_report / "report.html").read_text()
    for method, row in summary.reset_index().iterrows():
        text = matched_text.sentence(row)
        assert f"- {text}" in md and text.replace("&", "&amp;") in html
    assert "l0 does not reach 2 % validation error in any of its 2 seeds" in md
    assert "0.1 is the smallest p possible with 3 vs 3 seeds" in md
    assert "| weight-decay | search |" in md and "| 0.2 (smallest possible) |" in md  # 2 vs 3
    for ext in ("md", "csv", "tex"):
        assert (confirm_report / "tables" / f"matched_lenet300_mnist.{ext}").is_file()


def test_the_matched_table_compiles(confirm_report, tmp_path):
    from references import assert_latex_compiles

    tex = (confirm_report / "tables" / "matched_lenet300_mnist.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and "−" not in tex and "<" not in tex.replace(
        r"\ensuremath{<}", "")
    assert_latex_compiles(tex, tmp_path)


def test_reference_flag(confirm_study, tmp_path, capsys):
    from study import cli

    _, uri = confirm_study
    out = tmp_path / "wd"
    assert cli.main(["report", "tuned", "--tracking-uri", uri, "--out", str(out),
                     "--reference", "weight-decay"]) == 0
    summary = pd.read_csv(out / "tables" / "matched_lenet300_mnist.csv")
    assert set(summary["reference"]) == {"weight-decay"}
    assert "the compression of weight-decay at 2 % validation error" in (out / "report.md").read_text()
    capsys.readouterr()
    assert cli.main(["report", "tuned", "--tracking-uri", uri, "--out", str(tmp_path / "x"),
                     "--reference", "l2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("--reference 'l2' is not a method of this study; choose one of ['decay', 'l0', "
            "'none', 'sensitivity-spec', 'weight-decay']") in err
    assert not (tmp_path / "x").exists()


def test_a_bad_reference_is_refused_before_the_runs_are_read(tmp_path, capsys):
    import yaml

    from study import cli

    study = tmp_path / "s.yaml"   # its store does not exist: reading runs would fail otherwise
    study.write_text(yaml.safe_dump({"name": "s", "methods": ["none", "l1"],
                                     "output_dir": str(tmp_path / "out")}))
    assert cli.main(["report", str(study), "--reference", "decay"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--reference 'decay' is not a method of this study; choose one of ['l1', 'none']" in err
    assert not (tmp_path / "out").exists()
