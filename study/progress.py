"""What ``study run`` and ``study train`` show while they work.

**A study stage** (:class:`StageProgress`, fed by the Tune callback of :mod:`study.tuners`):
trials pending, running, finished, diverged, pruned and failed; the epoch each running trial
is at (Tune reports every epoch); elapsed time and an ETA from the epochs trained so far
against the stage's total (a trial that ended early, stopped by the scheduler or diverged,
counts as complete). On a terminal (stderr) it is a live view (rich), redrawn in place, with
one line per ended trial printed above it; otherwise, as in a log file or a pipe, only the
line per ended trial, with the elapsed time and the ETA.

**One training run** (:class:`EpochPrinter`, the callback ``study train`` gives the trainer):
one row per epoch and, on a terminal, a progress bar within an epoch once it has run longer
than ``BAR_AFTER_SECONDS``. ``quiet`` prints neither (``study train`` still prints its final
line).

The state is plain data (it goes into Tune's experiment state with the callback); the rich
objects are made when the view starts and dropped when it is pickled.
"""
from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from study import runformat as rf

#: A progress bar appears within an epoch that has run longer than this (seconds).
BAR_AFTER_SECONDS = 2.0
#: Running trials listed in the live view (the rest are counted).
MAX_RUNNING_ROWS = 12
#: What a trial can be in the live view, in the order it lists them.
PENDING = "pending"
TRIAL_STATES: tuple[str, ...] = (PENDING, rf.RUNNING, rf.FINISHED, rf.DIVERGED, rf.PRUNED, rf.FAILED)


@functools.cache
def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def is_terminal(console: Any = None) -> bool:
    """Whether a live view can redraw in place on ``console`` (default: stderr's)."""
    console = console or stderr_console()
    return bool(console.is_terminal and not console.is_dumb_terminal)


def clock(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``1h02m``; ``?`` for None."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(done: int, total: int, baseline: int, elapsed: float) -> float | None:
    """Seconds left at the rate of the epochs trained in this process (``done - baseline``
    in ``elapsed`` s: epochs a resumed stage had before count as done, not as speed); None
    before there is a rate."""
    trained = done - baseline
    if trained <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / trained


def ended_state(result: dict[str, Any] | None) -> str:
    """How a trial that Tune terminated ended, from its last result: ``pruned`` when it had
    not finished (the scheduler stopped it), ``diverged`` when its one seed diverged, else
    ``finished`` (a multi-seed trial with a diverged seed still finished)."""
    result = result or {}
    if not result.get("final"):
        return rf.PRUNED
    if result.get("diverged_seeds") and result.get("num_seeds", 1) == 1:
        return rf.DIVERGED
    return rf.FINISHED


def trial_state(tune_status: str, result: dict[str, Any] | None) -> str:
    """A Tune trial's state in the view (Tune's PENDING, RUNNING, PAUSED, TERMINATED, ERROR)."""
    if tune_status == "ERROR":
        return rf.FAILED
    if tune_status == "TERMINATED":
        return ended_state(result)
    if tune_status in ("RUNNING", "PAUSED"):
        return rf.RUNNING
    return PENDING


def trial_label(spec: dict[str, Any]) -> str:
    """``sensitivity-spec lam=1e-3 T=0.02 s0`` (several seeds: ``s0,1,2``)."""
    seeds = spec.get("seeds") or [0]
    name = rf.run_name(spec.get("method", "?"), spec.get("params") or {}, seeds[0])
    return name if len(seeds) == 1 else f"{name.rsplit(' ', 1)[0]} s{','.join(map(str, seeds))}"


@dataclass
class TrialProgress:
    label: str
    epochs: int  # the epochs it trains at most
    state: str = PENDING
    epoch: int = 0
    phase: str = ""
    val_error: float | None = None
    compression: float | None = None

    @property
    def done_epochs(self) -> int:
        """Epochs that count as done: all of them once it ended."""
        return self.epochs if self.state not in (PENDING, rf.RUNNING) else min(self.epoch, self.epochs)


@dataclass
class StageProgress:
    """One stage's trials (expected ``total``, Tune's trials as they appear) and its clock."""

    total: int
    epochs: int  # a trial's epochs when its config does not say (an Optuna trial not sampled yet)
    label: str = ""  # "confirm " for the confirm stage
    trials: dict[str, TrialProgress] = field(default_factory=dict)
    started: float | None = None  # time.monotonic() at the first event in this process
    baseline: int | None = None  # epochs already done then (a resumed stage)
    ended: int = 0

    def _trial(self, trial: Any) -> TrialProgress:
        found = self.trials.get(trial.trial_id)
        if found is None:
            spec = (trial.config or {}).get("trial") or {}
            study = (trial.config or {}).get("study") or {}
            epochs = (spec.get("train") or {}).get("epochs") or (study.get("train") or {}).get("epochs") or self.epochs
            found = self.trials[trial.trial_id] = TrialProgress(trial_label(spec), int(epochs))
        return found

    def update(self, trials: list, now: float | None = None) -> None:
        """Tune's trial list (every step): each trial's state and last result."""
        for trial in trials:
            t = self._trial(trial)
            t.state = trial_state(str(trial.status), trial.last_result)
            self._result(t, trial.last_result)
        if self.started is None:
            self.started = time.monotonic() if now is None else now
            self.baseline = self.epochs_done

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        """One epoch's result of a running trial."""
        t = self._trial(trial)
        t.state = rf.RUNNING
        self._result(t, result)

    @staticmethod
    def _result(t: TrialProgress, result: dict[str, Any] | None) -> None:
        if not result or rf.EPOCH not in result:
            return
        t.epoch = int(result[rf.EPOCH])
        t.phase = str(result.get(rf.PHASE, t.phase) or "")
        t.val_error = result.get(rf.VAL_ERROR, t.val_error)
        t.compression = result.get(rf.COMPRESSION, t.compression)

    def end(self, trial: Any, state: str) -> None:
        self._trial(trial).state = state
        self.ended += 1

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in TRIAL_STATES}
        for t in self.trials.values():
            out[t.state] += 1
        out[PENDING] += max(self.total - len(self.trials), 0)  # Optuna trials not sampled yet
        return out

    @property
    def epochs_done(self) -> int:
        return sum(t.done_epochs for t in self.trials.values())

    @property
    def epochs_total(self) -> int:
        return sum(t.epochs for t in self.trials.values()) + max(self.total - len(self.trials), 0) * self.epochs

    def elapsed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.started

    def eta(self, now: float | None = None) -> float | None:
        return eta_seconds(self.epochs_done, self.epochs_total, self.baseline or 0, self.elapsed(now))

    def timing(self, now: float | None = None) -> str:
        return f"elapsed {clock(self.elapsed(now))}, ETA {clock(self.eta(now))}"

    def running(self) -> list[TrialProgress]:
        return [t for t in self.trials.values() if t.state == rf.RUNNING]


def ended_line(progress: StageProgress, label: str, what: str, result: dict[str, Any] | None,
               now: float | None = None) -> str:
    """``[3/10] l1 lam=1e-4 s0: finished  epoch 20, val error 2.10%, compression 12.30x  (elapsed
    1m02s, ETA 3m10s)``: the line per ended trial."""
    r = result or {}
    numbers = ""
    if rf.VAL_ERROR in r:
        numbers = (f"  epoch {int(r.get(rf.EPOCH, 0))}, val error {r[rf.VAL_ERROR]:.2f}%, "
                   f"compression {r.get(rf.COMPRESSION, float('nan')):.2f}x")
    return f"{progress.label}[{progress.ended}/{progress.total}] {label}: {what}{numbers}  ({progress.timing(now)})"


def render(progress: StageProgress, now: float | None = None) -> Any:
    """The live view of a stage (a rich renderable)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    done, total = progress.epochs_done, max(progress.epochs_total, 1)
    head = Table.grid(padding=(0, 1))
    head.add_row(Text(f"{progress.label or 'search '}stage", style="bold"),
                 ProgressBar(total=total, completed=done, width=30),
                 Text(f"{done}/{total} epochs {100 * done / total:.0f}%  {progress.timing(now)}"))
    counts = progress.counts()
    summary = Text("trials: " + " · ".join(f"{n} {s}" for s, n in counts.items()) + f"  ({progress.total} in all)")
    running = progress.running()
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    for col, justify in (("running", "left"), ("epoch", "right"), ("phase", "left"),
                         ("val err%", "right"), ("compr.", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in running[:MAX_RUNNING_ROWS]:
        table.add_row(t.label, f"{t.epoch}/{t.epochs}", t.phase,
                      "" if t.val_error is None else f"{t.val_error:.2f}",
                      "" if t.compression is None else f"{t.compression:.2f}x")
    parts: list[Any] = [head, summary]
    if running:
        parts.append(table)
    if len(running) > MAX_RUNNING_ROWS:
        parts.append(Text(f"… and {len(running) - MAX_RUNNING_ROWS} more running"))
    return Group(*parts)


class StageView:
    """Shows a :class:`StageProgress`: live on a terminal, else one line per ended trial.
    Not picklable state (the rich Live) is made on ``start`` and dropped when pickled."""

    def __init__(self, progress: StageProgress, live: bool | None = None) -> None:
        self.progress = progress
        self.live_wanted = live
        self._live: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def start(self) -> None:
        if self._live is not None:
            return
        if self.live_wanted is None:
            self.live_wanted = is_terminal()
        if not self.live_wanted:
            return
        from rich.live import Live

        self._live = Live(get_renderable=lambda: render(self.progress), console=stderr_console(),
                          refresh_per_second=2, transient=True, redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        _ACTIVE.append(self)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def line(self, text: str) -> None:
        """A line that stays (above the live view on a terminal)."""
        if self._live is not None:
            self._live.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
            if self in _ACTIVE:
                _ACTIVE.remove(self)


#: Live views started in this process (at most one at a time): ``stop_all`` ends them when a
#: stage ends in any way (an interrupt included), so the terminal is left clean.
_ACTIVE: list[StageView] = []


def stop_all() -> None:
    for view in list(_ACTIVE):
        view.stop()


# -- study train --------------------------------------------------------------------------------


class EpochPrinter:
    """Prints one aligned row per epoch (``study train``) and, on a terminal, a progress bar
    within an epoch that has run longer than ``BAR_AFTER_SECONDS`` (the trainer's per-batch
    hook ``on_batch(seen, total)`` drives it)."""

    columns = ("epoch", "phase", "train_loss", "val_error", "test_error", "compression", "epoch_seconds")
    header = f"{'epoch':>9} {'phase':>8} {'train loss':>10} {'val err%':>8} {'test err%':>9} {'compr.':>8} {'sec':>5}"

    def __init__(self, epochs: int, quiet: bool = False, console: Any = None, bar: bool | None = None,
                 clock_fn: Callable[[], float] = time.monotonic) -> None:
        self.epochs, self.quiet = epochs, quiet
        self.console = console or stderr_console()
        self.bar = (not quiet and is_terminal(self.console)) if bar is None else bar
        self.clock = clock_fn
        self._epoch_start: float | None = None
        self._progress: Any = None
        self._task: Any = None
        if not quiet:
            self.console.print(self.header, style="bold", highlight=False)

    def on_batch(self, seen: int, total: int) -> None:
        if not self.bar:
            return
        now = self.clock()
        if self._epoch_start is None:
            self._epoch_start = now
        if self._progress is None and now - self._epoch_start > BAR_AFTER_SECONDS:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("  training"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("samples"), TimeRemainingColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("epoch", total=total)
        if self._progress is not None:
            self._progress.update(self._task, completed=seen, total=total)

    def _end_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task, self._epoch_start = None, None, None

    def on_epoch_end(self, record: dict[str, Any], checkpoint: Any) -> None:
        self._end_bar()
        if self.quiet:
            return
        r = record
        self.console.print(
            f"{r['epoch']:>4}/{self.epochs:<4} {r['phase']:>8} {r['train_loss']:>10.4f} "
            f"{r['val_error']:>8.2f} {r['test_error']:>9.2f} {r['compression']:>7.2f}x {r['epoch_seconds']:>5.2f}",
            highlight=False,
        )
