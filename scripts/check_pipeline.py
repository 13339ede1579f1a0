"""Check what a full `dvc repro` left in a workspace: CI runs it after `make pipeline`.

    python scripts/check_pipeline.py [--workspace .] [--accuracy-range 0.91 0.94]

The tutorial's claims, on the real run rather than in a second training inside the tests:
every output is there and whole, the splits hold what MNIST and params.yaml say, the test
accuracy is in the tutorial's range, the MLflow run holds every epoch, evaluate's metrics (its
NumPy forward pass) are Keras's own to every digit the file keeps, and the champion, served by
MLflow, classifies the raw test digits as well. Prints one line per check; exits 1 if any
failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlpipe.config import load_params  # noqa: E402
from mlpipe.data.specs import SPECS  # noqa: E402
from mlpipe.paths import Layout  # noqa: E402

TUTORIAL_ACCURACY = (0.91, 0.94)  # plain SGD at 0.01 for 20 epochs on the full training set
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
OUTPUTS = (
    "data/raw/mnist/mnist.npz",
    "data/raw/mnist/SHA256SUMS",
    "data/processed/summary.csv",
    "models/model.keras",
    "models/run.json",
    "reports/history.csv",
    "reports/metrics.json",
    "reports/per_class.csv",
    "reports/confusion.csv",
    "reports/predictions.csv",
    *(
        f"reports/figures/{name}.png"
        for name in (
            "samples",
            "accuracy",
            "loss",
            "predictions",
            "confusion_matrix",
            "confident_mistakes",
        )
    ),
)


def check_outputs(layout: Layout) -> str:
    missing = [name for name in OUTPUTS if not (layout.root / name).is_file()]
    leftovers = [
        str(path.relative_to(layout.root))
        for folder in ("data", "models", "reports")
        for path in (layout.root / folder).rglob("*")
        if ".tmp" in path.name
    ]
    assert not missing, f"missing outputs: {missing}"
    assert not leftovers, f"temp files left: {leftovers}"
    return f"{len(OUTPUTS)} outputs, no temp file"


def check_splits(layout: Layout) -> str:
    params = load_params(layout.params_file)
    with np.load(layout.split_file("train")) as train, np.load(layout.split_file("val")) as val:
        train_count, val_count = len(train["y"]), len(val["y"])
        assert train["x"].shape[1:] == (28, 28) and train["x"].dtype == np.uint8
    expected = round(60_000 * params.preprocess.train_fraction)
    assert abs(train_count + val_count - expected) <= 10, (train_count, val_count, expected)
    held = round(expected * params.preprocess.validation_split)
    assert abs(val_count - held) <= 10, f"{val_count} validation images, expected about {held}"
    with np.load(layout.split_file("test")) as test:
        counts = np.bincount(test["y"]).tolist()
    assert counts == MNIST_TEST_COUNTS, f"test set per class {counts}"
    return f"{train_count} training, {val_count} validation, 10000 test images"


def check_accuracy(layout: Layout, low: float, high: float) -> str:
    metrics = json.loads(layout.metrics_file.read_text())
    accuracy = metrics["test_accuracy"]
    assert low <= accuracy <= high, f"test accuracy {accuracy} outside [{low}, {high}]"
    return f"test accuracy {accuracy} in [{low}, {high}]"


def check_mlflow_run(layout: Layout) -> str:
    from mlflow import MlflowClient

    params = load_params(layout.params_file)
    record = json.loads(layout.run_record_file.read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{layout.root / 'mlflow.db'}")
    steps = list(range(1, params.train.epochs + 1))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        logged = [metric.step for metric in client.get_metric_history(record["run_id"], key)]
        assert logged == steps, f"{key}: epochs {logged}, expected {steps[0]}..{steps[-1]}"
    status = client.get_run(record["run_id"]).info.status
    assert status == "FINISHED", f"run {record['run_id']} is {status}"
    return f"run {record['run_id']} FINISHED with {len(steps)} epochs of 4 metrics"


def check_evaluate_is_keras(layout: Layout) -> str:
    """evaluate runs the model in NumPy: its metrics and predicted classes are Keras's own."""
    import pandas as pd

    from mlpipe.model.keras_import import import_keras
    from mlpipe.report.evaluation import evaluate

    keras = import_keras()  # TensorFlow's start-up notices left out, as in the stages

    metrics = json.loads(layout.metrics_file.read_text())
    model = keras.saving.load_model(layout.model_file, compile=False)
    with np.load(layout.split_file("test")) as test:
        x_test, y_test = test["x"], test["y"]
    probabilities = model.predict(x_test, batch_size=1000, verbose=0)
    report = evaluate(y_test, probabilities, SPECS["mnist"].class_names)
    differ = {k: (metrics[k], v) for k, v in report.metrics.items() if metrics[k] != v}
    assert not differ, f"metrics.json against Keras: {differ}"
    written = pd.read_csv(layout.predictions_file)
    assert np.array_equal(written["predicted"], report.predictions["predicted"])
    # Float32 sums in another order: probabilities agree to about a millionth.
    gap = float(np.abs(written["probability"] - report.predictions["probability"]).max())
    assert gap <= 3e-6, f"probabilities differ from Keras's by up to {gap}"
    return f"metrics and {len(written)} predictions as Keras's (probabilities within {gap:.1e})"


def check_champion_serves(layout: Layout) -> str:
    import mlflow

    metrics = json.loads(layout.metrics_file.read_text())
    mlflow.set_tracking_uri(f"sqlite:///{layout.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/keras-tutorial-mnist@champion")
    with np.load(layout.raw_dir("mnist") / "mnist.npz") as raw:
        x_test, y_test = raw["x_test"], raw["y_test"]
    predicted = np.asarray(model.predict(x_test.astype(np.float64))).argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    assert abs(accuracy - metrics["test_accuracy"]) <= 1e-4, (accuracy, metrics["test_accuracy"])
    return f"the champion, loaded by MLflow, scores {accuracy:.4f} on the raw test digits"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=ROOT)
    parser.add_argument(
        "--accuracy-range", type=float, nargs=2, default=TUTORIAL_ACCURACY, metavar=("LOW", "HIGH")
    )
    args = parser.parse_args(argv)
    layout = Layout(args.workspace.resolve())
    checks: list[tuple[str, Callable[[], str]]] = [
        ("outputs", lambda: check_outputs(layout)),
        ("splits", lambda: check_splits(layout)),
        ("accuracy", lambda: check_accuracy(layout, *args.accuracy_range)),
        ("mlflow run", lambda: check_mlflow_run(layout)),
        ("evaluate = keras", lambda: check_evaluate_is_keras(layout)),
        ("champion", lambda: check_champion_serves(layout)),
    ]
    failed = 0
    for name, check in checks:
        try:
            print(f"ok: {name}: {check()}")
        except Exception as exc:  # each check reports its own failure, whatever it is
            failed += 1
            print(f"FAILED: {name}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
