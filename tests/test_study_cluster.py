"""`study run --address` joins a real Ray cluster: `ray start --head` on loopback, a 2-trial
study from a separate driver process, then the head is stopped by its process id."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from study.tracking import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {head.returncode}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"no Ray head on port {port} after {timeout}s")


def test_study_joins_a_cluster_started_with_ray_start(tmp_path: Path, mlflow_uri: str) -> None:
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray puts sockets under it
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for_port(port, head)
        study_file = tmp_path / "cluster.yaml"
        experiment = f"cluster-{tmp_path.name}"
        study_file.write_text(yaml.safe_dump({
            "name": "cluster", "methods": {"none": {}}, "seeds": [0, 1],
            "train": {"epochs": 2, "reach_epochs": 1, "batch_size": 128},
            "output_dir": str(tmp_path / "out"), "tracking_uri": mlflow_uri, "experiment": experiment,
        }))
        driver = subprocess.run(
            [str(BIN / "study"), "run", str(study_file), "--address", f"127.0.0.1:{port}", "--quiet"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        output = driver.stdout + driver.stderr
        assert driver.returncode == 0, output
        assert "Connecting to existing Ray cluster" in output  # joined, did not start its own
        assert "Started a local Ray instance" not in output
        assert "complete" in output

        tracker = Tracker(mlflow_uri)
        experiment_id = tracker.experiment_id(experiment)
        (parent,) = tracker.find_runs(experiment_id, {"study.role": "parent"})
        children = tracker.find_runs(experiment_id, {"mlflow.parentRunId": parent.info.run_id})
        assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
        assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "finished" for r in children)
    finally:
        # stop the head by its process id: `ray start --block` takes its Ray processes down on SIGTERM
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the process group this test started
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert head.returncode is not None
