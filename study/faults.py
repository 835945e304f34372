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
- :func:`log_to_file`: Ray's, Tune's and MLflow's log records (the tracebacks of failed trials
  among them) go to the study's log file instead of the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Iterator

#: The loggers whose records go to the study's log file while it runs.
LOGGERS = ("ray", "mlflow")
_HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopControl:
    """Signals and fatal trial errors during one study (see the module docstring).

    ``interrupted`` names the first signal (``SIGINT``/``SIGTERM``), ``error`` the one-line
    error that stopped the study; both None when it ran to its end.
    """

    active: ClassVar[StopControl | None] = None  # the driver's, for Tune callbacks

    def __init__(self) -> None:
        self.interrupted: str | None = None
        self.error: str | None = None
        self.fitting = False
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
        self._stop_tune()

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

    try:
        error = trial.get_pickled_error()
    except Exception:  # an error Tune could not keep
        error = None
    if error is None:
        text = trial.get_error() or "unknown error"
        return " ".join(str(text).split())[-300:], True
    cause = getattr(error, "cause", None) or error  # a RayTaskError holds the trial's own error
    if isinstance(cause, SetupError):
        return str(cause), False
    return one_line(cause)[:300], True


# -- the log file ---------------------------------------------------------------------------------


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[Path]:
    """Send the records of :data:`LOGGERS` to ``path`` (appended) instead of the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield path
    finally:
        for logger, handlers, propagate in saved:
            logger.removeHandler(handler)
            for old in handlers:
                logger.addHandler(old)
            logger.propagate = propagate
        handler.close()
