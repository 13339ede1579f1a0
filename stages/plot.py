"""plot: the tutorial's figures, and what a reader wants next, as PNG files.

Reads: params.yaml (base.seed, base.dataset, plot.*); reports/history.csv;
reports/predictions.csv; reports/confusion.csv; data/processed/{train,test}.npz;
models/run.json (to attach the figures to the MLflow run).
Writes: reports/figures/*.png: sample training images, accuracy and loss curves, a grid of
test predictions, the confusion matrix, the most confidently wrong test images.
Does not import TensorFlow.
Run: `dvc repro plot`, or `python -m stages.plot` from the repository root.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mlpipe.cli import run_stage
from mlpipe.config import load_params
from mlpipe.data import load_split
from mlpipe.datasets import SPECS
from mlpipe.errors import DataError
from mlpipe.paths import CONFUSION_FILE, FIGURES_DIR, HISTORY_FILE, PREDICTIONS_FILE

log = logging.getLogger("plot")


def read_table(path: Path, columns: set[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    missing = columns - set(table.columns)
    if missing:
        raise DataError(f"{path}: lacks columns {sorted(missing)}")
    return table


def main() -> None:
    params = load_params()
    spec = SPECS[params.base.dataset]
    history = read_table(HISTORY_FILE, {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"})
    predictions = read_table(PREDICTIONS_FILE, {"index", "label", "predicted", "probability"})
    confusion = read_table(CONFUSION_FILE, {"label"})
    x_train, y_train = load_split("train", spec)
    x_test, y_test = load_split("test", spec)
    if len(predictions) != len(y_test) or not np.array_equal(predictions["label"], y_test):
        raise DataError(
            f"{PREDICTIONS_FILE}: does not match the test set; run `dvc repro evaluate`"
        )

    from mlpipe import figures
    from mlpipe.atomic import atomic_paths

    rng = np.random.default_rng(params.base.seed)
    samples = np.sort(
        rng.choice(len(x_train), min(params.plot.sample_grid**2, len(x_train)), replace=False)
    )
    shown = np.sort(
        rng.choice(len(x_test), min(params.plot.prediction_grid**2, len(x_test)), replace=False)
    )
    predicted = predictions["predicted"].to_numpy()
    built = {
        "samples.png": figures.sample_grid(
            x_train[samples], y_train[samples], spec.class_names, params.plot.sample_grid
        ),
        "accuracy.png": figures.curves(history, "accuracy"),
        "loss.png": figures.curves(history, "loss"),
        "predictions.png": figures.prediction_grid(
            x_test[shown],
            y_test[shown],
            predicted[shown],
            spec.class_names,
            params.plot.prediction_grid,
        ),
        "confusion_matrix.png": figures.confusion_heatmap(
            confusion.drop(columns="label").to_numpy(), spec.class_names
        ),
        "confident_mistakes.png": figures.confident_mistakes(
            x_test,
            y_test,
            predicted,
            predictions["probability"].to_numpy(),
            spec.class_names,
            params.plot.wrong_count,
        ),
    }
    # Remove figures a previous run left that this one does not make.
    for stale in FIGURES_DIR.glob("*.png"):
        if stale.name not in built:
            stale.unlink()
    finals = [FIGURES_DIR / name for name in built]
    with atomic_paths(*finals) as temps:
        for figure, temp in zip(built.values(), temps, strict=True):
            figures.save_png(figure, temp)
    log.info("%d figures in %s", len(finals), FIGURES_DIR)
    log_to_run(finals)


def log_to_run(paths: list[Path]) -> None:
    """Attach the figures to the MLflow run that trained the model."""
    from mlpipe.tracking import attached_run, connect, read_run_info

    info = read_run_info()
    client, _ = connect(info["experiment_name"])
    with attached_run(client, info["run_id"]) as tracker:
        for path in paths:
            tracker.log_artifact(path, "figures")
    log.info("figures logged to MLflow run %s", info["run_id"])


if __name__ == "__main__":
    run_stage("plot", main)
