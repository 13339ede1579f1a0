"""train: train the Keras model and record the run in MLflow.

Reads: params.yaml (base, model, train, mlflow); data/processed/{train,val}.npz.
Writes: models/model.keras; reports/history.csv (one row per epoch); models/run.json (the
MLflow run id and registered model version, for the later stages and for `dvc exp show`).
MLflow: params, per-epoch loss/accuracy/val_loss/val_accuracy, tags, the model summary and
the model, registered as a new version of `<mlflow.registered_model_name>-<dataset>`.
Run: `dvc repro train`, or `python -m stages.train` from the repository root.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mlpipe.atomic import atomic_paths, json_text
from mlpipe.cli import run_stage
from mlpipe.config import STAGE_PARAMS, ConfigError, flatten, load_params
from mlpipe.data import load_split, processed_files
from mlpipe.datasets import SPECS
from mlpipe.paths import HISTORY_FILE, MODEL_FILE, RUN_INFO_FILE
from mlpipe.timing import record
from mlpipe.tracking import connect, data_digest, run_tags, tracked_run, tracking_uri

log = logging.getLogger("train")

EXAMPLE_SIZE = 5


def backend_tags() -> dict[str, str]:
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


def main() -> None:
    params = load_params()
    spec = SPECS[params.base.dataset]
    if params.train.loop == "scan" and os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
        raise ConfigError(
            "params.yaml: train.loop scan needs KERAS_BACKEND=jax "
            f"(got {os.environ.get('KERAS_BACKEND', 'tensorflow')}); use loop fit"
        )
    x_train, y_train = load_split("train", spec)
    # Counted, not built: a model too large for memory is refused before any allocation.
    from mlpipe.models import check_fits_in_memory

    check_fits_in_memory(params.model, params.train, spec.image_shape, spec.num_classes)
    x_val, y_val = load_split("val", spec)
    digest = data_digest(processed_files())
    client, experiment_id = connect(params.mlflow.experiment_name)

    # Heavy imports only now that params, data and the tracking store are known to be good.
    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from mlpipe import serving
    from mlpipe.models import build_model, summary_text, train, train_scan, trainable_parameters

    keras.utils.set_random_seed(params.base.seed)
    model = build_model(params.model, spec.image_shape, spec.num_classes, params.base.seed)
    summary = summary_text(model)
    print(summary, flush=True)

    tags = run_tags({**backend_tags(), "data.sha256": digest, "base.dataset": spec.name})
    with (
        tracked_run(client, experiment_id, tags) as tracker,
        atomic_paths(MODEL_FILE, HISTORY_FILE, RUN_INFO_FILE) as (
            model_temp,
            history_temp,
            run_temp,
        ),
    ):
        log.info(
            "MLflow run %s in experiment %r at %s",
            tracker.run_id,
            params.mlflow.experiment_name,
            tracking_uri(),
        )
        tracker.log_params(flatten(params, STAGE_PARAMS["train"]))
        tracker.log_metrics({"trainable_params": trainable_parameters(model)})
        tracker.log_text(summary, "model_summary.txt")

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            started = time.perf_counter()
            tracker.log_metrics_in_background(metrics, step=epoch)
            record("epoch_logging_s", time.perf_counter() - started)

        data = (x_train, y_train, x_val, y_val)
        if params.train.loop == "scan":
            result = train_scan(
                model, params.train, data, spec.num_classes, params.base.seed, on_epoch=log_epoch
            )
        else:
            result = train(model, params.train, data, spec.num_classes, on_epoch=log_epoch)
        tracker.flush()
        record("fit_s", result.fit_seconds)
        record("samples_trained", len(x_train) * len(result.history))
        record("epochs", len(result.history))
        model.save(model_temp)
        history_csv = pd.DataFrame(result.history).to_csv(index=False)
        history_temp.write_text(history_csv, encoding="utf-8")
        tracker.log_text(history_csv, HISTORY_FILE.name)

        example = x_val[:EXAMPLE_SIZE]
        tracker.log_text(json.dumps({"inputs": example.tolist()}), "serving_input_example.json")
        # Numbers in, so the served model sees what was sent and can refuse [0, 1] floats
        # rather than have MLflow cast them to zeros (mlpipe/serving.py).
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, *spec.image_shape))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_classes))]),
        )
        with tracker.timed(), tempfile.TemporaryDirectory(prefix="mlpipe-") as scratch:
            # The artifact keeps the real file name, not the temp sibling's.
            keras_file = str(shutil.copy(model_temp, Path(scratch) / MODEL_FILE.name))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=serving.__file__,
                artifacts={serving.KERAS_ARTIFACT: keras_file},
                signature=signature,
                registered_model_name=params.registered_model_name,
                pip_requirements=pip_requirements(),
            )
        version = int(info.registered_model_version)
        run_info = {
            "run_id": tracker.run_id,
            "experiment_id": experiment_id,
            "experiment_name": params.mlflow.experiment_name,
            "model_uri": info.model_uri,
            "registered_model_name": params.registered_model_name,
            "registered_model_version": version,
            "registered_model_uri": f"models:/{params.registered_model_name}/{version}",
            "dataset": spec.name,
            "data_sha256": digest,
        }
        run_temp.write_text(json_text(run_info), encoding="utf-8")
        share = 100 * tracker.seconds / max(result.fit_seconds, 1e-9)
        log.info(
            "trained %d epochs in %.1f s; %d MLflow calls took %.2f s (%.1f%% of training)",
            len(result.history),
            result.fit_seconds,
            tracker.calls,
            tracker.seconds,
            share,
        )
        tracker.log_metrics(
            {"fit_seconds": result.fit_seconds, "tracking_seconds": tracker.seconds}
        )
    log.info(
        "registered %s version %s; model in %s",
        params.registered_model_name,
        info.registered_model_version,
        MODEL_FILE,
    )


if __name__ == "__main__":
    run_stage("train", main)
