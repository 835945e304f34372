"""How a study stops when something goes wrong, and where the tracebacks go.

- :class:`StopControl` (one per `run_study`, entered before Ray starts): SIGINT (Ctrl-C) and
  SIGTERM stop Tune the way Tune's own Ctrl-C does (it saves the experiment state, so `study run
  --resume` continues), and are recorded, so the study ends ``interrupted``; a second signal
  stops at once. :meth:`StopControl.stop` does the same for a trial that cannot succeed.
  Tune's handler is reached through SIGUSR1, which Tune catches while ``Tuner.fit`` runs; Tune's
  own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) so that ours sees every
  Ctrl-C.
- :func:`trial_error`: the error a failed Tune trial raised, as one line, and whether retrying
  could help: not for :class:`study.trial.SetupError` (missing or damaged data, a bad option, a
  missing device), which ends the study at its first occurrence.
- :class:`StudyLog`: Ray's, Tune's and MLflow's log records (the tracebacks of failed trials
  among them) go to the study's log file instead of the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, ClassVar, Iterator

#: MLflow's loggers (its SQL migrations log through alembic), captured once it is imported.
MLFLOW_LOGGERS = ("mlflow", "alembic")
_HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopControl:
    """Signals and fatal trial errors during one study (see the module docstring).

    ``interrupted`` names the first signal (``SIGINT``/``SIGTERM``), ``error`` the one-line
    error that stopped the study; both None when it ran to its end.
    """

    active: ClassVar[StopControl | None] = None  # the driver's, for Tune callbacks
    #: After a signal, how long the orderly stop may take. A SIGTERM sent to the whole process
    #: group (systemd, a batch scheduler) also kills Ray's own processes, and Tune then waits a
    #: minute for them before the process aborts: past this, ``on_stuck`` ends the study's records
    #: and the process exits 130 (its Tune state is as after a SIGKILL: --resume continues).
    grace_seconds: ClassVar[float] = 30.0

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path  # where the tracebacks go (StudyLog)
        self.interrupted: str | None = None
        self.error: str | None = None
        self.fitting = False
        self.on_stuck: Callable[[], None] | None = None  # set once there are records to end
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}
        self._env: str | None = None

    # -- entering and leaving --------------------------------------------------------------------
    def __enter__(self) -> StopControl:
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in _HANDLED:
            self._previous[sig] = signal.getsignal(sig)
        self.arm()
        StopControl.active = self
        return self

    def arm(self) -> None:
        """(Re)install the handlers: ``ray.init`` installs its own for SIGTERM."""
        for sig in _HANDLED:
            signal.signal(sig, self._on_signal)

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        StopControl.active = None

    @contextlib.contextmanager
    def tune_running(self) -> Iterator[None]:
        """Around ``Tuner.fit``: a stop then goes to Tune instead of raising KeyboardInterrupt."""
        self.fitting = True
        try:
            if self.interrupted or self.error:  # stopped before Tune started
                raise KeyboardInterrupt
            yield
        finally:
            self.fitting = False

    # -- stopping ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:  # the second one: stop now
            raise KeyboardInterrupt
        self.interrupted = signal.Signals(signum).name
        threading.Thread(target=self._watch, name="study-stop-watch", daemon=True).start()
        self._stop_tune()

    def _watch(self) -> None:
        if self._done.wait(self.grace_seconds):
            return
        if self.on_stuck is not None:
            with contextlib.suppress(Exception):
                self.on_stuck()
        print(f"interrupted: Ray did not stop within {self.grace_seconds:g}s (it was killed too?); the study's "
              f"runs are marked; continue with `study run <the study file> --resume`", file=sys.stderr, flush=True)
        os._exit(130)

    def stop(self, error: str) -> None:
        """Stop the study because of ``error`` (one line), the way a signal does."""
        if self.error is None:
            self.error = error
        self._stop_tune()

    def _stop_tune(self) -> None:
        handler = signal.getsignal(signal.SIGUSR1)
        if self.fitting and callable(handler):  # Tune's: it ends the run after saving its state
            handler(signal.SIGUSR1, None)
        elif not self.fitting:
            raise KeyboardInterrupt


# -- trial errors ---------------------------------------------------------------------------------


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def trial_error(trial: Any) -> tuple[str, bool]:
    """The error a failed Tune trial raised, as one line, and whether a retry could help."""
    from study.trial import SetupError

    error, text = None, "unknown error"
    with contextlib.suppress(Exception):  # Tune writes them on the driver, where the callbacks run
        if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():
            import cloudpickle

            error = cloudpickle.loads(Path(trial.pickled_error_file).read_bytes())
        elif trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text().strip().splitlines()[-1]
    if error is None:  # an error Tune could not pickle: the last line of its text
        return " ".join(text.split())[:300], True
    cause = getattr(error, "cause", None) or error  # a RayTaskError holds the trial's own error
    if isinstance(cause, SetupError):
        return str(cause), False
    return one_line(cause)[:300], True


# -- the log file ---------------------------------------------------------------------------------


class StudyLog:
    """The study's log file: while it is open, the records of the loggers it captures (and
    Python's warnings) go there, appended, instead of to the terminal. ``capture`` a library's
    loggers after importing it: MLflow replaces its handlers when it is imported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._saved: dict[str, tuple[list[logging.Handler], bool]] = {}

    def __enter__(self) -> StudyLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.captureWarnings(True)
        self.capture("py.warnings")
        return self

    def capture(self, *names: str) -> None:
        assert self._handler is not None, "capture() inside the with block"
        for name in names:
            logger = logging.getLogger(name)
            if name not in self._saved:
                self._saved[name] = (list(logger.handlers), logger.propagate)
            logger.handlers = [self._handler]
            logger.propagate = False

    def __exit__(self, *exc: Any) -> None:
        for name, (handlers, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
        self._saved.clear()
        logging.captureWarnings(False)
        if self._handler is not None:
            self._handler.close()
