"""evaluate: test the trained model, record the results, and promote it if it is the best.

Reads: params.yaml (base.dataset, evaluate.*); models/model.keras; models/run.json;
data/processed/test.npz.
Writes: reports/metrics.json (DVC metrics: test accuracy and loss), reports/per_class.csv
(precision, recall, F1), reports/confusion.csv (the matrix), reports/predictions.csv (one row
per test image; the DVC confusion plot and the plot stage read it).
MLflow: test metrics and tables on the run that trained the model; the registered version gets
alias `challenger`, and `champion` when its test accuracy beats the current champion's.
Run: `dvc repro evaluate`, or `python -m stages.evaluate` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.atomic import atomic_paths, json_text
from mlpipe.cli import run_stage
from mlpipe.config import load_params
from mlpipe.data import load_split
from mlpipe.datasets import SPECS
from mlpipe.errors import ModelError
from mlpipe.paths import (
    CONFUSION_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
)
from mlpipe.tracking import read_run_info

log = logging.getLogger("evaluate")


def main() -> None:
    params = load_params()
    spec = SPECS[params.base.dataset]
    info = read_run_info()
    x_test, y_test = load_split("test", spec)

    from mlpipe.loading import load_keras_model

    model = load_keras_model(MODEL_FILE)
    if tuple(model.input_shape[1:]) != spec.image_shape:
        raise ModelError(
            f"{MODEL_FILE}: takes images of shape {tuple(model.input_shape[1:])}, "
            f"but {spec.name} has {spec.image_shape}; run the train stage again"
        )
    import pandas as pd

    from mlpipe.evaluation import (
        check_model_outputs,
        confusion_matrix,
        per_class_table,
        predictions_table,
        summary_metrics,
    )
    from mlpipe.registry import promote
    from mlpipe.tracking import attached_run, connect

    if model.output_shape[-1] != spec.num_classes:
        raise ModelError(
            f"{MODEL_FILE}: gives {model.output_shape[-1]} outputs per image, but {spec.name} "
            f"has {spec.num_classes} classes; run the train stage again"
        )
    probabilities = model.predict(x_test, batch_size=params.evaluate.batch_size, verbose=0)
    # Broken weights give NaN, which argmax would quietly read as class 0: never promote that.
    check_model_outputs(probabilities, spec.num_classes, str(MODEL_FILE))
    metrics = summary_metrics(y_test, probabilities)
    predictions = predictions_table(y_test, probabilities)
    matrix = confusion_matrix(y_test, predictions["predicted"].to_numpy(), spec.num_classes)
    per_class = per_class_table(matrix, spec.class_names)
    confusion = pd.DataFrame(matrix, columns=list(spec.class_names))
    confusion.insert(0, "label", list(spec.class_names))
    log.info(
        "test accuracy %.4f, loss %.4f on %d images",
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["test_samples"],
    )

    client, _ = connect(info["experiment_name"])
    outputs = (METRICS_FILE, PER_CLASS_FILE, CONFUSION_FILE, PREDICTIONS_FILE)
    with attached_run(client, info["run_id"]) as tracker, atomic_paths(*outputs) as temps:
        metrics_temp, per_class_temp, confusion_temp, predictions_temp = temps
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "test_samples"})
        for table, name in ((per_class, PER_CLASS_FILE.name), (confusion, CONFUSION_FILE.name)):
            tracker.log_text(table.to_csv(index=False), f"evaluation/{name}")
        decision = promote(
            client,
            info["registered_model_name"],
            int(info["registered_model_version"]),
            metrics["test_accuracy"],
        )
        log.info(
            "%s %s: %s",
            "promoted" if decision.promoted else "kept",
            info["registered_model_name"],
            decision.reason,
        )
        # The run id and version make `dvc exp show` lead to the MLflow run, and back.
        recorded = {
            **metrics,
            "mlflow_run_id": info["run_id"],
            "model_version": int(info["registered_model_version"]),
        }
        metrics_temp.write_text(json_text(recorded), encoding="utf-8")
        per_class.to_csv(per_class_temp, index=False, float_format="%.6f")
        confusion.to_csv(confusion_temp, index=False)
        predictions.to_csv(predictions_temp, index=False)


if __name__ == "__main__":
    run_stage("evaluate", main)
