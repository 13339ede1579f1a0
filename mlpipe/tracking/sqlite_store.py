"""A SQLite store checked before MLflow opens it, and created whole when there is none.

MLflow opens whatever file it is given and adds its tables to it; a kill while it does leaves a
store that every later run rejects. So before MLflow sees a SQLite store, this module checks
that the file is one (or creates it aside and renames it into place), that it can be written,
and that no other process holds it locked. A writing stage then follows a workspace that was
moved or copied (`mlpipe.tracking.relocation`, from `mlpipe.tracking.run_lifecycle.connect`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from mlpipe.atomic import remove_stale_temps, temp_sibling
from mlpipe.errors import TrackingError
from mlpipe.tracking import store
from mlpipe.tracking.failures import describe_error, describe_sqlite_error, os_reason
from mlpipe.tracking.store import artifact_root, sqlite_path, sqlite_uri

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
# MLflow's own tables: a SQLite file without them is someone else's database.
MLFLOW_TABLES = ("alembic_version", "experiments", "runs")


def prepare(uri: str) -> None:
    """Make sure a SQLite store is sound and writable before MLflow opens it; create it if
    there is none. For the stages, which write; commands that only read use
    `mlpipe.tracking.snapshot` instead.

    Raises TrackingError, naming the file, for anything that is not an MLflow store, a store
    that cannot be written, and one locked by another process past a bounded wait. Other
    stores are left to MLflow.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    check_file(path)
    if path.exists():
        read_header(path)  # someone else's file is named as such, writable or not
        refuse_read_only(path)  # before opening it: a read-only WAL store cannot even be read
    state = inspect_store(path) if path.exists() else "absent"
    if state in ("absent", "empty", "incomplete"):
        if state == "incomplete":
            log.warning("%s: incomplete store without runs (a killed start); rebuilding it", path)
        create(path, artifact_root(uri) or "")
    check_writable(path)


def check_file(path: Path) -> None:
    """Refuse a folder, a special file or a broken link where the store should be."""
    if path.is_symlink() and not path.exists():
        raise TrackingError(
            f"{path}: a symbolic link to {os.readlink(path)}, which does not exist (or loops); "
            "point it at the store, or remove it"
        )
    if path.is_dir():
        raise TrackingError(f"{path}: is a directory, not an MLflow store; move it away")
    if path.exists() and not path.is_file():
        raise TrackingError(f"{path}: not a regular file (a pipe or a device), not an MLflow store")


def inspect_store(path: Path, shown: Path | None = None) -> str:
    """`empty`, `mlflow`, or `incomplete` (MLflow's tables half made, no runs); else raise.

    Errors name `shown` (the user's file, when `path` is a copy of it), else `path`.
    """
    shown = shown or path
    if not read_header(path, shown):
        return "empty"
    tables = _tables(path, shown)
    if all(name in tables for name in MLFLOW_TABLES):
        return "mlflow"
    foreign = tables - _mlflow_table_names()
    if foreign or not tables:
        raise TrackingError(
            f"{shown}: a SQLite database without MLflow's tables, not an MLflow store; "
            "refusing to add them to it: move it away, or set MLFLOW_TRACKING_URI"
        )
    if any(_count(path, table) for table in tables - {"alembic_version"}):
        raise TrackingError(
            f"{shown}: an MLflow store with data but without all of MLflow's tables "
            f"(has {', '.join(sorted(tables))}); restore it from a backup"
        )
    return "incomplete"


def read_header(path: Path, shown: Path | None = None) -> bytes:
    """The file's first bytes, b"" when it is empty; TrackingError when it is not SQLite."""
    shown = shown or path
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"{shown}: cannot be read ({exc.strerror})") from exc
    if header and header != SQLITE_HEADER:
        raise TrackingError(
            f"{shown}: not a SQLite database, so not an MLflow store; move it away, or set "
            "MLFLOW_TRACKING_URI to your store"
        )
    return header


def _mlflow_table_names() -> set[str]:
    """Every table MLflow's schema defines, plus Alembic's bookkeeping."""
    from mlflow.store.tracking.dbmodels.models import Base

    return {*Base.metadata.tables, "alembic_version"}


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(
        f"file:{quote(str(path))}?mode=ro", uri=True, timeout=store.BUSY_TIMEOUT_S
    )


def _tables(path: Path, shown: Path) -> set[str]:
    try:
        with closing(connect_read_only(path)) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows}
    except sqlite3.Error as exc:
        raise TrackingError(f"{shown}: {describe_sqlite_error(exc)}") from exc


def _count(path: Path, table: str) -> int:
    with closing(connect_read_only(path)) as connection:
        (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


def create(path: Path, artifacts: str) -> None:
    """Create a store aside, then rename it into place: it exists whole or not at all."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    temp = temp_sibling(path)
    temp.unlink(missing_ok=True)
    uri = sqlite_uri(temp)
    try:
        try:
            SqlAlchemyStore(uri, artifacts)
        finally:
            # Close MLflow's pooled connections to the temp file before it is renamed.
            engine = SqlAlchemyStore._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
        with closing(sqlite3.connect(temp)) as connection:
            # WAL lets readers and a writer work at once (queued experiments, the UI).
            connection.execute("PRAGMA journal_mode=WAL")
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise TrackingError(f"{path}: cannot create the store ({os_reason(exc)})") from exc
    except Exception as exc:
        raise TrackingError(f"{path}: cannot create the store ({describe_error(exc)})") from exc
    finally:
        for leftover in (temp, *(Path(f"{temp}{end}") for end in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
    log.info("created the MLflow store %s", path)


def refuse_read_only(path: Path) -> None:
    """Refuse a store (or its folder) this process may not write: runs are written to it."""
    for target in (path, path.parent):
        if not os.access(target, os.W_OK):
            raise TrackingError(
                f"{target}: read-only, and runs are written to {path}; make it writable "
                "or set MLFLOW_TRACKING_URI to a store you can write"
            )


def check_writable(path: Path) -> None:
    """Refuse a read-only store, and wait a bounded time for another process's write lock."""
    refuse_read_only(path)
    try:
        with closing(sqlite3.connect(path, timeout=store.BUSY_TIMEOUT_S)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
    except sqlite3.Error as exc:
        raise TrackingError(f"{path}: {describe_sqlite_error(exc)}") from exc
