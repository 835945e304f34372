"""A small synthetic study, written to MLflow the way `study run` writes one, for the analysis
tests. No training: the numbers are made up.

It writes through the writer's own code, so that it cannot drift from the run format: the
names of :mod:`study.runformat` (tags, statuses, params, metrics, artifacts), the retrying
:class:`study.tracking.Tracker`, the validated study (``study.schema.study_from_dict``) as
the parent's ``study.yaml``, and each method's params as ``study.methods.make_params`` fills
them in. The layout: one parent run (still running), one child run per trial and seed, one
metric batch per epoch with step = epoch, ``layers.csv`` and ``history.csv`` for the trials
that closed normally (finished, diverged).

The numbers are self-consistent: per-layer counts add up to ``nonzero``, compression =
total / nonzero, sparsity = 1 − 1/compression, memory = nonzero × 4 B. It has a failed trial,
a diverged one, one stopped early by the scheduler (``pruned``) and, optionally, one still
running; weight decay's second seed has not started yet. Its runs carry no ``study.stage``
tag, as a study without a confirm stage may write them.

``make_fake_study(..., trials=MATCHED_TRIALS, confirm=MATCHED_CONFIRM)`` writes a
tune-then-confirm study instead: search runs tagged ``study.stage=search`` for ``none``,
two ``sensitivity-spec`` configurations, ``decay``, ``weight-decay`` and an ``l0`` that never
reaches 2 % validation error, then confirm runs (``study.stage=confirm``) of one
``sensitivity-spec`` and one ``decay`` configuration on fresh seeds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from study import runformat as rf
from study.schema import study_from_dict
from study.methods import make_params
from study.tracking import Tracker, table_csv

# LeNet-300-100: 266,200 prunable weights (DESIGN.md).
LENET300 = {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
LENET300_BIAS = {"fc1": 300, "fc2": 100, "fc3": 10}
SEEDS = (0, 1)

# (method, the params the study sets, seeds, special): special maps a seed to
# (status, last epoch) for a trial that did not finish.
TRIALS: tuple[tuple[str, dict, tuple[int, ...], dict], ...] = (
    ("none", {}, SEEDS, {}),
    ("magnitude", {"quality": 0.5}, SEEDS, {1: (rf.FAILED, 3)}),
    ("l1", {"lam": 1e-4, "threshold": 1e-3}, SEEDS, {1: (rf.DIVERGED, 5)}),
    ("sensitivity-unspec", {"lam": 1e-5, "threshold": 1e-3}, SEEDS, {}),
    ("sensitivity-unspec", {"lam": 1e-4, "threshold": 1e-3}, SEEDS, {}),
    ("sensitivity-spec", {"lam": 1e-5, "threshold": 1e-3}, SEEDS, {}),
    ("weight-decay", {"lam": 5e-4}, (0,), {0: (rf.PRUNED, 4)}),  # stopped early by ASHA
)
# A tune-then-confirm study: the search, then each method's chosen configuration retrained on
# fresh seeds, (method, params, seeds).
MATCHED_TRIALS: tuple[tuple[str, dict, tuple[int, ...], dict], ...] = (
    ("none", {}, SEEDS, {}),
    ("sensitivity-spec", {"lam": 1e-5, "threshold": 1e-3}, SEEDS, {}),
    ("sensitivity-spec", {"lam": 1e-4, "threshold": 1e-3}, SEEDS, {}),
    ("decay", {"lam": 1e-5, "threshold": 1e-3}, SEEDS, {}),
    ("weight-decay", {"lam": 5e-4}, SEEDS, {}),
    ("l0", {"lam": 1e-4}, SEEDS, {}),
)
CONFIRM_SEEDS = (10, 11, 12)
MATCHED_CONFIRM: tuple[tuple[str, dict, tuple[int, ...]], ...] = (
    ("sensitivity-spec", {"lam": 1e-5, "threshold": 1e-3}, CONFIRM_SEEDS),
    ("decay", {"lam": 1e-5, "threshold": 1e-3}, CONFIRM_SEEDS),
)
# How fast each method prunes (per sparsify epoch) and how much error that costs.
_RATE = {"none": 0.0, "magnitude": 0.5, "l1": 0.35, "sensitivity-unspec": 0.6,
         "sensitivity-spec": 0.45, "weight-decay": 0.05, "decay": 0.45, "l0": 0.5}
_COST = {"none": 0.0, "magnitude": 0.25, "l1": 0.3, "sensitivity-unspec": 0.12,
         "sensitivity-spec": 0.15, "weight-decay": 0.1, "decay": 0.15, "l0": 3.0}
_LAYER_SPEED = {"fc1": 1.6, "fc2": 1.0, "fc3": 0.3}  # fc1 is pruned hardest, as in the paper


def trial_id(method: str, params: dict, seed: int, stage: str = rf.STAGE_SEARCH) -> str:
    """``sensitivity-unspec-lam1e-05-threshold0.001-s0``; confirm runs start ``confirm-``."""
    return "-".join([*(["confirm"] if stage == rf.STAGE_CONFIRM else []), method,
                     *(f"{k}{v}" for k, v in params.items()), f"s{seed}"])


def last_epochs(epochs: int = 6, running: bool = True, trials=TRIALS) -> dict[str, int]:
    """The last epoch each search trial logs: ``epochs``, or where a special trial stopped;
    the running trial (the last sensitivity-spec seed) has logged 4."""
    out = {}
    for method, params, seeds, special in trials:
        for seed in seeds:
            last = special.get(seed, (rf.FINISHED, epochs))[1]
            if running and method == "sensitivity-spec" and seed == seeds[-1]:
                last = 4
            out[trial_id(method, params, seed)] = last
    return out


def study_dict(name: str, epochs: int, reach_epochs: int, arch: str, dataset: str,
               target_error: float | None, trials=TRIALS) -> dict[str, Any]:
    """The study the trials belong to: a grid over the params of ``trials``."""
    values: dict[str, dict[str, list]] = defaultdict(dict)
    for method, params, _, _ in trials:
        for key, value in params.items():
            values[method].setdefault(key, [])
            if value not in values[method][key]:
                values[method][key].append(value)
    methods = {m: {k: v[0] if len(v) == 1 else v for k, v in values.get(m, {}).items()}
               for m, _, _, _ in trials}
    train = {"epochs": epochs, "reach_epochs": reach_epochs, "lr": 0.1}
    if target_error is not None:
        train["target_error"] = target_error
    return {"name": name, "datasets": [dataset], "archs": [arch], "seeds": list(SEEDS),
            "methods": methods, "train": train, "scheduler": {"kind": "asha"}}


def _record(method: str, params: dict, seed: int, epoch: int, reach: int) -> dict[str, Any]:
    """One epoch record, as the trainer returns it (``phase`` as a name)."""
    lam_boost = 1.0 + 0.5 * math.log10(max(params.get("lam", 1e-5), 1e-5) / 1e-5)
    k = max(0, epoch - reach) * _RATE[method] * lam_boost
    remaining = {layer: math.exp(-k * speed) for layer, speed in _LAYER_SPEED.items()}
    counts = {layer: max(1, round(LENET300[layer] * r)) for layer, r in remaining.items()}
    nonzero = sum(counts.values())
    total = sum(LENET300.values())
    compression = total / nonzero
    jitter = 0.04 * (seed % 3)  # confirm seeds 10, 11, 12 vary like 0, 1, 2
    base = 2.2 - 0.6 * (1 - math.exp(-epoch / 2))  # training converges
    val_error = base + _COST[method] * math.log(compression) + jitter
    test_error = val_error + 0.05 - 0.02 * (seed % 3)
    rec: dict[str, Any] = {
        rf.EPOCH: epoch,
        rf.PHASE: rf.REACH if epoch <= reach else rf.SPARSIFY,
        rf.TRAIN_LOSS: 0.3 * math.exp(-epoch / 3) + 0.02,
        rf.VAL_LOSS: 0.08 + 0.01 * _COST[method] * epoch + 0.002 * seed,
        rf.VAL_ERROR: val_error,
        rf.TEST_LOSS: 0.09 + (0.01 * epoch if method == "none" else 0.002 * epoch) + 0.002 * seed,
        rf.TEST_ERROR: test_error,
        rf.COMPRESSION: compression,
        rf.SPARSITY: 1 - 1 / compression,
        rf.NONZERO: nonzero,
        rf.MEMORY_KB: nonzero * 4 / 1000,
        rf.EPOCH_SECONDS: 1.5,
    }
    rec.update({rf.remaining_key(layer): 100 * counts[layer] / LENET300[layer] for layer in LENET300})
    if method.startswith("sensitivity"):
        for i, layer in enumerate(LENET300):
            scale = 10.0 ** (-3 + i) * (1 + 0.1 * epoch)
            rec.update({
                rf.sens_key(layer, "q10"): scale * 0.01, rf.sens_key(layer, "q50"): scale * 0.3,
                rf.sens_key(layer, "q90"): scale * 5, rf.sens_key(layer, "mean"): scale,
                rf.sens_key(layer, "frac_ge1"): min(1.0, 0.02 * (i + 1) ** 2 + 0.001 * epoch),
            })
    return rec


def _layers(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The final per-layer table (``layers.csv``) of a trial whose last record is ``record``."""
    rows = []
    for layer, total in LENET300.items():
        nonzero = round(record[rf.remaining_key(layer)] / 100 * total)
        rows.append({"layer": layer, "total": total, "nonzero": nonzero,
                     "bias_total": LENET300_BIAS[layer], "bias_nonzero": LENET300_BIAS[layer],
                     rf.REMAINING_PCT: 100 * nonzero / total})
    return rows


def make_fake_study(
    tracking_uri: str,
    experiment: str = "tiny",
    *,
    artifact_location: str | None = None,
    epochs: int = 6,
    reach_epochs: int = 2,
    arch: str = "lenet300",
    dataset: str = "mnist",
    target_error: float | None = 2.0,
    running: bool = True,
    trials=TRIALS,
    confirm=(),
) -> dict[str, str]:
    """Write the study; return ``{"parent": run_id, trial_id: run_id, ...}``.

    ``running``: leave the last sensitivity-spec seed unfinished (4 epochs, status running).
    ``trials``: the search trials; ``confirm``: (method, params, seeds) retrained in a
    confirm stage. With a confirm stage every run carries its ``study.stage`` tag.
    """
    config = study_from_dict(study_dict(experiment, epochs, reach_epochs, arch, dataset,
                                        target_error, trials), "the fake study")
    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment_id(experiment, artifact_location)
    pid = tracker.create_run(exp_id, experiment, {
        rf.TAG_ROLE: rf.ROLE_PARENT, rf.TAG_STUDY_NAME: config.name,
        rf.TAG_CONFIG_HASH: config.config_hash(), rf.TAG_SEARCH: config.search.kind,
        rf.TAG_STATUS: rf.RUNNING})
    tracker.log_params(pid, {f"{rf.STUDY_PARAM_PREFIX}config_hash": config.config_hash()})
    tracker.log_text(pid, config.to_yaml(), rf.STUDY_YAML)

    ids = {"parent": pid}
    lasts = last_epochs(epochs, running, trials)
    train = {k: v for k, v in config.train.model_dump().items() if k != "device"}
    stages = [(rf.STAGE_SEARCH, m, p, seeds, special) for m, p, seeds, special in trials]
    stages += [(rf.STAGE_CONFIRM, m, p, seeds, {}) for m, p, seeds in confirm]
    for stage, method, params, seeds, special in stages:
        for seed in seeds:
            key = trial_id(method, params, seed, stage)
            tags = {rf.TAG_PARENT_RUN: pid, rf.TAG_ROLE: rf.ROLE_TRIAL, rf.TAG_TRIAL_ID: key,
                    rf.TAG_STUDY_NAME: config.name, rf.TAG_CONFIG_HASH: config.config_hash(),
                    rf.TAG_STATUS: rf.RUNNING, rf.TAG_ATTEMPTS: "1"}
            if confirm:
                tags[rf.TAG_STAGE] = stage
            rid = tracker.create_run(exp_id, key, tags)
            ids[key] = rid
            tracker.log_params(rid, rf.trial_params(
                method=method, arch=arch, dataset=dataset, seed=seed,
                method_params=vars(make_params(method, params)),
                train={**train, "seed": seed, "device": "cpu"},
                data={"val_fraction": config.data.val_fraction}, model={}))
            status = special.get(seed, (rf.FINISHED, epochs))[0]
            last = lasts.get(key, epochs)
            if last < epochs and status == rf.FINISHED:
                status = rf.RUNNING
            history = []
            for epoch in range(1, last + 1):
                rec = _record(method, params, seed, epoch, reach_epochs)
                if status == rf.DIVERGED and epoch == last:
                    rec.update({rf.TRAIN_LOSS: math.nan, rf.VAL_LOSS: math.nan,
                                rf.TEST_LOSS: math.nan, rf.VAL_ERROR: 90.2, rf.TEST_ERROR: 90.1})
                tracker.log_metrics(rid, rf.numeric_metrics(rec), step=epoch)
                history.append(rec)
            if status in (rf.FINISHED, rf.DIVERGED):  # a trial that closed itself
                tracker.log_text(rid, table_csv(_layers(history[-1]), rf.LAYER_COLUMNS),
                                 rf.LAYERS_CSV)
                tracker.log_text(rid, table_csv(history), rf.HISTORY_CSV)
                tracker.finish(rid, status)
            elif status == rf.PRUNED:
                tracker.finish(rid, status)
            elif status == rf.FAILED:
                tracker.finish(rid, status, "FAILED", error="RuntimeError: out of memory")
    return ids
