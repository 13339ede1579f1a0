"""plot: the tutorial's figures, and what a reader wants next, as PNG files.

Reads: params.yaml (base.seed, base.dataset, plot.*); reports/history.csv;
reports/predictions.csv; reports/confusion.csv; data/processed/{train,test}.npz;
models/run.json (to attach the figures to the MLflow run).
Writes: reports/figures/*.png: sample training images, accuracy and loss curves, a grid of
test predictions, the confusion matrix, the most confidently wrong test images.
Does not import TensorFlow; MLflow's part runs in a second process while the figures are drawn
(mlpipe.background).
Run: `dvc repro plot`, or `python -m stages.plot` from the repository root.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlpipe.background import alongside
from mlpipe.config import Params, load_params
from mlpipe.datasets import SPECS, DatasetSpec
from mlpipe.errors import DataError
from mlpipe.paths import HERE, Layout
from mlpipe.run_record import RunRecord
from mlpipe.runner import run_stage
from mlpipe.splits import load_split

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("plot")


def read_table(path: Path, columns: set[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing; run the stage that writes it (dvc repro)") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    missing = columns - set(table.columns)
    if missing:
        raise DataError(f"{path}: lacks columns {sorted(missing)}")
    return table


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    record = RunRecord.read(layout.run_record_file)
    # MLflow's import and the store's opening run in a second process while the figures are
    # drawn here (mlpipe.background); it logs them when they are ready.
    with alongside(lambda: _connect(layout, record), _log_figures) as log_figures:
        _draw_save_and_log(layout, params, spec, record, log_figures)


def _connect(layout: Layout, record: RunRecord) -> MlflowClient:
    from mlpipe.runs import connect

    return connect(record.experiment_name, layout.workspace)[0]


def _log_figures(client: MlflowClient, request: tuple[str, str]) -> None:
    from mlpipe.runs import attached_run

    run_id, folder = request
    with attached_run(client, run_id) as tracker:
        tracker.log_artifacts(Path(folder), "figures")


def _draw_save_and_log(
    layout: Layout,
    params: Params,
    spec: DatasetSpec,
    record: RunRecord,
    log_figures: Callable[[tuple[str, str]], None],
) -> None:
    history = read_table(
        layout.history_file, {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    )
    predictions = read_table(
        layout.predictions_file, {"index", "label", "predicted", "probability"}
    )
    confusion = read_table(layout.confusion_file, {"label"})
    x_train, y_train = load_split(layout, "train", spec)
    x_test, y_test = load_split(layout, "test", spec)
    if len(predictions) != len(y_test) or not np.array_equal(predictions["label"], y_test):
        raise DataError(
            f"{layout.predictions_file}: does not match the test set; run `dvc repro evaluate`"
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
    finals = [layout.figures_dir / name for name in built]
    with (
        atomic_paths(*finals) as temps,
        tempfile.TemporaryDirectory(prefix="mlpipe-figures-") as scratch,
    ):
        for (name, figure), temp in zip(built.items(), temps, strict=True):
            figures.save_png(figure, temp)
            shutil.copyfile(temp, Path(scratch) / name)  # logged under its real name
        log_figures((record.run_id, scratch))
    # Only now that the new figures are in place: remove those this run does not make.
    for stale in layout.figures_dir.glob("*.png"):
        if stale.name not in built:
            stale.unlink()
    log.info(
        "%d figures in %s, logged to MLflow run %s", len(finals), layout.figures_dir, record.run_id
    )


if __name__ == "__main__":
    run_stage("plot", main)
