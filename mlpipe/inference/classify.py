"""Classifying image files: decoded one at a time, predicted in chunks, outputs checked.

Memory stays flat however many files are given; outputs that hold NaN or infinity are
refused rather than read as class 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.inference.images import ImageInputError, open_image, to_model_input

# Images converted and predicted together: few enough that memory stays small, enough that
# Keras' per-call overhead is paid rarely.
CHUNK_SIZE = 64


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


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
    from mlpipe.report.evaluation import check_model_outputs

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
