"""mlpipe.model.numpy_forward: a saved model's forward pass in NumPy gives what Keras gives.

Each model below is built by mlpipe.model.architecture (small widths), its batch-norm
statistics moved off their initial values so they count, saved, then predicted by both.
Models this module does not compute fall back to Keras through
mlpipe.model.loading.load_for_inference.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from mlpipe.config import ACTIVATIONS, load_params
from mlpipe.errors import ModelError
from mlpipe.model import architecture, numpy_forward
from mlpipe.model.loading import load_for_inference
from tests.conftest import REPO

SHAPES = {"mnist": (28, 28), "cifar10": (32, 32, 3)}
# Two Dense layers of one width (their weights must not be swapped), and three poolings: 28
# pixels pool to 14, 7, then 3 (the odd row dropped), 32 to 16, 8, 4.
SMALL = {"hidden_units": [16, 16], "conv_filters": [4, 6, 8], "cnn_dense_units": 16}


def _images(shape: tuple[int, ...], count: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)


def _saved(tmp_path: Path, shape: tuple[int, ...], **options: object) -> tuple[Path, keras.Model]:
    defaults = load_params(REPO / "params.yaml").model
    params = defaults.model_validate({**defaults.model_dump(), **SMALL, **options})
    model = architecture.build_model(params, shape, 10, seed=1)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if any(part in weight.path for part in ("moving_", "gamma", "beta")):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    path = tmp_path / "model.keras"
    model.save(path)
    return path, model


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a in numpy_forward.ACTIVATIONS])
def test_numpy_forward_pass_matches_keras(
    tmp_path: Path, dataset: str, kind: str, activation: str
) -> None:
    shape = SHAPES[dataset]
    path, model = _saved(tmp_path, shape, type=kind, activation=activation, dropout=0.25)
    loaded = load_for_inference(path)
    assert isinstance(loaded, numpy_forward.NumpyModel)
    assert loaded.input_shape == model.input_shape
    assert loaded.output_shape == model.output_shape
    images = _images(shape)
    ours = loaded.predict(images, batch_size=24)
    theirs = model.predict(images, batch_size=24, verbose=0)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))


def test_an_activation_numpy_lacks_is_left_to_keras(tmp_path: Path) -> None:
    """gelu needs erf: the model loads through Keras and predicts the same."""
    assert "gelu" in ACTIVATIONS and "gelu" not in numpy_forward.ACTIVATIONS
    path, model = _saved(tmp_path, (28, 28), activation="gelu")
    with pytest.raises(numpy_forward.Unsupported, match="activation gelu"):
        numpy_forward.read(path)
    loaded = load_for_inference(path)
    assert isinstance(loaded, keras.Model)
    images = _images((28, 28))
    expected = model.predict(images, verbose=0)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


def _branching_model(path: Path) -> None:
    inputs = keras.Input((28, 28), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    both = keras.layers.Concatenate()([keras.layers.Dense(4)(x), keras.layers.Dense(4)(x)])
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(both)).save(path)


def _dropout_kept_on(path: Path) -> None:
    inputs = keras.Input((28, 28), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dropout(0.5)(x, training=True)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)


def _float16_model(path: Path) -> None:
    inputs = keras.Input((28, 28), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(10, activation="softmax", dtype="float16")(x)
    keras.Model(inputs, x).save(path)


def _rewrite(path: Path, member: str, change) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = change(members[member])
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, (28, 28))

    def wider(data: bytes) -> bytes:
        config = json.loads(data)
        config["config"]["layers"][3]["config"]["units"] = 25  # the first Dense layer
        return json.dumps(config).encode()

    _rewrite(path, "config.json", wider)
    with pytest.raises(ModelError) as error:
        load_for_inference(path)
    assert str(error.value).startswith(f"{path}: cannot be loaded (the Dense layer's weights")


def test_damaged_weights_are_a_damaged_archive(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, (28, 28))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo("model.weights.h5")
    start = entry.header_offset + 30 + len(entry.filename) + entry.compress_size // 2
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as error:
        load_for_inference(path)
    expected = "damaged Keras archive (Bad CRC-32 for file 'model.weights.h5')"
    assert str(error.value) == f"{path}: {expected}"


def test_no_images_give_no_rows(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, (28, 28))
    assert load_for_inference(path).predict(_images((28, 28), 0)).shape == (0, 10)


def _sizes_unknown(path: Path) -> None:
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="softmax")(inputs)
    keras.Model(inputs, x).save(path)


def _a_dense_of_another_module(path: Path) -> None:
    _, _ = _saved(path.parent, (28, 28))

    def renamed(data: bytes) -> bytes:
        config = json.loads(data)
        layer = config["config"]["layers"][3]
        layer["module"], layer["registered_name"] = "custom", "custom>Dense"
        return json.dumps(config).encode()

    _rewrite(path, "config.json", renamed)


def _float64_weights(path: Path) -> None:
    import h5py

    _saved(path.parent, (28, 28))
    with zipfile.ZipFile(path) as archive:
        weights = archive.read("model.weights.h5")
    scratch = path.parent / "weights.h5"
    scratch.write_bytes(weights)
    with h5py.File(scratch, "r+") as store:
        kernel = store["layers/dense/vars/0"][()]
        del store["layers/dense/vars/0"]
        store["layers/dense/vars/0"] = kernel.astype("float64")
    _rewrite(path, "model.weights.h5", lambda _: scratch.read_bytes())


@pytest.mark.parametrize(
    ("build", "reason", "keras_loads"),
    [
        (_branching_model, "does not follow the one before", True),
        (_dropout_kept_on, "does not follow the one before", True),
        (_float16_model, "a Dense layer computing in float16", True),
        (_sizes_unknown, "of unknown sizes", True),
        (_float64_weights, "Dense weights of dtype", True),
        (_a_dense_of_another_module, "not one of Keras's own", False),  # Keras refuses it
    ],
)
def test_models_it_does_not_compute_are_left_to_keras(
    tmp_path: Path, build, reason: str, keras_loads: bool
) -> None:
    path = tmp_path / "model.keras"
    build(path)
    with pytest.raises(numpy_forward.Unsupported, match=reason):
        numpy_forward.read(path)
    if keras_loads:
        assert isinstance(load_for_inference(path), keras.Model)
    else:
        with pytest.raises(ModelError, match=f"^{path}: cannot be loaded"):
            load_for_inference(path)
