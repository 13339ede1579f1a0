"""Whether a tracking server or database can be used, found out in seconds, said in one line.

MLflow itself retries a refused connection for minutes before it gives up; a stage checks
first, so a server that is down or refuses the login fails it at once.
"""

from __future__ import annotations

import os
import re

from mlpipe.errors import TrackingError, first_line, redact
from mlpipe.tracking.server_access import check_login
from mlpipe.tracking.store import shown_uri

SERVER_CHECK_TIMEOUT_S = 5.0  # a tracking server or database that does not answer by then is down


def _bound_http_retries() -> None:
    """Fail in seconds, not minutes, when a tracking server goes away mid-run."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(
    uri: str, setting: str = "MLFLOW_TRACKING_URI", what: str = "MLflow store"
) -> None:
    """Fail fast, in one line, when the server or database behind `uri` (from `setting`, the
    `what` of the message) cannot be used."""
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
        _check_database(uri, setting, what)


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


def _check_database(uri: str, setting: str, what: str) -> None:
    """Reach a database store (PostgreSQL, MySQL) within seconds, or say why not in one line.

    MLflow itself retries a refused connection for about two minutes before it gives up.
    """
    try:
        import sqlalchemy

        timeout = {"connect_timeout": int(SERVER_CHECK_TIMEOUT_S)}
        engine = sqlalchemy.create_engine(uri, connect_args=timeout)
    except ImportError as exc:
        raise TrackingError(
            f"{what} {shown_uri(uri)}: its database driver is not installed "
            f"({exc.name or exc}); pip install -r requirements.txt"
        ) from exc
    except Exception as exc:
        raise TrackingError(f"{what} {shown_uri(uri)}: {first_line(exc)}") from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = _without_credentials(first_line(getattr(exc, "orig", None) or exc), uri)
        hint = " (a password belongs in ~/.pgpass)" if "no password supplied" in reason else ""
        raise TrackingError(
            f"{what} {shown_uri(uri)} is not reachable ({reason}); "
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
