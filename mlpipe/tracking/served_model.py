"""The registered model as MLflow serves it: the Keras classifier behind a pixel check.

Logged as an MLflow "model from code": MLflow copies this file beside the model and runs it
when it loads the model, so it imports nothing from this project.

A request holds raw pixels, integers from 0 to 255, as the dataset has them. MLflow would cast
whatever JSON numbers arrive to the model's input type, so pixels sent as floats in [0, 1]
would become zeros and be answered as a blank image. The signature therefore takes numbers,
and this model refuses, with HTTP 400 and a message, anything that is not 0-255 integers or
that looks like a [0, 1] image (every pixel 0 or 1).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

KERAS_ARTIFACT = "keras_model"


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    """`pixels` as uint8, or an MlflowException (HTTP 400) saying what pixels must be."""
    if pixels.dtype.kind not in "biuf":
        raise _refuse(f"pixels must be numbers, got {pixels.dtype}")
    if pixels.size == 0:
        raise _refuse("no images given")
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise _refuse("pixels must be integers from 0 to 255, got NaN or infinity")
    if values.min() < 0 or values.max() > 255 or (values != np.round(values)).any():
        raise _refuse(
            f"pixels must be integers from 0 to 255, got values from {values.min():g} to "
            f"{values.max():g}; multiply [0, 1] floats by 255 and round"
        )
    per_image = values.reshape(len(values), -1).max(axis=1) if values.ndim > 1 else values
    scaled = np.flatnonzero((per_image > 0) & (per_image <= 1))
    if len(scaled):
        raise _refuse(
            f"every pixel of image {int(scaled[0])} is 0 or 1: it looks like a [0, 1] image; "
            "pixels must be integers from 0 to 255 (multiply by 255)"
        )
    return values.astype(np.uint8)


def _refuse(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class PixelClassifier(PythonModel):
    """Class probabilities for raw 0-255 pixel images; refuses anything else."""

    def load_context(self, context) -> None:  # unannotated, as in predict below
        import keras

        self.model = keras.saving.load_model(
            context.artifacts[KERAS_ARTIFACT], compile=False, safe_mode=True
        )

    # `context` stays unannotated: MLflow reads hints here, and `Any` would make it warn.
    def predict(self, context, model_input: np.ndarray, params: None = None) -> np.ndarray:
        pixels = check_pixels(np.asarray(model_input))
        return np.asarray(self.model.predict(pixels, verbose=0))


mlflow.models.set_model(PixelClassifier())
