"""`train.loop: scan`: the same training as `model.fit`, one jitted `lax.scan` per epoch (JAX).

A network this small is bound by per-step overhead, not arithmetic: `fit` dispatches every
batch from Python. Here the data stay on the device, each epoch shuffles and runs all its
batches inside one compiled call through Keras's stateless API, and Python sees the device
only once per epoch, to log.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from mlpipe.config import TrainParams
from mlpipe.model.training import EpochHook, TrainResult, compile_model, encode_labels, end_epoch


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
        end_epoch(rows, index + 1, params.epochs, metrics, time.perf_counter() - began, on_epoch)
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
