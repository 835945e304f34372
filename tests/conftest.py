"""Shared fixtures: one MLflow SQLite store and one in-process Ray session per test session
(both are slow to start), and factories for tiny studies and trial configs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

# Before anything imports Ray: no token auth (Ray >= 2.59), quiet Tune.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The study index (study/index.py) of the tests: never the user's ~/.cache one.
os.environ["STUDY_INDEX"] = str(Path(tempfile.mkdtemp(prefix="study-index-")) / "index.json")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An absolute SQLite tracking URI, created once (creating the tables takes seconds)."""
    from study.runformat import sqlite_uri
    from study.tracking import Tracker

    uri = sqlite_uri(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    Tracker(uri).experiment_id("warm-up")
    return uri


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """One in-process Ray for every test that runs a study (start-up takes ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_study(tmp_path: Path, mlflow_uri: str) -> Callable[..., Any]:
    """``tiny_study(name, **fields)`` -> a validated StudyConfig: digits, LeNet-300, 2 epochs,
    output in tmp_path, tracking in the shared store (experiment = a unique name)."""
    from study.schema import study_from_dict

    def make(name: str = "tiny", **fields: Any) -> Any:
        raw: dict[str, Any] = {
            "name": name,
            "datasets": ["digits"],
            "archs": ["lenet300"],
            "methods": {"none": {}},
            "seeds": [0],
            "train": {"epochs": 2, "reach_epochs": 1, "batch_size": 128, "lr": 0.1},
            "output_dir": str(tmp_path / name),
            "tracking_uri": mlflow_uri,
            "experiment": f"{name}-{tmp_path.name}",
        }
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "methods":
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return study_from_dict(raw)

    return make


@pytest.fixture
def trial_config(tiny_study: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """``trial_config(method, params, seeds, tracking=None, hooks=None, **study_fields)`` ->
    the config a Tune trial receives, built the way study.runner builds it."""
    from study.plan import TrialSpec
    from study.runner import _study_constants

    def make(method: str = "none", params: dict | None = None, seeds: list[int] | None = None, *,
             tracking: dict | None = None, hooks: dict | None = None, **fields: Any) -> dict[str, Any]:
        config = tiny_study(methods={method: {}}, **fields)
        spec = TrialSpec(method, config.archs[0], config.datasets[0], seeds or [0], params or {})
        return {"trial": spec.as_dict(), "study": _study_constants(config, dict(tracking or {}) or None, None, hooks)}

    return make
