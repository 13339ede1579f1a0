"""Runs left RUNNING by a process that died (`kill -9`, a crash, a lost machine).

Every run carries its owner's host, pid and the pid's start time. Whenever a stage opens the
store, it ends as KILLED the RUNNING runs of this host whose owner is gone; a run whose owner is
still alive (a concurrent stage) is left alone.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_HOST = "mlpipe.host"
# Bookkeeping a user need not see: the MLflow UI hides tags under `mlflow.`.
TAG_PID = "mlflow.mlpipe.pid"
TAG_PID_STARTED = "mlflow.mlpipe.pid_started"


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


def owner_alive(pid: int, started: float) -> bool:
    """Whether process `pid` of this host is the one that started at `started` and still runs
    (a pid reused by another process does not count)."""
    alive_since = _process_started(pid)
    return alive_since is not None and abs(alive_since - started) < 1.0


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of this host whose process is gone; return their ids."""
    host = socket.gethostname().replace("'", "''")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        try:
            # Runs started by versions before the tags moved out of sight keep the old keys.
            pid = int(tags.get(TAG_PID) or tags.get("mlpipe.pid", ""))
            started = float(tags.get(TAG_PID_STARTED) or tags.get("mlpipe.pid_started", "0"))
        except ValueError:
            continue
        if owner_alive(pid, started):
            continue  # Still running: a concurrent stage, not an orphan.
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning(
            "run %s was left RUNNING by a process that died; marked KILLED", run.info.run_id
        )
        closed.append(run.info.run_id)
    return closed
