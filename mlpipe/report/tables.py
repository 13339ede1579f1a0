"""The tables evaluate and train leave in `reports/`, read back checked, for the plot stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpipe.errors import DataError
from mlpipe.paths import Layout


def read_table(path: Path, columns: set[str]) -> pd.DataFrame:
    """A CSV with at least `columns`; DataError naming the file and the fix otherwise."""
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


@dataclass(frozen=True)
class Reports:
    """The training history, the test predictions and the confusion matrix of one model."""

    history: pd.DataFrame
    predictions: pd.DataFrame
    confusion: pd.DataFrame

    def check_test_set(self, labels: np.ndarray, path: Path) -> None:
        """Refuse predictions (read from `path`) that are not of the test set with `labels`."""
        found = self.predictions["label"]
        if len(found) != len(labels) or not np.array_equal(found, labels):
            raise DataError(f"{path}: does not match the test set; run `dvc repro evaluate`")


def read_reports(layout: Layout) -> Reports:
    """The three tables, each checked for the columns the figures need."""
    return Reports(
        history=read_table(
            layout.history_file, {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
        ),
        predictions=read_table(
            layout.predictions_file, {"index", "label", "predicted", "probability"}
        ),
        confusion=read_table(layout.confusion_file, {"label"}),
    )
