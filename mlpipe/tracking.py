"""MLflow tracking: where runs go, how they start and end, and what they record.

Runs go to `MLFLOW_TRACKING_URI` when set, otherwise to SQLite in `mlflow.db` at the root of
the user's workspace (not of a DVC temp copy), with artifacts in `mlartifacts/` beside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlpipe.errors import DataError, Terminated, TrackingError
from mlpipe.paths import ROOT, RUN_INFO_FILE
from mlpipe.store import (
    artifact_root,
    describe_error,
    prepare,
    shown_uri,
    sqlite_path,
    store_label,
    store_lock,
    tracking_uri,
    use_store,
)
from mlpipe.timing import bookkeeping, record

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_HOST = "mlpipe.host"
TAG_PID = "mlpipe.pid"
TAG_PID_STARTED = "mlpipe.pid_started"
SERVER_CHECK_TIMEOUT_S = 5.0
SQLITE_LOCK_TIMEOUT_S = 120.0


def _bound_http_retries() -> None:
    """Fail in seconds, not minutes, when a tracking server goes away mid-run."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_server(uri: str) -> None:
    """Raise TrackingError at once if an HTTP tracking server does not answer its health check."""
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


def check_database(uri: str) -> None:
    """Reach a database store (PostgreSQL, MySQL) within seconds, or say why not in one line.

    MLflow itself retries a refused connection for about two minutes before it gives up.
    """
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args=_connect_timeout(uri))
    except ImportError as exc:
        raise TrackingError(
            f"MLflow store {shown_uri(uri)}: its database driver is not installed "
            f"({exc.name or exc}); pip install -r requirements.txt"
        ) from exc
    except Exception as exc:
        raise TrackingError(f"MLflow store {shown_uri(uri)}: {_first_line(exc)}") from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc)
        raise TrackingError(
            f"MLflow store {shown_uri(uri)} is not reachable ({reason}); "
            "start the database or check MLFLOW_TRACKING_URI"
        ) from exc
    finally:
        engine.dispose()


def _connect_timeout(uri: str) -> dict[str, int]:
    if uri.startswith(("postgresql", "mysql")):
        return {"connect_timeout": int(SERVER_CHECK_TIMEOUT_S)}
    return {}


def check_reachable(uri: str) -> None:
    """Fail fast, in one line, when the store behind `uri` cannot be used."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _bound_http_retries()
        check_server(uri)
    elif scheme and scheme not in ("sqlite", "file", "databricks"):
        check_database(uri)


@dataclass
class Tracker:
    """An MLflow run, with the time spent in MLflow calls counted."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    seconds: float = 0.0
    calls: int = 0
    _pending: Any = None  # the last batch queued for the background writer

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time of the MLflow calls inside; turn their failures into one line."""
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        start = time.perf_counter()
        try:
            yield
        except (MlflowException, SQLAlchemyError) as exc:
            raise TrackingError(
                f"MLflow tracking store {store_label()} failed: {describe_error(exc)}"
            ) from exc
        finally:
            elapsed = time.perf_counter() - start
            self.seconds += elapsed
            self.calls += 1
            record("bookkeeping_s", elapsed)
            record("mlflow_calls_s", elapsed)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        with self.timed():
            self.client.log_batch(
                self.run_id, params=[Param(key, str(value)) for key, value in params.items()]
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self.timed():
            self.client.log_batch(self.run_id, metrics=_metrics(metrics, step))

    def log_metrics_in_background(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics for MLflow's background writer, so training never waits on the store.

        The previous batch must have landed by now (an epoch has passed): waiting for it here
        costs nothing, and a store that went away is reported one epoch late, not at the end.
        """
        with self.timed():
            self._wait()
            self._pending = self.client.log_batch(
                self.run_id, metrics=_metrics(metrics, step), synchronous=False
            )

    def flush(self) -> None:
        """Wait until every queued batch is written; raise if one failed."""
        with self.timed():
            self._wait()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        with self.timed():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_text(self, text: str, name: str) -> None:
        with self.timed():
            self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self.timed():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _metrics(metrics: Mapping[str, float], step: int | None) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]


def connect(experiment_name: str) -> tuple[MlflowClient, str]:
    """A client for the tracking store and the id of the experiment, created if need be.

    A new experiment gets an explicit artifact location in the workspace, since MLflow fixes it
    at creation: a relative default would follow the current folder into DVC's temp copies.
    """
    import mlflow  # noqa: F401 - imported here so its import time is not counted as bookkeeping

    started = time.perf_counter()
    with bookkeeping():
        connected = _connect(experiment_name)
    record("mlflow_connect_s", time.perf_counter() - started)
    return connected


def _connect(experiment_name: str) -> tuple[MlflowClient, str]:
    uri = tracking_uri()
    check_reachable(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with store_lock(uri):
            prepare(uri, write=True)
            use_store(uri)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                # Explicit, in the workspace: MLflow fixes the location at creation, and a
                # default would follow the current folder into DVC's temp copies.
                experiment_id = client.create_experiment(experiment_name, artifact_root(uri))
            elif experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
                experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
    except (MlflowException, SQLAlchemyError) as exc:
        raise TrackingError(f"MLflow store {store_label()}: {describe_error(exc)}") from exc
    close_orphaned_runs(client, experiment_id)
    return client, experiment_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner_tags() -> dict[str, str]:
    """Host, pid and the pid's start time: enough for a later start to tell the owner died."""
    pid = os.getpid()
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(pid),
        TAG_PID_STARTED: f"{_process_started(pid) or 0:.3f}",
    }


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of this host whose process is gone (a `kill -9`)."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get(TAG_PID, ""))
            started = float(tags.get(TAG_PID_STARTED, "0"))
        except ValueError:
            continue
        alive_since = _process_started(pid)
        if alive_since is not None and abs(alive_since - started) < 1.0:
            continue  # Still running: a concurrent stage, not an orphan.
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning(
            "run %s was left RUNNING by a process that died; marked KILLED", run.info.run_id
        )
        closed.append(run.info.run_id)
    return closed


def git_commit(root: Path = ROOT) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def run_name(client: MlflowClient, experiment_id: str, commit: str | None) -> str:
    """A name people can tell apart: the DVC experiment's, else `<commit>-<n>`; never reused.

    MLflow's own generator draws from `random`, which training seeds: every plain `dvc repro`
    would get the same name. Call under the store lock, so runs starting together differ.
    """
    from mlflow.entities import ViewType

    experiment = os.environ.get("DVC_EXP_NAME")
    base = experiment or (commit[:7] if commit else "run")
    quoted = base.replace("'", "''")
    taken = {
        run.info.run_name
        for run in client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_name LIKE '{quoted}%'",
            run_view_type=ViewType.ALL,
            max_results=50_000,
        )
    }
    if experiment and base not in taken:
        return base
    pattern = re.compile(re.escape(base) + r"-(\d+)")
    numbers = [int(found.group(1)) for name in taken if (found := pattern.fullmatch(name or ""))]
    return f"{base}-{max(numbers, default=1 if experiment else 0) + 1}"


def data_digest(paths: list[Path]) -> str:
    """One SHA-256 over the given files' names and contents: names the exact data a run saw."""
    from mlpipe.datasets import sha256_file

    digest = hashlib.sha256()
    with bookkeeping():
        for path in sorted(paths):
            digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def run_tags(extra: Mapping[str, str]) -> dict[str, str]:
    """Tags every training run carries: code, DVC experiment, owner process."""
    tags = {"mlflow.source.name": "stages/train.py", "mlflow.source.type": "LOCAL", **owner_tags()}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    tags.update(extra)
    return tags


@contextmanager
def tracked_run(
    client: MlflowClient, experiment_id: str, tags: Mapping[str, str]
) -> Iterator[Tracker]:
    """Start a run; end it FINISHED, FAILED on an exception, KILLED on SIGINT or SIGTERM.

    The run is also made the active one, so MLflow's flavour functions (log_model) attach to it.
    Under `dvc exp run` the run is named after the DVC experiment.
    """
    import mlflow

    use_store(tracking_uri())
    with store_lock(tracking_uri()):
        name = run_name(client, experiment_id, tags.get("mlflow.source.git.commit"))
        run = client.create_run(experiment_id, tags=dict(tags), run_name=name)
    tracker = Tracker(client, run.info.run_id, experiment_id)
    mlflow.start_run(run_id=run.info.run_id)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            # Land what was queued before the failure, if the store (maybe what failed) allows.
            with suppress(Exception):
                tracker._wait()
        try:
            mlflow.end_run(status)
        except Exception as exc:  # The store may be the thing that failed; say so, keep the error.
            log.error("could not mark run %s %s: %s", run.info.run_id, status, _first_line(exc))
        log.info("MLflow run %s ended %s", run.info.run_id, status)


@contextmanager
def attached_run(client: MlflowClient, run_id: str) -> Iterator[Tracker]:
    """Continue logging to an existing run (evaluate and plot add to train's run)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} (from models/run.json) is not in {tracking_uri()}; "
            "run the train stage again"
        ) from None
    yield Tracker(client, run_id, run.info.experiment_id)


def close_orphans_in_workspace() -> None:
    """At the start of any stage: close runs a killed process left RUNNING in mlflow.db.

    A plain SQLite read tells whether there is anything to do, so stages that never track
    (download, preprocess) pay nothing for MLflow unless a run needs closing.
    """
    path = sqlite_path(tracking_uri())
    if path is None or not path.is_file():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            (running,) = connection.execute(
                "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE runs.status = 'RUNNING' AND tags.key = ? AND tags.value = ?",
                (TAG_HOST, socket.gethostname()),
            ).fetchone()
    except sqlite3.Error:
        return  # No tables yet, or not an MLflow store: nothing of ours to close.
    if not running:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    for experiment in client.search_experiments():
        close_orphaned_runs(client, experiment.experiment_id)


def read_run_info() -> dict[str, Any]:
    """The train stage's record of its MLflow run (models/run.json), checked."""
    import json

    try:
        info = json.loads(RUN_INFO_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{RUN_INFO_FILE}: missing; run the train stage first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{RUN_INFO_FILE}: unreadable ({exc}); run the train stage again") from None
    needed = {"run_id", "experiment_name", "registered_model_name", "registered_model_version"}
    missing = needed - set(info) if isinstance(info, dict) else needed
    if missing:
        raise DataError(f"{RUN_INFO_FILE}: lacks {sorted(missing)}; run the train stage again")
    return info
