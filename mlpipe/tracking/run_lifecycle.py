"""MLflow runs: how a stage connects, how a run is named and started, and how it ends.

Where the store is and whether it is sound is `mlpipe.tracking.store`'s and
`mlpipe.tracking.sqlite_store`'s concern; what a run records is `mlpipe.tracking.tracker`'s;
closing runs that a dead process left RUNNING is `mlpipe.tracking.orphans`'.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import Pruned, Terminated, TrackingError, first_line
from mlpipe.tracking.failures import tracking_failure
from mlpipe.tracking.orphans import close_orphaned_runs, owner_tags
from mlpipe.tracking.reachability import check_reachable
from mlpipe.tracking.relocation import relocate
from mlpipe.tracking.sqlite_store import prepare
from mlpipe.tracking.store import (
    artifact_root,
    shown_uri,
    sqlite_path,
    store_label,
    store_lock,
    tracking_uri,
    use_store,
)
from mlpipe.tracking.tracker import Tracker

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PRUNED_TAG = "mlpipe.pruned_at_epoch"  # on a sweep's trial that its pruner stopped

# The MLflow UI opens a "model training" experiment on its runs table (a GenAI one on traces).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def connect(experiment_name: str, workspace: Path) -> tuple[MlflowClient, str]:
    """A client for the workspace's tracking store and the id of the experiment.

    The store is checked (and a new one created) before MLflow opens it, and follows a moved
    workspace; the experiment is created if need be, with its artifacts beside a SQLite
    store; runs that a dead process left RUNNING are closed.
    """
    uri = tracking_uri(workspace)
    check_reachable(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with store_lock(uri):
            prepare(uri)
            store = sqlite_path(uri)
            if store is not None:
                # Writers follow a moved workspace; readers never rewrite the store.
                relocate(store)
            use_store(uri)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                # Explicit: MLflow fixes the location at creation, and a default would follow
                # the current folder into DVC's temp copies.
                experiment_id = client.create_experiment(
                    experiment_name, artifact_root(uri, workspace), tags=EXPERIMENT_TAGS
                )
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment_id)
                for key, value in EXPERIMENT_TAGS.items():
                    if experiment.tags.get(key) != value:
                        client.set_experiment_tag(experiment_id, key, value)
        close_orphaned_runs(client, experiment_id)
    except (MlflowException, SQLAlchemyError) as exc:
        raise TrackingError(tracking_failure(exc, uri)) from exc
    return client, experiment_id


def git_commit(root: Path) -> str | None:
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


def run_tags(root: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Tags every training run carries: code, DVC experiment, owner process."""
    tags = {"mlflow.source.name": "stages/train.py", "mlflow.source.type": "LOCAL", **owner_tags()}
    commit = git_commit(root)
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
    """Start a run; end it FINISHED, FAILED on an exception, KILLED on SIGINT, SIGTERM or a
    sweep's pruning (tagged with the epoch it stopped at).

    The run is also made the active one, so MLflow's flavour functions (log_model) attach to it.
    Under `dvc exp run` the run is named after the DVC experiment.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    use_store(client.tracking_uri)
    with store_lock(client.tracking_uri):
        try:
            name = run_name(client, experiment_id, tags.get("mlflow.source.git.commit"))
            run = client.create_run(experiment_id, tags=dict(tags), run_name=name)
        except (MlflowException, SQLAlchemyError) as exc:
            raise TrackingError(tracking_failure(exc, client.tracking_uri)) from exc
    tracker = Tracker(client, run.info.run_id, experiment_id)
    mlflow.start_run(run_id=run.info.run_id)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    except Pruned as exc:  # a sweep's pruner stopped it: killed on purpose, and said so
        status = "KILLED"
        with suppress(Exception):
            tracker.set_tags({PRUNED_TAG: str(exc.epoch)})
        raise
    finally:
        if status != "FINISHED":
            # Land what was queued before the failure, if the store (maybe what failed) allows.
            with suppress(Exception):
                tracker._wait()
        try:
            mlflow.end_run(status)
        except Exception as exc:  # The store may be the thing that failed; say so, keep the error.
            log.error(
                "could not mark run %s %s (%s); the next stage will close it as KILLED",
                run.info.run_id,
                status,
                first_line(exc),
            )
        else:
            log.info(
                "MLflow run %s ended %s%s", run.info.run_id, status, _link(run, client.tracking_uri)
            )


def _link(run, uri: str) -> str:
    """Where a tracking server shows the run (MLflow prints its own links to standard output,
    outside the log; MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT turns those off)."""
    if not uri.startswith(("http://", "https://")):
        return ""
    experiment = run.info.experiment_id
    return f": {shown_uri(uri).rstrip('/')}/#/experiments/{experiment}/runs/{run.info.run_id}"


@contextmanager
def attached_run(client: MlflowClient, run_id: str) -> Iterator[Tracker]:
    """Continue logging to an existing run (evaluate and plot add to train's run)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(tracking_failure(exc, client.tracking_uri)) from exc
        raise TrackingError(
            f"MLflow run {run_id} (from models/run.json) is not in "
            f"{store_label(client.tracking_uri)}; run the train stage again"
        ) from exc
    yield Tracker(client, run_id, run.info.experiment_id)


def connected_client(experiment_name: str, workspace: Path) -> MlflowClient:
    """`connect`'s client alone (plot's second process prepares it while figures are drawn)."""
    return connect(experiment_name, workspace)[0]


def log_folder(client: MlflowClient, request: tuple[str, str, str]) -> None:
    """Log a folder's files on an existing run: `request` is (run id, folder, artifact path)."""
    run_id, folder, under = request
    with attached_run(client, run_id) as tracker:
        tracker.log_artifacts(Path(folder), under)
