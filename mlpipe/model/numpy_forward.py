"""A saved Keras model's forward pass in NumPy, for the layers this project builds.

Inference is one pass through a few layers; importing TensorFlow for it cost the evaluate stage
and `python -m mlpipe.predict` most of their time (benchmarks/run.py). `read` turns a `.keras`
archive into a `NumpyModel` when its graph is a chain of the layers below, in float32, with
the options `mlpipe.model.architecture` uses; anything else (another layer, option,
activation or dtype, or a config it cannot read) is `Unsupported`, and the caller loads the
archive with Keras instead. Each layer computes what Keras computes, in float32; sums run in
another order, so probabilities agree with Keras's to about 1e-6. tests/test_numpy_forward.py checks
the two agree on models of every supported shape, and CI's pipeline check that evaluate's
metrics on the real model are Keras's to every digit the metrics file keeps.

This module is frozen to what `mlpipe.model.architecture` builds: it is not a general Keras
runtime, and grows only when the architecture does (docs/decisions/0001-numpy-forward-pass.md).
"""

from __future__ import annotations

import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Array = np.ndarray
Step = Callable[[Array], Array]

# Keras's SELU constants (keras.activations.selu).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class Unsupported(Exception):
    """The archive holds something this module does not compute; load it with Keras."""


def _softmax(x: Array) -> Array:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):  # exp(-x) is inf below x = -88: the answer is 0, as Keras's
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def _elu(x: Array) -> Array:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


ACTIVATIONS: dict[str, Step] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "tanh": np.tanh,
    "sigmoid": lambda x: _sigmoid(x),
    "elu": _elu,
    "selu": lambda x: (
        np.float32(SELU_SCALE)
        * np.where(x > 0, x, np.float32(SELU_ALPHA) * np.expm1(np.minimum(x, 0)))
    ),
    "softmax": _softmax,
}
# gelu is left to Keras: NumPy has no erf.

# Images per convolution product: the copied windows of 64 CIFAR-10 images through a
# 64-filter layer are about 19 MB.
CONV_CHUNK = 64


def _snake_case(name: str) -> str:
    """Keras's name for a layer's weights in the archive (keras.src.utils.naming)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass(frozen=True)
class NumpyModel:
    """What evaluate and predict use of a Keras model: its shapes and `predict`."""

    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    input_dtype: str
    steps: tuple[Step, ...]

    def predict(self, x: Array, batch_size: int = 32, verbose: int = 0) -> Array:
        """Probabilities for `x`, `batch_size` images at a time (as Keras bounds its memory)."""
        del verbose  # Keras's signature; nothing is printed
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"inputs of shape {x.shape[1:]}, not {self.input_shape[1:]}")
        outputs = []
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].astype(self.input_dtype, copy=False)
            for step in self.steps:
                batch = step(batch)
            outputs.append(batch)
        if not outputs:
            return np.zeros((0, *self.output_shape[1:]), dtype=np.float32)
        return np.concatenate(outputs)


def read(path: Path) -> NumpyModel:
    """The model in `path` (already checked by mlpipe.model.loading) as a NumpyModel.

    Raises Unsupported for a model it does not compute; zipfile's errors (a damaged member)
    and KeyError/ValueError (a weight missing or of the wrong shape) for a broken archive.
    """
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        try:
            layers = _chain(config)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise Unsupported(f"a config this module cannot read ({exc!r})") from exc
        weights = archive.read("model.weights.h5")
    import h5py

    used: dict[str, int] = {}
    with h5py.File(io.BytesIO(weights), "r") as store:
        steps: list[Step] = []
        shape: tuple[int | None, ...] = ()
        input_dtype = "float32"
        for layer in layers:
            kind, options = layer["class_name"], layer["config"]
            name = _snake_case(kind)
            used[name] = used.get(name, -1) + 1
            key = f"layers/{name}_{used[name]}" if used[name] else f"layers/{name}"
            group = store.get(f"{key}/vars")
            variables = [np.asarray(group[str(i)]) for i in range(len(group))] if group else []
            if layer.get("module") != "keras.layers" or layer.get("registered_name"):
                raise Unsupported(f"layer {options.get('name')}, not one of Keras's own")
            if kind == "InputLayer":
                shape = tuple(options["batch_shape"])
                if None in shape[1:]:
                    raise Unsupported(f"inputs of shape {shape[1:]}, of unknown sizes")
                input_dtype = _input_dtype(options)
                continue
            if input_dtype == "uint8" and not steps and kind != "Rescaling":
                raise Unsupported("uint8 inputs that are not rescaled first")
            if "dtype" in options:
                _require_float32(options["dtype"], kind)
            try:
                step, shape = _layer(kind, options, variables, shape)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                raise Unsupported(f"a {kind} layer this module cannot read ({exc!r})") from exc
            if step is not None:
                steps.append(step)
    return NumpyModel(
        input_shape=tuple(layers[0]["config"]["batch_shape"]),
        output_shape=shape,
        input_dtype=input_dtype,
        steps=tuple(steps),
    )


def _chain(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of a Functional model whose every layer feeds the next, in order."""
    if config.get("class_name") != "Functional":
        raise Unsupported(f"a {config.get('class_name')} model")
    layers = config["config"]["layers"]
    if not layers or layers[0]["class_name"] != "InputLayer":
        raise Unsupported("a model that does not start at its input")
    for before, layer in itertools.pairwise(layers):
        nodes = layer.get("inbound_nodes") or []
        arguments = nodes[0].get("args", []) if len(nodes) == 1 else []
        history = (
            arguments[0].get("config", {}).get("keras_history", [None])
            if len(arguments) == 1 and isinstance(arguments[0], dict)
            else [None]
        )
        # Keras records `mask=None` and `training=False` calls; any other argument changes
        # what the layer computes (training=True keeps dropout on at inference).
        extra = {k: v for k, v in (nodes[0].get("kwargs") or {}).items() if v not in (None, False)}
        if history[0] != before["config"]["name"] or extra:
            raise Unsupported(f"layer {layer['config']['name']} does not follow the one before")
    # One output is saved as [name, 0, 0]; several as a list of those.
    output = config["config"]["output_layers"]
    if not output or not isinstance(output[0], str) or output[0] != layers[-1]["config"]["name"]:
        raise Unsupported("a model whose output is not its last layer")
    return layers


def _input_dtype(options: dict[str, Any]) -> str:
    dtype = options.get("dtype", "float32")
    if dtype not in ("uint8", "float32"):
        raise Unsupported(f"inputs of dtype {dtype}")
    return dtype


def _require_float32(policy: Any, kind: str) -> None:
    name = policy.get("config", {}).get("name") if isinstance(policy, dict) else policy
    if name != "float32":
        raise Unsupported(f"a {kind} layer computing in {name}")


def _activation(name: Any) -> Step:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise Unsupported(f"activation {name}")
    return ACTIVATIONS[name]


def _expect(variables: list[Array], shapes: list[tuple[int, ...]], kind: str) -> None:
    if any(v.dtype != np.float32 for v in variables):
        # Keras casts (or refuses) other dtypes as it loads them: leave those to it.
        raise Unsupported(f"{kind} weights of dtype {[str(v.dtype) for v in variables]}")
    if [v.shape for v in variables] != shapes:
        found = [v.shape for v in variables]
        raise ValueError(f"the {kind} layer's weights have shapes {found}, not {shapes}")


def _layer(
    kind: str, options: dict[str, Any], variables: list[Array], shape: tuple[int | None, ...]
) -> tuple[Step | None, tuple[int | None, ...]]:
    """One layer's computation (None for an identity at inference) and its output shape."""
    batch, *rest = shape
    if kind == "Rescaling":
        scale, offset = options["scale"], options["offset"]
        if not isinstance(scale, int | float) or not isinstance(offset, int | float):
            raise Unsupported("a Rescaling by arrays")
        scale32, offset32 = np.float32(scale), np.float32(offset)
        return (lambda x: x.astype(np.float32) * scale32 + offset32), shape
    if kind == "Flatten":
        _channels_last(options, kind)
        return (lambda x: x.reshape(len(x), -1)), (batch, int(np.prod(rest)))
    if kind == "Reshape":
        target = tuple(options["target_shape"])
        if -1 in target or np.prod(target) != np.prod(rest):
            raise Unsupported(f"a Reshape to {target}")
        return (lambda x: x.reshape(len(x), *target)), (batch, *target)
    if kind == "Dropout":
        return None, shape  # inference: the identity
    if kind == "Activation":
        return _activation(options["activation"]), shape
    if kind == "Dense":
        return _dense(options, variables, shape)
    if kind == "Conv2D":
        return _conv2d(options, variables, shape)
    if kind == "BatchNormalization":
        return _batch_norm(options, variables, shape)
    if kind == "MaxPooling2D":
        return _max_pool(options, shape)
    raise Unsupported(f"a {kind} layer")


def _channels_last(options: dict[str, Any], kind: str) -> None:
    if options.get("data_format", "channels_last") != "channels_last":
        raise Unsupported(f"a {kind} layer on channels_first data")


def _dense(
    options: dict[str, Any], variables: list[Array], shape: tuple[int | None, ...]
) -> tuple[Step, tuple[int | None, ...]]:
    if len(shape) != 2 or options.get("lora_rank") or options.get("quantization_config"):
        raise Unsupported("a Dense layer on more than one axis, or a LoRA or quantized one")
    units, inputs = options["units"], shape[1]
    bias = options["use_bias"]
    _expect(variables, [(inputs, units), *([(units,)] if bias else [])], "Dense")
    kernel, offset = variables[0], variables[1] if bias else None
    activation = _activation(options["activation"])

    def dense(x: Array) -> Array:
        y = x @ kernel
        return activation(y + offset if offset is not None else y)

    return dense, (shape[0], units)


def _conv2d(
    options: dict[str, Any], variables: list[Array], shape: tuple[int | None, ...]
) -> tuple[Step, tuple[int | None, ...]]:
    _channels_last(options, "Conv2D")
    if (
        len(shape) != 4
        or tuple(options["strides"]) != (1, 1)
        or tuple(options["dilation_rate"]) != (1, 1)
        or options.get("groups", 1) != 1
        or options["padding"] not in ("same", "valid")
        or options.get("lora_rank")
    ):
        raise Unsupported("a Conv2D layer other than stride 1, undilated, one group")
    height, width = options["kernel_size"]
    filters, channels = options["filters"], shape[3]
    bias = options["use_bias"]
    _expect(
        variables, [(height, width, channels, filters), *([(filters,)] if bias else [])], "Conv2D"
    )
    kernel, offset = variables[0], variables[1] if bias else None
    activation = _activation(options["activation"])
    same = options["padding"] == "same"
    # TensorFlow's "same" at stride 1: the extra row or column of padding goes after.
    pads = ((0, 0), ((height - 1) // 2, height // 2), ((width - 1) // 2, width // 2), (0, 0))

    def conv(x: Array) -> Array:
        # A few images at a time: the windows are copied into one matrix for the product.
        return np.concatenate(
            [convolve(x[i : i + CONV_CHUNK]) for i in range(0, len(x), CONV_CHUNK)]
        )

    def convolve(x: Array) -> Array:
        if same:
            x = np.pad(x, pads)
        windows = np.lib.stride_tricks.sliding_window_view(x, (height, width), axis=(1, 2))
        # windows: (n, rows, cols, channels, height, width); one matrix product over them.
        y = np.tensordot(windows, kernel, axes=([4, 5, 3], [0, 1, 2]))
        return activation(y + offset if offset is not None else y)

    rows = shape[1] if same else shape[1] - height + 1
    cols = shape[2] if same else shape[2] - width + 1
    return conv, (shape[0], rows, cols, filters)


def _batch_norm(
    options: dict[str, Any], variables: list[Array], shape: tuple[int | None, ...]
) -> tuple[Step, tuple[int | None, ...]]:
    axis = options["axis"]
    if axis not in (-1, len(shape) - 1) or options.get("renorm") or options.get("synchronized"):
        raise Unsupported("a BatchNormalization layer other than on the last axis")
    width = (shape[-1],)
    scale, center = options["scale"], options["center"]
    _expect(variables, [width] * (int(scale) + int(center) + 2), "BatchNormalization")
    gamma = variables[0] if scale else np.ones(width, np.float32)
    beta = variables[int(scale)] if center else np.zeros(width, np.float32)
    mean, variance = variables[-2], variables[-1]
    # tf.nn.batch_normalization's arithmetic: x * factor + (beta - mean * factor).
    factor = (1 / np.sqrt(variance + np.float32(options["epsilon"]))).astype(np.float32) * gamma
    shift = beta - mean * factor
    return (lambda x: x * factor + shift), shape


def _max_pool(
    options: dict[str, Any], shape: tuple[int | None, ...]
) -> tuple[Step, tuple[int | None, ...]]:
    _channels_last(options, "MaxPooling2D")
    size = tuple(options["pool_size"])
    strides = tuple(options["strides"] or size)
    if len(shape) != 4 or strides != size or options["padding"] != "valid":
        raise Unsupported("a MaxPooling2D layer whose strides differ from its size")
    (pool_rows, pool_cols), rows, cols = size, shape[1] // size[0], shape[2] // size[1]

    def pool(x: Array) -> Array:
        x = x[:, : rows * pool_rows, : cols * pool_cols]  # "valid": a last odd row is dropped
        return x.reshape(len(x), rows, pool_rows, cols, pool_cols, x.shape[3]).max(axis=(2, 4))

    return pool, (shape[0], rows, cols, shape[3])
