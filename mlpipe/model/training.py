"""Training a built model with `model.fit`: its optimizer, labels, one log line per epoch.

The epoch's metrics are handed to a hook (the train stage's MLflow run) as each epoch ends.
`train.loop: scan` trains the same way in one compiled call per epoch (`mlpipe.model.scan`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np

from mlpipe.config import TrainParams
from mlpipe.data.splits import Split
from mlpipe.runner import raise_if_stopped

if TYPE_CHECKING:
    from mlpipe.model.distribution import Engine

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def make_optimizer(params: TrainParams) -> keras.optimizers.Optimizer:
    if params.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=params.learning_rate, momentum=params.momentum)
    if params.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=params.learning_rate)
    return keras.optimizers.RMSprop(learning_rate=params.learning_rate)


def encode_labels(labels: np.ndarray, loss: str, num_classes: int) -> np.ndarray:
    """One-hot for categorical cross-entropy, integers for the sparse variant."""
    if loss == "categorical_crossentropy":
        return keras.utils.to_categorical(labels, num_classes).astype("float32")
    return labels.astype("int32")


def compile_model(model: keras.Model, params: TrainParams) -> None:
    model.compile(optimizer=make_optimizer(params), loss=params.loss, metrics=["accuracy"])


def end_epoch(
    rows: list[dict[str, float]],
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    seconds: float,
    hook: EpochHook | None,
) -> None:
    """Record one epoch's row, log its one line, and hand its metrics to `hook` (MLflow); stop
    here if a signal to stop was lost during the epoch."""
    raise_if_stopped()
    rows.append({"epoch": epoch, **metrics, "seconds": seconds})
    shown = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())
    log.info("epoch %d/%d  %s  (%.2f s)", epoch, epochs, shown, seconds)
    if hook is not None:
        hook(epoch, metrics)


class _EpochCallback(keras.callbacks.Callback):
    """One log line per epoch, and the epoch's metrics handed to `hook` (MLflow)."""

    def __init__(self, epochs: int, hook: EpochHook | None) -> None:
        super().__init__()
        self.epochs = epochs
        self.hook = hook
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {key: float(logs[key]) for key in HISTORY_KEYS if logs and key in logs}
        seconds = time.perf_counter() - self._started
        end_epoch(self.rows, epoch + 1, self.epochs, metrics, seconds, self.hook)


@dataclass(frozen=True)
class TrainResult:
    history: list[dict[str, float]]  # one row per epoch: epoch, the four metrics, seconds
    fit_seconds: float

    def history_csv(self) -> str:
        """The history as `reports/history.csv` holds it, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.history).to_csv(index=False)


def fit(
    model: keras.Model,
    params: TrainParams,
    splits: dict[str, Split],
    num_classes: int,
    seed: int,
    engine: Engine,
    on_epoch: EpochHook | None,
) -> TrainResult:
    """Train on this process's `train` and `val` splits with `train.loop`'s loop, under the
    distribution engine; each process feeds its share of the global batch."""
    data = (*splits["train"], *splits["val"])
    if params.loop == "scan":
        from mlpipe.model.scan import train_scan

        return train_scan(model, params, data, num_classes, seed, on_epoch=on_epoch)
    with engine.training():
        batch = engine.batch_per_process(params.batch_size)
        return train(model, params, data, num_classes, on_epoch=on_epoch, batch_size=batch)


def train(
    model: keras.Model,
    params: TrainParams,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    num_classes: int,
    on_epoch: EpochHook | None = None,
    batch_size: int | None = None,
) -> TrainResult:
    """Compile and fit `model` on (x_train, y_train, x_val, y_val); returns its history.

    `batch_size` is what this process feeds per step when several processes share the global
    `params.batch_size`.
    """
    x_train, y_train, x_val, y_val = data
    compile_model(model, params)
    epoch_callback = _EpochCallback(params.epochs, on_epoch)
    callbacks: list[keras.callbacks.Callback] = [epoch_callback]
    if params.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=params.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    started = time.perf_counter()
    model.fit(
        x_train,
        encode_labels(y_train, params.loss, num_classes),
        validation_data=(x_val, encode_labels(y_val, params.loss, num_classes)),
        batch_size=batch_size or params.batch_size,
        epochs=params.epochs,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return TrainResult(epoch_callback.rows, time.perf_counter() - started)
