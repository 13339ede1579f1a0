"""Keras models, optimizers and the training loop, built from params.

Only Keras 3 APIs are used, so the backend stays a choice (TensorFlow by default,
`KERAS_BACKEND=jax` works too). Pixels are scaled inside the model, so a saved model takes
raw uint8 images of the dataset's shape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from mlpipe.config import ModelParams, TrainParams

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def build_model(
    params: ModelParams, image_shape: tuple[int, ...], num_classes: int, seed: int
) -> keras.Model:
    """The tutorial's MLP, or a convnet, for images of `image_shape`."""
    inputs = keras.Input(shape=image_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale_pixels")(inputs)
    if params.type == "cnn":
        if len(image_shape) == 2:
            x = layers.Reshape((*image_shape, 1), name="add_channel")(x)
        # Batch norm after each convolution (which then needs no bias) trains faster and
        # steadier. Its moving statistics, which evaluation uses, follow the batches within
        # some 20 steps at momentum 0.9 (Keras's 0.99 needs hundreds: a run on a subset or of
        # a few epochs was evaluated with statistics far from those it trained with).
        for filters in params.conv_filters:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation(params.activation)(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        # Dropout on both sides of the head's Dense layer, the largest: without dropout the
        # earlier cnn over-fitted MNIST (training accuracy 0.996, validation 0.986). One seed
        # serves both; their masks differ in shape.
        x = _dropout(x, params.cnn_dropout, seed)
        x = layers.Dense(params.cnn_dense_units, activation=params.activation)(x)
        x = _dropout(x, params.cnn_dropout, seed)
    else:
        x = layers.Flatten()(x)
        for units in params.hidden_units:
            x = layers.Dense(units, activation=params.activation)(x)
        x = _dropout(x, params.dropout, seed)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{params.type}_classifier")


def _dropout(x: keras.KerasTensor, rate: float, seed: int) -> keras.KerasTensor:
    """A Dropout layer on `x`, or `x` itself when `rate` is 0."""
    return layers.Dropout(rate, seed=seed)(x) if rate else x


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


def summary_text(model: keras.Model) -> str:
    """The model summary as the tutorial prints it, at a fixed width so no column is cut.

    Keras renders it with rich, which sizes a captured console from COLUMNS (80 otherwise).
    """
    lines: list[str] = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        model.summary(print_fn=lambda text, **_: lines.append(text), line_length=90)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "".join(lines).rstrip("\n") + "\n"


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def _end_epoch(
    rows: list[dict[str, float]],
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    seconds: float,
    hook: EpochHook | None,
) -> None:
    """Record one epoch's row, log its one line, and hand its metrics to `hook` (MLflow)."""
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
        _end_epoch(self.rows, epoch + 1, self.epochs, metrics, seconds, self.hook)


@dataclass(frozen=True)
class TrainResult:
    history: list[dict[str, float]]  # one row per epoch: epoch, the four metrics, seconds
    fit_seconds: float


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


def train_scan(
    model: keras.Model,
    params: TrainParams,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    num_classes: int,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """The same training as `train`, as one jitted `lax.scan` per epoch (JAX backend only).

    A network this small is bound by per-step overhead, not arithmetic: `fit` dispatches every
    batch from Python. Here the data stay on the device, each epoch shuffles and runs all its
    batches inside one compiled call through Keras's stateless API, and Python sees the
    device only once per epoch, to log. The last partial batch of an epoch is dropped, so
    every step has the same shape. Early stopping on val_loss works as in `fit`.
    """
    import jax
    import jax.numpy as jnp

    x_train, y_train, x_val, y_val = data
    compile_model(model, params)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.get(params.loss)
    sparse = params.loss == "sparse_categorical_crossentropy"
    batch = min(params.batch_size, len(x_train))
    steps = len(x_train) // batch

    def loss_and_output(trainable, non_trainable, x, y):
        output, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.mean(loss_fn(y, output)), (output, non_trainable)

    gradient = jax.value_and_grad(loss_and_output, has_aux=True)

    def correct(y, output):
        truth = y if sparse else jnp.argmax(y, axis=-1)
        return jnp.sum(jnp.argmax(output, axis=-1) == truth)

    def step(state, xy):
        trainable, non_trainable, optimizer_state = state
        (loss, (output, non_trainable)), grads = gradient(trainable, non_trainable, *xy)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return (trainable, non_trainable, optimizer_state), (loss, correct(xy[1], output))

    @jax.jit
    def epoch(state, xs, ys, key):
        order = jax.random.permutation(key, xs.shape[0])[: steps * batch]
        shaped = (
            xs[order].reshape(steps, batch, *xs.shape[1:]),
            ys[order].reshape(steps, batch, *ys.shape[1:]),
        )
        state, (losses, corrects) = jax.lax.scan(step, state, shaped)
        return state, jnp.mean(losses), jnp.sum(corrects) / (steps * batch)

    @jax.jit
    def evaluate(state, xs, ys):
        trainable, non_trainable, _ = state
        output, _ = model.stateless_call(trainable, non_trainable, xs, training=False)
        return jnp.mean(loss_fn(ys, output)), correct(ys, output) / xs.shape[0]

    xs, xv = jnp.asarray(x_train), jnp.asarray(x_val)
    ys = jnp.asarray(encode_labels(y_train, params.loss, num_classes))
    yv = jnp.asarray(encode_labels(y_val, params.loss, num_classes))
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    key = jax.random.PRNGKey(seed)
    rows: list[dict[str, float]] = []
    best, best_state, waited = np.inf, state, 0
    started = time.perf_counter()
    for index in range(params.epochs):
        began = time.perf_counter()
        key, subkey = jax.random.split(key)
        state, loss, accuracy = epoch(state, xs, ys, subkey)
        val_loss, val_accuracy = evaluate(state, xv, yv)
        metrics = {
            "loss": float(loss),
            "accuracy": float(accuracy),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy),
        }
        _end_epoch(rows, index + 1, params.epochs, metrics, time.perf_counter() - began, on_epoch)
        if params.early_stopping_patience:
            if metrics["val_loss"] < best:
                best, best_state, waited = metrics["val_loss"], state, 0
            else:
                waited += 1
                if waited >= params.early_stopping_patience:
                    break
    if params.early_stopping_patience:
        # As `fit`'s EarlyStopping(restore_best_weights=True): the best epoch's weights at the
        # end, whether training stopped early or ran all its epochs.
        state = best_state
    fit_seconds = time.perf_counter() - started
    trainable, non_trainable, optimizer_state = state
    for variables, values in (
        (model.trainable_variables, trainable),
        (model.non_trainable_variables, non_trainable),
        (optimizer.variables, optimizer_state),
    ):
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
    return TrainResult(rows, fit_seconds)
