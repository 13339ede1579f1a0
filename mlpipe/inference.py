"""Classifying image files with a trained model: the work behind `python -m mlpipe.predict`.

The model comes from a `.keras` file or from the MLflow registry (the champion by default),
run in NumPy when it is built of this project's layers (mlpipe.forward), loaded in Keras safe
mode otherwise. Images are decoded one at a time and predicted in chunks, so memory
stays flat however many files are given; outputs that hold NaN or infinity are refused.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.config import load_params, registered_model_name
from mlpipe.errors import ModelError, TrackingError, first_line
from mlpipe.images import ImageInputError, open_image, to_model_input
from mlpipe.paths import Layout
from mlpipe.registry import CHAMPION

# Images converted and predicted together: few enough that memory stays small, enough that
# Keras' per-call overhead is paid rarely.
CHUNK_SIZE = 64
DEFAULT_PREFIX = "keras-tutorial"  # the registered-model prefix when there is no params.yaml


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


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
    """A model from a `.keras` file or an MLflow model URI, ready to predict (mlpipe.forward, or
    Keras in safe mode), and which one it is: the file, or the registered model's name and
    version (an alias is resolved to its version first, so the label is the model that
    answers)."""
    from mlpipe.model_files import load_for_inference

    if "://" not in source and not source.startswith(("models:", "runs:")):
        if Path(source).is_dir():
            raise ModelError(f"{source}: is a directory; give a .keras file or an MLflow model URI")
        return load_for_inference(Path(source)), source
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlpipe.server_access import refusal
    from mlpipe.store import (
        check_reachable,
        prepare,
        readable,
        store_label,
        tracking_uri,
        use_store,
    )

    uri = tracking_uri(layout.workspace)
    if source.startswith(("models:", "runs:")):
        try:
            # A server that is away or refuses the login is said so, before the download.
            if uri.startswith(("http://", "https://")):
                check_reachable(uri)
            # Reading only: a store that does not exist is not created, a read-only one is read.
            prepare(uri, write=False)
        except TrackingError as exc:
            raise ModelError(f"model {source}: {exc}") from exc
    with readable(uri) as reading, tempfile.TemporaryDirectory(prefix="mlpipe-model-") as scratch:
        use_store(reading)
        try:
            fetched, label = _pinned(source)
            folder = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=fetched, dst_path=scratch)
            )
        except MlflowException as exc:
            refused = refusal(exc, uri)
            if refused:
                raise ModelError(f"model {source}: {refused}") from exc
            raise ModelError(
                f"model {source} not found in {store_label(uri)} ({first_line(exc)})"
            ) from exc
        except Exception as exc:  # Artifact stores raise many types (no driver, bad address).
            raise ModelError(
                f"model {source}: its files cannot be fetched ({first_line(exc)})"
            ) from exc
        # A pyfunc model keeps the Keras file among its artifacts; older versions as Keras data.
        for path in (folder / "artifacts" / "model.keras", folder / "data" / "model.keras"):
            if path.is_file():
                return load_for_inference(path), label
        raise ModelError(
            f"model {source} holds no Keras model (no artifacts/model.keras); were its files "
            "under mlartifacts/ deleted or moved?"
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


def _chunks(paths: list[Path]) -> Iterator[list[Path]]:
    for start in range(0, len(paths), CHUNK_SIZE):
        yield paths[start : start + CHUNK_SIZE]


def _model_input(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One file decoded and converted; its full-size pixels are dropped on return."""
    image = open_image(path)  # its errors name the file already
    try:
        return to_model_input(image, shape)
    except ImageInputError as exc:
        raise ImageInputError(f"{path}: {exc}") from exc


def classify(
    model, paths: list[Path], class_names: tuple[str, ...], top: int, source: str
) -> list[Prediction]:
    """The `top` classes for each file, decoding one image at a time, predicting per chunk."""
    from mlpipe.evaluation import check_model_outputs

    shape = tuple(model.input_shape[1:])
    results = []
    for chunk in _chunks(paths):
        batch = np.stack([_model_input(path, shape) for path in chunk])
        probabilities = np.asarray(model.predict(batch, verbose=0))
        check_model_outputs(probabilities, len(class_names), source)
        for path, row in zip(chunk, probabilities, strict=True):
            best = np.argsort(-row, kind="stable")[:top]
            results.append(Prediction(str(path), [(class_names[i], float(row[i])) for i in best]))
    return results
