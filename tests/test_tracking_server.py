"""A real tracking database under load and under a fault.

The slow tests start their own PostgreSQL cluster (``initdb``/``pg_ctl`` in a temporary folder,
on a free loopback port; as the ``postgres`` user when run as root) behind
``mlflow server --backend-store-uri postgresql://...``, then run studies of 8 concurrent trials
that log to it over HTTP: once undisturbed, once with the server killed in the middle, kept
down 5 s and restarted on the same port (the outage also lasts the restart: ~20 s under load). Every child run must end FINISHED with every epoch logged
exactly once. Without PostgreSQL (no ``initdb``) or psycopg2 they skip with the reason;
``.ci/run`` installs PostgreSQL, so in CI they run. The SQLite store gets the same load test.

The fast tests pin down the client's retry rules (study.tracking.Tracker) against real MLflow
HTTP calls: what is retried, for how long, and that a create_run whose answer was lost does
not leave a second run.
"""
from __future__ import annotations

import glob
import http.server
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from study.runformat import TAG_CREATE_TOKEN
from study.tracking import Tracker, is_transient

BIN = Path(sys.executable).parent
EPOCHS = 3
TRIALS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL and the MLflow server --------------------------------------------------------------


def _pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A throw-away cluster: trust auth, TCP on 127.0.0.1 only, stopped by its process id."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="pgtest", dir="/tmp"))
        self.data = self.folder / "data"
        self.pid: int | None = None
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def uri(self) -> str:
        # the driver named: SQLAlchemy >= 2.1 reads a bare postgresql:// as psycopg (3), not psycopg2
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                  "-o", options, "-w", "-t", "60", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if self.pid is None and pid_file.is_file():  # pg_ctl gave up waiting, the server may be up
            self.pid = int(pid_file.read_text().split()[0])
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
                _wait_gone(self.pid, 60)
            except ProcessLookupError:
                pass
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait for a process that is not our child (pg_ctl detached it) to exit."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"process {pid} still running after {timeout}s")


class MlflowServer:
    """``mlflow server`` on PostgreSQL with proxied artifacts; stop() and start() again keep
    the port, as a restarted server would."""

    def __init__(self, backend_uri: str, folder: Path) -> None:
        self.backend_uri, self.folder = backend_uri, folder
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        self.starts += 1
        log = open(self.folder / f"server-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri, "--serve-artifacts",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                text = (self.folder / f"server-{self.starts}.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{text}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"mlflow server did not answer on port {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (the server and its workers, which this test started)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
                    "`apt-get install -y postgresql` (.ci/run does)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed: pip install -e '.[server]'")
    database = Postgres(bin_dir)
    server = MlflowServer(database.uri, tmp_path_factory.mktemp("mlflow-server"))
    try:
        database.start()
        server.start()
        yield server
    finally:
        server.stop()
        database.stop()


# -- studies ---------------------------------------------------------------------------------------


def _load_study(tiny_study: Any, name: str, tracking_uri: str, epochs: int = EPOCHS) -> Any:
    """8 grid trials (method none, seeds 0..7), a quarter CPU each: all 8 run at once on the
    test session's 2-CPU Ray."""
    return tiny_study(name, seeds=list(range(TRIALS)), tracking_uri=tracking_uri,
                      train={"epochs": epochs, "reach_epochs": 1},
                      resources={"cpus_per_trial": 0.25})


def _assert_whole(config: Any, outcome: Any, epochs: int = EPOCHS) -> None:
    """One parent FINISHED; 8 children FINISHED, one per trial, each epoch logged exactly once."""
    assert outcome.complete and outcome.statuses == {"finished": TRIALS}
    tracker = Tracker(config.resolved_tracking_uri)
    experiment_id = tracker.experiment_id(config.experiment_name)
    runs = tracker.find_runs(experiment_id, {})
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("study.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == outcome.parent_run_id
    assert len(children) == TRIALS
    assert sorted(r.data.params["seed"] for r in children) == [str(s) for s in range(TRIALS)]
    assert len({r.data.tags["study.trial_id"] for r in children}) == TRIALS
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        for key in ("epoch", "val_error"):
            history = tracker.client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (run.info.run_id, key)
        assert {"layers.csv", "history.csv"} <= {f.path for f in tracker.client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_eight_concurrent_trials_lose_nothing(store: str, ray_session: Any, tiny_study: Any,
                                              mlflow_uri: str, request: pytest.FixtureRequest) -> None:
    uri = mlflow_uri if store == "sqlite" else request.getfixturevalue("tracking_server").uri
    config = _load_study(tiny_study, f"load-{store}", uri)
    from study.runner import run_study

    _assert_whole(config, run_study(config))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study_survives_the_tracking_server_going_away(ray_session: Any, tiny_study: Any,
                                                       tracking_server: MlflowServer) -> None:
    from study.runner import run_study

    epochs = 8
    config = _load_study(tiny_study, "fault", tracking_server.uri, epochs=epochs)
    watcher = Tracker(tracking_server.uri)
    outage: dict[str, Any] = {}
    study_done = threading.Event()

    def kill_and_restart() -> None:
        # once trials are logging (half of them have logged an epoch: on a loaded machine the
        # others may still be starting): crash the server (SIGKILL: answers in flight are
        # lost), keep it down ~5 s, restart it on its port
        try:
            experiment_id = watcher.experiment_id(config.experiment_name)
            while not study_done.is_set():
                runs = watcher.find_runs(experiment_id, {"study.role": "trial"})
                if sum(r.data.metrics.get("epoch", 0) >= 1 for r in runs) >= TRIALS // 2:
                    outage["logged_before"] = sum(int(r.data.metrics.get("epoch", 0)) for r in runs)
                    tracking_server.stop(signal.SIGKILL)
                    outage["down_at"] = time.time()
                    time.sleep(5)
                    tracking_server.start()
                    outage["up_at"] = time.time()
                    return
                time.sleep(0.2)
        except BaseException as err:  # reported by the main thread
            outage["error"] = err

    thread = threading.Thread(target=kill_and_restart, daemon=True)
    thread.start()
    try:
        outcome = run_study(config, hooks={"sleep_after_epoch": 0.5})
    finally:
        study_done.set()
        thread.join(timeout=200)
    assert "error" not in outage, outage.get("error")
    assert "up_at" in outage, "the server was never stopped: the study ended before any epoch was seen"
    assert outage["up_at"] - outage["down_at"] >= 5
    # the outage hit the study in the middle: not every epoch was logged when it began ...
    assert outage["logged_before"] < TRIALS * epochs
    _assert_whole(config, outcome, epochs=epochs)
    # ... and trials did try to log while the server was down: metrics keep the client's time
    # of the first attempt, so a metric stamped inside the outage was stored by a retry
    client = Tracker(tracking_server.uri).client
    experiment_id = client.get_experiment_by_name(config.experiment_name).experiment_id
    stamps = [m.timestamp / 1000 for run in client.search_runs([experiment_id], "tags.`study.role` = 'trial'")
              for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert any(outage["down_at"] <= t <= outage["up_at"] for t in stamps), (outage, sorted(stamps))
    print(f"server down {outage['up_at'] - outage['down_at']:.1f} s (5 s + restart); "
          f"{sum(outage['down_at'] <= t <= outage['up_at'] for t in stamps)} epochs logged by a retry")


# -- the client's retry rules (fast) ---------------------------------------------------------------


class _Answering(http.server.BaseHTTPRequestHandler):
    """A stand-in server that answers every request with one status and counts requests."""

    status = 503
    count = 0

    def _answer(self) -> None:
        type(self).count += 1
        body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "stand-in"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status, retried", [(503, True), (500, True), (429, True), (400, False), (404, False)])
def test_http_status_retry_rules(status: int, retried: bool) -> None:
    handler = type("Handler", (_Answering,), {"status": status, "count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracker = Tracker(f"http://127.0.0.1:{server.server_address[1]}", retry_seconds=1.0)
        with pytest.raises(Exception) as caught:
            tracker.experiment_id("anything")
        assert is_transient(caught.value) == retried
        # retried: several requests within the bound (MLflow's own retries, ~4 minutes, are off)
        assert (handler.count > 2) if retried else (handler.count == 1)
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_server_is_retried_for_a_bounded_time() -> None:
    port = _free_port()  # nothing listens there
    tracker = Tracker(f"http://127.0.0.1:{port}", retry_seconds=2)
    calls = 0
    real = tracker.client.get_experiment_by_name

    def counting(name: str) -> Any:
        nonlocal calls
        calls += 1
        return real(name)

    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        tracker.call(counting, "anything")
    elapsed = time.monotonic() - start
    assert is_transient(caught.value) and calls > 3
    assert 2 <= elapsed < 10  # the bound, plus at most one (refused) request


def test_non_transient_errors_are_not_retried(mlflow_uri: str) -> None:
    tracker = Tracker(mlflow_uri)
    calls = 0

    def missing() -> Any:
        nonlocal calls
        calls += 1
        return tracker.client.get_run("0" * 32)

    with pytest.raises(Exception, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        tracker.call(missing)
    assert calls == 1


class _LosesAnswers:
    """An MlflowClient whose create_run does create the run, but whose first ``lost`` answers
    never arrive (the connection broke after the server committed)."""

    def __init__(self, client: Any, lost: int) -> None:
        self._client, self.lost = client, lost

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        run = self._client.create_run(*args, **kwargs)
        if self.lost > 0:
            import requests

            self.lost -= 1
            raise requests.ConnectionError("connection reset by peer (test)")
        return run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_create_run_after_a_lost_answer_makes_one_run(mlflow_uri: str, tmp_path: Path) -> None:
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.experiment_id(f"lost-answer-{tmp_path.name}")
    tracker._client = _LosesAnswers(tracker.client, lost=1)
    run_id = tracker.create_run(experiment_id, "trial", {"study.trial_id": "t1"})
    (run,) = tracker.find_runs(experiment_id, {"study.trial_id": "t1"})
    assert run.info.run_id == run_id
    assert len(run.data.tags[TAG_CREATE_TOKEN]) == 32


def test_create_run_deletes_a_second_copy(mlflow_uri: str, tmp_path: Path) -> None:
    """A retried request that the server did execute twice (the first answer came late)."""
    tracker = Tracker(mlflow_uri)
    experiment_id = tracker.experiment_id(f"late-answer-{tmp_path.name}")
    real = tracker.client

    class CreatesTwice(_LosesAnswers):
        def create_run(self, *args: Any, **kwargs: Any) -> Any:
            if self.lost > 0:  # the first request is still being processed: the search finds nothing
                self.lost -= 1
                raise __import__("requests").Timeout("read timed out (test)")
            first = self._client.create_run(*args, **kwargs)
            time.sleep(0.01)
            self._client.create_run(*args, **kwargs)  # ... and then the late one lands too
            return first

    tracker._client = CreatesTwice(real, lost=1)
    run_id = tracker.create_run(experiment_id, "trial", {"study.trial_id": "t2"})
    (run,) = tracker.find_runs(experiment_id, {"study.trial_id": "t2"})
    assert run.info.run_id == run_id


def test_tracker_pickles_as_its_settings() -> None:
    import pickle

    from study.tracking import RETRY_SECONDS

    tracker = pickle.loads(pickle.dumps(Tracker("http://127.0.0.1:1", retry_seconds=7)))
    assert (tracker.tracking_uri, tracker.retry_seconds, tracker._client) == ("http://127.0.0.1:1", 7, None)
    # the state a Tune experiment kept before retry_seconds existed
    old = Tracker.__new__(Tracker)
    old.__setstate__({"tracking_uri": "sqlite:////x.db", "retries": 12, "_client": None})
    assert old.retry_seconds == RETRY_SECONDS
