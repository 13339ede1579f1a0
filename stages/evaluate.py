"""evaluate: test the trained model, record the results, and promote it if it is the best.

Reads: params.yaml (base.dataset, evaluate.*); models/model.keras; models/run.json;
data/processed/{test,val}.npz.
Writes: reports/metrics.json (DVC metrics: test accuracy and loss, and the final model's
validation accuracy and loss), reports/per_class.csv
(precision, recall, F1), reports/confusion.csv (the matrix), reports/predictions.csv (one row
per test image; the DVC confusion plot and the plot stage read it).
MLflow: test metrics and tables on the run that trained the model; the registered version gets
alias `challenger`, and `champion` when its validation metric (`evaluate.promote_by`) beats
the current champion's: the test set stays the held-out estimate, never a selection.
In a sweep, the validation metric in reports/metrics.json is the trial's value.
The model runs in NumPy (mlpipe.model.numpy_forward) when it is built of this project's
layers: TensorFlow is not imported.
Run: `dvc repro evaluate`, or `python -m stages.evaluate` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.atomic import atomic_paths, json_text
from mlpipe.config import Params, load_params
from mlpipe.data.digests import sha256_file
from mlpipe.data.specs import SPECS
from mlpipe.data.splits import dataset_input, load_split
from mlpipe.errors import ModelError
from mlpipe.paths import HERE, Layout
from mlpipe.report.evaluation import evaluate, predicted, summary_line, validation_metrics
from mlpipe.runner import run_stage
from mlpipe.tracking.run_json import RunRecord

log = logging.getLogger("evaluate")


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    record = RunRecord.read(layout.run_record_file)
    x_test, y_test = load_split(layout, "test", spec)
    x_val, y_val = load_split(layout, "val", spec)

    # The model's layers run in NumPy (mlpipe.model.numpy_forward): TensorFlow is imported only
    # for a model built of others, once the cheap checks have passed.
    from mlpipe.model.loading import check_input_shape, check_output_count, load_for_inference
    from mlpipe.tracking import model_identity
    from mlpipe.tracking.promotion import Score, promote
    from mlpipe.tracking.run_lifecycle import attached_run, connect

    source = layout.model_file
    # Of the bytes loaded next, checked against the registry's (a missing file: load says so).
    digest = sha256_file(source) if source.is_file() else ""
    model = load_for_inference(source)
    check_input_shape(model, spec.name, spec.image_shape, str(source))
    check_output_count(model, spec.num_classes, str(source), "run the train stage again")
    scoring = (params.evaluate.batch_size, spec.num_classes, str(source))
    report = evaluate(y_test, predicted(model, x_test, *scoring), spec.class_names)
    validation = validation_metrics(y_val, predicted(model, x_val, *scoring))
    metrics = {**report.metrics, **validation}
    log.info(summary_line(metrics))

    client, _ = connect(record.experiment_name, layout.workspace)
    name, version = record.registered_model_name, record.registered_model_version
    changed = model_identity.mismatch(client, name, version, digest)  # before any tag is set
    if changed:
        raise ModelError(
            f"{source}: not the model registered as {name} version {version} ({changed}): it "
            "changed after train ran; `dvc checkout train` brings back the trained one"
        )
    outputs = (
        layout.metrics_file,
        layout.per_class_file,
        layout.confusion_file,
        layout.predictions_file,
    )
    with attached_run(client, record.run_id) as tracker, atomic_paths(*outputs) as temps:
        metrics_temp, per_class_temp, confusion_temp, predictions_temp = temps
        # The run id and version make `dvc exp show` lead to the MLflow run, and back.
        recorded = {**metrics, "mlflow_run_id": record.run_id, "model_version": version}
        metrics_temp.write_text(json_text(recorded), encoding="utf-8")
        report.per_class.to_csv(per_class_temp, index=False, float_format="%.6f")
        report.confusion.to_csv(confusion_temp, index=False)
        report.predictions.to_csv(predictions_temp, index=False)
        # The validation metrics stay train's, per epoch: these are the test set's.
        tracker.log_metrics({k: v for k, v in report.metrics.items() if k != "test_samples"})
        tracker.log_inputs([dataset_input(layout, "test", len(y_test), spec)])
        for table, path in ((report.per_class, outputs[1]), (report.confusion, outputs[2])):
            tracker.log_text(table.to_csv(index=False), f"evaluation/{path.name}")
        # Last: a stage that failed before here (a full disk, the store away) moved no alias.
        score = Score(params.evaluate.promote_by, validation[params.evaluate.promote_by])
        held_out = {"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}
        decision = promote(client, name, version, score, held_out)
        log.info("%s %s: %s", "promoted" if decision.promoted else "kept", name, decision.reason)


if __name__ == "__main__":
    run_stage("evaluate", main)
