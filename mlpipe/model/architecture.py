"""The Keras models, built from params: the tutorial's MLP, or a convnet.

Only Keras 3 APIs are used, so the backend stays a choice (TensorFlow by default,
`KERAS_BACKEND=jax` works too). Pixels are scaled inside the model, so a saved model takes
raw uint8 images of the dataset's shape. `mlpipe.model.numpy_forward` runs exactly these
layers without Keras: a layer added here needs its NumPy twin there (or evaluate and predict
load the model with Keras).
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import layers

from mlpipe.config import ModelParams


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


def describe(model: keras.Model) -> str:
    """The model on one log line: its name, layers and trainable parameters."""
    return (
        f"model {model.name}: {len(model.layers)} layers, {trainable_parameters(model):,} "
        "trainable parameters (its summary: model_summary.txt in MLflow)"
    )
