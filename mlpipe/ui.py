"""Open the workspace's runs in the MLflow UI, on the page that lists them.

    python -m mlpipe.ui [--port 5000]        (or: make ui)

MLflow 3's UI opens on its GenAI pages unless told that this is model training: the experiment
carries the tag (set by the pipeline) and the link printed here asks for the training view
(`workflowType=machine_learning`, which the browser then remembers). For the local store it
starts `mlflow ui` on 127.0.0.1; for a tracking server (MLFLOW_TRACKING_URI=http...) it prints
the link to the server's page and starts nothing.
Exit codes: 0 done; 1 no store or experiment yet, or a store that cannot be read; 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import urlsplit, urlunsplit

from mlpipe.config import load_params
from mlpipe.errors import TrackingError
from mlpipe.paths import HERE, Layout
from mlpipe.runner import execute
from mlpipe.store import (
    check_reachable,
    prepare,
    readable,
    shown_uri,
    tracking_failure,
    tracking_uri,
)

log = logging.getLogger("ui")

RUNS_VIEW = "workflowType=machine_learning"
STAGE_SETTINGS = ("MLFLOW_CONFIGURE_LOGGING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")


def runs_link(base_url: str, experiment_id: str) -> str:
    """The UI page that lists an experiment's training runs."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name` in the store at `uri`; TrackingError if it has none yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except (MlflowException, SQLAlchemyError) as exc:
        raise TrackingError(tracking_failure(exc, uri)) from exc
    if experiment is None:
        raise TrackingError(
            f"{shown_uri(uri)} has no experiment {name!r} yet; run the pipeline first (dvc repro)"
        )
    return experiment.experiment_id


def main(layout: Layout = HERE, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlpipe.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    name = load_params(layout.params_file).mlflow.experiment_name
    uri = tracking_uri(layout.workspace)
    if not uri.startswith("sqlite:"):
        check_reachable(uri)
    if uri.startswith(("http://", "https://")):
        # A link to click: without the credentials a URI may carry (the browser asks for them).
        parts = urlsplit(uri)
        server = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        print(runs_link(server, experiment_id(uri, name)))
        return
    prepare(uri, write=False)  # never creates a store; refuses a broken one in one line
    with readable(uri) as reading:
        found = experiment_id(reading, name)
    url = f"http://127.0.0.1:{args.port}"
    log.info("open %s (Ctrl-C stops the UI)", runs_link(url, found))
    sys.stderr.flush()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(args.port)]
    # The UI logs as MLflow does, not as a stage (whose settings configure_logging exported).
    environment = {k: v for k, v in os.environ.items() if k not in STAGE_SETTINGS}
    os.execve(sys.executable, command, environment)


if __name__ == "__main__":
    sys.exit(execute("ui", lambda: main(argv=sys.argv[1:])))
