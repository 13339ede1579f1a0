"""How big a model from params will be, counted without Keras, so a bad size fails early."""

from __future__ import annotations

import numpy as np

from mlpipe.config import ModelParams, TrainParams
from mlpipe.errors import ConfigError


def parameter_count(params: ModelParams, image_shape: tuple[int, ...], num_classes: int) -> int:
    """The trainable parameters `build_model` will create, counted without building it."""
    count = 0
    if params.type == "cnn":
        height, width = image_shape[:2]
        channels = image_shape[2] if len(image_shape) == 3 else 1
        for filters in params.conv_filters:
            # A 3x3 kernel without bias, then batch norm's scale and offset.
            count += 3 * 3 * channels * filters + 2 * filters
            channels, height, width = filters, height // 2, width // 2
        inputs = height * width * channels
        dense = [params.cnn_dense_units]
    else:
        inputs = int(np.prod(image_shape))
        dense = params.hidden_units
    for units in [*dense, num_classes]:
        count += inputs * units + units
        inputs = units
    return count


def activations_per_image(
    params: ModelParams, image_shape: tuple[int, ...], num_classes: int
) -> int:
    """The values one image makes flow through the network: every layer's output, counted."""
    height, width = image_shape[:2]
    count = int(np.prod(image_shape))
    if params.type == "cnn":
        for filters in params.conv_filters:
            count += 3 * height * width * filters  # convolution, batch norm, activation
            height, width = height // 2, width // 2
            count += height * width * filters
        return count + params.cnn_dense_units + num_classes
    return count + sum(params.hidden_units) + num_classes


def check_fits_in_memory(
    model: ModelParams, train: TrainParams, image_shape: tuple[int, ...], num_classes: int
) -> int:
    """Refuse, before allocating it, a model whose training would not fit in free memory.

    Training holds the weights, their gradients, a working copy and the optimizer's slots
    (Adam two, RMSprop and SGD with momentum one), and for each image of a batch every layer's
    output and its gradient, all float32. Returns the estimate in bytes.
    """
    import psutil

    slots = {"adam": 2, "rmsprop": 1, "sgd": 1 if train.momentum else 0}[train.optimizer]
    weights = parameter_count(model, image_shape, num_classes) * 4 * (3 + slots)
    activations = train.batch_size * activations_per_image(model, image_shape, num_classes) * 4 * 2
    estimate = weights + activations
    available = psutil.virtual_memory().available
    if estimate > available:
        sized = (
            f"model.conv_filters {_clipped(model.conv_filters)} and model.cnn_dense_units "
            f"{model.cnn_dense_units}"
            if model.type == "cnn"
            else f"model.hidden_units {_clipped(model.hidden_units)}"
        )
        raise ConfigError(
            f"params.yaml: {sized} (with train.batch_size {train.batch_size}) needs about "
            f"{estimate / 2**30:,.1f} GiB to train, more than the {available / 2**30:,.1f} GiB "
            "free; make the layers or the batches smaller"
        )
    return estimate


def _clipped(values: list[int]) -> str:
    text = str(values)
    return text if len(text) <= 60 else text[:57] + "..."
