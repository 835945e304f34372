"""The report's figures (analysis/figures.py, analysis/figstyle.py): what each one draws, read
back from the matplotlib artists, on small hand-made frames; and the selection view's frames of
a tune-then-confirm study (analysis/report.py ``selection_frames``).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from analysis import figstyle, figures  # noqa: E402
from analysis.figstyle import REFERENCE_COLOR  # noqa: E402

REF = "none"


def _stars(ax) -> np.ndarray:
    """The (x, y) of the star markers of an axes (the selected points)."""
    out = [c.get_offsets() for c in ax.collections
           if isinstance(c, PathCollection) and len(c.get_offsets()) and c.get_sizes()[0] > 100]
    return np.concatenate(out) if out else np.empty((0, 2))


def _visible(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_each_method_keeps_its_colour_and_marker_and_none_is_grey():
    some = figstyle.method_colors(["l1", "none", "sparse-vd"])
    every = figstyle.method_colors(["none", "sensitivity-spec", "l1", "l0", "sparse-vd", "gmp"])
    assert some["l1"] == every["l1"] and some["sparse-vd"] == every["sparse-vd"]
    assert some["none"] == REFERENCE_COLOR
    methods = ["sensitivity-unspec", "sensitivity-spec", "decay", "weight-decay", "l1",
               "magnitude", "l0", "sparse-vd", "gmp"]
    colors = figstyle.method_colors(methods)
    assert len(set(colors.values())) == len(methods)          # nine methods, nine colours
    assert all(len(set(np.round(c, 3))) > 1 for c in colors.values())  # none of them grey
    markers = figstyle.method_markers(methods)
    assert len(set(markers.values())) == len(methods)
    assert figstyle.method_markers(["x-new", "l1"])["l1"] == markers["l1"]


def test_a_log_axis_draws_zeros_at_zero():
    fig = Figure()
    with_zero, plain = fig.subplots(1, 2)
    assert figstyle.zero_aware_log_axis(with_zero, [0.0, 3e-3, 0.2, np.nan]) == pytest.approx(1e-3)
    assert with_zero.get_yscale() == "symlog" and with_zero.get_ylim()[0] == 0
    assert figstyle.zero_aware_log_axis(plain, [3e-3, 0.2]) is None
    assert plain.get_yscale() == "log"


def _sens_stats(q10_zero_epochs=(1, 2)) -> pd.DataFrame:
    rows = []
    for epoch in range(1, 5):
        for i, layer in enumerate(("fc1", "fc2")):
            rows.append({"method": "sensitivity-spec", "epoch": epoch, "layer": layer,
                         "sens_q10": 0.0 if epoch in q10_zero_epochs and layer == "fc1" else 1e-4,
                         "sens_q50": 0.01 * (i + 1), "sens_q90": 0.5, "sens_mean": 0.1,
                         "sens_frac_ge1": 0.02, "sens_frac_zero": 0.15 if epoch < 3 else 0.05})
    return pd.DataFrame(rows)


def test_sensitivity_zeros_are_drawn_as_zeros_and_their_share_as_a_line():
    fig = figures.sensitivity_figure(_sens_stats(), ["fc1", "fc2"])
    left, right = fig.axes[0], fig.axes[1]
    assert left.get_yscale() == "symlog" and left.get_ylim()[0] == 0
    q10_fc1 = [ln for ln in left.get_lines() if ln.get_linestyle() == "--"][0]
    assert list(q10_fc1.get_ydata()[:2]) == [0.0, 0.0]     # at 0, not at an invented floor
    dashed = [ln for ln in right.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 2 and list(dashed[0].get_ydata()) == pytest.approx([15, 15, 5, 5])
    assert not right.texts
    # Without zeros the axis is a plain log axis; older runs without frac_zero draw no share;
    # a share of S ≥ 1 that stays 0 (its lines on the axis) is said in words.
    no_zero = _sens_stats(q10_zero_epochs=()).drop(columns="sens_frac_zero")
    fig = figures.sensitivity_figure(no_zero.assign(sens_frac_ge1=0.0), ["fc1", "fc2"])
    assert fig.axes[0].get_yscale() == "log"
    assert not [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"]
    assert [t.get_text() for t in fig.axes[1].texts] == ["no weight reached S ≥ 1"]


def _agg_rows(method, points, met=None):
    """Seed-aggregated rows of one method: (compression, val error, test error) per epoch."""
    return [{"method": method, "arch": "a", "dataset": "d", "config": method, "epoch": e,
             "compression_mean": c, "compression_std": 0.1, "val_error_mean": v,
             "val_error_std": 0.05, "test_error_mean": t, "test_error_std": 0.07, "n_seeds": 2,
             "candidate": True} for e, (c, v, t) in enumerate(points, start=1)]


def test_selection_view_puts_each_star_on_its_own_validation_front():
    from analysis.pareto import pareto_front
    from analysis.selection import reference_points, select_operating_points

    agg = pd.DataFrame(_agg_rows("l1", [(1.5, 1.8, 1.9), (3.0, 2.4, 2.2), (6.0, 3.5, 2.3)])
                       + _agg_rows("l0", [(9.0, 6.0, 5.0), (20.0, 9.0, 8.0)])
                       + _agg_rows(REF, [(1.0, 1.7, 1.8)]))
    agg["complete"] = True
    front = pareto_front(agg, x="compression_mean", y="val_error_mean")
    selected = select_operating_points(agg, 2.5)
    fig = figures.pareto_selection_figure(agg, front, selected, reference_points(agg), 2.5)
    axes = _visible(fig)
    titles = [ax.get_title(loc="left") for ax in axes]
    assert titles == ["L1", "L0 (Louizos et al.): none selected"]     # the reference: no panel
    l1 = axes[0]
    assert _stars(l1).tolist() == [[3.0, 2.4]]          # highest compression under 2.5 % ...
    assert _stars(axes[1]).size == 0
    own = [ln for ln in l1.get_lines() if ln.get_marker() not in ("None", "", None)]
    assert [3.0, 2.4] in np.column_stack([own[0].get_xdata(), own[0].get_ydata()]).tolist()  # ... on its front
    assert any(ln.get_ydata()[0] == 2.5 and ln.get_linestyle() == ":" for ln in l1.get_lines())
    assert l1.get_xscale() == "log"


def test_reporting_view_shows_test_error_with_error_bars_and_none_selected_rows():
    selected = pd.DataFrame([
        {"method": "l1", "met_target": True, "test_error_mean": 2.2, "test_error_std": 0.07,
         "compression_mean": 3.0, "compression_std": 0.1, "n_seeds": 3, "target_error": 2.5},
        {"method": "l0", "met_target": False, "target_error": 2.5}])
    reference = pd.DataFrame([{"method": REF, "test_error_mean": 1.8, "test_error_std": 0.1}])
    fig = figures.operating_points_figure(selected, reference, {"l1": "confirm", "l0": "search"})
    err, cmp_ = fig.axes[:2]
    labels = [t.get_text() for t in err.get_yticklabels()]
    assert labels == ["L1 (confirm, n=3)", "L0 (Louizos et al.)"]   # first method on top
    marker = [ln for ln in err.get_lines() if ln.get_marker() not in ("None", "", None, "|")][0]
    assert list(marker.get_xdata()) == [2.2]
    assert any("none selected" in t.get_text() for t in err.texts)
    assert cmp_.get_xscale() == "log"
    assert figures.operating_points_figure(selected.iloc[1:], reference) is None


def test_layer_profile_is_a_dot_plot_and_names_methods_without_a_point():
    selected = pd.DataFrame([
        {"method": "l1", "met_target": True, "remaining_pct.fc1_mean": 2.0,
         "remaining_pct.fc2_mean": 40.0, "remaining_pct.fc1_std": 0.5},
        {"method": "magnitude", "met_target": True, "remaining_pct.fc1_mean": 0.0,
         "remaining_pct.fc2_mean": 12.0},
        {"method": "l0", "met_target": False}])
    fig = figures.layer_profile_figure(selected, ["fc1", "fc2"])
    ax = fig.axes[0]
    assert not [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]  # no bars
    assert ax.get_yscale() == "symlog"          # magnitude's 0 % is drawn at 0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["L1", "Magnitude (Han et al.)", "L0 (Louizos et al.): none selected"]


def test_first_pruning_epoch_and_the_training_curve_panels():
    curve = pd.DataFrame({"epoch": [1, 2, 3, 4, 5],
                          "phase": ["reach", "reach", "mixed", "sparsify", "sparsify"]})
    assert figures.first_pruning_epoch(curve) == (3.0, 4.0)
    assert np.isnan(figures.first_pruning_epoch(curve.assign(phase="reach"))).all()
    rows = []
    for method, phases in ((REF, ["reach"] * 5), ("l1", list(curve["phase"])),
                           ("gmp", ["reach", "sparsify", "sparsify", "sparsify", "sparsify"])):
        for epoch, phase in zip(range(1, 6), phases):
            rows.append({"method": method, "epoch": epoch, "phase": phase,
                         "test_loss_mean": 1.0 / epoch, "test_loss_std": 0.01})
    fig = figures.training_curves_figure(pd.DataFrame(rows))
    axes = _visible(fig)
    assert [ax.get_title(loc="left") for ax in axes] == ["L1", "Gradual magnitude (GMP)"]
    for ax, start in zip(axes, (3, 2)):
        marks = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-."]
        assert [ln.get_xdata()[0] for ln in marks] == [start - 0.5]
        assert any(ln.get_linestyle() == "--" for ln in ax.get_lines())  # the reference
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "seeds change phase at different epochs" in legend       # l1's mixed epoch


# -- the selection view of a tune-then-confirm study ------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tune-then-confirm study, reported at the derived target (the best validation error of
    ``none`` + 0.5 points: 2.15 %)."""
    import fake_study
    from analysis.report import make_report
    from analysis.runs import load_runs

    root = tmp_path_factory.mktemp("tuned")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fake_study.make_fake_study(uri, "tuned", artifact_location=(root / "artifacts").as_uri(),
                               target_error=2.0, running=False,
                               trials=fake_study.MATCHED_TRIALS, confirm=fake_study.MATCHED_CONFIRM)
    runs = load_runs(uri, "tuned")
    return runs, make_report(runs, root / "report", log_artifacts=False)


def test_the_selection_view_reads_the_search_runs_and_the_tables_the_confirm_runs(tuned):
    from analysis.findings import confirm_mismatches
    from analysis.report import selection_frames
    from analysis.runs import prefer_confirm, stages_used

    runs, report = tuned
    fronts = pd.read_csv(report / "tables" / "pareto_selection.csv").set_index("method")
    chosen = pd.read_csv(report / "tables" / "operating_points.csv").set_index("method")
    # sensitivity-spec: the search compared two λ on seeds 0 and 1; the confirm runs retrained
    # lam=1e-5 on seeds 10-12, which the table reads.
    spec = fronts.loc["sensitivity-spec"]
    assert set(spec["n_trials"]) == {2} and spec["config"].nunique() == 2
    assert chosen.loc["sensitivity-spec", "n_seeds"] == 3
    assert "lam=1e-05" in chosen.loc["sensitivity-spec", "config"]
    # At 2.15 % the rule on the search runs stars lam=1e-4, not the configuration the confirm
    # stage retrained: the report says so. At 2 % it stars lam=1e-5: nothing to say.
    md = (report / "report.md").read_text()
    assert ("Note: the confirm runs of sensitivity-spec retrain a configuration other than the "
            "starred one.") in md
    assert "For decay, sensitivity-spec the star marks the configuration" in md
    carry = ["setting", *runs.config_params]
    stages = stages_used(prefer_confirm(runs.usable_epochs()))
    for target, lam, odd in ((2.15, "lam=0.0001", ["sensitivity-spec"]), (2.0, "lam=1e-05", [])):
        frames = selection_frames(runs.usable_epochs(), carry, {("lenet300", "mnist"): target}, ())
        star = frames["selected"].set_index("method").loc["sensitivity-spec"]
        assert lam in star["config"] and star["n_seeds"] == 2
        assert confirm_mismatches(frames["selected"], chosen.reset_index(), stages) == odd


def test_layer_profile_shows_the_neurons_below_the_weights():
    selected = pd.DataFrame([
        {"method": "serene", "met_target": True, "remaining_pct.fc1_mean": 5.0, "remaining_pct.fc2_mean": 9.0,
         "neurons.fc1_mean": 120.0, "neurons.fc2_mean": 0.0, "neurons.fc1_std": 4.0},
        {"method": "l0", "met_target": True, "remaining_pct.fc1_mean": 8.0, "remaining_pct.fc2_mean": 30.0,
         "neurons.fc1_mean": 60.0, "neurons.fc2_mean": 41.0}])
    assert figures.has_neuron_profile(selected, ["fc1", "fc2"])
    fig = figures.layer_profile_figure(selected, ["fc1", "fc2"], widths={"fc1": 300.0, "fc2": 100.0})
    weights, neurons = fig.axes[:2]
    assert "weights" in weights.get_ylabel() and "neurons" in neurons.get_ylabel()
    assert neurons.get_yscale() == "symlog"  # serene's 0 units in fc2 are drawn at 0
    dots = sorted(float(y) for line in neurons.get_lines()  # the dots, not the error bars' caps
                  if line.get_linestyle() == "None" and line.get_marker() not in ("_", "|")
                  for y in line.get_ydata())
    assert dots == [0.0, 41.0, 60.0, 120.0]
    (dashes,) = [c for c in neurons.collections if c.get_label() == "the layer's units"]
    assert sorted(seg[0][1] for seg in dashes.get_segments()) == [100.0, 300.0]
    no_counts = selected.drop(columns=[c for c in selected.columns if c.startswith("neurons")])
    assert len(figures.layer_profile_figure(no_counts, ["fc1", "fc2"]).axes) == 1


def test_selection_view_when_no_method_meets_the_target():
    from analysis.pareto import pareto_front
    from analysis.selection import reference_points, select_operating_points

    agg = pd.DataFrame(_agg_rows("l1", [(1.5, 8.0, 7.9), (3.0, 9.0, 9.2)]) + _agg_rows(REF, [(1.0, 7.0, 7.1)]))
    agg["complete"] = True
    front = pareto_front(agg, x="compression_mean", y="val_error_mean")
    selected = select_operating_points(agg, 2.5)
    fig = figures.pareto_selection_figure(agg, front, selected, reference_points(agg), 2.5)
    (ax,) = _visible(fig)
    assert ax.get_title(loc="left") == "L1: none selected" and _stars(ax).size == 0
