"""Classify image files with a trained model.

    python -m mlpipe.predict digit.png [more.png ...] [--top 3] [--json]
        [--model models:/keras-tutorial-mnist@champion | path/to/model.keras]
        [--dataset mnist]

By default the model is the champion of the dataset named in params.yaml. Images may be PNG,
JPEG or TIFF of any size and depth; for 28x28 models they are converted as MNIST was made (see
mlpipe.images). Every file is checked before the model loads, so a bad one fails fast; then the
images are decoded one at a time and predicted in chunks, so memory stays flat however many
files are given. A model whose outputs do not match the dataset's classes, or hold NaN or
infinite values, is refused. File names are printed with control characters and undecodable
bytes escaped (in JSON, as JSON escapes them).
Exit codes: 0 done; 1 a bad image or model; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.config import DATASETS, load_params
from mlpipe.datasets import SPECS
from mlpipe.errors import ConfigError, ModelError, PipelineError
from mlpipe.images import ImageInputError, check_image, open_image, to_model_input
from mlpipe.paths import PARAMS_FILE

log = logging.getLogger("predict")
# Images converted and predicted together: few enough that memory stays small, enough that
# Keras' per-call overhead is paid rarely.
CHUNK_SIZE = 64
# Characters that must never reach a terminal raw: controls (newline, escape), format
# characters (bidirectional overrides), surrogates and line or paragraph separators.
ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


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
        if Path(source).is_dir():
            raise ModelError(f"{source}: is a directory; give a .keras file or an MLflow model URI")
        return load_keras_model(Path(source))
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlpipe.errors import TrackingError
    from mlpipe.store import prepare, store_label, tracking_uri, use_store

    uri = tracking_uri()
    try:
        # Reading only: a store that does not exist is not created, a read-only one is read.
        prepare(uri, write=False)
    except TrackingError as exc:
        raise ModelError(f"model {source}: {exc}") from exc
    use_store(uri)
    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as scratch:
        try:
            folder = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=scratch)
            )
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"model {source} not found in {store_label(uri)} ({first})") from exc
        except OSError as exc:
            raise ModelError(f"model {source}: its files cannot be read ({exc})") from exc
        # A pyfunc model keeps the Keras file among its artifacts; older versions as Keras data.
        for path in (folder / "artifacts" / "model.keras", folder / "data" / "model.keras"):
            if path.is_file():
                return load_keras_model(path)
        raise ModelError(f"model {source} holds no Keras model (no artifacts/model.keras)")


def printable(text: str) -> str:
    """`text` with control characters and undecodable bytes escaped, so that a file name can
    neither break an output line nor send escape codes to the terminal."""
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(char) in ESCAPED_CATEGORIES:
        return char.encode("unicode_escape").decode("ascii")
    return char


def check_output_count(model, num_classes: int, source: str) -> None:
    """Refuse a model for another dataset before any image is decoded for it."""
    shape = model.output_shape
    if not isinstance(shape, tuple):
        raise ModelError(f"{source}: has {len(shape)} outputs; predict needs a single one")
    if shape[-1] != num_classes:
        raise ModelError(
            f"{source}: gives {shape[-1]} outputs per image, but the dataset has "
            f"{num_classes} classes; pick the model's dataset with --dataset"
        )


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.predict", description="Classify image files with a trained model."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, TIFF, ...)")
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


def run(args: argparse.Namespace) -> list[Prediction]:
    """Check every image, load the model, check it fits the dataset, then classify."""
    default_uri, dataset = default_model_uri(args.dataset)
    spec = SPECS[dataset]
    # Check every image before paying for the model, keeping no pixels: a bad file fails fast.
    for path in args.images:
        check_image(path)
    source = args.model or default_uri
    model = load_model(source)
    check_output_count(model, spec.num_classes, source)
    return classify(model, args.images, spec.class_names, args.top, source)


def show(results: list[Prediction], as_json: bool) -> None:
    """Print the results; names are escaped (by JSON itself in --json)."""
    if as_json:
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
        return
    for r in results:
        shown = ", ".join(f"{label} ({p:.1%})" for label, p in r.top)
        print(f"{printable(r.file)}: {shown}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        results = run(args)
    except (PipelineError, ImageInputError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    show(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
