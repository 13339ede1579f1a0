"""Which model answers `python -m mlpipe.predict`: a `.keras` file, or a registered version.

The default is the champion of the dataset in params.yaml. A registry URI is read through a
snapshot of the store (`mlpipe.tracking.snapshot`), so predicting never changes the user's
store; an alias is resolved to its version first, so the label names the model that ran. The
model runs in NumPy when it is built of this project's layers (`mlpipe.model.numpy_forward`),
in Keras safe mode otherwise.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlpipe.config import load_params, registered_model_name
from mlpipe.data.digests import sha256_file
from mlpipe.errors import ModelError, TrackingError, first_line
from mlpipe.paths import Layout, scratch_dir, scratch_root
from mlpipe.tracking.promotion import CHAMPION

DEFAULT_PREFIX = "keras-tutorial"  # the registered-model prefix when there is no params.yaml


def default_model_uri(layout: Layout, dataset: str | None) -> tuple[str, str]:
    """The champion of the dataset from params.yaml (or the one given), and that dataset."""
    if layout.params_file.is_file():
        params = load_params(layout.params_file)
        dataset = dataset or params.base.dataset
        prefix = params.mlflow.registered_model_name
    else:
        dataset = dataset or "mnist"
        prefix = DEFAULT_PREFIX
    return f"models:/{registered_model_name(prefix, dataset)}@{CHAMPION}", dataset


def load_model(layout: Layout, source: str) -> tuple[Any, str]:
    """A model from a `.keras` file or an MLflow model URI, ready to predict, and which one it
    is: the file, or the registered model's name and version."""
    from mlpipe.model.loading import load_for_inference

    if "://" not in source and not source.startswith(("models:", "runs:")):
        if Path(source).is_dir():
            raise ModelError(f"{source}: is a directory; give a .keras file or an MLflow model URI")
        return load_for_inference(Path(source)), source
    import mlflow

    from mlpipe.tracking.reachability import check_reachable
    from mlpipe.tracking.snapshot import Snapshot, reading
    from mlpipe.tracking.store import tracking_uri, using_store

    uri = tracking_uri(layout.workspace)
    in_store = source.startswith(("models:", "runs:"))
    with ExitStack() as stack:
        try:
            # A server that is away or refuses the login is said so, before the download.
            # A file store is refused, as the stages refuse it: MLflow would make one here.
            if in_store and not uri.startswith("sqlite:"):
                check_reachable(uri)
            # Read through a copy of a SQLite store: nothing of the workspace is changed.
            store = stack.enter_context(reading(uri)) if in_store else Snapshot(uri)
        except TrackingError as exc:
            raise ModelError(f"model {source}: {exc}") from exc
        root = scratch_root()
        scratch = stack.enter_context(scratch_dir("model"))  # first, killed runs' folders go
        local = _local_path(source)
        if local is not None:  # before copying anything: what it is, and whether it fits
            _check_copyable(local, source, root)
        stack.enter_context(using_store(store.uri))
        try:
            fetched, label = _pinned(source)
            folder = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=fetched, dst_path=scratch)
            )
        except Exception as exc:
            if _no_space(exc):
                raise ModelError(
                    f"model {source}: no space left in {root} for a copy of it; set TMPDIR to "
                    "a folder with room"
                ) from exc
            raise _fetch_error(source, uri, exc, layout) from exc
        # A pyfunc model keeps the Keras file among its artifacts; older versions as Keras data.
        for path in (folder / "artifacts" / "model.keras", folder / "data" / "model.keras"):
            if path.is_file():
                _check_registered(fetched, sha256_file(path), source)
                return load_for_inference(path), label
        raise ModelError(
            f"model {source} holds no Keras model (no artifacts/model.keras); were its files "
            "under mlartifacts/ deleted or moved?"
        )


def _fetch_error(source: str, uri: str, exc: Exception, layout: Layout) -> ModelError:
    from mlflow.exceptions import MlflowException

    from mlpipe.tracking.server_access import refusal
    from mlpipe.tracking.store import store_label

    if isinstance(exc, MlflowException):
        refused = refusal(exc, uri)
        if refused:
            return ModelError(f"model {source}: {refused}")
        run = re.match(r"runs:/([0-9a-f]{32})/", source)
        if run and exc.error_code == "RESOURCE_DOES_NOT_EXIST" and not _run_exists(run.group(1)):
            return ModelError(_run_of_another_store(source, run.group(1), store_label(uri), layout))
        return ModelError(f"model {source} not found in {store_label(uri)} ({first_line(exc)})")
    # Artifact stores raise many types (no driver, bad address).
    return ModelError(f"model {source}: its files cannot be fetched ({first_line(exc)})")


def _run_of_another_store(source: str, run_id: str, store: str, layout: Layout) -> str:
    """A run id this store has not: the committed reports/metrics.json names the run of the
    store where the commit's pipeline ran (the team's server, or another machine's)."""
    import json

    try:
        named = json.loads(layout.metrics_file.read_text(encoding="utf-8")).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        named = None
    if named != run_id:
        return f"model {source}: run {run_id} is not in {store} (a mistyped id, or another store's)"
    return (
        f"model {source}: run {run_id} is not in {store}: it is the run reports/metrics.json "
        "names, a run of the store where that pipeline ran (such as the team's server); run "
        "the pipeline here, or set MLFLOW_TRACKING_URI to that store"
    )


def _run_exists(run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def _local_path(source: str) -> Path | None:
    """The local file or folder a `file:` URI names; None for any other source."""
    parsed = urlparse(source)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parsed.path))


def _check_copyable(path: Path, source: str, root: Path) -> None:
    """Refuse, in one line, what is not a regular file or a folder of them (a device, a FIFO:
    a copy of /dev/zero would fill the disk), and a copy larger than the temp folder's room."""
    try:
        found = path.stat()
    except FileNotFoundError as exc:
        raise ModelError(f"model {source}: {path} does not exist") from exc
    except OSError as exc:
        raise ModelError(f"model {source}: {path} cannot be read ({exc.strerror})") from exc
    size = found.st_size
    if stat.S_ISDIR(found.st_mode):
        size = 0
        for folder, _, names in os.walk(path):
            for name in names:
                inside = Path(folder) / name  # a link is copied as what it points to
                try:
                    size += _regular_size(inside, source, inside.stat())
                except FileNotFoundError as exc:
                    raise ModelError(f"model {source}: {inside} is a broken link") from exc
    else:
        size = _regular_size(path, source, found)
    free = shutil.disk_usage(root).free
    if size > free:
        raise ModelError(
            f"model {source}: a copy needs {size / 2**20:,.1f} MiB and {root} has "
            f"{free / 2**20:,.1f} MiB free; set TMPDIR to a folder with room"
        )


def _regular_size(path: Path, source: str, found: os.stat_result) -> int:
    if stat.S_ISREG(found.st_mode):
        return found.st_size
    from mlpipe.inference.images import file_kind

    raise ModelError(
        f"model {source}: {path} is {file_kind(found.st_mode)}, not a model file or folder; "
        "give a .keras file or "
        "an MLflow model folder"
    )


def _no_space(exc: BaseException) -> bool:
    """Whether a full disk is behind `exc`. MLflow gathers the errors of a folder's copies
    into one MlflowException whose message lists each (`[Errno 28] No space left ...`)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if f"[Errno {errno.ENOSPC}] " in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _check_registered(fetched: str, digest: str, source: str) -> None:
    """A registered version's fetched model is the file registered (its recorded sha256)."""
    found = re.fullmatch(r"models:/([^/@]+)/(\d+)", fetched)
    if not found:
        return
    from mlflow import MlflowClient

    from mlpipe.tracking.model_identity import mismatch

    name, version = found.group(1), int(found.group(2))
    try:
        changed = mismatch(MlflowClient(), name, version, digest)
    except TrackingError as exc:
        raise ModelError(f"model {source}: {exc}") from exc
    if changed:
        raise ModelError(
            f"model {source}: its model.keras is not the one registered ({changed}): it was "
            "changed in the artifact store after registration; do not use this version, "
            "register a new one with the train stage"
        )


def _pinned(source: str) -> tuple[str, str]:
    """`models:/NAME@ALIAS` as the version the alias names now, and a label for it; other
    URIs as they are."""
    found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", source)
    if not found:
        return source, source
    name, alias, version = found.groups()
    if alias:
        from mlflow import MlflowClient

        version = MlflowClient().get_model_version_by_alias(name, alias).version
        return f"models:/{name}/{version}", f"{name} version {version} ({alias})"
    return source, f"{name} version {version}"
