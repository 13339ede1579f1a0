"""train: train the Keras model and record the run in MLflow.

Reads: params.yaml (base, model, train, mlflow); data/processed/{train,val}.npz.
Writes: models/model.keras; reports/history.csv (one row per epoch); models/run.json (the
MLflow run id and registered model version, for the later stages and for `dvc exp show`).
MLflow: params, per-epoch loss/accuracy/val_loss/val_accuracy, tags, the model summary and
the model, registered as a new version of `<mlflow.registered_model_name>-<dataset>`.
Run: `dvc repro train`, or `python -m stages.train` from the repository root.
With `train.distribution: multi_worker` every process of the job runs the same command; only
process 0 writes the outputs and the MLflow run (see `mlpipe.model.distribution`). As a sweep's
trial (`python -m mlpipe.sweep`), it reports each epoch to the study and stops when pruned.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial

from mlpipe.atomic import atomic_paths
from mlpipe.config import STAGE_PARAMS, Params, flatten, load_params
from mlpipe.data.specs import SPECS
from mlpipe.data.splits import data_digest, dataset_input, load_split
from mlpipe.model import distribution
from mlpipe.model.sizing import check_fits_in_memory
from mlpipe.paths import HERE, Layout
from mlpipe.runner import run_stage
from mlpipe.search import trial as sweep
from mlpipe.tracking.run_lifecycle import connect, run_tags, tracked_run

log = logging.getLogger("train")


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    role = distribution.plan(
        params.train, os.environ.get("KERAS_BACKEND", "tensorflow"), os.environ
    )
    check_fits_in_memory(params.model, params.train, spec.image_shape, spec.num_classes)
    splits = {name: load_split(layout, name, spec) for name in ("train", "val")}
    digest = data_digest(layout.split_files)
    if role.chief:
        client, experiment_id = connect(params.mlflow.experiment_name, layout.workspace)

    # TensorFlow (through Keras) is imported here, once params, data and the tracking store are
    # known to be good: a bad input fails in a second, not after TensorFlow's start-up.
    from mlpipe.model.keras_import import import_keras, set_random_seed

    keras = import_keras()  # first, so that TensorFlow's start-up notices are left out
    from mlpipe.model import architecture, training
    from mlpipe.tracking import model_logging

    set_random_seed(params.base.seed)
    engine = distribution.start(role, keras, params.train.batch_size)
    trained_on = flatten(params, STAGE_PARAMS["train"])
    distribution.check_same_job(role, json.dumps([trained_on, digest], sort_keys=True))
    with engine.scope():
        model = architecture.build_model(
            params.model, spec.image_shape, spec.num_classes, params.base.seed
        )
    log.info(architecture.describe(model))
    # Each process feeds its own shard (all of the data when it trains alone).
    shares = distribution.shard(splits, role, engine.num_local_devices)
    fit = partial(training.fit, model, params.train, shares, spec.num_classes, params.base.seed)
    if not role.chief:
        epochs = len(fit(engine, None).history)
        log.info("%s trained %d epochs; process 0 writes the outputs", role.label, epochs)
        return

    tags = {**model_logging.backend_tags(), "data.sha256": digest, "base.dataset": spec.name}
    tags.update(sweep.run_tags())  # in a sweep: the trial's, under its study's parent run
    outputs = (layout.model_file, layout.history_file, layout.run_record_file)
    with (
        tracked_run(client, experiment_id, run_tags(layout.root, tags)) as tracker,
        atomic_paths(*outputs) as (model_temp, history_temp, record_temp),
    ):
        log.info("MLflow run %s in experiment %r", tracker.run_id, params.mlflow.experiment_name)
        size = {"model.trainable_params": architecture.trainable_parameters(model)}
        tracker.log_params({**trained_on, **size, **engine.record(params.train.batch_size)})
        tracker.log_inputs([dataset_input(layout, n, len(y), spec) for n, (_, y) in splits.items()])
        tracker.log_text(architecture.summary_text(model), "model_summary.txt")
        result = fit(engine, sweep.epoch_hook(tracker))  # in a sweep, the pruner may stop it
        tracker.flush()
        model.save(model_temp)
        history = result.history_csv()
        history_temp.write_text(history, encoding="utf-8")
        record = model_logging.log_trained_model(
            tracker, model_temp, spec, params, digest, (layout.history_file.name, history), splits
        )
        record_temp.write_text(record.text(), encoding="utf-8")
        tracker.record_timings(len(result.history), result.fit_seconds)
    log.info("registered %s; model in %s", record.version_label, outputs[0])


if __name__ == "__main__":
    run_stage("train", main)
