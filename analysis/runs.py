"""MLflow → tidy pandas frames, read through the run format of :mod:`study.runformat`.
(One concept over 400 lines: MLflow to frames; the three frames are built from the same runs
in one pass, and splitting them would split the one reading of the run format.)

``load_runs(tracking_uri, experiment)`` returns a ``Runs`` with three frames:

- ``trials``: one row per trial: ids, ``status`` (finished, diverged, pruned, failed,
  running) with boolean flags, ``stage`` (search or confirm; ``search`` when the run has no
  stage tag), ``config`` (all params except the seed), ``setting`` (a short label for
  tables: the method's searched or study-set params and its train overrides, see
  :mod:`analysis.setting`), every param (numbers parsed), the final (latest) metrics;
- ``epochs``: one row per trial × epoch: the trial's ids, status and params, ``epoch``,
  ``phase`` (reach, sparsify, or unknown when the trial logged no ``phase_index``) and every
  metric logged at that step;
- ``layers``: one row per trial × epoch × layer: ``remaining_pct`` (% of the layer's weights
  left), ``neurons`` (its units left, a count; NaN in studies logged before they were counted)
  and, for the sensitivity methods, ``sens_<stat>`` per statistic of
  ``runformat.SENS_STATS`` (``sens_q50``, ``sens_frac_zero``, ...).

Studies logged before ``remaining.<layer>`` (a fraction) became ``remaining_pct.<layer>`` (%)
read as if written under the new name (``runformat.legacy_remaining``).

Failed, diverged, pruned, running and superseded trials are kept and flagged, never dropped;
``Runs.usable_epochs()`` is the one place that leaves failed and superseded trials out;
``prefer_confirm`` is the one place that chooses between a method's search and confirm runs.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.setting import setting_labels
from study import runformat as rf
from study.runformat import CORE_PARAMS, NON_CONFIG_PARAMS, SEED_PARAMS, SENS_STATS, STANDARD_METRICS, STATUSES

#: The trials frame's columns that describe one run, not its configuration.
TRIAL_INFO_COLUMNS: tuple[str, ...] = ("run_id", "trial_id", "parent_run_id", "run_name", "status",
                                       "stage", "mlflow_status", "start_time", "end_time")
#: Statuses that also get a boolean column of their own in the frames.
FLAG_STATUSES: tuple[str, ...] = (rf.FAILED, rf.DIVERGED, rf.PRUNED, rf.RUNNING)
#: The phase of an epoch from a trial that logged no ``phase_index`` at all.
UNKNOWN_PHASE = "unknown"


def sens_column(stat: str) -> str:
    """The layers frame's column of a sensitivity statistic: ``q50`` → ``sens_q50``."""
    return f"sens_{stat}"


#: The layers frame's sensitivity columns, one per statistic of ``study.runformat.SENS_STATS``.
SENS_COLUMNS: tuple[str, ...] = tuple(sens_column(s) for s in SENS_STATS)


@dataclass
class Runs:
    """A study's runs as tidy frames, plus where they came from."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    experiment: str = ""
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    params: list[str] = field(default_factory=list)         # every param column
    config_params: list[str] = field(default_factory=list)  # params that define a configuration
    layer_order: dict[str, list[str]] = field(default_factory=dict)  # arch -> layers
    study: dict[str, Any] | None = None  # the parent's study.yaml, parsed (`study report` validates it)
    parent_runs: list[str] = field(default_factory=list)     # every parent run, newest first

    def layers_of(self, arch: str) -> list[str]:
        """Layer names of ``arch`` in model order."""
        if arch in self.layer_order:
            return list(self.layer_order[arch])
        names = self.layers.loc[self.layers["arch"] == arch, "layer"] if len(self.layers) else []
        return natural_sorted(set(names))

    def usable_epochs(self) -> pd.DataFrame:
        """Epoch rows that may enter aggregates: not from failed or superseded trials.

        Diverged trials stay: the epochs before the divergence are real measurements, and
        their missing later epochs make those points incomplete (see pareto.aggregate_seeds).
        """
        keep = ~self.epochs["failed"] & ~self.epochs["superseded"]
        return self.epochs[keep]


#: The groups within which a study's confirm runs replace its search runs.
STAGE_GROUP: tuple[str, ...] = ("arch", "dataset", "method")


def prefer_confirm(epochs: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows the report aggregates: per architecture, data set and method, those of
    its confirm runs when it has any, else those of its search runs.

    A confirm run retrains the configuration the search chose on fresh seeds, under the same
    ``config`` key as its search runs, so the two stages must not be averaged together: the
    search seeds were the ones that won the selection. Pass usable epochs
    (``Runs.usable_epochs``), so that a method whose confirm runs all failed falls back to its
    search runs (``stages_used`` says which stage each method's rows come from).
    """
    if epochs.empty or "stage" not in epochs.columns:
        return epochs
    keys = [c for c in STAGE_GROUP if c in epochs.columns]
    confirm = epochs["stage"] == rf.STAGE_CONFIRM
    has_confirm = confirm.groupby([epochs[k] for k in keys]).transform("any") if keys else confirm.any()
    return epochs[confirm | ~has_confirm]


def stages_used(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per architecture, data set and method of ``prefer_confirm``'s rows: ``stage`` and its
    ``seeds`` (sorted, as a list) and ``n_runs``."""
    columns = [*STAGE_GROUP, "stage", "n_runs", "seeds"]
    if epochs.empty or "stage" not in epochs.columns:
        return pd.DataFrame(columns=columns)
    keys = [c for c in STAGE_GROUP if c in epochs.columns]
    rows = []
    for key, part in epochs.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        seeds = sorted(set(part[rf.SEED])) if rf.SEED in part.columns else []
        rows.append({**dict(zip(keys, key)), "stage": "+".join(sorted(set(part["stage"]))),
                     "n_runs": part["run_id"].nunique(), "seeds": seeds})
    return pd.DataFrame(rows, columns=columns)


def natural_sorted(names) -> list[str]:
    """``fc2`` before ``fc10``, ``features.2`` before ``features.10``."""
    def key(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
    return sorted(names, key=key)


def list_experiments(tracking_uri: str | None) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return [e.name for e in client.search_experiments() if e.name != "Default"]


# -- loading ----------------------------------------------------------------------------------
def load_runs(tracking_uri: str | None, experiment: str, *, parent: str = "latest",
              bulk: bool = True) -> Runs:
    """Load the trials of ``experiment`` into tidy frames.

    Every ``study run`` opens a new parent run (a resumed one reopens its own), so
    ``parent="latest"`` keeps the trials of the newest parent run; ``"all"`` keeps every
    trial of the experiment; a run id keeps that parent's trials. Runs without a parent
    (an experiment not written by ``study run``) are all kept.
    ``bulk`` fetches each metric's history for all runs in one store call where the store
    allows it (SQL stores); otherwise one call per run and metric.
    """
    rf.quiet_downloads()
    from mlflow.tracking import MlflowClient

    tracking_uri = rf.absolute_tracking_uri(tracking_uri) if tracking_uri else None
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"no experiment {experiment!r} at {tracking_uri}; experiments: {names}")
    runs = _search_all(client, exp.experiment_id)
    parents = sorted((r for r in runs if r.data.tags.get(rf.TAG_ROLE) == rf.ROLE_PARENT),
                     key=lambda r: r.info.start_time or 0, reverse=True)
    parent_ids = [p.info.run_id for p in parents]
    trial_runs = [r for r in runs
                  if r.data.tags.get(rf.TAG_ROLE) == rf.ROLE_TRIAL
                  or (r.data.tags.get(rf.TAG_ROLE) is None and r.info.run_id not in parent_ids)]
    if parent == "all" or not parents:
        chosen = parents[0] if parents else None
    else:
        chosen = parents[0] if parent == "latest" else next(
            (p for p in parents if p.info.run_id == parent), None)
        if chosen is None:
            raise ValueError(f"no parent run {parent!r} in {experiment!r}; choose 'latest', "
                             f"'all' or one of {parent_ids}")
        trial_runs = [r for r in trial_runs
                      if r.data.tags.get(rf.TAG_PARENT_RUN) == chosen.info.run_id]
    parent = chosen

    study = _study_yaml(client, parent.info.run_id) if parent is not None else None
    trials, params, config_params = _trials_frame(trial_runs, study)
    history = _histories(client, trial_runs, bulk=bulk)
    epochs = _epochs_frame(trials, history, params)
    layer_order = _layer_order(client, trials, epochs)
    layers = _layers_frame(epochs, layer_order)
    return Runs(
        trials=trials, epochs=epochs, layers=layers, experiment=experiment,
        tracking_uri=tracking_uri, experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id if parent is not None else None,
        params=params, config_params=config_params, layer_order=layer_order, study=study,
        parent_runs=parent_ids,
    )


def _search_all(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _status(run) -> str:
    """The layout's ``status`` tag, overruled when MLflow says the run itself failed."""
    tag = run.data.tags.get(rf.TAG_STATUS)
    state = rf.MLFLOW_STATES.get(run.info.status, rf.RUNNING)
    if tag in (rf.FAILED, rf.DIVERGED):
        return tag
    if state == rf.FAILED:  # crashed or killed before it could set its tag
        return rf.FAILED
    return tag if tag in STATUSES else state


def _parse_params(raw: pd.DataFrame) -> pd.DataFrame:
    """MLflow params are strings: columns whose values are all numbers become numeric
    (int64 when every value is a plain integer and none is missing); "None" is missing."""
    out = raw.replace({"None": None, "": None})  # how an unset optional param is logged
    for col in out.columns:
        values = out[col].dropna().astype(str)
        if values.empty or pd.to_numeric(values, errors="coerce").isna().any():
            continue
        if out[col].notna().all() and values.str.fullmatch(r"[-+]?\d+").all():
            out[col] = values.astype("int64")
        else:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def _trials_frame(trial_runs: list, study: dict[str, Any] | None = None
                  ) -> tuple[pd.DataFrame, list[str], list[str]]:
    param_names: list[str] = []
    for run in trial_runs:
        for key in run.data.params:
            if key not in param_names:
                param_names.append(key)
    lead = [p for p in (*CORE_PARAMS, rf.SEED) if p in param_names]
    missing_core = [p for p in CORE_PARAMS if p not in param_names]
    param_names = lead + sorted(p for p in param_names if p not in lead)
    config_params = [p for p in param_names if p not in SEED_PARAMS and p not in NON_CONFIG_PARAMS]

    info_rows, raw_params, metric_rows = [], [], []
    for run in trial_runs:
        p = run.data.params
        status = _status(run)
        config = " ".join(f"{k}={p[k]}" for k in sorted(config_params) if k in p)
        info_rows.append({
            "run_id": run.info.run_id,
            "trial_id": run.data.tags.get(rf.TAG_TRIAL_ID, run.info.run_name or run.info.run_id),
            "parent_run_id": run.data.tags.get(rf.TAG_PARENT_RUN),
            "run_name": run.info.run_name,
            "status": status,
            # Studies without a confirm stage may not tag their runs: those are search runs.
            "stage": run.data.tags.get(rf.TAG_STAGE, rf.STAGE_SEARCH),
            "mlflow_status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms") if run.info.start_time else pd.NaT,
            "end_time": pd.to_datetime(run.info.end_time, unit="ms") if run.info.end_time else pd.NaT,
            "config": config,
        })
        raw_params.append({k: p.get(k) for k in param_names})
        metric_rows.append(_current_names(run.data.metrics))

    info = pd.DataFrame(info_rows, columns=[*TRIAL_INFO_COLUMNS, "config"])
    raw = pd.DataFrame(raw_params, columns=param_names)
    methods = raw[rf.METHOD].fillna("unknown") if rf.METHOD in raw else pd.Series(
        ["unknown"] * len(raw))
    info["setting"] = setting_labels(raw, methods, study) if len(raw) else []
    params = _parse_params(raw)
    metrics = pd.DataFrame(metric_rows)
    metrics = metrics[[c for c in metrics.columns if c not in param_names and c not in info.columns]]
    for p in missing_core:  # runs from outside the layout: still groupable
        params[p] = "unknown"
    trials = pd.concat([info, params, metrics.reset_index(drop=True)], axis=1)
    for status in FLAG_STATUSES:
        trials[status] = trials["status"] == status
    # A retried trial logs a second run with the same trial id: the newest one counts.
    newest = trials.sort_values("start_time", kind="stable").groupby("trial_id").tail(1).index
    trials["superseded"] = ~trials.index.isin(newest)
    return trials, [*param_names, *missing_core], config_params


def _current_names(metrics: dict[str, float]) -> dict[str, float]:
    """A run's metrics under today's names: legacy ``remaining.<layer>`` fractions become
    ``remaining_pct.<layer>`` in %."""
    out = {}
    for key, value in metrics.items():
        new = rf.legacy_remaining(key)
        out[new or key] = 100.0 * value if new else value
    return out


def _histories(client, trial_runs: list, *, bulk: bool) -> pd.DataFrame:
    """All metric values: run_id, key, step, value, timestamp (the latest value per step wins)."""
    keys_by_run = {r.info.run_id: list(r.data.metrics) for r in trial_runs}
    all_keys = sorted({k for keys in keys_by_run.values() for k in keys})
    rows: list[tuple] = []
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk_fn = getattr(store, "get_metric_history_bulk", None) if bulk else None
    if bulk_fn is not None:
        try:
            for key in all_keys:
                ids = [rid for rid, keys in keys_by_run.items() if key in keys]
                for start in range(0, len(ids), 500):  # stay under SQL parameter limits
                    for m in bulk_fn(ids[start:start + 500], key, max_results=2**31 - 1):
                        rows.append((m.run_id, key, m.metric.step, m.metric.value, m.metric.timestamp))
        except Exception:  # an older or different store: fall back to the public API
            rows, bulk_fn = [], None
    if bulk_fn is None:
        for rid, keys in keys_by_run.items():
            for key in keys:
                for m in client.get_metric_history(rid, key):
                    rows.append((rid, key, m.step, m.value, m.timestamp))
    hist = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    # SQL stores keep ±inf as ±(largest float): turn them back (e.g. an all-pruned network's
    # compression), so that they are not mistaken for finite numbers.
    big = np.finfo(float).max
    hist["value"] = hist["value"].astype(float).mask(hist["value"] >= big, np.inf).mask(
        hist["value"] <= -big, -np.inf)
    renamed = hist["key"].map(rf.legacy_remaining)
    legacy = renamed.notna()
    if legacy.any():
        hist.loc[legacy, "value"] *= 100.0
        hist.loc[legacy, "key"] = renamed[legacy]
    hist = hist.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    return hist.drop_duplicates(["run_id", "key", "step"], keep="last")


def _epochs_frame(trials: pd.DataFrame, hist: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    id_cols = ["run_id", "trial_id", "status", "stage", *FLAG_STATUSES, "superseded", "config", "setting",
               *params]
    if hist.empty:
        return pd.DataFrame(columns=[*id_cols, rf.EPOCH, rf.PHASE])
    # The layout logs step = epoch, so a metric named "epoch" only repeats the step.
    hist = hist[hist["key"] != rf.EPOCH]
    wide = hist.pivot(index=["run_id", "step"], columns="key", values="value")
    wide.columns.name = None
    wide = wide.reset_index().rename(columns={"step": rf.EPOCH})
    wide[rf.EPOCH] = wide[rf.EPOCH].astype(int)
    index = rf.PHASE_INDEX_METRIC
    if index in wide.columns:
        phase = wide[index].map(lambda v: rf.PHASE_NAMES.get(int(v)) if np.isfinite(v) else None)
        has_phase = wide.groupby("run_id")[index].transform(lambda s: s.notna().any())
        wide.insert(2, rf.PHASE, phase.where(has_phase, UNKNOWN_PHASE))
    else:
        wide.insert(2, rf.PHASE, UNKNOWN_PHASE)
    trials_part = trials[[c for c in id_cols if c in trials.columns]]
    epochs = trials_part.merge(wide, on="run_id", how="inner")
    # Columns: ids and params, epoch, phase, the DESIGN.md metrics in their order, the rest.
    metrics = [c for c in wide.columns if c not in ("run_id", "epoch", "phase")]
    standard = [m for m in STANDARD_METRICS if m in metrics]
    rest = ([m for m in metrics if m.startswith(rf.REMAINING_PREFIX)]
            + [m for m in metrics if m not in standard and not m.startswith(rf.REMAINING_PREFIX)])
    epochs = epochs[[*trials_part.columns, "epoch", "phase", *standard, *rest]]
    sort = ["config", *(p for p in ("seed",) if p in epochs.columns), "run_id", "epoch"]
    return epochs.sort_values(sort, kind="stable").reset_index(drop=True)


def _layer_names(columns) -> list[str]:
    names: list[str] = []
    for col in columns:
        name = rf.layer_of_metric(col)
        if name is not None and name not in names:
            names.append(name)
    return names


def _layer_order(client, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict[str, list[str]]:
    """Per architecture: layer order from a trial's ``layers.csv``, else natural sort."""
    order: dict[str, list[str]] = {}
    if epochs.empty or "arch" not in epochs.columns:
        names = natural_sorted(_layer_names(epochs.columns))
        return {"": names} if names else {}
    for arch, part in epochs.groupby("arch", sort=True):
        present = [n for n in _layer_names(part.dropna(axis=1, how="all").columns)]
        from_csv: list[str] = []
        candidates = trials[trials["arch"] == arch].sort_values(
            "status", key=lambda s: s != "finished", kind="stable")["run_id"]
        for run_id in candidates.head(3):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    path = client.download_artifacts(run_id, rf.LAYERS_CSV, tmp)
                    from_csv = list(pd.read_csv(path)["layer"].astype(str))
                break
            except Exception:
                continue
        ordered = [n for n in from_csv if n in present]
        order[str(arch)] = ordered + natural_sorted(n for n in present if n not in ordered)
    return order


def _layers_frame(epochs: pd.DataFrame, layer_order: dict[str, list[str]]) -> pd.DataFrame:
    id_cols = [c for c in ("run_id", "trial_id", "status", "config", "method", "arch", "dataset",
                           "seed", "epoch", "phase") if c in epochs.columns]
    value_cols = [rf.REMAINING_PCT, rf.NEURONS, *SENS_COLUMNS]
    parts = []
    for layer in _layer_names(epochs.columns):
        source = {rf.REMAINING_PCT: rf.remaining_key(layer), rf.NEURONS: rf.neurons_key(layer),
                  **{sens_column(s): rf.sens_key(layer, s) for s in SENS_STATS}}
        present = {k: v for k, v in source.items() if v in epochs.columns}
        part = epochs[id_cols + list(present.values())].rename(
            columns={v: k for k, v in present.items()})
        part = part.dropna(subset=list(present), how="all")
        if part.empty:
            continue
        part.insert(len(id_cols), "layer", layer)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=[*id_cols, "layer", "layer_index", *value_cols])
    layers = pd.concat(parts, ignore_index=True)
    for col in value_cols:
        if col not in layers.columns:
            layers[col] = np.nan
    arch = layers["arch"].astype(str) if "arch" in layers.columns else pd.Series("", index=layers.index)
    index = {(a, name): i for a, names in layer_order.items() for i, name in enumerate(names)}
    layers.insert(len(id_cols) + 1, "layer_index",
                  [index.get((a, n), -1) for a, n in zip(arch, layers["layer"])])
    sort = [c for c in ("config", "seed", "run_id", "epoch", "layer_index") if c in layers.columns]
    return layers[[*id_cols, "layer", "layer_index", *value_cols]].sort_values(
        sort, kind="stable").reset_index(drop=True)


def _study_yaml(client, parent_run_id: str) -> dict[str, Any] | None:
    """The parent run's ``study.yaml`` artifact, parsed; None when absent or unreadable."""
    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_run_id, rf.STUDY_YAML, tmp)
            data = yaml.safe_load(Path(path).read_text())
    except Exception:
        return None
    return data if isinstance(data, dict) else None
