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
from mlpipe.tracking.failures import tracking_failure
from mlpipe.tracking.reachability import check_reachable
from mlpipe.tracking.snapshot import reading
from mlpipe.tracking.store import shown_uri, tracking_uri

log = logging.getLogger("ui")

RUNS_VIEW = "workflowType=machine_learning"
STAGE_SETTINGS = ("MLFLOW_CONFIGURE_LOGGING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")


def runs_link(base_url: str, experiment_id: str) -> str:
    """The UI page that lists an experiment's training runs."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


def experiment_id(uri: str, name: str, shown: str | None = None) -> str:
    """The id of experiment `name` in the store at `uri` (`shown` in messages, when `uri` is a
    reader's copy of it); TrackingError if it has none yet."""
    shown = shown or uri
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except (MlflowException, SQLAlchemyError) as exc:
        raise TrackingError(tracking_failure(exc, shown)) from exc
    if experiment is None:
        raise TrackingError(
            f"{shown_uri(shown)} has no experiment {name!r} yet; run the pipeline first (dvc repro)"
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
    # Read through a copy: the UI's start changes nothing; a broken store is one line.
    with reading(uri) as store:
        found = experiment_id(store.uri, name, shown=uri)
    for former in store.moved_from:
        log.warning(
            "%s was moved from %s: the UI shows its runs' figures and models once a stage has "
            "run here and pointed the store at this folder (`dvc repro -f plot` takes seconds)",
            uri.removeprefix("sqlite:///"),
            former,
        )
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
