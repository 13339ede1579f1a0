"""Model builders, optimizer and loss mapping, seeded determinism (Keras in-process)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mlpipe.config import ModelParams, TrainParams, load_params  # noqa: E402
from mlpipe.model.architecture import build_model, trainable_parameters  # noqa: E402
from mlpipe.model.sizing import parameter_count  # noqa: E402
from mlpipe.model.training import encode_labels, make_optimizer, train  # noqa: E402
from tests.conftest import REPO  # noqa: E402

DEFAULTS = load_params(REPO / "params.yaml")


def model_params(**changes: object) -> ModelParams:
    return DEFAULTS.model.model_copy(update=changes)


def train_params(**changes: object) -> TrainParams:
    return DEFAULTS.train.model_copy(update=changes)


def test_default_model_is_the_tutorial_network() -> None:
    model = build_model(DEFAULTS.model, (28, 28), 10, seed=0)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [784, 32, 10]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "softmax"]
    assert model.count_params() == 640_890


def test_cnn_has_its_own_head_and_regularisation() -> None:
    params = model_params(type="cnn")
    model = build_model(params, (28, 28), 10, seed=0)
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [params.cnn_dense_units, 10]  # not the MLP's hidden_units
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == len(params.conv_filters)
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [params.cnn_dropout] * 2 == [0.5, 0.5]  # around the head's Dense layer
    assert trainable_parameters(model) == 824_554


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3)])
def test_sizing_counts_what_the_builder_builds(kind: str, shape: tuple[int, ...]) -> None:
    params = model_params(type=kind, hidden_units=[16, 8], conv_filters=[4, 8], cnn_dense_units=6)
    model = build_model(params, shape, 10, seed=0)
    assert parameter_count(params, shape, 10) == trainable_parameters(model)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3)])
def test_builder_takes_raw_images_of_each_dataset_shape(kind: str, shape: tuple[int, ...]) -> None:
    model = build_model(model_params(type=kind, hidden_units=[16]), shape, 10, seed=0)
    assert model.input_shape == (None, *shape)
    assert model.inputs[0].dtype == "uint8"
    out = model.predict(np.zeros((2, *shape), np.uint8), verbose=0)
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_scaling_is_inside_the_model() -> None:
    model = build_model(model_params(hidden_units=[8]), (28, 28), 10, seed=0)
    rescale = model.get_layer("scale_pixels")
    scaled = keras.ops.convert_to_numpy(rescale(np.full((1, 28, 28), 255, np.uint8)))
    np.testing.assert_allclose(scaled, 1.0)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", "SGD"), ("adam", "Adam"), ("rmsprop", "RMSprop")],
)
def test_optimizer_mapping(name: str, cls: str) -> None:
    optimizer = make_optimizer(train_params(optimizer=name, learning_rate=0.05))
    assert type(optimizer).__name__ == cls
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.05)


def test_sgd_momentum_is_passed() -> None:
    assert make_optimizer(train_params(momentum=0.9)).momentum == pytest.approx(0.9)


def test_label_encoding_matches_the_loss() -> None:
    labels = np.array([0, 3, 9], np.uint8)
    onehot = encode_labels(labels, "categorical_crossentropy", 10)
    assert onehot.shape == (3, 10) and onehot[1, 3] == 1.0
    assert encode_labels(labels, "sparse_categorical_crossentropy", 10).tolist() == [0, 3, 9]


def tiny_data(seed: int = 0) -> tuple[np.ndarray, ...]:
    """60 noisy images whose class is the row of a bright band: easy to learn, quickly."""
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 10
    x = rng.integers(0, 40, (60, 28, 28))
    for image, label in zip(x, y, strict=True):
        image[2 * label + 4 : 2 * label + 7] = 220
    return (
        x[:40].astype(np.uint8),
        y[:40].astype(np.uint8),
        x[40:].astype(np.uint8),
        y[40:].astype(np.uint8),
    )


def fit_once(loss: str = "categorical_crossentropy", epochs: int = 2) -> tuple[list, list]:
    keras.utils.set_random_seed(7)
    model = build_model(model_params(hidden_units=[16]), (28, 28), 10, seed=7)
    result = train(model, train_params(loss=loss, epochs=epochs, batch_size=8), tiny_data(), 10)
    return model.get_weights(), result.history


def test_same_seed_gives_identical_weights() -> None:
    first, _ = fit_once()
    second, _ = fit_once()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sparse_and_categorical_losses_give_the_same_result() -> None:
    dense, dense_history = fit_once("categorical_crossentropy")
    sparse, sparse_history = fit_once("sparse_categorical_crossentropy")
    for a, b in zip(dense, sparse, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert dense_history[-1]["loss"] == pytest.approx(sparse_history[-1]["loss"], rel=1e-4)


def test_history_has_one_row_per_epoch_and_hook_sees_each() -> None:
    seen = []
    keras.utils.set_random_seed(1)
    model = build_model(model_params(hidden_units=[16]), (28, 28), 10, seed=1)
    result = train(
        model,
        train_params(epochs=3, batch_size=8, learning_rate=0.1),
        tiny_data(),
        10,
        on_epoch=lambda epoch, metrics: seen.append((epoch, sorted(metrics))),
    )
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert seen == [(e, ["accuracy", "loss", "val_accuracy", "val_loss"]) for e in (1, 2, 3)]
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_early_stopping_stops_before_the_last_epoch() -> None:
    keras.utils.set_random_seed(1)
    model = build_model(model_params(hidden_units=[16]), (28, 28), 10, seed=1)
    # A learning rate this large diverges at once, so val_loss stops improving.
    params = train_params(epochs=30, batch_size=8, learning_rate=10.0, early_stopping_patience=1)
    result = train(model, params, tiny_data(), 10)
    assert len(result.history) < 30


@pytest.fixture(scope="module")
def on_jax() -> dict:
    """Both JAX scripts below, in one process (JAX and Keras load once), by script name."""
    report = 'print(json.dumps({"agree": agree, "parity": parity}))\n'
    return run_on_jax(JAX_SCRIPT + PARITY_SCRIPT + report)


def run_on_jax(script: str) -> dict:
    """Run `script` with the JAX backend (chosen before Keras loads), return its JSON line."""
    import json
    import subprocess
    import sys

    pytest.importorskip("jax")
    from tests.conftest import stage_env

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=stage_env(KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


JAX_SCRIPT = """
import json, numpy as np, keras
from pathlib import Path
from mlpipe.config import load_params
from mlpipe.model.architecture import build_model
from mlpipe.model.scan import train_scan
from mlpipe.model.training import train
from tests.test_training import tiny_data
params = load_params(Path("params.yaml"))
x, y, xv, yv = tiny_data()
x, y = np.concatenate([x] * 10), np.concatenate([y] * 10)
agree = {}
for loop in ("fit", "scan"):
    keras.utils.set_random_seed(3)
    small = params.model.model_copy(update={"hidden_units": [16]})
    model = build_model(small, (28, 28), 10, seed=3)
    changes = {"epochs": 6, "batch_size": 40, "learning_rate": 0.1, "loop": loop}
    settings = params.train.model_copy(update=changes)
    runner = train if loop == "fit" else lambda *a: train_scan(*a, seed=3)
    result = runner(model, settings, (x, y, xv, yv), 10)
    predicted = model.predict(xv, verbose=0).argmax(axis=1)
    agree[loop] = {
        "losses": [row["loss"] for row in result.history],
        "val_accuracy": result.history[-1]["val_accuracy"],
        "model_accuracy": float((predicted == yv).mean()),
        "backend": keras.backend.backend(),
    }
"""


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_jax_backend_fit_and_scan_agree(on_jax: dict) -> None:
    """The training code runs unchanged on JAX; the scan fast path learns like fit does."""
    runs = on_jax["agree"]
    for loop, run in runs.items():
        assert run["backend"] == "jax"
        assert run["losses"][-1] < run["losses"][0], loop
        assert run["val_accuracy"] >= 0.9, loop
        # The trained weights are in the model afterwards: its own predictions agree.
        assert run["model_accuracy"] == pytest.approx(run["val_accuracy"], abs=1e-6), loop


PARITY_SCRIPT = """
import json, numpy as np, keras
from pathlib import Path
from mlpipe.config import load_params
from mlpipe.model.architecture import build_model
from mlpipe.model.scan import train_scan
from mlpipe.model.training import train
from tests.test_training import tiny_data
params = load_params(Path("params.yaml"))
x, y, _, _ = tiny_data()
# Validation labels disagree with training labels: the better the model learns, the worse its
# val_loss, so the best epoch is the first, in both loops, whatever their rounding.
xv, yv = x, (y + 1) % 10
parity = {}
for scenario, epochs, patience in (("stops early", 30, 2), ("runs out", 4, 10)):
    for loop in ("fit", "scan"):
        keras.utils.set_random_seed(3)
        small = params.model.model_copy(update={"hidden_units": [16]})
        model = build_model(small, (28, 28), 10, seed=3)
        changes = {"epochs": epochs, "batch_size": len(x), "learning_rate": 0.5, "loop": loop,
                   "early_stopping_patience": patience}
        settings = params.train.model_copy(update=changes)
        runner = train if loop == "fit" else lambda *a: train_scan(*a, seed=3)
        result = runner(model, settings, (x, y, xv, yv), 10)
        model.compile(loss=settings.loss, metrics=["accuracy"])
        labels = keras.utils.to_categorical(yv, 10)
        val_loss, val_accuracy = model.evaluate(xv, labels, verbose=0)
        parity[f"{scenario}/{loop}"] = {
            "epochs_run": len(result.history),
            "best_val_loss": min(row["val_loss"] for row in result.history),
            "last_val_loss": result.history[-1]["val_loss"],
            "final_val_loss": val_loss,
            "final_val_accuracy": val_accuracy,
        }
"""


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_fit_and_scan_stop_alike_and_both_end_on_the_best_weights(on_jax: dict) -> None:
    """Same seed and params on CPU JAX: both loops stop at the same epoch, end with the best
    epoch's weights whether they stopped early or not, and agree within half a point."""
    runs = on_jax["parity"]
    for scenario, epochs_run in (("stops early", 3), ("runs out", 4)):
        fit, scan = runs[f"{scenario}/fit"], runs[f"{scenario}/scan"]
        assert fit["epochs_run"] == scan["epochs_run"] == epochs_run, scenario
        for loop, run in (("fit", fit), ("scan", scan)):
            assert run["last_val_loss"] > run["best_val_loss"], (scenario, loop)
            # The model holds the best epoch's weights, not the last epoch's.
            assert run["final_val_loss"] == pytest.approx(run["best_val_loss"], rel=1e-4), (
                scenario,
                loop,
            )
        assert abs(fit["final_val_accuracy"] - scan["final_val_accuracy"]) <= 0.005, scenario
