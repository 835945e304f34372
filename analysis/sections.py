"""The sections of a study report: the prose, tables and figures of ``report.md``/``.html``.

:mod:`analysis.report` computes the frames (points, fronts, operating points, targets) and
calls these writers in order: ``summary``, ``unfinished``, one ``arch_section`` per
architecture × data set (which runs it reads, table, compression at matched error, Pareto
front, layer profile, training curves, sensitivity statistics), ``files``. Each writer adds blocks to a :class:`analysis.document.Document`
and saves its figure or table files; the one-line findings under each figure (best
compression, hardest-pruned layer, loss minima) are small pure functions.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, matched_text, tables
from analysis.document import Document
from analysis.runs import SENS_COLUMNS, Runs, sens_column
from analysis.selection import REFERENCE_METHOD, Target, chosen_configs
from study import runformat as rf
from study.runformat import STATUSES


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "x"


@dataclass(frozen=True)
class Slice:
    """One architecture × data set: its target, its layers and its rows of the report's
    frames (seed-aggregated points, candidate points, fronts, operating points, reference;
    the stage each method's runs come from; the matched comparison per seed and per method)."""

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


# -- one-line findings under the figures -------------------------------------------------------------
def front_highlights(front: pd.DataFrame) -> list[str]:
    """Per method (not the reference): its front's highest compression and that point's error."""
    return [f"{tables.method_label(m)} {g['compression_mean'].max():.1f}× at "
            f"{g.loc[g['compression_mean'].idxmax(), 'test_error_mean']:.2f}%"
            for m, g in front.groupby("method") if m != REFERENCE_METHOD]


def hardest_layers(selected: pd.DataFrame, layers: Sequence[str]) -> list[str]:
    """Per method at an operating point that meets the target: its least remaining layer."""
    out = []
    for _, row in selected[selected["met_target"]
                           & (selected["method"] != REFERENCE_METHOD)].iterrows():
        left = {l: row.get(f"remaining.{l}_mean", np.nan) for l in layers}
        left = {l: v for l, v in left.items() if pd.notna(v)}
        if left:
            low = min(left, key=left.get)
            out.append(f"{tables.method_label(row['method'])}: {low} ({100 * left[low]:.3g}% left)")
    return out


def loss_minima(curves: pd.DataFrame) -> list[str]:
    """Per method: the minimum of its mean test loss, its epoch, and the last value."""
    out = []
    for m, c in curves.groupby("method") if len(curves) else []:
        c = c.sort_values("epoch")
        loss = c["test_loss_mean"].to_numpy(dtype=float) if "test_loss_mean" in c else np.array([])
        if len(loss) and np.isfinite(loss).any():
            i = int(np.nanargmin(loss))
            out.append(f"{tables.method_label(m)}: minimum {loss[i]:.3f} at epoch "
                       f"{int(c['epoch'].iloc[i])}, last {loss[-1]:.3f}")
    return out


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
    _layer_profile(doc, part, fig_dir)
    configs = _training_curves(doc, part, fig_dir)
    _sensitivity(doc, part, sensitivity_stats(runs.layers, usable_ids, configs), fig_dir, tab_dir)


def files(doc: Document) -> None:
    doc.heading(2, "Files")
    doc.items([
        "`tables/points.csv`: every configuration × epoch, seed-aggregated (mean, std, "
        "n_seeds, complete, candidate, on_front).",
        "`tables/pareto_front.csv`: the non-dominated candidate points per method, architecture "
        "and data set (test error minimized, compression maximized).",
        "`tables/operating_points.csv`: the point the rule selected per method.",
        "`tables/trials.csv`: every trial with its status, params and final metrics.",
        "`tables/table_*.{md,csv,tex}`: the paper-layout tables (LaTeX needs `booktabs`).",
        "`tables/matched_*.{md,csv,tex}`: compression at matched validation error per method, "
        "against the reference; `tables/matched_seeds_*.csv`: the matched point of every seed.",
        "`figures/*.{png,pdf}`: the figures above.",
    ])


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
    doc.heading(3, "Pareto front: test error against compression")
    fig = figures.pareto_figure(part.points, part.front, part.selected, part.reference,
                                title=f"{part.name}: error vs compression")
    text = ("Each faint dot is one configuration at one sparsify-phase epoch (mean over its "
            "seeds). Lines join each method's non-dominated points, those that no other point of "
            "the same method beats in both test error and compression, with ±1 std over seeds as "
            "error bars on both axes. Stars mark the operating points of the table. Compression "
            "is on a log axis; lower and further right is better.")
    if len(part.reference):
        r = part.reference.iloc[0]
        text += (f" The dashed line is the unpruned `none` baseline at its lowest validation "
                 f"error: {r['test_error_mean']:.2f}% test error.")
    _figure(doc, fig, fig_dir / f"pareto_{part.stem}", f"Pareto front, {part.name}", text,
            "No sparsify-phase point is complete yet.",
            front_highlights(part.front), " Highest compression on each front: ")


def _layer_profile(doc: Document, part: Slice, fig_dir: Path) -> None:
    doc.heading(3, "Per-layer pruning profile")
    fig = figures.layer_profile_figure(part.selected, part.layers,
                                       title=f"{part.name}: remaining weights per layer")
    text = ("Remaining weights in each layer (%, log scale, ±1 std over seeds) for every method "
            "at its selected operating point, layers in model order from input to output. It "
            "shows which layers each method prunes hardest.")
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
    text = ("Test loss (cross-entropy) per epoch, mean and ±1 std over seeds, for one "
            "configuration per method: the one at its operating point, or else the one with "
            "the lowest validation error. Both phases are shown, as in the paper's Fig. 2. A "
            "loss that climbs after its minimum means the regularizer does not prevent "
            "overfitting.")
    _figure(doc, fig, fig_dir / f"training_curves_{part.stem}", f"Training curves, {part.name}",
            text, "No test loss was logged.", loss_minima(curves), " ")
    return configs


def _sensitivity(doc: Document, part: Slice, stats: pd.DataFrame, fig_dir: Path,
                 tab_dir: Path) -> None:
    doc.heading(3, "Sensitivity statistics")
    fig = figures.sensitivity_figure(stats, part.layers,
                                     title=f"{part.name}: sensitivity S during training")
    text = ("For each sensitivity method (its configuration as in the training curves): per "
            "layer, the median sensitivity S of the weights over training, with the 10th and 90th "
            "percentiles dashed (log scale; a percentile of exactly 0 is drawn at the bottom of "
            "the axis), and the share of weights with S ≥ 1. "
            "The update shrinks a weight by λ·w·max(0, 1 − S), so weights with S ≥ 1 (above "
            "the dotted line) are left alone. These are the statistics the trials logged "
            "(`sens.<layer>.*`), averaged over seeds.")
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
    paths = figures.save(fig, stem)
    doc.image(f"figures/{paths[0].name}", alt)
    doc.para(text + f" ([PDF](figures/{paths[1].name}))")
