"""plot: the tutorial's figures, and what a reader wants next, as PNG files.

Reads: params.yaml (base.seed, base.dataset, plot.*); reports/history.csv;
reports/predictions.csv; reports/confusion.csv; data/processed/{train,test}.npz;
models/run.json (to attach the figures to the MLflow run).
Writes: reports/figures/*.png: sample training images, accuracy and loss curves, a grid of
test predictions, the confusion matrix, the most confidently wrong test images.
Does not import TensorFlow; MLflow's part runs in a second process while the figures are drawn
(mlpipe.tracking.mlflow_process).
Run: `dvc repro plot`, or `python -m stages.plot` from the repository root.
"""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

from mlpipe.atomic import atomic_paths
from mlpipe.config import Params, load_params
from mlpipe.data.specs import SPECS
from mlpipe.data.splits import load_split
from mlpipe.paths import HERE, Layout, scratch_dir
from mlpipe.report.tables import read_reports
from mlpipe.runner import run_stage
from mlpipe.tracking.mlflow_process import alongside
from mlpipe.tracking.run_json import RunRecord
from mlpipe.tracking.run_lifecycle import connected_client, log_folder

log = logging.getLogger("plot")


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    record = RunRecord.read(layout.run_record_file)
    # MLflow's import and the store's opening run in a second process while the figures are
    # drawn here; it logs them when they are ready.
    prepare = partial(connected_client, record.experiment_name, layout.workspace)
    with alongside(prepare, log_folder) as log_figures:
        from mlpipe.report import figures  # matplotlib, while the other process loads MLflow

        reports = read_reports(layout)
        train = load_split(layout, "train", spec)
        test = load_split(layout, "test", spec)
        reports.check_test_set(test[1], layout.predictions_file)
        built = figures.plot_stage_figures(
            reports, train, test, spec.class_names, params.plot, params.base.seed
        )
        finals = [layout.figures_dir / name for name in built]
        with (
            atomic_paths(*finals) as temps,
            scratch_dir("figures") as scratch,
        ):
            for (name, figure), temp in zip(built.items(), temps, strict=True):
                figures.save_png(figure, temp)
                shutil.copyfile(temp, Path(scratch) / name)  # logged under its real name
            # The figures move into place only once MLflow has them.
            log_figures((record.run_id, scratch, "figures"))
    # Only now that the new figures are in place: remove those this run does not make.
    for stale in layout.figures_dir.glob("*.png"):
        if stale.name not in built:
            stale.unlink()
    log.info(
        "%d figures in %s, logged to MLflow run %s", len(finals), layout.figures_dir, record.run_id
    )


if __name__ == "__main__":
    run_stage("plot", main)
