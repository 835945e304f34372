"""The sections of a study report: the prose, tables and figures of ``report.md``/``.html``.

:mod:`analysis.report` computes the frames (points, fronts, operating points, targets) and
calls these writers in order: ``summary``, ``unfinished``, one ``arch_section`` per
architecture × data set (which runs it reads, table, compression at matched error, the
selection view of the Pareto fronts, the reporting view of the selected points, layer profile,
training curves, sensitivity statistics), ``files``. Each writer adds blocks to a
:class:`analysis.document.Document` and saves its figure or table files; the one-line findings
under each figure (selected compression, hardest-pruned layer, loss minima) are small pure
functions.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figstyle, figures, matched_text, tables
from analysis.document import Document
from analysis.findings import (confirm_mismatches, hardest_layers, loss_minima,
                               selected_highlights)
from analysis.runs import SENS_COLUMNS, Runs, sens_column
from analysis.selection import Target, chosen_configs
from study import runformat as rf
from study.runformat import STATUSES


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "x"


@dataclass(frozen=True)
class Slice:
    """One architecture × data set: its target, its layers and its rows of the report's
    frames (seed-aggregated points, candidate points, fronts, operating points, reference;
    the stage each method's runs come from; the matched comparison per seed and per method;
    the selection view's candidate points, validation-error fronts, operating points and
    reference, from the search runs: ``report.selection_frames``)."""

    arch: str
    dataset: str
    target: Target
    layers: list[str]
    agg: pd.DataFrame
    points: pd.DataFrame
    front: pd.DataFrame
    selected: pd.DataFrame
    reference: pd.DataFrame
    stages: pd.DataFrame = field(default_factory=pd.DataFrame)
    matched_seeds: pd.DataFrame = field(default_factory=pd.DataFrame)
    matched: pd.DataFrame = field(default_factory=pd.DataFrame)
    search_points: pd.DataFrame = field(default_factory=pd.DataFrame)
    search_front: pd.DataFrame = field(default_factory=pd.DataFrame)
    search_selected: pd.DataFrame = field(default_factory=pd.DataFrame)
    search_reference: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def of(cls, arch: str, dataset: str, target: Target, layers: list[str],
           **frames: pd.DataFrame) -> Slice:
        def part(df: pd.DataFrame) -> pd.DataFrame:
            if df.empty or "arch" not in df.columns:
                return df
            return df[(df["arch"] == arch) & (df["dataset"] == dataset)]

        return cls(arch, dataset, target, layers, **{k: part(v) for k, v in frames.items()})

    @property
    def name(self) -> str:
        return f"{self.arch} on {self.dataset}"

    @property
    def stem(self) -> str:
        return f"{slug(self.arch)}_{slug(self.dataset)}"


# -- helpers on the aggregated frame ---------------------------------------------------------------
def sensitivity_stats(layers: pd.DataFrame, run_ids: set[str],
                      configs: dict[str, str]) -> pd.DataFrame:
    """Seed means of the logged sensitivity quantiles per (method, epoch, layer), for the
    chosen configuration of each method that logged any."""
    cols = [c for c in SENS_COLUMNS if c in layers.columns]
    empty = pd.DataFrame(columns=["method", "epoch", "layer", *SENS_COLUMNS])
    if layers.empty or not cols:
        return empty
    part = layers[layers["run_id"].isin(run_ids) & layers["config"].isin(set(configs.values()))]
    part = part.dropna(subset=cols, how="all")
    if part.empty:
        return empty
    return part.groupby(["method", "epoch", "layer"], sort=True)[cols].mean().reset_index()


# -- the sections ----------------------------------------------------------------------------------
def summary(doc: Document, runs: Runs, targets: dict[tuple, Target]) -> None:
    counts = runs.trials["status"].value_counts() if len(runs.trials) else pd.Series(dtype=int)
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.items([
        f"Experiment `{runs.experiment}` at `{runs.tracking_uri}`"
        + (f", parent run `{runs.parent_run_id}`" if runs.parent_run_id else ", no parent run"),
        f"{len(runs.trials)} trials: {status}. Generated {when}.",
        *([f"The experiment holds {len(runs.parent_runs)} parent runs (one per `study run`); "
           + ("this report covers the trials of all of them."
              if runs.trials["parent_run_id"].nunique() > 1
              else f"this report covers those of `{runs.parent_run_id}` only.")]
          if len(runs.parent_runs) > 1 else []),
        "Counting: prunable weights are the weight tensors of Linear and Conv layers (biases "
        "excluded); compression = |θ|/|θ≠0|; memory = nonzero × 4 B in kB of 1000 B; errors "
        "are top-1 in %.",
        "Operating-point rule: per method, the highest mean compression (over seeds) whose "
        "mean validation error is at most the target; ties go to the lower validation error, "
        "then the earlier epoch. Test error is never used to choose; the tables report it.",
        "Runs: per method, its confirm runs (a tune-then-confirm study retrains the chosen "
        "configuration on fresh seeds) when it has any, else its search runs; the two are never "
        "averaged together.",
        "Aggregation: a configuration is every param except the seed; its seeds are averaged "
        "epoch by epoch. A point counts only when every non-failed trial of the configuration "
        "logged finite errors at that epoch and all were in the sparsify phase.",
        *(f"Target for {a} on {d}: validation error ≤ {t.value:.2f}% ({t.source})."
          for (a, d), t in sorted(targets.items())),
    ])


def unfinished(doc: Document, runs: Runs) -> None:
    bad = runs.trials[runs.trials["status"] != "finished"]
    superseded = runs.trials[runs.trials["superseded"]]
    if bad.empty and superseded.empty:
        return
    doc.heading(2, "Trials that did not finish")
    doc.para("Failed trials (and older runs of a retried trial) are left out of every "
             "aggregate. Diverged trials count up to the epoch before they diverged, pruned "
             "trials (stopped early by the scheduler) up to where they stopped; running "
             "trials count for the epochs that all seeds have reached.")
    epochs = runs.epochs.groupby("run_id")["epoch"].max() if len(runs.epochs) else pd.Series()
    rows = []
    for _, t in pd.concat([bad, superseded]).drop_duplicates("run_id").iterrows():
        last = epochs.get(t["run_id"], np.nan)
        rows.append([t["trial_id"], t["status"] + (" (superseded)" if t["superseded"] else ""),
                     t.get("method", ""), t["setting"], t.get("seed", ""),
                     "—" if pd.isna(last) else str(int(last))])
    doc.table(pd.DataFrame(rows, columns=["Trial", "Status", "Method", "Setting", "Seed",
                                          "Last epoch"]))


def arch_section(doc: Document, part: Slice, runs: Runs, entries: list, usable_ids: set[str],
                 fig_dir: Path, tab_dir: Path) -> None:
    """Everything about one architecture × data set."""
    doc.heading(2, part.name)
    doc.para(stages_sentence(part.stages))
    _table(doc, part, entries, tab_dir)
    _matched(doc, part, tab_dir)
    _pareto(doc, part, fig_dir)
    _operating_points(doc, part, fig_dir)
    _layer_profile(doc, part, fig_dir)
    configs = _training_curves(doc, part, fig_dir)
    _sensitivity(doc, part, sensitivity_stats(runs.layers, usable_ids, configs), fig_dir, tab_dir)


#: What the report's files hold, by name pattern (``fnmatch``), in the order ``files`` lists them.
FILE_NOTES: tuple[tuple[str, str], ...] = (
    ("tables/points.csv", "every configuration × epoch, seed-aggregated (mean, std, n_seeds, "
     "complete, candidate, on_front)"),
    ("tables/pareto_front.csv", "the non-dominated candidate points per method, architecture "
     "and data set, of the runs the tables read (test error minimized, compression maximized)"),
    ("tables/pareto_selection.csv", "the selection view's fronts: the search runs' "
     "non-dominated points on validation error"),
    ("tables/operating_points.csv", "the point the rule selected per method"),
    ("tables/trials.csv", "every trial with its status, params and final metrics"),
    ("tables/table_*", "the paper-layout tables (LaTeX needs `booktabs`)"),
    ("tables/matched_seeds_*", "the matched point of every seed"),
    ("tables/matched_*", "compression at matched validation error per method, against the "
     "reference"),
    ("tables/sensitivity_*", "the sensitivity statistics at the last logged epoch"),
    ("figures/*", "the figures above, as PNG and PDF"),
    ("*", "other files"),
)


def files(doc: Document, out: Path) -> None:
    """Every file of the report folder, as links, grouped by what it holds."""
    from fnmatch import fnmatch

    doc.heading(2, "Files")
    paths = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and p.parent != out)
    items, seen = [], set()
    for pattern, note in FILE_NOTES:
        group = [p for p in paths if p not in seen and fnmatch(p, pattern)]
        seen.update(group)
        if group:
            items.append(", ".join(f"[{p}]({p})" for p in group) + f": {note}.")
    doc.items(items)


def _table(doc: Document, part: Slice, entries: list, tab_dir: Path) -> None:
    layers = part.layers
    lit = tables.literature_rows(entries, part.arch, part.dataset, layers) if entries else None
    table = tables.build_table(part.selected, layers, lit)
    caption = tables.table_caption(part.arch, part.dataset, part.target.value, part.target.source)
    paths = tables.write_table(table, layers, tab_dir, f"table_{part.stem}", caption=caption)
    doc.heading(3, "Table: methods at their operating points")
    doc.para(caption)
    doc.table(tables.format_table(table, layers))
    doc.para(f"Files: [Markdown](tables/{paths['md'].name}), [CSV](tables/{paths['csv'].name}), "
             f"[LaTeX](tables/{paths['tex'].name}).")


def stages_sentence(stages: pd.DataFrame) -> str:
    """Which runs the tables read, per method: its confirm runs when it has any."""
    if stages.empty:
        return "Runs: none usable yet."
    confirm = stages[stages["stage"].str.contains(rf.STAGE_CONFIRM)]
    if confirm.empty:
        return "Runs: the search runs of every method (no confirm runs)."
    named = "; ".join(f"{m} (seeds {', '.join(str(s) for s in seeds)})" for m, seeds in
                      zip(confirm["method"], confirm["seeds"]))
    rest = sorted(set(stages["method"]) - set(confirm["method"]))
    text = (f"Runs: the confirm runs (the chosen configuration retrained on fresh seeds) for "
            f"{named}")
    return text + (f"; the search runs for {', '.join(rest)}." if rest else ".")


def _matched(doc: Document, part: Slice, tab_dir: Path) -> None:
    doc.heading(3, "Compression at matched validation error")
    if part.matched.empty:
        doc.para("No method has a sparsify-phase trajectory to read yet.")
        return
    ref = next((r for r in part.matched["reference"] if r), None)
    text = matched_text.caption(part.name, part.target.value, ref)
    display = matched_text.display_table(part.matched)
    paths = tables.write_files(part.matched, display, tab_dir, f"matched_{part.stem}", caption=text)
    seeds = tab_dir / f"matched_seeds_{part.stem}.csv"
    part.matched_seeds.to_csv(seeds, index=False)
    doc.para(text + (f" The reference is {ref}." if ref else
                     " The study has neither decay nor weight-decay, so there is no reference "
                     "(`study report --reference NAME` chooses one)."))
    doc.table(display)
    doc.items(matched_text.sentences(part.matched))
    doc.para(" ".join([*matched_text.small_sample_notes(part.matched),
                       f"Files: [Markdown](tables/{paths['md'].name}), "
                       f"[CSV](tables/{paths['csv'].name}), [LaTeX](tables/{paths['tex'].name}), "
                       f"[per seed](tables/{seeds.name})."]))


def _pareto(doc: Document, part: Slice, fig_dir: Path) -> None:
    doc.heading(3, "Pareto fronts: the selection (validation error)")
    fig = figures.pareto_selection_figure(
        part.search_points, part.search_front, part.search_selected, part.search_reference,
        part.target.value, title=f"{part.name}: validation error vs compression (search runs)")
    text = ("The selection view: validation error, the quantity the selection rule reads, "
            "against compression (log axis), from the search runs, where each method's "
            "configuration and epoch were chosen. One panel per method: faint dots are its "
            "configurations at each sparsify-phase epoch (mean over seeds); the line joins its "
            "non-dominated points (no other point of the method has both lower validation "
            "error and higher compression), with ±1 std over seeds on both axes; the star is its "
            "selected point, the highest compression under the dotted target; grey lines are "
            "the other methods' fronts. Test error plays no part here: the next figure reports it.")
    if len(part.search_reference):
        r = part.search_reference.iloc[0]
        text += (f" The dashed line is the unpruned `none` baseline's best validation error, "
                 f"{r['val_error_mean']:.2f}%.")
    confirmed = (part.stages[part.stages["stage"].str.contains(rf.STAGE_CONFIRM)]
                 if len(part.stages) else part.stages)
    if len(confirmed):
        text += (" For " + ", ".join(confirmed["method"]) + " the star marks the configuration "
                 "the confirm runs retrain on fresh seeds; the table and the next figure report "
                 "those runs.")
        odd = confirm_mismatches(part.search_selected, part.selected, part.stages)
        if odd:
            text += (" Note: the confirm runs of " + ", ".join(odd) + " retrain a configuration "
                     "other than the starred one.")
    _figure(doc, fig, fig_dir / f"pareto_{part.stem}", f"Pareto fronts, {part.name}", text,
            "No sparsify-phase point is complete yet.",
            selected_highlights(part.search_selected), " Selected (validation error): ")


def _operating_points(doc: Document, part: Slice, fig_dir: Path) -> None:
    doc.heading(3, "Selected operating points: test error")
    has_confirm = len(part.stages) and part.stages["stage"].str.contains(rf.STAGE_CONFIRM).any()
    stages = dict(zip(part.stages["method"], part.stages["stage"])) if has_confirm else {}
    fig = figures.operating_points_figure(part.selected, part.reference, stages,
                                          title=f"{part.name}: selected operating points")
    text = ("The reporting view: at each method's selected operating point (the table's row), "
            "the test error (left) and the compression (right, log axis), mean ± 1 std over "
            "seeds, from the runs the table reads"
            + (" (confirm or search, as labelled)" if stages else "") + ". "
            "A method marked \"none selected\" has no point whose mean validation error meets "
            "the target.")
    if len(part.reference):
        r = part.reference.iloc[0]
        text += (f" The dashed line and band are the unpruned `none` baseline's test error, "
                 f"{r['test_error_mean']:.2f}% ± {np.nan_to_num(r.get('test_error_std', np.nan)):.2f}.")
    _figure(doc, fig, fig_dir / f"operating_points_{part.stem}",
            f"Selected operating points, {part.name}", text,
            "No method has an operating point that meets the target yet.")


def _layer_profile(doc: Document, part: Slice, fig_dir: Path) -> None:
    doc.heading(3, "Per-layer pruning profile")
    neurons = figures.has_neuron_profile(part.selected, part.layers)
    # a layer's units: the most any aggregated point had (its first epochs are unpruned)
    widths = {layer: float(part.agg[f"{rf.neurons_key(layer)}_mean"].max()) for layer in part.layers
              if f"{rf.neurons_key(layer)}_mean" in part.agg.columns} if neurons else None
    fig = figures.layer_profile_figure(
        part.selected, part.layers, widths=widths,
        title=f"{part.name}: remaining {'weights and neurons' if neurons else 'weights'} per layer")
    text = ("Remaining weights in each layer (%, log scale, ±1 std over seeds) for every method "
            "at its selected operating point, one dot per method, side by side within each "
            "layer, layers in model order from input to output. It shows which layers each method "
            "prunes hardest. Methods listed as \"none selected\" have no operating point that "
            "meets the target.")
    if neurons:
        text += (" Below: the neurons left in each layer (its units with a nonzero incoming weight "
                 "that the next layer still reads; counts, log scale, ±1 std), the dashes the "
                 "layer's units.")
    _figure(doc, fig, fig_dir / f"layer_profile_{part.stem}", f"Layer profile, {part.name}", text,
            "No method has an operating point that meets the target yet.",
            hardest_layers(part.selected, part.layers), " Hardest-pruned layer: ")


def _training_curves(doc: Document, part: Slice, fig_dir: Path) -> dict[str, str]:
    """The curves of one configuration per method; returns those configurations."""
    doc.heading(3, "Training curves")
    configs = chosen_configs(part.agg, part.selected)
    agg = part.agg
    curves = agg[agg["config"].isin(set(configs.values()))] if len(agg) else agg
    fig = figures.training_curves_figure(curves, title=f"{part.name}: test loss per epoch")
    text = ("Test loss (cross-entropy) per epoch, mean and ±1 std over seeds, one panel per "
            "method, for one configuration per method: the one at its operating point, or else "
            "the one with the lowest validation error. The unpruned `none` baseline is dashed in "
            "every panel. Both phases are shown, as in the paper's Fig. 2: the reach phase is "
            "shaded and the dash-dotted line marks the first sparsify epoch (hatched where the "
            "seeds changed phase at different epochs). A loss that climbs after its minimum means "
            "the regularizer does not prevent overfitting.")
    _figure(doc, fig, fig_dir / f"training_curves_{part.stem}", f"Training curves, {part.name}",
            text, "No test loss was logged.", loss_minima(curves), " ")
    return configs


def _sensitivity(doc: Document, part: Slice, stats: pd.DataFrame, fig_dir: Path,
                 tab_dir: Path) -> None:
    doc.heading(3, "Sensitivity statistics")
    fig = figures.sensitivity_figure(stats, part.layers,
                                     title=f"{part.name}: sensitivity S during training")
    text = ("For each sensitivity method (its configuration as in the training curves): per "
            "layer and epoch, statistics over the layer's unpruned weights of each weight's S "
            "averaged over the epoch's steps (not the last step's S, which depends on what its "
            "batch held). Left: the median S, with the 10th and 90th percentiles dashed, on a "
            "log axis that turns linear near 0 (shaded) so that an S of exactly 0 is drawn at 0. "
            "Right: the share of weights with S ≥ 1 (solid) and with S = 0 (dashed: a weight "
            "that no output depended on during the whole epoch). "
            "The update shrinks a weight by λ·w·max(0, 1 − S), so weights with S ≥ 1 (above "
            "the dotted line) are left alone and weights with S = 0 decay at the full rate λ. "
            "These are the statistics the trials logged (`sens.<layer>.*`), averaged over seeds.")
    _figure(doc, fig, fig_dir / f"sensitivity_{part.stem}", f"Sensitivity statistics, {part.name}",
            text, "No trial of this architecture logged sensitivity statistics.")
    if len(stats):
        last = _last_epoch(stats, part.layers)
        last.to_csv(tab_dir / f"sensitivity_{part.stem}.csv", index=False)  # numbers, not text
        doc.para("At the last logged epoch:")
        doc.table(pd.DataFrame({
            "Method": last["method"].map(tables.method_label), "Layer": last["layer"],
            "Epoch": last["epoch"].astype(int),
            **{f"S {q}": last[sens_column(q)].map(lambda v: f"{v:.3g}")
               for q in ("q10", "q50", "q90", "mean")},
            "S ≥ 1 (%)": (100 * last[sens_column("frac_ge1")]).map(lambda v: f"{v:.3g}"),
            **({"S = 0 (%)": (100 * last[sens_column("frac_zero")]).map(lambda v: f"{v:.3g}")}
               if last[sens_column("frac_zero")].notna().any() else {}),
        }))


def _last_epoch(stats: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """The last logged epoch per method and layer, in method order and model layer order."""
    last = stats.sort_values("epoch").groupby(["method", "layer"]).tail(1)
    position = {layer: i for i, layer in enumerate(layers)}
    last = last.assign(_m=last["method"].map(lambda m: tables.method_sort_key(m)[0]),
                       _l=last["layer"].map(position)).sort_values(["_m", "method", "_l"])
    return last.drop(columns=["_m", "_l"])


def _figure(doc: Document, fig, stem: Path, alt: str, text: str, empty: str,
            findings: Sequence[str] = (), lead: str = " ") -> None:
    """The figure's image (PNG) and paragraph, its ``findings`` appended after ``lead``; or
    the ``empty`` sentence when there was nothing to draw."""
    if fig is None:
        doc.para(empty)
        return
    if findings:
        text += lead + "; ".join(findings) + "."
    paths = figstyle.save(fig, stem)
    doc.image(f"figures/{paths[0].name}", alt)
    doc.para(text + f" ([PDF](figures/{paths[1].name}))")
