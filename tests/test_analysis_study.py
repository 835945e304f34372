"""Loading a study from MLflow and reporting on it (analysis/runs.py, analysis/report.py,
and `study report`, which resolves the report's inputs).

One small synthetic study (tests/fake_study.py) is written once per module into a temporary
SQLite store through the writer's own code: a parent run, 13 trials with a failed, a
diverged, a pruned and a still-running one, per-epoch metrics, sensitivity statistics and
artifacts.
"""
from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from analysis.pareto import aggregate_seeds  # noqa: E402
from analysis.report import make_report  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from study import cli  # noqa: E402

import fake_study  # noqa: E402  (tests/)
from references import assert_latex_compiles, brute_force_front  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
LAYERS = ["fc1", "fc2", "fc3"]
TARGET = 1.95  # the study file's train.target_error (the study in MLflow has 2.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = fake_study.make_fake_study(uri, "tiny", artifact_location=(root / "artifacts").as_uri(),
                                     target_error=2.0)
    return root, uri, ids


@pytest.fixture(scope="module")
def runs(study):
    _, uri, _ = study
    return load_runs(uri, "tiny")


@pytest.fixture(scope="module")
def report(study, runs):
    """The report made by `study report study.yaml` (a fresh load included)."""
    root, _, _ = study
    cfg = root / "study.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny", "output_dir": str(root),
                                   "train": {"target_error": TARGET}}))
    assert cli.main(["report", str(cfg)]) == 0
    return root / "report"


def test_trials_frame_keeps_and_flags_every_trial(runs, study):
    _, _, ids = study
    t = runs.trials.set_index("trial_id")
    assert len(t) == 13 and set(t["run_id"]) == {v for k, v in ids.items() if k != "parent"}
    assert t.loc["magnitude-quality0.5-s1", "status"] == "failed"
    assert t.loc["magnitude-quality0.5-s1", "failed"]
    assert t.loc["l1-lam0.0001-threshold0.001-s1", "diverged"]
    assert t.loc["sensitivity-spec-lam1e-05-threshold0.001-s1", "running"]
    assert t.loc["weight-decay-lam0.0005-s0", "pruned"]
    assert (t["status"] == "finished").sum() == 9 and not t["superseded"].any()
    # Params are typed; configurations ignore the seed; final metrics are the last epoch's.
    assert t["seed"].dtype == np.int64 and t["lam"].dtype == float
    s0, s1 = t.loc["sensitivity-unspec-lam1e-05-threshold0.001-s0"], \
        t.loc["sensitivity-unspec-lam1e-05-threshold0.001-s1"]
    assert s0["config"] == s1["config"] and "seed" not in s0["config"]
    assert "train.device" not in s0["config"] and s0["setting"] == "lam=1e-05, threshold=0.001"
    # Magnitude's setting is what the study set for it, not the lam=0.0 it logs.
    assert t.loc["magnitude-quality0.5-s0", "setting"] == "quality=0.5"
    assert s0["compression"] == pytest.approx(
        runs.epochs.query("run_id == @s0.run_id and epoch == 6")["compression"].item())
    assert runs.parent_run_id == ids["parent"]
    assert runs.study["train"]["target_error"] == 2.0


def test_epochs_and_layers_frames(runs):
    ep = runs.epochs
    counts = ep.groupby("trial_id")["epoch"].agg(["count", "max"])
    expected = fake_study.last_epochs()
    assert counts["count"].to_dict() == expected and counts["max"].to_dict() == expected
    assert set(ep["phase"]) == {"reach", "sparsify"}
    assert (ep.loc[ep["epoch"] <= 2, "phase"] == "reach").all()
    diverged = ep[ep["diverged"] & (ep["epoch"] == 5)]
    assert math.isnan(diverged["train_loss"].item())   # NaN metrics survive the round trip
    assert runs.layer_order == {"lenet300": LAYERS}
    ly = runs.layers
    assert len(ly) == 3 * len(ep)
    row = ly[(ly["run_id"] == ep["run_id"].iloc[0]) & (ly["epoch"] == 6) & (ly["layer"] == "fc1")]
    assert row["remaining_pct"].item() == pytest.approx(
        ep[(ep["run_id"] == ep["run_id"].iloc[0]) & (ep["epoch"] == 6)]["remaining_pct.fc1"].item())
    sens = ly[ly["method"] == "sensitivity-unspec"]
    assert sens["sens_frac_ge1"].notna().all() and ly[ly["method"] == "l1"]["sens_q50"].isna().all()
    assert list(ly.sort_values("layer_index")["layer"].unique()) == LAYERS


def test_bulk_and_per_run_loading_agree(study, runs):
    _, uri, _ = study
    slow = load_runs(uri, "tiny", bulk=False)
    pd.testing.assert_frame_equal(slow.epochs, runs.epochs)


def test_aggregation_of_a_real_store(runs):
    agg = aggregate_seeds(runs.usable_epochs()).set_index(["method", "epoch"])
    mag = agg.loc["magnitude"]
    assert (mag["n_trials"] == 1).all()                    # the failed seed is left out
    l1 = agg.loc["l1"]
    assert l1.loc[4, "complete"] and not l1.loc[5, "complete"]  # diverged at epoch 5
    spec = agg.loc["sensitivity-spec"]
    assert spec.loc[4, "candidate"] and not spec.loc[5, "complete"]  # one seed still running


def test_report_files(report, runs, tmp_path):
    figs = {p.name for p in (report / "figures").iterdir()}
    for name in ("pareto", "operating_points", "layer_profile", "training_curves", "sensitivity"):
        for ext in ("png", "pdf"):
            path = report / "figures" / f"{name}_lenet300_mnist.{ext}"
            assert path.name in figs and path.stat().st_size > 5000, path
    for ext in ("md", "csv", "tex"):
        assert (report / "tables" / f"table_lenet300_mnist.{ext}").is_file()
    md = (report / "report.md").read_text()
    assert md.count("![") == 5 and "Trials that did not finish" in md
    for trial in ("magnitude-quality0.5-s1", "l1-lam0.0001-threshold0.001-s1",
                  "weight-decay-lam0.0005-s0"):
        assert trial in md
    html = (report / "report.html").read_text()
    assert html.count("<img ") == 5 and "</html>" in html
    # Every file of the folder is linked from the Files section; tables scroll in their box.
    files = md[md.index("## Files"):]
    for path in (report / "tables").iterdir():
        assert f"[tables/{path.name}](tables/{path.name})" in files, path.name
    assert '<a href="figures/pareto_lenet300_mnist.pdf">' in html
    assert html.count('<div class="table-wrap"><table>') == html.count("<table>") > 0
    tex = (report / "tables" / "table_lenet300_mnist.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert_latex_compiles(tex, tmp_path)


def test_a_study_without_stages_is_all_search_and_compared_with_weight_decay(report, runs):
    assert set(runs.trials["stage"]) == {"search"}   # no study.stage tag: the search
    md = (report / "report.md").read_text()
    assert "Runs: the search runs of every method (no confirm runs)." in md
    assert "### Compression at matched validation error" in md and "The reference is weight-decay." in md
    summary = pd.read_csv(report / "tables" / "matched_lenet300_mnist.csv").set_index("method")
    assert set(summary["reference"]) == {"weight-decay"}
    assert (summary["target_error"] == TARGET).all()
    # weight decay's one seed was stopped by ASHA at epoch 4: too few seeds for an interval
    assert summary.loc["weight-decay", "n_seeds"] == 1
    ratio = summary.loc["sensitivity-unspec", "ratio"]
    assert ratio > 1 and np.isnan(summary.loc["sensitivity-unspec", "ratio_lo"])
    assert (f"sensitivity-unspec reaches {ratio:.3g}× the compression of weight-decay at 1.95 % "
            "validation error (2 vs 1 seed): too few seeds for an interval and a test; not "
            "established.") in md
    # the still-running sensitivity-spec seed ended under the target so far: a lower bound
    assert summary.loc["sensitivity-spec", "n_lower_bound"] >= 1


def test_report_logged_on_parent_run(report, runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=runs.tracking_uri)
    top = {a.path for a in client.list_artifacts(runs.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figures", "report/tables"} <= top
    figs = {a.path for a in client.list_artifacts(runs.parent_run_id, "report/figures")}
    assert "report/figures/pareto_lenet300_mnist.pdf" in figs


def _brute_force_points(epochs: pd.DataFrame) -> pd.DataFrame:
    """Seed aggregation written out with loops, independent of aggregate_seeds."""
    rows = []
    usable = epochs[~epochs["failed"] & ~epochs["superseded"]]
    for config, part in usable.groupby("config"):
        trials = set(part["run_id"])
        for epoch, at in part.groupby("epoch"):
            ok = [r for _, r in at.iterrows()
                  if all(np.isfinite(r[c]) for c in ("test_error", "val_error", "compression",
                                                     "train_loss"))]
            if len({r["run_id"] for r in ok}) != len(trials) or any(
                    r["phase"] != "sparsify" for r in ok):
                continue
            rows.append({"config": config, "epoch": epoch, "method": ok[0]["method"],
                         "arch": ok[0]["arch"], "dataset": ok[0]["dataset"],
                         "compression": sum(r["compression"] for r in ok) / len(ok),
                         "test_error": sum(r["test_error"] for r in ok) / len(ok),
                         "val_error": sum(r["val_error"] for r in ok) / len(ok)})
    return pd.DataFrame(rows)


def test_front_csv_equals_brute_force(report, runs):
    csv = pd.read_csv(report / "tables" / "pareto_front.csv")
    points = _brute_force_points(runs.epochs)
    brute = brute_force_front(points, x="compression", y="test_error")
    assert len(csv) > 0
    assert set(zip(csv["config"], csv["epoch"])) == set(zip(brute["config"], brute["epoch"]))
    merged = csv.merge(brute, on=["config", "epoch"])
    np.testing.assert_allclose(merged["compression_mean"], merged["compression"], rtol=1e-12)
    np.testing.assert_allclose(merged["test_error_mean"], merged["test_error"], rtol=1e-12)


def test_table_rows_follow_the_rule(report, runs):
    table = pd.read_csv(report / "tables" / "table_lenet300_mnist.csv")
    points = _brute_force_points(runs.epochs)
    measured = table[table["source"] == "this study"].set_index("method")
    assert set(measured.index) == {"none", "magnitude", "l1", "sensitivity-unspec",
                                   "sensitivity-spec", "weight-decay"}
    assert (table["source"] == "reported").sum() == 9   # Table 1 of the paper
    for method, row in measured.iterrows():
        ok = points[(points["method"] == method) & (points["val_error"] <= TARGET)]
        if ok.empty:
            assert not row["met_target"]
            continue
        best = ok.sort_values(["compression", "val_error"], ascending=[False, True]).iloc[0]
        assert row["compression"] == pytest.approx(best["compression"])
        assert row["test_error"] == pytest.approx(best["test_error"])
        assert row["val_error"] <= TARGET and row["target_error"] == TARGET
        # Per-layer % and the error spread, by hand from the trials at that epoch.
        at = runs.epochs[(runs.epochs["config"] == best["config"])
                         & (runs.epochs["epoch"] == best["epoch"]) & ~runs.epochs["failed"]]
        assert row["remaining_pct.fc1"] == pytest.approx(at["remaining_pct.fc1"].mean())
        if len(at) > 1:
            assert row["test_error_std"] == pytest.approx(at["test_error"].std(ddof=1))


def test_the_study_file_sets_the_target(report):
    ops = pd.read_csv(report / "tables" / "operating_points.csv")
    assert (ops["target_error"] == TARGET).all()
    assert (ops.loc[ops["met_target"], "val_error_mean"] <= TARGET).all()
    assert "validation error ≤ 1.95% (the study's target_error)" in (report / "report.md").read_text()


@pytest.fixture
def resolved(monkeypatch):
    """What `study report` resolved: make_report is replaced by a recorder."""
    import analysis.report

    calls = []

    def record(runs, out, *, target_error=None, study_target=None, reference=None):
        calls.append(SimpleNamespace(runs=runs, out=out, target_error=target_error,
                                     study_target=study_target, reference=reference))
        return out

    monkeypatch.setattr(analysis.report, "make_report", record)
    return calls


def test_other_ways_to_name_a_study(study, resolved, monkeypatch, capsys):
    root, uri, ids = study
    assert cli.main(["report", str(root)]) == 0   # the output folder alone is enough
    (call,) = resolved
    assert len(call.runs.trials) == 13 and call.out == root / "report"
    assert call.study_target == 2.0 and call.target_error is None  # the parent's study.yaml
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        load_runs(uri, "nope")
    assert cli.main(["report", "tiny", "--tracking-uri", uri, "--target-error", "3"]) == 0
    assert resolved[-1].out == Path("report-tiny") and resolved[-1].target_error == 3.0
    assert resolved[-1].runs.parent_run_id == ids["parent"] and resolved[-1].study_target == 2.0
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["report", "not-a-file-or-folder"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    assert cli.main(["report", str(root), "--set", "train.target_error=1"]) == 2
    assert "--set overrides fields of a study file" in capsys.readouterr().err
    assert len(resolved) == 2


def test_report_finds_the_runs_of_a_study_file(tmp_path, monkeypatch, resolved):
    import analysis.runs

    loads = []

    def load(uri, experiment):
        loads.append((uri, experiment))
        return SimpleNamespace(study=None, parent_run_id=None)

    monkeypatch.setattr(analysis.runs, "load_runs", load)
    (tmp_path / "mlflow.db").touch()  # a store to find (`study report` never creates one)
    quick = str(CONFIGS / "quickstart.yaml")
    assert cli.main(["report", quick, "--set", f"output_dir={tmp_path}", "--target-error", "2.5"]) == 0
    assert loads[-1] == (f"sqlite:///{tmp_path}/mlflow.db", "quickstart")
    assert (resolved[-1].out, resolved[-1].target_error) == (tmp_path / "report", 2.5)
    assert resolved[-1].study_target == 5.0   # the file's train.target_error
    assert cli.main(["report", quick, "--set", "train.target_error=3.5", "--set",
                     f"output_dir={tmp_path}"]) == 0
    assert (resolved[-1].target_error, resolved[-1].study_target) == (None, 3.5)
    assert cli.main(["report", "some-experiment", "--tracking-uri", "http://x:5000", "--out", str(tmp_path)]) == 0
    assert loads[-1] == ("http://x:5000", "some-experiment")
    assert (resolved[-1].out, resolved[-1].target_error, resolved[-1].study_target) == (tmp_path, None, None)


def test_a_parent_study_yaml_the_schema_rejects_is_an_error(mlflow_uri, tmp_path, resolved, capsys):
    from study.tracking import Tracker

    tracker = Tracker(mlflow_uri)
    name = f"old-{tmp_path.name}"
    parent = tracker.create_run(tracker.experiment_id(name), name, {"study.role": "parent"})
    tracker.log_text(parent, yaml.safe_dump({"name": "old", "target_error": 2.0}), "study.yaml")
    assert cli.main(["report", name, "--tracking-uri", mlflow_uri]) == 2
    err = capsys.readouterr().err
    assert f"study.yaml of parent run {parent}" in err and "target_error" in err
    assert resolved == []


def test_report_on_a_study_that_just_started(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, fresh = mlflow_uri, f"fresh-{tmp_path.name}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(fresh, artifact_location=(tmp_path / "art").as_uri())
    trials = {}
    for start, name in ((1_000, "old"), (2_000, "new")):  # `study run` twice: two parents
        parent = client.create_run(exp, start_time=start, tags={"study.role": "parent"})
        trials[name] = client.create_run(
            exp, start_time=start + 1, tags={"mlflow.parentRunId": parent.info.run_id,
                                             "study.role": "trial", "study.trial_id": "t0",
                                             "status": "running"})
        client.log_param(trials[name].info.run_id, "method", "l1")
        trials[name + "_parent"] = parent
    trial = trials["new"]
    runs = load_runs(uri, fresh)
    assert runs.trials["run_id"].tolist() == [trial.info.run_id]   # the newest study run
    assert runs.parent_run_id == trials["new_parent"].info.run_id and len(runs.parent_runs) == 2
    assert len(load_runs(uri, fresh, parent="all").trials) == 2
    old = load_runs(uri, fresh, parent=trials["old_parent"].info.run_id)
    assert old.trials["run_id"].tolist() == [trials["old"].info.run_id]
    assert runs.trials["running"].tolist() == [True] and runs.epochs.empty
    # An all-pruned network's compression is inf; the SQL store keeps it as the largest float.
    client.log_metric(trial.info.run_id, "compression", math.inf, step=1)
    runs = load_runs(uri, fresh)
    assert runs.epochs["compression"].tolist() == [math.inf]
    out = make_report(runs, tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "No trial has logged a complete epoch yet" in md and "2 parent runs" in md
    assert (out / "report.html").is_file()


def test_a_study_logged_before_remaining_pct_reads_as_percent(mlflow_uri, tmp_path):
    """``remaining.<layer>`` (a fraction) was renamed ``remaining_pct.<layer>`` (%)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    name = f"legacy-{tmp_path.name}"
    exp = client.create_experiment(name, artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp, tags={"study.role": "trial", "status": "finished"}).info.run_id
    client.log_param(run, "method", "l1")
    for step, value in ((1, 0.5), (2, 0.25)):
        client.log_metric(run, "remaining.fc1", value, step=step)
    runs = load_runs(mlflow_uri, name)
    assert runs.epochs["remaining_pct.fc1"].tolist() == [50.0, 25.0]
    assert "remaining.fc1" not in runs.epochs.columns
    assert runs.trials["remaining_pct.fc1"].tolist() == [25.0]
    assert runs.layers["remaining_pct"].tolist() == [50.0, 25.0]


def test_a_report_pulls_in_no_training_side(study, tmp_path):
    """analysis/ must not pull in the training side, even indirectly (a fresh interpreter:
    this one has torch already, from the fake study's validation)."""
    _, uri, _ = study
    code = ("import sys; from analysis.runs import load_runs; from analysis.report import make_report; "
            f"make_report(load_runs({uri!r}, 'tiny'), {str(tmp_path)!r}, log_artifacts=False); "
            "print(sorted(m for m in ('torch', 'ray', 'study.train', 'study.schema') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "report.md").is_file()


def test_analysis_never_imports_the_training_side():
    """Nor anything of ``study`` but the run format: the CLI validates study files."""
    forbidden = ("torch", "study.train", "study.runner", "study.trial", "study.methods", "ray")
    for path in (REPO / "analysis").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "study":
                names = [f"study.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
                if name.split(".")[0] == "study":
                    assert name == "study.runformat", f"{path.name} imports {name}"
