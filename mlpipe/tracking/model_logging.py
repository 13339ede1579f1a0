"""The trained model into MLflow: logged with its signature and runtime, and registered.

The registered model is the pyfunc in `mlpipe/tracking/served_model.py` around the Keras file,
so serving refuses inputs that are not 0-255 pixels instead of answering a blank image.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlpipe.data.specs import DatasetSpec
from mlpipe.data.splits import Split
from mlpipe.paths import scratch_dir
from mlpipe.tracking import model_identity
from mlpipe.tracking.run_json import RunRecord

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from mlpipe.config import Params
    from mlpipe.tracking.tracker import Tracker

EXAMPLE_SIZE = 5  # validation images in the logged serving example


def backend_tags() -> dict[str, str]:
    """The Keras backend and the versions a run was trained with."""
    import keras

    tags = {"keras.backend": keras.backend.backend(), "keras.version": keras.__version__}
    for module in ("tensorflow", "jax"):
        if module in sys.modules:
            tags[f"{module}.version"] = sys.modules[module].__version__
    tags["python.version"] = platform.python_version()
    return tags


def pip_requirements() -> list[str]:
    """The model's runtime, pinned; given explicitly so MLflow need not infer it (slow)."""
    import keras

    requirements = [f"keras=={keras.__version__}"]
    for module in ("tensorflow", "jax", "jaxlib"):
        if module in sys.modules:
            requirements.append(f"{module}=={sys.modules[module].__version__}")
    return requirements


def log_and_register(keras_file: Path, spec: DatasetSpec, registered_name: str) -> ModelInfo:
    """Log the Keras file as the active run's model and register it as a new version."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from mlpipe.tracking import served_model

    # Numbers in, so the served model sees what was sent and can refuse [0, 1] floats rather
    # than have MLflow cast them to zeros.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, *spec.image_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_classes))]),
    )
    with scratch_dir("register") as scratch, warnings.catch_warnings():
        # The serving example is logged with the run (serving_input_example.json).
        # (MLflow colours the message: the pattern must not be anchored at its start.)
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        # The artifact keeps the real file name, not that of a temp sibling.
        named = shutil.copy(keras_file, Path(scratch) / "model.keras")
        # MLflow prints its own registration lines ("Created version 3 of model ...") outside
        # logging; the train stage logs the registered version itself.
        return _quietly(
            mlflow.pyfunc.log_model,
            name="model",
            python_model=served_model.__file__,
            artifacts={served_model.KERAS_ARTIFACT: str(named)},
            signature=signature,
            registered_model_name=registered_name,
            pip_requirements=pip_requirements(),
        )


def _quietly(function, *args, **kwargs):
    """Call `function` with MLflow's own event stream (its `eprint` lines) switched off."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        return function(*args, **kwargs)
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was


def log_trained_model(
    tracker: Tracker,
    keras_file: Path,
    spec: DatasetSpec,
    params: Params,
    data_sha256: str,
    history: tuple[str, str],
    splits: dict[str, Split],
) -> RunRecord:
    """Log the trained model's history (its file name and CSV text), a serving example of
    validation images and the model on the tracker's run, register it, and return the record
    of it that `models/run.json` keeps for later stages."""
    history_name, history_csv = history
    tracker.log_text(history_csv, history_name)
    example = {"inputs": splits["val"][0][:EXAMPLE_SIZE].tolist()}
    tracker.log_text(json.dumps(example), "serving_input_example.json")
    name = params.registered_model_name
    with tracker.timed():
        info = log_and_register(keras_file, spec, name)
        version = int(info.registered_model_version)
        model_identity.record(tracker.client, name, version, keras_file)
    return RunRecord(
        run_id=tracker.run_id,
        experiment_id=tracker.experiment_id,
        experiment_name=params.mlflow.experiment_name,
        model_uri=info.model_uri,
        registered_model_name=name,
        registered_model_version=version,
        registered_model_uri=f"models:/{name}/{version}",
        dataset=spec.name,
        data_sha256=data_sha256,
    )
