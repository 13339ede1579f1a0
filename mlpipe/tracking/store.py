"""The MLflow tracking store: where it is, how messages name it, and the lock beside it.

Runs go to `MLFLOW_TRACKING_URI` when set, otherwise to SQLite in `mlflow.db` at the root of
the user's workspace (not of a DVC temp copy). A relative SQLite URI (`sqlite:///mlflow.db`)
resolves against that same root, so a queued experiment's runs land where the user will look.
Artifacts live in `mlartifacts/` beside the SQLite file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

from mlpipe.errors import TrackingError, redact

STORE_FILE = "mlflow.db"

ARTIFACTS_DIR = "mlartifacts"

BUSY_TIMEOUT_S = 30.0  # how long a stage waits for a write lock held by another process
LOCK_TIMEOUT_S = 120.0  # how long a stage waits for another one creating the store


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
def using_store(uri: str) -> Iterator[None]:
    """`use_store(uri)` for a while (a reader's copy of the store), then MLflow as before."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    use_store(uri)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        mlflow.set_tracking_uri(saved)
        mlflow.set_registry_uri(saved)


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
