"""MLflow tracking: where runs go, how they start and end, and what they record.

Runs go to `MLFLOW_TRACKING_URI` when set, otherwise to SQLite in `mlflow.db` at the root of
the user's workspace (not of a DVC temp copy), with artifacts in `mlartifacts/` beside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
from mlpipe.paths import ROOT, RUN_INFO_FILE, workspace_root
from mlpipe.timing import bookkeeping, record

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_HOST = "mlpipe.host"
TAG_PID = "mlpipe.pid"
TAG_PID_STARTED = "mlpipe.pid_started"
SERVER_CHECK_TIMEOUT_S = 5.0
SQLITE_LOCK_TIMEOUT_S = 120.0


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the workspace's own SQLite file, as an absolute URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{workspace_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (workspace_root() / "mlartifacts").as_uri()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


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
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable ({reason}); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a SQLite store: schema creation and experiment creation.

    Several processes opening an empty mlflow.db at once would race to create its tables; the
    lock makes one do it while the others wait. WAL lets readers and a writer work together.
    """
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock", timeout=SQLITE_LOCK_TIMEOUT_S):
            with sqlite3.connect(path, timeout=60) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
            yield
    except Timeout:
        raise TrackingError(f"{path}.lock: held by another process for over 2 minutes") from None


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

        start = time.perf_counter()
        try:
            yield
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow tracking store {tracking_uri()} failed: {_reason(exc)}"
            ) from None
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
    if urlparse(uri).scheme in ("http", "https"):
        _bound_http_retries()
        check_server(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                # A tracking server chooses (and may proxy) its own artifact store.
                location = artifact_root() if _sqlite_path(uri) else None
                experiment_id = client.create_experiment(experiment_name, location)
            elif experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
                experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
            # Touch the registry too, so its tables are created under the lock as well.
            client.search_registered_models(max_results=1)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {_first_line(exc)}") from None
    close_orphaned_runs(client, experiment_id)
    return client, experiment_id


def _reason(exc: BaseException) -> str:
    """The useful part of an MLflow error: the OS error if there is one, else its first line."""
    import re

    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    return found.group(0).strip() if found else _first_line(exc)[:300]


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

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    run = client.create_run(experiment_id, tags=dict(tags), run_name=os.environ.get("DVC_EXP_NAME"))
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
    path = _sqlite_path(tracking_uri())
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
