"""What a command that only reads (predict, ui) opens: a copy of a SQLite store, never the store.

Opening a SQLite store, even read-only, leaves side files (`-wal`, `-shm`) beside it and may
fold its journal into it; MLflow adds its tables to a file that lacks them; and a moved
workspace's store would be rewritten to follow it. A reader must change nothing of the
workspace, so it copies the store's files byte for byte, without opening them, into a temp
folder, checks the copy, points the copy (not the store) at the workspace's own artifacts when
the workspace was moved, and hands MLflow the copy. A server or database store is read where
it is.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import TrackingError
from mlpipe.paths import scratch_dir
from mlpipe.tracking import store
from mlpipe.tracking.relocation import relocate
from mlpipe.tracking.sqlite_store import check_file, inspect_store, read_header
from mlpipe.tracking.store import sqlite_path, sqlite_uri

# A stage writing the store while it is copied changes it: the copy is made again, after a
# wait that doubles from this, for up to the store's busy timeout.
RETRY_WAIT_S = 0.05
# The files beside a database that hold what is not yet in it.
JOURNALS = ("-wal", "-journal")
NONE_HERE = "no MLflow store here; run the pipeline first"


@dataclass(frozen=True)
class Snapshot:
    """The store as a reader sees it: the URI to give MLflow, and where its workspace was
    before it was moved (empty when it was not)."""

    uri: str
    moved_from: tuple[Path, ...] = ()


@contextmanager
def reading(uri: str) -> Iterator[Snapshot]:
    """The store at `uri` for reading, valid inside the block.

    For SQLite, a copy made for this reader (removed at the end); TrackingError, naming the
    user's file, when there is no MLflow store there or it cannot be read.
    """
    path = sqlite_path(uri)
    if path is None:
        yield Snapshot(uri)
        return
    check_file(path)
    if not path.exists():
        raise TrackingError(f"{path}: {NONE_HERE}")
    read_header(path)  # someone else's file is named at once, not copied
    with scratch_dir("store") as scratch:
        copy = Path(scratch) / path.name
        _copy_as_of_one_moment(path, copy)
        if inspect_store(copy, shown=path) != "mlflow":
            raise TrackingError(f"{path}: an MLflow store without runs yet; run the pipeline first")
        yield Snapshot(sqlite_uri(copy), tuple(relocate(path, copy)))


def _copy_as_of_one_moment(path: Path, copy: Path) -> None:
    """Copy the database and its journal (a write-ahead log, or a rollback journal a writer
    left) as all were at one moment: again, for up to `BUSY_TIMEOUT_S`, when any changed while
    they were copied (a stage writing the store meanwhile) or the copy is not whole."""
    real = path.resolve()  # SQLite keeps a linked store's journal beside the file it links to
    sides = [Path(f"{real}{end}") for end in JOURNALS]
    deadline = time.monotonic() + store.BUSY_TIMEOUT_S
    wait = RETRY_WAIT_S
    while True:
        before = _stamps(real, *sides)
        try:
            shutil.copyfile(real, copy)
            for side, end in zip(sides, JOURNALS, strict=True):
                copied = Path(f"{copy}{end}")
                if side.exists():
                    shutil.copyfile(side, copied)
                else:
                    copied.unlink(missing_ok=True)
        except FileNotFoundError as exc:
            if not path.exists():
                raise TrackingError(
                    f"{path}: no MLflow store here; run the pipeline first"
                ) from exc
            # A journal went away between the check and the copy (a checkpoint): again.
        except OSError as exc:
            raise TrackingError(_copy_failure(path, copy, exc)) from exc
        else:
            if _stamps(real, *sides) == before:
                if _whole(copy):
                    return
                raise TrackingError(
                    f"{path}: damaged (SQLite's integrity check of it fails); restore it from a "
                    "backup, or move it away to start a new store"
                )
        if time.monotonic() + wait > deadline:
            raise TrackingError(
                f"{path}: kept changing while it was read for {store.BUSY_TIMEOUT_S:.0f} s (a "
                "stage is writing it); run again once it is done"
            )
        time.sleep(wait)
        wait = min(wait * 2, 1.0)


def _stamps(*paths: Path) -> tuple[tuple[int, ...] | None, ...]:
    """What changes when a file is written, renamed over or truncated, even within one tick."""
    stamps = []
    for path in paths:
        try:
            found = path.stat()
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns))
    return tuple(stamps)


def _whole(copy: Path) -> bool:
    """Whether the copy reads as a sound SQLite database (its journal applied, in the copy)."""
    try:
        with closing(sqlite3.connect(copy)) as connection:
            return connection.execute("PRAGMA quick_check").fetchone() == ("ok",)
    except sqlite3.DatabaseError:
        return False


def _copy_failure(path: Path, copy: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"{path}: no space left in {copy.parent.parent} to read it through a copy; free "
            "some space there, or set TMPDIR to a folder with room"
        )
    return f"{exc.filename or path}: cannot be read ({exc.strerror or exc})"
