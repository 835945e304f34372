"""Moving a study folder: its own MLflow store keeps its artifacts inside it, wherever it is.

A study with the default store keeps ``mlflow.db`` and ``mlartifacts/`` in its output folder.
MLflow stores each experiment's and each run's artifact location as an absolute URI
(``file:///old/place/mlartifacts/...``), so a folder that was moved or copied (to a laptop,
say) would still look for its artifacts at the old place, and a report would try to log into
it. MLflow has no call that changes an artifact location, so :func:`relocate` rewrites them in
the SQLite file itself: every location under ``<old folder>/mlartifacts`` becomes the same
location under ``<folder>/mlartifacts``. ``study report|status|export`` do this on their own
when they open a folder's own store (and say so); ``study move SRC DST`` moves the folder,
rewrites its store and updates the study index.

Only the folder's own ``mlflow.db`` is touched, and only locations of the form
``<some folder>/mlartifacts/...`` (the layout ``study run`` writes): a tracking server or a
shared store elsewhere is left alone. Ray Tune's checkpoints under ``ray/`` are not rewritten:
a moved study is for analysis; ``--resume`` continues a study where it ran.
"""
from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from study import runformat as rf

#: The tables and columns of MLflow's SQL schema that hold artifact locations.
ARTIFACT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("experiments", "experiment_id", "artifact_location"),
    ("runs", "run_uuid", "artifact_uri"),
    ("logged_models", "model_id", "artifact_location"),
)


def _path_of(location: str) -> Path | None:
    """The local path of a ``file:`` URI or a plain path; None for anything else."""
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if "://" not in location and location.startswith("/"):
        return Path(location)
    return None


def _tables(con: sqlite3.Connection) -> set[str]:
    return {name for (name,) in con.execute("select name from sqlite_master where type='table'")}


def stale_roots(folder: str | Path) -> list[str]:
    """The artifact roots (``<old folder>/mlartifacts``, as stored) of the folder's own store
    that are not ``<folder>/mlartifacts``: [] when the store is where it was made (or absent)."""
    folder = Path(folder).resolve()
    db = folder / rf.STORE_FILE
    if not db.is_file():
        return []
    with closing(sqlite3.connect(db)) as con:
        if "experiments" not in _tables(con):
            return []
        locations = [loc for (loc,) in con.execute("select artifact_location from experiments") if loc]
    roots = []
    for location in locations:
        path = _path_of(location)
        if path is not None and path.name == rf.ARTIFACTS_DIR and path.parent != folder and location not in roots:
            roots.append(location)
    return roots


def relocate(folder: str | Path) -> list[str]:
    """Point the folder's own store at ``<folder>/mlartifacts``; returns the old roots it
    rewrote ([] when there was nothing to do)."""
    folder = Path(folder).resolve()
    roots = stale_roots(folder)
    if not roots:
        return []
    new_root = (folder / rf.ARTIFACTS_DIR).as_uri()
    with closing(sqlite3.connect(folder / rf.STORE_FILE)) as con, con:
        tables = _tables(con)
        for old in roots:
            old_prefixes = {old.rstrip("/")}
            path = _path_of(old)
            if path is not None:  # the same place written as a URI or as a path
                old_prefixes |= {path.as_uri(), str(path)}
            for table, key, column in ARTIFACT_COLUMNS:
                if table not in tables:
                    continue
                for row_id, value in con.execute(f"select {key}, {column} from {table}").fetchall():
                    for prefix in old_prefixes:
                        if value and (value == prefix or value.startswith(prefix + "/")):
                            con.execute(f"update {table} set {column} = ? where {key} = ?",
                                        (new_root + value[len(prefix):], row_id))
                            break
    _forget_artifact_repos()
    return roots


def _forget_artifact_repos() -> None:
    """MLflow caches each run's artifact location by run id for the life of the process: a
    process that used the runs before they moved (a notebook, a test) would still write to the
    old place. Its cache is private, so this is best effort."""
    import sys

    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    cache = getattr(utils, "_artifact_repos_cache", None)
    if hasattr(cache, "clear"):
        cache.clear()


def move_study(src: str | Path, dst: str | Path) -> Path:
    """Move a study folder to ``dst`` (a new path, or an existing folder to move it into),
    rewrite its store's artifact locations and the study index; returns the new folder."""
    from study import index

    src = Path(src).resolve()
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder")
    if not (src / rf.STORE_FILE).is_file() and not (src / "study.json").is_file():
        raise ValueError(f"{src} is not a study folder: it holds neither {rf.STORE_FILE} nor study.json")
    dst = Path(dst).expanduser().resolve()
    if dst.is_dir():
        dst = dst / src.name
    if dst.exists():
        raise ValueError(f"{dst} already exists; choose a new path")
    if dst == src or src in dst.parents:
        raise ValueError(f"cannot move {src} into itself ({dst})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
    relocate(dst)
    old_uri, new_uri = rf.sqlite_uri(src / rf.STORE_FILE), rf.sqlite_uri(dst / rf.STORE_FILE)

    def moved(entry: index.Entry) -> index.Entry | None:
        if Path(entry.output_dir) != src:
            return None
        uri = new_uri if entry.tracking_uri == old_uri else entry.tracking_uri
        return index.Entry(**{**entry.__dict__, "output_dir": str(dst), "tracking_uri": uri})

    index.rewrite(moved)
    return dst

