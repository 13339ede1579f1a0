"""The MLflow tracking store: where it is, and that it is sound before MLflow opens it.

Runs go to `MLFLOW_TRACKING_URI` when set, otherwise to SQLite in `mlflow.db` at the root of
the user's workspace (not of a DVC temp copy). A relative SQLite URI (`sqlite:///mlflow.db`)
resolves against that same root, so a queued experiment's runs land where the user will look.
Artifacts live in `mlartifacts/` beside the SQLite file.

MLflow opens whatever file it is given and adds its tables to it; a kill while it does leaves a
store that every later run rejects. So before MLflow sees a SQLite store, this module checks
that the file is one (or creates it aside and renames it into place), that it can be written,
and that no other process holds it locked; and it follows a workspace that was moved or copied.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from mlpipe.atomic import remove_stale_temps, temp_sibling
from mlpipe.errors import TrackingError, first_line, redact
from mlpipe.server_access import check_login, refusal

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SQLITE_HEADER = b"SQLite format 3\x00"
# MLflow's own tables: a SQLite file without them is someone else's database.
MLFLOW_TABLES = ("alembic_version", "experiments", "runs")
LOCK_TIMEOUT_S = 120.0  # how long a stage waits for another one creating the store
BUSY_TIMEOUT_S = 30.0  # how long a stage waits for a write lock held by another process
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


SERVER_CHECK_TIMEOUT_S = 5.0  # a tracking server or database that does not answer by then is down


def tracking_uri(workspace: Path) -> str:
    """The store's URI, absolute: `MLFLOW_TRACKING_URI`, else the workspace's `mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return sqlite_uri(workspace / STORE_FILE)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        relative, _, query = uri.removeprefix("sqlite:///").partition("?")
        if relative and not relative.startswith(":memory:"):
            absolute = (workspace / unquote(relative)).resolve()
            return sqlite_uri(absolute) + (f"?{query}" if query else "")
    return uri


# SQLAlchemy reads these in a SQLite URI's path as a query, a fragment or an escape, and MLflow
# makes folders from the same URI without decoding it: a store cannot live below them.
UNSAFE_PATH_CHARACTERS = "%?#"


def sqlite_uri(path: Path) -> str:
    """The URI of a SQLite file; TrackingError if the path holds characters a URI would eat."""
    unsafe = sorted({char for char in str(path) if char in UNSAFE_PATH_CHARACTERS})
    if unsafe:
        raise TrackingError(
            f"{path}: the MLflow store cannot live in a folder whose path holds "
            f"{' or '.join(unsafe)} (SQLAlchemy reads them as URL syntax); move the workspace, or "
            "set MLFLOW_TRACKING_URI to a store elsewhere"
        )
    return f"sqlite:///{path}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite store URI; None for any other kind of store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def artifact_root(uri: str, workspace: Path | None = None) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite file; for a database without a
    server, in the workspace (MLflow's default would follow the current folder into DVC's
    temp copies); a server chooses its own."""
    path = sqlite_path(uri)
    if path is not None:
        return (path.parent / ARTIFACTS_DIR).as_uri()
    if workspace is not None and not uri.startswith(("http://", "https://", "databricks")):
        return (workspace / ARTIFACTS_DIR).as_uri()
    return None


def shown_uri(uri: str) -> str:
    """`uri` with its credentials masked, fit for logs and error messages."""
    return redact(uri)


def store_label(uri: str) -> str:
    """How messages name the store: its file for SQLite, its URI (no password) otherwise."""
    path = sqlite_path(uri)
    return str(path) if path is not None else shown_uri(uri)


def use_store(uri: str) -> None:
    """Point MLflow, and anything it starts, at the resolved store."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise, across processes, what must not interleave on one store (creation, promotion).

    The lock file sits beside a SQLite store; for a server or database, in this user's temp
    folder under a name made from the URI, which covers the parallel jobs of one machine's DVC
    queue.
    """
    import hashlib

    from filelock import FileLock, Timeout

    path = sqlite_path(uri)
    if path is not None:
        lock = Path(f"{path}.lock")
    else:
        name = hashlib.sha256(uri.encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"mlpipe-store-{os.getuid()}-{name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock, timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout as exc:
        raise TrackingError(
            f"{lock}: held by another process for over {LOCK_TIMEOUT_S:.0f} s; "
            "wait for it, or remove the file if no pipeline is running"
        ) from exc


def _bound_http_retries() -> None:
    """Fail in seconds, not minutes, when a tracking server goes away mid-run."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(uri: str, setting: str = "MLFLOW_TRACKING_URI") -> None:
    """Fail fast, in one line, when the server or database behind `uri` (from `setting`)
    cannot be used."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={shown_uri(uri)} names a file store, which MLflow no longer "
            "develops; use sqlite:///mlflow.db, a server (http://host:port) or a database URI"
        )
    if scheme in ("http", "https"):
        _bound_http_retries()
        _check_server(uri)
    elif scheme not in ("sqlite", "databricks"):
        _check_database(uri, setting)


def _check_server(uri: str) -> None:
    """Raise TrackingError at once if a tracking server does not answer its health check."""
    import requests

    try:
        reply = requests.get(uri.rstrip("/") + "/health", timeout=SERVER_CHECK_TIMEOUT_S)
        reply.raise_for_status()
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.HTTPError):
            reason = f"HTTP {exc.response.status_code}"
        raise TrackingError(
            f"MLflow tracking server {shown_uri(uri)} (MLFLOW_TRACKING_URI) is not reachable "
            f"({reason}); start it, or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from exc
    check_login(uri)


def _check_database(uri: str, setting: str) -> None:
    """Reach a database store (PostgreSQL, MySQL) within seconds, or say why not in one line.

    MLflow itself retries a refused connection for about two minutes before it gives up.
    """
    try:
        import sqlalchemy

        timeout = {"connect_timeout": int(SERVER_CHECK_TIMEOUT_S)}
        engine = sqlalchemy.create_engine(uri, connect_args=timeout)
    except ImportError as exc:
        raise TrackingError(
            f"MLflow store {shown_uri(uri)}: its database driver is not installed "
            f"({exc.name or exc}); pip install -r requirements.txt"
        ) from exc
    except Exception as exc:
        raise TrackingError(f"MLflow store {shown_uri(uri)}: {first_line(exc)}") from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = _without_credentials(first_line(getattr(exc, "orig", None) or exc), uri)
        hint = " (a password belongs in ~/.pgpass)" if "no password supplied" in reason else ""
        raise TrackingError(
            f"MLflow store {shown_uri(uri)} is not reachable ({reason}); "
            f"start the database or check {setting}{hint}"
        ) from exc
    finally:
        engine.dispose()


def _without_credentials(text: str, uri: str) -> str:
    """A driver's message with every piece of the URI's credentials masked: a password that
    holds `@` is split by the driver, which may then quote a piece of it as a host name."""
    found = re.search(r"://([^\s]*)@", uri)
    pieces = re.split(r"[:@/]", found.group(1)) if found else []
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 3:
            text = text.replace(piece, "***")
    return redact(text)


def prepare(uri: str, *, write: bool = True) -> None:
    """Make sure a SQLite store is sound before MLflow opens it; create it if `write`.

    Raises TrackingError, naming the file, for anything that is not an MLflow store, a store
    that cannot be written (when `write`), and one locked by another process past a bounded
    wait. Other stores are left to MLflow.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise TrackingError(f"{path}: is a directory, not an MLflow store; move it away")
    if path.exists() and not path.is_file():
        raise TrackingError(f"{path}: not a regular file (a pipe or a device), not an MLflow store")
    state = inspect_store(path) if path.exists() else "absent"
    if state == "absent" and not write:
        raise TrackingError(f"{path}: no MLflow store here; run the pipeline first")
    if state in ("absent", "empty", "incomplete"):
        if state == "incomplete":
            log.warning("%s: incomplete store without runs (a killed start); rebuilding it", path)
        create(path, artifact_root(uri) or "")
    if write:
        check_writable(path)
    # Readers (predict) fix a moved store's locations too, where they may write it.
    relocate(path, write=write or _writable(path))


def inspect_store(path: Path) -> str:
    """`empty`, `mlflow`, or `incomplete` (MLflow's tables half made, no runs); else raise."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not header:
        return "empty"
    if header != SQLITE_HEADER:
        raise TrackingError(
            f"{path}: not a SQLite database, so not an MLflow store; move it away, or set "
            "MLFLOW_TRACKING_URI to your store"
        )
    tables = _tables(path)
    if all(name in tables for name in MLFLOW_TABLES):
        return "mlflow"
    foreign = tables - _mlflow_table_names()
    if foreign or not tables:
        raise TrackingError(
            f"{path}: a SQLite database without MLflow's tables, not an MLflow store; "
            "refusing to add them to it: move it away, or set MLFLOW_TRACKING_URI"
        )
    if any(_count(path, table) for table in tables - {"alembic_version"}):
        raise TrackingError(
            f"{path}: an MLflow store with data but without all of MLflow's tables "
            f"(has {', '.join(sorted(tables))}); restore it from a backup"
        )
    return "incomplete"


def _mlflow_table_names() -> set[str]:
    """Every table MLflow's schema defines, plus Alembic's bookkeeping."""
    from mlflow.store.tracking.dbmodels.models import Base

    return {*Base.metadata.tables, "alembic_version"}


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)


def _tables(path: Path) -> set[str]:
    try:
        with closing(_connect_ro(path)) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows}
    except sqlite3.Error as exc:
        raise TrackingError(f"{path}: {describe_sqlite_error(exc)}") from exc


def _count(path: Path, table: str) -> int:
    with closing(_connect_ro(path)) as connection:
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
        raise TrackingError(f"{path}: cannot create the store ({_os_reason(exc)})") from exc
    except Exception as exc:
        raise TrackingError(f"{path}: cannot create the store ({describe_error(exc)})") from exc
    finally:
        for leftover in (temp, *(Path(f"{temp}{end}") for end in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
    log.info("created the MLflow store %s", path)


@contextmanager
def readable(uri: str) -> Iterator[str]:
    """A URI that MLflow can read the store through, even where the store is read-only.

    A store in WAL mode cannot be opened where its folder may not be written; a reader then
    gets a snapshot of it in a temp folder (its artifact locations are absolute, so they still
    lead to the artifacts).
    """
    path = sqlite_path(uri)
    if path is None or _writable(path):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="mlpipe-store-") as scratch:
        snapshot = Path(scratch) / path.name
        try:
            with closing(_connect_ro(path)) as source, closing(sqlite3.connect(snapshot)) as copy:
                source.backup(copy)
        except sqlite3.Error:
            shutil.copyfile(path, snapshot)
            for end in ("-wal", "-shm"):
                if Path(f"{path}{end}").is_file():
                    shutil.copyfile(f"{path}{end}", f"{snapshot}{end}")
        yield sqlite_uri(snapshot)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def check_writable(path: Path) -> None:
    """Refuse a read-only store, and wait a bounded time for another process's write lock."""
    for target in (path, path.parent):
        if not os.access(target, os.W_OK):
            raise TrackingError(
                f"{target}: read-only, and runs are written to {path}; make it writable "
                "or set MLFLOW_TRACKING_URI to a store you can write"
            )
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
    except sqlite3.Error as exc:
        raise TrackingError(f"{path}: {describe_sqlite_error(exc)}") from exc


def describe_sqlite_error(exc: BaseException) -> str:
    """What a SQLite failure means for the user, on one line."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"locked by another process for over {BUSY_TIMEOUT_S:.0f} s; "
            "wait for it to finish, or stop it"
        )
    if "disk is full" in text or "No space left" in text:
        return "no space left on device; free some space and run again"
    if "readonly" in text or "read-only" in text:
        return "read-only; make it (and its folder) writable"
    if "disk I/O error" in text:
        return "disk I/O error (is the disk full or failing?); free some space and run again"
    if "not a database" in text:
        return "not a SQLite database, so not an MLflow store; move it away"
    if "unable to open" in text:
        return "cannot be opened; check that its folder exists and is writable"
    return first_line(exc)


def tracking_failure(exc: BaseException, uri: str) -> str:
    """The one line for an MLflow call on `uri` that failed: a refused login or permission
    says what to set or ask for; anything else names the store and the reason."""
    refused = refusal(exc, uri)
    if refused:
        return refused
    failing = re.search(r"too many (5\d\d) error responses", str(exc))
    if failing:
        return (
            f"MLflow tracking server {shown_uri(uri)} answers HTTP {failing.group(1)} (is its "
            "database down?); ask its admin to check the server's log, then run again"
        )
    return f"MLflow tracking store {store_label(uri)} failed: {describe_error(exc)}"


def describe_error(exc: BaseException) -> str:
    """The useful part of an MLflow or store error: the OS or SQLite reason, else line one."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    if found:
        return found.group(0).strip()
    described = describe_sqlite_error(exc)
    return described[:300]


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "no space left on device; free some space and run again"
    return exc.strerror or str(exc)


def relocate(path: Path, *, write: bool = True) -> None:
    """Follow a workspace that was moved or copied: point its store at its own artifacts.

    MLflow records artifact locations as absolute paths. After `mv` or `cp -a` of a workspace,
    they still name the old folder, where new runs would write and from where the champion
    would (fail to) load. The store beside its artifacts is the workspace's own, so its
    locations under the old folder are rewritten to the new one, in one transaction.
    """
    root = path.parent.resolve()
    old_roots = {_workspace_of(location) for location in _experiment_locations(path)}
    old_roots.discard(None)
    old_roots.discard(root)
    for old in sorted(old_roots):
        if (old / STORE_FILE).exists() and (old / STORE_FILE).samefile(path):
            continue  # The same folder under another name (a symlink): nothing moved.
        if (old / ARTIFACTS_DIR).is_dir() and not (root / ARTIFACTS_DIR).is_dir():
            raise TrackingError(
                f"{path}: was moved from {old} without its {ARTIFACTS_DIR}/ folder; move "
                f"{old / ARTIFACTS_DIR} to {root / ARTIFACTS_DIR} and run again"
            )
        if not write:
            raise TrackingError(
                f"{path}: its artifact locations name {old}, where it was before it was moved "
                f"to {root}, and it is read-only here; make it writable and run again"
            )
        changed = _rewrite_locations(path, old, root)
        log.warning(
            "%s: the workspace moved from %s to %s; %d artifact locations now point here",
            path,
            old,
            root,
            changed,
        )


def _workspace_of(location: str) -> Path | None:
    """The workspace folder of an experiment location this pipeline made, else None."""
    found = _WORKSPACE_LOCATION.match(location)
    if found is None:
        return None
    return Path(unquote(found.group(2)) if found.group(1) else found.group(2))


def _experiment_locations(path: Path) -> list[str]:
    try:
        with closing(_connect_ro(path)) as connection:
            rows = connection.execute("SELECT artifact_location FROM experiments")
            return [location for (location,) in rows if location]
    except sqlite3.Error as exc:
        raise TrackingError(f"{path}: {describe_sqlite_error(exc)}") from exc


def _rewrite_locations(path: Path, old: Path, new: Path) -> int:
    """Replace the `old` folder by `new` in every stored location, plain path or file URI."""
    pairs = [(str(old), str(new)), (old.as_uri(), new.as_uri())]
    changed = 0
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as connection:
            columns = {
                (table, column)
                for table in {table for table, _ in LOCATION_COLUMNS}
                for (_, column, *_) in connection.execute(f"PRAGMA table_info({table})")
            }
            missing = [f"{t}.{c}" for t, c in LOCATION_COLUMNS if (t, c) not in columns]
            if missing:
                raise TrackingError(
                    f"{path}: moved from {old} to {new}, but this MLflow schema lacks "
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
        raise TrackingError(f"{path}: {describe_sqlite_error(exc)}") from exc
    return changed


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
