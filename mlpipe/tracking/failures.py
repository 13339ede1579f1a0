"""What a failed MLflow or SQLite call means for the user, on one line."""

from __future__ import annotations

import re

from mlpipe.errors import first_line
from mlpipe.tracking import store
from mlpipe.tracking.server_access import refusal
from mlpipe.tracking.store import shown_uri, store_label


def describe_sqlite_error(exc: BaseException) -> str:
    """What a SQLite failure means for the user, on one line."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"locked by another process for over {store.BUSY_TIMEOUT_S:.0f} s; "
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
    if "/mlflow-artifacts/" in str(exc) and (failing or "timed out" in str(exc)):
        # Served artifacts: the request that failed is the server's, to its artifact store.
        answer = f"HTTP {failing.group(1)}" if failing else "no answer in time"
        return (
            f"MLflow tracking server {shown_uri(uri)} could not store or read an artifact "
            f"({answer} from /mlflow-artifacts/: its artifact store, an S3 bucket or a "
            "folder, failed); ask its admin to check the server's log and that store, then "
            "run again"
        )
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


def os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "no space left on device; free some space and run again"
    return exc.strerror or str(exc)
