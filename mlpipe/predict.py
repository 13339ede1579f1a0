"""Classify image files with a trained model.

    python -m mlpipe.predict digit.png [more.png ...] [--top 3] [--json]
        [--model models:/keras-tutorial-mnist@champion | path/to/model.keras]
        [--dataset mnist]

By default the model is the champion of the dataset named in params.yaml. Images may be PNG or
JPEG of any size; for 28x28 models they are converted as MNIST was made (see mlpipe.images).
Exit codes: 0 done; 1 a bad image or model; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.config import DATASETS, load_params
from mlpipe.datasets import SPECS
from mlpipe.errors import ConfigError, ModelError, PipelineError
from mlpipe.images import ImageInputError, open_image, to_model_input
from mlpipe.paths import PARAMS_FILE

log = logging.getLogger("predict")


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


def default_model_uri(dataset: str | None) -> tuple[str, str]:
    """The champion of the dataset from params.yaml (or the one given), and that dataset."""
    if PARAMS_FILE.is_file():
        params = load_params()
        dataset = dataset or params.base.dataset
        prefix = params.mlflow.registered_model_name
    else:
        dataset = dataset or "mnist"
        prefix = "keras-tutorial"
    return f"models:/{prefix}-{dataset}@champion", dataset


def load_model(source: str):
    """A Keras model from a `.keras` file or an MLflow model URI, loaded in safe mode."""
    from mlpipe.loading import load_keras_model

    if "://" not in source and not source.startswith(("models:", "runs:")):
        return load_keras_model(Path(source))
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlpipe.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as scratch:
        try:
            folder = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=scratch)
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"model {source} not found in {tracking_uri()} ({first})") from None
        except OSError as exc:
            raise ModelError(f"model {source}: its files cannot be read ({exc})") from None
        path = Path(folder) / "data" / "model.keras"
        if not path.is_file():
            raise ModelError(f"model {source} holds no Keras model (no data/model.keras)")
        return load_keras_model(path)


def classify(
    model, images: dict[str, np.ndarray], class_names: tuple[str, ...], top: int
) -> list[Prediction]:
    batch = np.stack(list(images.values()))
    probabilities = np.asarray(model.predict(batch, verbose=0))
    results = []
    for name, row in zip(images, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        results.append(Prediction(name, [(class_names[i], float(row[i])) for i in best]))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.predict", description="Classify image files with a trained model."
    )
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument(
        "--model", help="an MLflow model URI or a .keras file (default: the champion)"
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="the classes the model predicts (default: params.yaml)"
    )
    parser.add_argument("--top", type=int, default=1, help="how many classes to show per image")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top must be between 1 and 10 (got {args.top})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        default_uri, dataset = default_model_uri(args.dataset)
        spec = SPECS[dataset]
        # Read every image before paying for the model: a bad file fails fast.
        opened = {str(path): open_image(path) for path in args.images}
        model = load_model(args.model or default_uri)
        shape = tuple(model.input_shape[1:])
        images = {}
        for name, image in opened.items():
            try:
                images[name] = to_model_input(image, shape)
            except ImageInputError as exc:
                raise ImageInputError(f"{name}: {exc}") from None
        results = classify(model, images, spec.class_names, args.top)
    except (PipelineError, ImageInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    if args.json:
        rows = [
            {
                "file": r.file,
                "label": r.top[0][0],
                "probability": r.top[0][1],
                "top": [{"label": label, "probability": p} for label, p in r.top],
            }
            for r in results
        ]
        print(json.dumps(rows, indent=2))
    else:
        for r in results:
            shown = ", ".join(f"{label} ({p:.1%})" for label, p in r.top)
            print(f"{r.file}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
