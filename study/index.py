"""The study index: where every ``study run`` put its results, so that a study's runs can be
found from any folder.

A study's output folder is its ``output_dir``, relative to the working directory of
``study run`` (as Hydra and Ray users expect). ``study run`` also records, before it starts,
the study file (absolute), the study's name and config hash, the absolute output folder, the
absolute tracking URI and the experiment in a small JSON file: ``$STUDY_INDEX``, by default
``~/.cache/sensitivity-study/index.json``. :mod:`study.locate` reads it when the working
directory does not hold the study. The index is a convenience: a missing, unreadable or
unwritable index never stops a study (a warning says why), and entries whose folder is gone
are skipped when reading.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

#: The environment variable that moves the index (tests point it at a temporary file).
INDEX_ENV = "STUDY_INDEX"
DEFAULT_INDEX = Path("~/.cache/sensitivity-study/index.json")
#: The index keeps this many entries (the newest).
MAX_ENTRIES = 500


@dataclass(frozen=True)
class Entry:
    """One ``study run``: where its results went."""

    name: str
    config_hash: str
    output_dir: str  # absolute
    tracking_uri: str  # absolute
    experiment: str
    file: str | None = None  # the study file, absolute; None when run from Python
    recorded: str = ""

    @property
    def folder(self) -> Path:
        return Path(self.output_dir)


def index_path() -> Path:
    """``$STUDY_INDEX``, else ``~/.cache/sensitivity-study/index.json``."""
    return Path(os.environ.get(INDEX_ENV) or DEFAULT_INDEX).expanduser()


def read_index(path: Path | None = None) -> list[Entry]:
    """Every entry, oldest first; [] when there is no index or it cannot be read."""
    path = path or index_path()
    try:
        raw = json.loads(path.read_text())
        return [Entry(**item) for item in raw.get("studies", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<index>.lock`` (two studies starting at once both get recorded)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: last writer wins
        yield
        return
    with open(path.with_suffix(path.suffix + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, entries: list[Entry]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "studies": [asdict(e) for e in entries[-MAX_ENTRIES:]]}, indent=1))
    tmp.replace(path)


def record(entry: Entry, path: Path | None = None) -> str | None:
    """Add ``entry`` as the newest (an older entry for the same file and folder is dropped).
    Returns a warning instead of raising when the index cannot be written."""
    path = path or index_path()
    entry = Entry(**{**asdict(entry), "recorded": entry.recorded or time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            entries = [e for e in read_index(path) if (e.file, e.output_dir) != (entry.file, entry.output_dir)]
            _write(path, [*entries, entry])
    except OSError as err:
        return f"warning: could not record the study in the index {path}: {err}"
    return None


def rewrite(change: Any, path: Path | None = None) -> int:
    """Replace each entry ``e`` by ``change(e)`` (an Entry, or None to keep it); returns how
    many changed. For :func:`study.relocate.move_study`."""
    path = path or index_path()
    if not path.is_file():
        return 0
    with _locked(path):
        entries = read_index(path)
        new = [change(e) or e for e in entries]
        changed = sum(a != b for a, b in zip(entries, new))
        if changed:
            _write(path, new)
    return changed


def find(*, file: str | Path | None = None, name: str | None = None, config_hash: str | None = None,
         path: Path | None = None) -> list[Entry]:
    """Entries whose folder still exists, newest first: those recorded for ``file`` (absolute
    path), else those of the study ``name`` (and ``config_hash``, when given: a study file that
    moved still finds its runs)."""
    entries = [e for e in reversed(read_index(path)) if e.folder.is_dir()]
    if file is not None:
        target = str(Path(file).expanduser().resolve())
        by_file = [e for e in entries if e.file == target]
        if by_file:
            return by_file
    if name is None:
        return []
    return [e for e in entries if (e.name == name or e.experiment == name)
            and (config_hash is None or e.config_hash == config_hash)]
