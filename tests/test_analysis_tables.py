"""Operating-point selection and the paper-layout tables (analysis/selection.py,
analysis/tables.py): hand-computed cases, the shipped literature file, LaTeX that compiles."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis import tables
from analysis.selection import (DEFAULT_TOLERANCE, reference_points, resolve_targets,
                                select_operating_points)
from references import assert_latex_compiles

LENET300_TOTAL = 266_200
LENET5_TOTAL = 430_500


def _points(rows):
    cols = ["arch", "dataset", "method", "config", "epoch", "compression_mean",
            "val_error_mean", "test_error_mean", "candidate", "complete"]
    return pd.DataFrame(rows, columns=cols)


def test_selection_rule_by_hand():
    pts = _points([
        ("a", "d", "m", "c1", 1, 10.0, 1.90, 9.0, True, True),
        ("a", "d", "m", "c1", 2, 15.0, 2.00, 9.0, True, True),   # target is inclusive
        ("a", "d", "m", "c1", 3, 20.0, 2.10, 0.1, True, True),   # over target: test error ignored
        ("a", "d", "m", "c2", 4, 40.0, 1.00, 1.0, False, False),  # not a candidate
        ("a", "d", "n", "c3", 1, 5.0, 1.50, 1.6, True, True),
        ("a", "d", "n", "c3", 2, 5.0, 1.40, 1.7, True, True),    # tie in compression: lower val
        ("a", "d", "n", "c4", 1, 5.0, 1.40, 1.0, True, True),    # full tie: earlier epoch wins...
        ("a", "d", "o", "c5", 1, 50.0, 3.0, 3.0, True, True),    # never meets the target
    ])
    sel = select_operating_points(pts, 2.0).set_index("method")
    assert sel.loc["m", "epoch"] == 2 and sel.loc["m", "compression_mean"] == 15.0
    assert sel.loc["n", "config"] == "c4" and sel.loc["n", "epoch"] == 1
    assert not sel.loc["o", "met_target"] and math.isnan(float(sel.loc["o", "compression_mean"]))
    assert sel.loc["m", "met_target"] and sel.loc["m", "target_error"] == 2.0
    # A stricter target moves the choice; a mapping gives one target per architecture.
    sel = select_operating_points(pts, {("a", "d"): 1.95}).set_index("method")
    assert sel.loc["m", "epoch"] == 1
    with pytest.raises(ValueError, match="no target error"):
        select_operating_points(pts, {("other", "d"): 1.0})


def test_selection_never_reads_test_error():
    pts = _points([("a", "d", "m", "c1", 1, 10.0, 1.0, 5.0, True, True),
                   ("a", "d", "m", "c1", 2, 10.0, 1.1, 0.1, True, True)])
    first = select_operating_points(pts, 2.0)
    pts["test_error_mean"] = [0.1, 5.0]
    again = select_operating_points(pts, 2.0)
    assert first["epoch"].tolist() == again["epoch"].tolist() == [1]


def test_resolve_targets_precedence():
    pts = _points([("a", "d", "none", "c0", 1, 1.0, 1.2, 1.3, True, True),
                   ("a", "d", "none", "c0", 2, 1.0, 1.1, 1.3, True, True),
                   ("a", "d", "m", "c1", 1, 9.0, 0.9, 1.3, True, True),
                   ("b", "d", "m", "c2", 1, 9.0, 3.0, 3.3, True, True)])
    assert resolve_targets(pts, explicit=1.5, study=9.0)[("a", "d")].value == 1.5
    assert resolve_targets(pts, study=9.0)[("b", "d")].value == 9.0
    fallback = resolve_targets(pts)
    # Best unpruned validation error + tolerance; without 'none', any method's best.
    assert fallback[("a", "d")].value == pytest.approx(1.1 + DEFAULT_TOLERANCE)
    assert fallback[("b", "d")].value == pytest.approx(3.0 + DEFAULT_TOLERANCE)
    # The trials' train.target_error param is no source: the caller says what the study's is.
    pts["train.target_error"] = [1.7, 1.7, 1.7, 2.5]
    assert resolve_targets(pts) == fallback
    ref = reference_points(pts)
    assert ref["epoch"].tolist() == [2]


def _selected_row(**over):
    row = {"arch": "lenet300", "dataset": "mnist", "method": "sensitivity-unspec",
           "config": "c", "setting": "lam=1e-05, threshold=0.001", "epoch": 12, "n_seeds": 3,
           "remaining_pct.fc1_mean": 2.25, "remaining_pct.fc2_mean": 11.93,
           "remaining_pct.fc3_mean": 69.3, "nonzero_mean": 9550.0, "memory_kb_mean": 38.2,
           "compression_mean": 27.874, "test_error_mean": 1.6512, "test_error_std": 0.0441,
           "val_error_mean": 1.58, "met_target": True, "target_error": 1.6}
    row.update(over)
    return row


def test_table_values_by_hand():
    layers = ["fc1", "fc2", "fc3"]
    sel = pd.DataFrame([_selected_row(),
                        _selected_row(method="none", met_target=False)])
    table = tables.build_table(sel, layers)
    assert table["method"].tolist() == ["none", "sensitivity-unspec"]  # method order
    row = table.iloc[1]
    assert row["remaining_pct.fc1"] == pytest.approx(2.25)
    assert row["remaining_pct.fc3"] == pytest.approx(69.3)
    assert row["compression"] == pytest.approx(27.874)
    shown = tables.format_table(table, layers)
    assert shown.iloc[1].tolist() == [
        "Sensitivity, unspecific", "this study", "2.25", "11.9", "69.3", "9.55k", "38.20",
        "27.9", "1.65 ± 0.04", "lam=1e-05, threshold=0.001, epoch 12, n=3"]
    unmet = shown.iloc[0]
    assert unmet["fc1 (%)"] == "—" and unmet["Top-1 test error (%)"] == "—"
    assert "no operating point" in unmet["Setting"] and "1.60%" in unmet["Setting"]


@pytest.mark.parametrize("value,text", [(21760, "21.76k"), (10_350_000, "10.35M"), (950, "950"),
                                        (math.nan, "—")])
def test_fmt_count(value, text):
    assert tables.fmt_count(value) == text


def test_literature_has_tables_1_and_2_and_is_consistent():
    entries = tables.load_literature()
    by = {}
    for e in entries:
        by.setdefault((e["arch"], e["dataset"]), []).append(e)
    assert len(by[("lenet300", "mnist")]) == 9      # Table 1
    assert len(by[("lenet5", "mnist")]) == 7        # Table 2
    assert len(by[("vgg16", "imagenet")]) == 3      # Table 3
    han = next(e for e in by[("lenet300", "mnist")] if e["label"].startswith("Han"))
    assert han["remaining"] == {"fc1": 8, "fc2": 9, "fc3": 26} and han["compression"] == 12.2
    totals = {"lenet300": LENET300_TOTAL, "lenet5": LENET5_TOTAL}
    for e in entries:
        if e.get("note"):
            continue  # the printed numbers disagree with each other; the note says how
        assert e["memory_kb"] == pytest.approx(e["nonzero"] * 4 / 1000, rel=0.005), e["label"]
        if e["arch"] in totals:
            assert e["compression"] == pytest.approx(totals[e["arch"]] / e["nonzero"], rel=0.06), e
    rows = tables.literature_rows(entries, "lenet5", "mnist", ["conv1", "conv2", "fc1", "fc2"])
    assert (rows["source"] == tables.REPORTED).all() and len(rows) == 7
    assert rows.iloc[0]["remaining_pct.conv1"] == 66


def test_literature_rows_show_printed_digits_and_na():
    layers = ["fc1", "fc2", "fc3"]
    lit = tables.literature_rows(tables.load_literature(), "lenet300", "mnist", layers)
    shown = tables.format_table(tables.build_table(pd.DataFrame([_selected_row()]), layers, lit),
                                layers)
    sunspec = shown[shown["Method"] == "Proposed (S_unspec)"].iloc[0]
    assert sunspec["fc2 (%)"] == "11.93" and sunspec["Compression (×)"] == "27.87"
    sws = shown[shown["Method"] == "SWS [10]"].iloc[0]
    assert sws["fc1 (%)"] == "N/A" and sws["Source"] == "reported"


def test_bad_literature_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        tables.load_literature(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries:\n  - {arch: lenet300}\n")
    with pytest.raises(ValueError, match="lacks 'dataset'"):
        tables.load_literature(bad)


def _latex_table():
    layers = ["fc1", "fc2", "fc3"]
    lit = tables.literature_rows(tables.load_literature(), "lenet300", "mnist", layers)
    sel = pd.DataFrame([_selected_row(), _selected_row(method="odd_name&50%#")])
    table = tables.build_table(sel, layers, lit)
    caption = tables.table_caption("lenet300", "mnist", 1.6, "the study's target_error")
    return tables.to_latex(tables.format_table(table, layers), layers, caption=caption,
                           label="tab:lenet300_mnist"), len(table)


def _check_latex_structure(tex: str, n_cols: int) -> None:
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"unbalanced \\end{{{env}}}"
    assert not stack, f"unclosed environments {stack}"
    depth = 0
    for i, ch in enumerate(tex):
        if ch in "{}" and tex[i - 1] != "\\":
            depth += 1 if ch == "{" else -1
            assert depth >= 0
    assert depth == 0, "unbalanced braces"
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    for line in body.splitlines():
        if line.endswith(r"\\"):
            assert len(re.findall(r"(?<!\\)&", line)) == n_cols - 1, line
    # Every special character in the text is escaped.
    assert not re.search(r"(?<!\\)[%_#]", body)


def test_latex_is_well_formed_and_compiles(tmp_path):
    tex, n_rows = _latex_table()
    assert tex.count(r"\\") >= n_rows + 2 and r"\toprule" in tex and r"\bottomrule" in tex
    _check_latex_structure(tex, n_cols=9)
    assert_latex_compiles(tex, tmp_path)


def test_markdown_and_csv(tmp_path):
    layers = ["fc1", "fc2", "fc3"]
    table = tables.build_table(pd.DataFrame([_selected_row()]), layers)
    paths = tables.write_table(table, layers, tmp_path, "t", caption="Caption.")
    md = paths["md"].read_text().splitlines()
    assert md[0] == "Caption."
    header, rule, row = md[2], md[3], md[4]
    assert header.count("|") == rule.count("|") == row.count("|") == 11
    assert rule.startswith("|:---|:---|---:")  # text left, numbers right
    back = pd.read_csv(paths["csv"])
    assert back.loc[0, "remaining_pct.fc1"] == pytest.approx(2.25)
    assert back.loc[0, "test_error_std"] == pytest.approx(0.0441)
    assert np.isfinite(back.loc[0, "nonzero"])


def _with_neurons(**over):
    return _selected_row(**{"inputs_mean": 64.0, "neurons.fc1_mean": 103.4, "neurons.fc2_mean": 61.0,
                            "neurons.fc3_mean": 10.0, **over})


def test_the_neurons_column_when_the_runs_counted_them(tmp_path):
    """Runs that logged ``inputs`` and ``neurons.<layer>`` get a Neurons column after the
    compression: the inputs, then each layer's units (means over seeds, rounded); a row
    without counts shows a dash; published architectures (literature ``architecture``) show
    as printed; tables of older studies keep their columns (test_table_values_by_hand)."""
    layers = ["fc1", "fc2", "fc3"]
    sel = pd.DataFrame([_with_neurons(), _selected_row(method="l1")])
    lit = pd.DataFrame([{**{c: np.nan for c in tables.table_columns(layers)}, "method": "", "label": "L0 [x]",
                         "source": tables.REPORTED, "setting": "", "note": "", "met_target": True,
                         "architecture": "219-214-100"}])
    table = tables.build_table(sel, layers, lit)
    assert table.loc[0, "architecture"] == "64-103-61-10" and table.loc[0, "neurons.fc1"] == pytest.approx(103.4)
    assert table.loc[1, "architecture"] == ""
    shown = tables.format_table(table, layers)
    assert list(shown.columns).index("Neurons") == list(shown.columns).index("Compression (×)") + 1
    assert shown["Neurons"].tolist() == ["64-103-61-10", "—", "219-214-100"]
    tex = tables.to_latex(shown, layers)
    _check_latex_structure(tex, n_cols=10)
    assert "Neurons" in tex and "219-214-100" in tex
    back = pd.read_csv(tables.write_table(table, layers, tmp_path, "t")["csv"])
    assert back.loc[0, "inputs"] == 64 and back.loc[0, "architecture"] == "64-103-61-10"
    assert "Neurons" not in tables.format_table(tables.build_table(pd.DataFrame([_selected_row()]), layers),
                                                layers).columns
