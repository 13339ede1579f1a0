"""Following a workspace that was moved or copied: its store pointed at its own artifacts.

MLflow records artifact locations as absolute paths. After `mv` or `cp -a` of a workspace,
they still name the old folder, where new runs would write and from where the champion
would (fail to) load. The store beside its artifacts is the workspace's own, so its
locations under the old folder are rewritten to the new one, in one transaction: by the next
stage that writes to the store, never by a command that only reads (those read a relocated
snapshot, `mlpipe.tracking.snapshot`).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote

from mlpipe.errors import TrackingError
from mlpipe.tracking import store
from mlpipe.tracking.failures import describe_sqlite_error
from mlpipe.tracking.sqlite_store import connect_read_only
from mlpipe.tracking.store import ARTIFACTS_DIR, STORE_FILE

log = logging.getLogger(__name__)

# Where MLflow keeps absolute artifact locations: rewritten when the workspace moved.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)

# The location of an experiment created by this pipeline: `<workspace>/mlartifacts`.
_WORKSPACE_LOCATION = re.compile(rf"^(file://)?(/.*)/{ARTIFACTS_DIR}$")


def relocate(database: Path, copy: Path | None = None) -> list[Path]:
    """Point a moved or copied workspace's store at its own artifacts; return its former places.

    Writing stages rewrite `database` itself, with a log line. A reader passes `copy`, its
    snapshot of `database`: only the copy is rewritten, quietly, and `database` is left as it is.
    """
    root = database.parent.resolve()
    former = former_places(database, copy)
    for old in former:
        changed = rewrite_locations(copy or database, old, root, shown=database)
        if copy is None:
            log.warning(
                "%s: the workspace moved from %s to %s; %d artifact locations now point here",
                database,
                old,
                root,
                changed,
            )
    return former


def former_places(database: Path, copy: Path | None = None) -> list[Path]:
    """The folders the workspace of `database` was in before it was moved or copied (read from
    `copy`, a snapshot of it, when given); none for a store that never moved.

    Raises TrackingError when the workspace moved without its artifacts folder: no run of it
    could be read or written then.
    """
    root = database.parent.resolve()
    locations = _experiment_locations(copy or database, database)
    former = {_workspace_of(location) for location in locations} - {None, root}
    places = []
    for old in sorted(former):
        if (old / STORE_FILE).exists() and (old / STORE_FILE).samefile(database):
            continue  # The same folder under another name (a symlink): nothing moved.
        if (old / ARTIFACTS_DIR).is_dir() and not (root / ARTIFACTS_DIR).is_dir():
            verb = "copy" if (old / STORE_FILE).exists() else "move"
            raise TrackingError(
                f"{database}: was moved from {old} without its {ARTIFACTS_DIR}/ folder; {verb} "
                f"{old / ARTIFACTS_DIR} to {root / ARTIFACTS_DIR} and run again"
            )
        places.append(old)
    return places


def _workspace_of(location: str) -> Path | None:
    """The workspace folder of an experiment location this pipeline made, else None."""
    found = _WORKSPACE_LOCATION.match(location)
    if found is None:
        return None
    return Path(unquote(found.group(2)) if found.group(1) else found.group(2))


def _experiment_locations(path: Path, shown: Path) -> list[str]:
    try:
        with closing(connect_read_only(path)) as connection:
            rows = connection.execute("SELECT artifact_location FROM experiments")
            return [location for (location,) in rows if location]
    except sqlite3.Error as exc:
        raise TrackingError(f"{shown}: {describe_sqlite_error(exc)}") from exc


def rewrite_locations(path: Path, old: Path, new: Path, shown: Path | None = None) -> int:
    """Replace the `old` folder by `new` in every stored location, plain path or file URI."""
    shown = shown or path
    pairs = [(str(old), str(new)), (old.as_uri(), new.as_uri())]
    changed = 0
    try:
        with closing(sqlite3.connect(path, timeout=store.BUSY_TIMEOUT_S)) as connection:
            columns = {
                (table, column)
                for table in {table for table, _ in LOCATION_COLUMNS}
                for (_, column, *_) in connection.execute(f"PRAGMA table_info({table})")
            }
            missing = [f"{t}.{c}" for t, c in LOCATION_COLUMNS if (t, c) not in columns]
            if missing:
                raise TrackingError(
                    f"{shown}: moved from {old} to {new}, but this MLflow schema lacks "
                    f"{', '.join(missing)}; move the workspace back to {old}"
                )
            with connection:
                for table, column in LOCATION_COLUMNS:
                    for before, after in pairs:
                        changed += connection.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR {column} LIKE ? ESCAPE '\\'",
                            (after, len(before) + 1, before, _like_prefix(before + "/")),
                        ).rowcount
    except sqlite3.Error as exc:
        raise TrackingError(f"{shown}: {describe_sqlite_error(exc)}") from exc
    return changed


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
