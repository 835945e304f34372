"""A small synthetic study written to MLflow exactly as the layout says (API.md, "MLflow
layout"): one parent run and one child run per trial, per-epoch metrics with step = epoch,
``status`` tags, ``layers.csv`` and ``history.csv`` artifacts, sensitivity statistics.

The numbers are made up but self-consistent (per-layer counts add up to ``nonzero``,
compression = total / nonzero, memory = nonzero × 4 B). It includes a failed trial, a diverged
trial, a trial stopped early by the scheduler (``pruned``) and, optionally, a trial still
running, so tests and demos see every case. No training.
"""
from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from pathlib import Path

import yaml

# LeNet-300-100: 266,200 prunable weights (DESIGN.md).
LENET300 = {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
LENET300_BIAS = {"fc1": 300, "fc2": 100, "fc3": 10}

# (method, params, seeds, special) — special: {seed: ("failed", last_epoch) | ("diverged", epoch)}
TRIALS: tuple[tuple[str, dict, tuple[int, ...], dict], ...] = (
    ("none", {}, (0, 1), {}),
    ("magnitude", {"threshold": 0.05}, (0, 1), {1: ("failed", 3)}),
    ("l1", {"lam": 1e-4, "threshold": 1e-3}, (0, 1), {1: ("diverged", 5)}),
    ("sensitivity-unspec", {"lam": 1e-5, "threshold": 1e-3}, (0, 1), {}),
    ("sensitivity-unspec", {"lam": 1e-4, "threshold": 1e-3}, (0, 1), {}),
    ("sensitivity-spec", {"lam": 1e-5, "threshold": 1e-3}, (0, 1), {}),
    ("weight-decay", {"lam": 5e-4}, (0,), {0: ("pruned", 4)}),  # stopped early by ASHA
)
# How fast each method prunes (per sparsify epoch) and how much error that costs.
_RATE = {"none": 0.0, "magnitude": 0.5, "l1": 0.35, "sensitivity-unspec": 0.6,
         "sensitivity-spec": 0.45, "weight-decay": 0.05}
_COST = {"none": 0.0, "magnitude": 0.25, "l1": 0.3, "sensitivity-unspec": 0.12,
         "sensitivity-spec": 0.15, "weight-decay": 0.1}
_LAYER_SPEED = {"fc1": 1.6, "fc2": 1.0, "fc3": 0.3}  # fc1 is pruned hardest, as in the paper


def _record(method: str, params: dict, seed: int, epoch: int, reach: int) -> dict[str, float]:
    """One epoch record with the DESIGN.md keys."""
    lam_boost = 1.0 + 0.5 * math.log10(max(params.get("lam", 1e-5), 1e-5) / 1e-5)
    k = max(0, epoch - reach) * _RATE[method] * lam_boost
    remaining = {layer: math.exp(-k * speed) for layer, speed in _LAYER_SPEED.items()}
    counts = {layer: max(1, round(LENET300[layer] * r)) for layer, r in remaining.items()}
    nonzero = sum(counts.values())
    total = sum(LENET300.values())
    compression = total / nonzero
    jitter = 0.04 * seed
    base = 2.2 - 0.6 * (1 - math.exp(-epoch / 2))  # training converges
    val_error = base + _COST[method] * math.log(compression) + jitter
    test_error = val_error + 0.05 - 0.02 * seed
    rec: dict[str, float] = {
        "epoch": float(epoch),
        "phase_index": 0.0 if epoch <= reach else 1.0,
        "train_loss": 0.3 * math.exp(-epoch / 3) + 0.02,
        "val_loss": 0.08 + 0.01 * _COST[method] * epoch + 0.002 * seed,
        "val_error": val_error,
        "test_loss": 0.09 + (0.01 * epoch if method == "none" else 0.002 * epoch) + 0.002 * seed,
        "test_error": test_error,
        "compression": compression,
        "sparsity": 1 - 1 / compression,
        "nonzero": float(nonzero),
        "memory_kb": nonzero * 4 / 1000,
        "epoch_seconds": 1.5,
    }
    rec.update({f"remaining.{layer}": counts[layer] / LENET300[layer] for layer in LENET300})
    if method.startswith("sensitivity"):
        for i, layer in enumerate(LENET300):
            scale = 10.0 ** (-3 + i) * (1 + 0.1 * epoch)
            rec.update({
                f"sens.{layer}.q10": scale * 0.01, f"sens.{layer}.q50": scale * 0.3,
                f"sens.{layer}.q90": scale * 5, f"sens.{layer}.mean": scale,
                f"sens.{layer}.frac_ge1": min(1.0, 0.02 * (i + 1) ** 2 + 0.001 * epoch),
            })
    return rec


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
) -> dict[str, str]:
    """Write the study; return ``{"parent": run_id, trial_id: run_id, ...}``.

    ``running``: leave the last sensitivity-spec seed unfinished (4 epochs, status running).
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    study_yaml = {"name": experiment, "target_error": target_error,
                  "grid": [{"method": m, **p} for m, p, _, _ in TRIALS]}
    parent = client.create_run(exp_id, run_name=experiment,
                               tags={"study.role": "parent", "study.name": experiment})
    pid = parent.info.run_id
    client.log_param(pid, "study.config_hash", "0123abcd")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study_yaml, sort_keys=False))
        client.log_artifact(pid, str(path))

    ids = {"parent": pid}
    now = int(time.time() * 1000)
    for method, params, seeds, special in TRIALS:
        for seed in seeds:
            trial_id = "-".join([method, *(f"{k}{v}" for k, v in params.items()), f"s{seed}"])
            run = client.create_run(exp_id, run_name=trial_id, tags={
                "mlflow.parentRunId": pid, "study.role": "trial", "study.trial_id": trial_id,
                "status": "running"})
            rid = run.info.run_id
            ids[trial_id] = rid
            all_params = {"method": method, "arch": arch, "dataset": dataset, "seed": seed,
                          **params, "train.lr": 0.1, "train.epochs": epochs,
                          "train.reach_epochs": reach_epochs, "train.seed": seed,
                          "train.device": "cpu"}
            if target_error is not None:
                all_params["train.target_error"] = target_error
            kind, last = special.get(seed, ("finished", epochs))
            if running and method == "sensitivity-spec" and seed == seeds[-1]:
                kind, last = "running", 4
            history = []
            for epoch in range(1, last + 1):
                rec = _record(method, params, seed, epoch, reach_epochs)
                if kind == "diverged" and epoch == last:
                    rec.update(train_loss=math.nan, val_loss=math.nan, test_loss=math.nan,
                               val_error=90.2, test_error=90.1)
                history.append(rec)
            metrics = [Metric(k, v, now + e, int(r["epoch"]))
                       for e, r in enumerate(history) for k, v in r.items()]
            client.log_batch(rid, metrics=metrics,
                             params=[Param(k, str(v)) for k, v in all_params.items()],
                             tags=[RunTag("status", kind)])
            with tempfile.TemporaryDirectory() as tmp:
                _write_csv(Path(tmp) / "history.csv", history)
                _write_csv(Path(tmp) / "layers.csv", [
                    {"layer": layer, "total": total,
                     "nonzero": round(history[-1][f"remaining.{layer}"] * total),
                     "bias_total": LENET300_BIAS[layer], "bias_nonzero": LENET300_BIAS[layer],
                     "remaining": history[-1][f"remaining.{layer}"]}
                    for layer, total in LENET300.items()])
                client.log_artifacts(rid, tmp)
            if kind != "running":
                client.set_terminated(rid, status="FAILED" if kind == "failed" else "FINISHED")
    return ids


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue())
