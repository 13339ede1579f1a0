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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import TrackingError
from mlpipe.tracking.relocation import relocate_copy
from mlpipe.tracking.sqlite_store import check_file, inspect_store
from mlpipe.tracking.store import sqlite_path, sqlite_uri

# A stage writing the store while it is copied changes it; the copy is made again, this often.
COPY_ATTEMPTS = 5
RETRY_WAIT_S = 0.1


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
        raise TrackingError(f"{path}: no MLflow store here; run the pipeline first")
    with tempfile.TemporaryDirectory(prefix="mlpipe-store-") as scratch:
        copy = Path(scratch) / path.name
        _copy_as_of_one_moment(path, copy)
        if inspect_store(copy, shown=path) != "mlflow":
            raise TrackingError(f"{path}: an MLflow store without runs yet; run the pipeline first")
        yield Snapshot(sqlite_uri(copy), tuple(relocate_copy(path, copy)))


def _copy_as_of_one_moment(path: Path, copy: Path) -> None:
    """Copy the database and its write-ahead log as both were at one moment: again when either
    changed while they were copied (a stage writing the store meanwhile)."""
    journal, copied_journal = Path(f"{path}-wal"), Path(f"{copy}-wal")
    for _ in range(COPY_ATTEMPTS):
        before = _stamps(path, journal)
        try:
            shutil.copyfile(path, copy)
            if journal.exists():
                shutil.copyfile(journal, copied_journal)
            else:
                copied_journal.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # the journal went away between the check and the copy: a checkpoint
        except OSError as exc:
            raise TrackingError(_copy_failure(path, copy, exc)) from exc
        else:
            if _stamps(path, journal) == before:
                return
        time.sleep(RETRY_WAIT_S)
    raise TrackingError(
        f"{path}: changed each of {COPY_ATTEMPTS} times it was read (a stage is writing it); "
        "run again once it is done"
    )


def _stamps(*paths: Path) -> tuple[tuple[int, int] | None, ...]:
    stamps = []
    for path in paths:
        try:
            found = path.stat()
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((found.st_size, found.st_mtime_ns))
    return tuple(stamps)


def _copy_failure(path: Path, copy: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"{path}: no space left in {copy.parent.parent} to read it through a copy; free "
            "some space there, or set TMPDIR to a folder with room"
        )
    return f"{path}: cannot be read ({exc.strerror or exc})"
