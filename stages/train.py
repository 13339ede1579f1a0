"""train: train the Keras model and record the run in MLflow.

Reads: params.yaml (base, model, train, mlflow); data/processed/{train,val}.npz.
Writes: models/model.keras; reports/history.csv (one row per epoch); models/run.json (the
MLflow run id and registered model version, for the later stages and for `dvc exp show`).
MLflow: params, per-epoch loss/accuracy/val_loss/val_accuracy, tags, the model summary and
the model, registered as a new version of `<mlflow.registered_model_name>-<dataset>`.
Run: `dvc repro train`, or `python -m stages.train` from the repository root.
With `train.distribution: multi_worker` every process of the job runs the same command; only
process 0 writes the outputs and the MLflow run (see `mlpipe.distribution`).
"""

from __future__ import annotations

import json
import logging
import os

from mlpipe import distribution
from mlpipe.atomic import atomic_paths
from mlpipe.config import STAGE_PARAMS, ConfigError, Params, flatten, load_params
from mlpipe.datasets import SPECS
from mlpipe.paths import HERE, Layout
from mlpipe.run_record import RunRecord
from mlpipe.runner import run_stage
from mlpipe.runs import connect, run_tags, tracked_run
from mlpipe.sizing import check_fits_in_memory
from mlpipe.splits import data_digest, dataset_input, load_split

log = logging.getLogger("train")

EXAMPLE_SIZE = 5  # validation images in the logged serving example


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if params.train.loop == "scan" and backend != "jax":
        raise ConfigError(
            f"params.yaml: train.loop scan needs KERAS_BACKEND=jax (got {backend}); use loop fit"
        )
    role = distribution.plan(params.train, backend, os.environ)
    check_fits_in_memory(params.model, params.train, spec.image_shape, spec.num_classes)
    x_train, y_train = load_split(layout, "train", spec)
    x_val, y_val = load_split(layout, "val", spec)
    digest = data_digest(layout.split_files)
    if role.chief:
        client, experiment_id = connect(params.mlflow.experiment_name, layout.workspace)

    # TensorFlow (through Keras) is imported here, once params, data and the tracking store are
    # known to be good: a bad input fails in a second, not after TensorFlow's start-up.
    import pandas as pd

    from mlpipe.backend import import_keras, set_random_seed

    keras = import_keras()
    from mlpipe import models, registration

    set_random_seed(params.base.seed)
    engine = distribution.start(role, keras, params.train.batch_size)
    trained_on = flatten(params, STAGE_PARAMS["train"])
    distribution.check_same_job(role, json.dumps([trained_on, digest], sort_keys=True))
    with engine.scope():
        model = models.build_model(
            params.model, spec.image_shape, spec.num_classes, params.base.seed
        )
    summary = models.summary_text(model)
    log.info(
        "model %s: %d layers, %s trainable parameters (its summary: model_summary.txt in MLflow)",
        model.name,
        len(model.layers),
        f"{models.trainable_parameters(model):,}",
    )

    # Each process feeds its own shard (all of the data when it trains alone).
    splits = {"train": (x_train, y_train), "val": (x_val, y_val)}
    shares = distribution.shard(splits, role, engine.num_local_devices)
    data = (*shares["train"], *shares["val"])

    def fit(hook: models.EpochHook | None) -> models.TrainResult:
        if params.train.loop == "scan":
            return models.train_scan(
                model, params.train, data, spec.num_classes, params.base.seed, on_epoch=hook
            )
        with engine.training():
            batch = engine.batch_per_process(params.train.batch_size)
            return models.train(
                model, params.train, data, spec.num_classes, on_epoch=hook, batch_size=batch
            )

    if not role.chief:
        result = fit(None)
        log.info(
            "%s trained %d epochs; process 0 writes the outputs", role.label, len(result.history)
        )
        return

    tags = {**registration.backend_tags(), "data.sha256": digest, "base.dataset": spec.name}
    outputs = (layout.model_file, layout.history_file, layout.run_record_file)
    with (
        tracked_run(client, experiment_id, run_tags(layout.root, tags)) as tracker,
        atomic_paths(*outputs) as (model_temp, history_temp, record_temp),
    ):
        log.info("MLflow run %s in experiment %r", tracker.run_id, params.mlflow.experiment_name)
        # Sizes and timings are params and tags: the metrics are what the model scored.
        size = {"model.trainable_params": models.trainable_parameters(model)}
        tracker.log_params({**trained_on, **size, **engine.record(params.train.batch_size)})
        tracker.log_inputs(
            [
                dataset_input(layout, "train", len(y_train), spec),
                dataset_input(layout, "val", len(y_val), spec),
            ]
        )
        tracker.log_text(summary, "model_summary.txt")

        result = fit(tracker.log_epoch)
        tracker.flush()
        model.save(model_temp)
        history_csv = pd.DataFrame(result.history).to_csv(index=False)
        history_temp.write_text(history_csv, encoding="utf-8")
        tracker.log_text(history_csv, layout.history_file.name)
        example = {"inputs": x_val[:EXAMPLE_SIZE].tolist()}
        tracker.log_text(json.dumps(example), "serving_input_example.json")
        with tracker.timed():
            info = registration.log_and_register(model_temp, spec, params.registered_model_name)
        version = int(info.registered_model_version)
        record = RunRecord(
            run_id=tracker.run_id,
            experiment_id=experiment_id,
            experiment_name=params.mlflow.experiment_name,
            model_uri=info.model_uri,
            registered_model_name=params.registered_model_name,
            registered_model_version=version,
            registered_model_uri=f"models:/{params.registered_model_name}/{version}",
            dataset=spec.name,
            data_sha256=digest,
        )
        record_temp.write_text(record.text(), encoding="utf-8")
        log.info(
            "trained %d epochs in %.1f s; %d MLflow calls took %.2f s (%.1f%% of training)",
            len(result.history),
            result.fit_seconds,
            tracker.calls,
            tracker.seconds,
            100 * tracker.seconds / max(result.fit_seconds, 1e-9),
        )
        tracker.set_tags(
            {
                "mlpipe.fit_seconds": f"{result.fit_seconds:.2f}",
                "mlpipe.tracking_seconds": f"{tracker.seconds:.2f}",
            }
        )
    log.info(
        "registered %s version %d; model in %s", record.registered_model_name, version, outputs[0]
    )


if __name__ == "__main__":
    run_stage("train", main)
