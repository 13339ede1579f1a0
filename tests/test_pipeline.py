"""End to end: `dvc repro` in a fresh copy of the project, on real MNIST from the mirror.

One full run of the tutorial (about a minute on two cores) is shared by the tests below.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MIRROR, dvc, files_under, headless_browser, needs_mirror, project_copy

pytestmark = [pytest.mark.slow, needs_mirror]

OUTPUTS = [
    "data/processed/summary.csv",
    "data/processed/test.npz",
    "data/processed/train.npz",
    "data/processed/val.npz",
    "data/raw/mnist/SHA256SUMS",
    "data/raw/mnist/mnist.npz",
    "models/model.keras",
    "models/run.json",
    "reports/confusion.csv",
    "reports/figures/accuracy.png",
    "reports/figures/confident_mistakes.png",
    "reports/figures/confusion_matrix.png",
    "reports/figures/loss.png",
    "reports/figures/predictions.png",
    "reports/figures/samples.png",
    "reports/history.csv",
    "reports/metrics.json",
    "reports/per_class.csv",
    "reports/predictions.csv",
]


def ran_stages(output: str) -> list[str]:
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = project_copy(tmp_path_factory.mktemp("clone"))
    result = dvc(repo, "repro", DATA_MIRROR=str(MIRROR))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo, result.stdout + result.stderr


def test_repro_builds_every_output(repro: tuple[Path, str]) -> None:
    repo, output = repro
    assert ran_stages(output) == ["download", "preprocess", "train", "evaluate", "plot"]
    produced = [p for p in OUTPUTS if (repo / p).is_file()]
    assert produced == OUTPUTS
    assert "served by DATA_MIRROR" in output
    # No temp file was left beside any output.
    for folder in ("data", "models", "reports"):
        leftovers = [n for n in files_under(repo / folder) if ".tmp" in n]
        assert leftovers == []


def test_processed_real_mnist(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    with (
        np.load(repo / "data/processed/train.npz") as train,
        np.load(repo / "data/processed/val.npz") as val,
    ):
        assert len(train["y"]) + len(val["y"]) == 60_000
        assert abs(len(val["y"]) - 6_000) <= 10
        assert train["x"].shape[1:] == (28, 28) and train["x"].dtype == np.uint8
    with np.load(repo / "data/processed/test.npz") as test:
        counts = np.bincount(test["y"]).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_tutorial_accuracy_and_metrics_show(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    # Plain SGD at 0.01 for 20 epochs: the tutorial's range.
    assert 0.91 <= metrics["test_accuracy"] <= 0.94
    shown = dvc(repo, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert str(metrics["test_accuracy"]) in shown.stdout


def test_evaluate_reports_what_keras_would(repro: tuple[Path, str]) -> None:
    """evaluate runs the model in NumPy (mlpipe.forward): its metrics file and predicted classes
    are Keras's own, to every digit the file keeps, on the real model and test set."""
    import keras
    import pandas as pd

    from mlpipe.datasets import SPECS
    from mlpipe.evaluation import evaluate

    repo, _ = repro
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    model = keras.saving.load_model(repo / "models/model.keras", compile=False)
    with np.load(repo / "data/processed/test.npz") as test:
        x_test, y_test = test["x"], test["y"]
    probabilities = model.predict(x_test, batch_size=1000, verbose=0)
    report = evaluate(y_test, probabilities, SPECS["mnist"].class_names)
    assert {key: metrics[key] for key in report.metrics} == report.metrics
    written = pd.read_csv(repo / "reports/predictions.csv")
    np.testing.assert_array_equal(written["predicted"], report.predictions["predicted"])
    # Float32 sums in another order: probabilities agree to about a millionth.
    np.testing.assert_allclose(written["probability"], report.predictions["probability"], atol=3e-6)


def test_champion_classifies_raw_real_digits(repro: tuple[Path, str]) -> None:
    import mlflow

    repo, _ = repro
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/keras-tutorial-mnist@champion")
    with np.load(MIRROR / "mnist.npz") as raw:
        x_test, y_test = raw["x_test"], raw["y_test"]
    predicted = np.asarray(model.predict(x_test.astype(np.float64))).argmax(axis=1)
    assert float((predicted == y_test).mean()) == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_mlflow_run_has_every_epoch(repro: tuple[Path, str]) -> None:
    from mlflow import MlflowClient

    repo, _ = repro
    info = json.loads((repo / "models/run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(info["run_id"], key)] == list(
            range(1, 21)
        )
    assert client.get_run(info["run_id"]).info.status == "FINISHED"


def test_plots_show_writes_html(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    result = dvc(repo, "plots", "show", "-o", "plots_html")
    assert result.returncode == 0, result.stderr
    html = (repo / "plots_html" / "index.html").read_text()
    assert "Accuracy per epoch" in html and "Confusion matrix" in html


def test_plots_render_offline(repro: tuple[Path, str]) -> None:
    """`dvc plots show`'s page draws its three vega charts with the network switched off: the
    page template (make setup) carries vega itself, and no script comes from elsewhere."""
    repo, _ = repro
    result = dvc(repo, "plots", "show", "-o", "offline_plots")
    assert result.returncode == 0, result.stderr
    page = repo / "offline_plots" / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text(), "run make setup: the template loads a CDN"
    driver = headless_browser()
    try:
        driver.set_network_conditions(offline=True, latency=0, throughput=0)
        driver.get(page.as_uri())
        deadline = time.monotonic() + 30
        drawn = []
        while time.monotonic() < deadline and len(drawn) < 3:
            drawn = driver.find_elements("css selector", ".vega-embed svg, .vega-embed canvas")
            time.sleep(0.5)
        assert len(drawn) >= 3, "the interactive plots stayed blank offline"
    finally:
        driver.quit()


def test_second_repro_runs_nothing_then_plot_param_reruns_only_plot(
    repro: tuple[Path, str],
) -> None:
    repo, _ = repro
    again = dvc(repo, "repro")
    assert again.returncode == 0, again.stderr
    assert ran_stages(again.stdout) == []
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("wrong_count: 16", "wrong_count: 9"))
    changed = dvc(repo, "repro")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert ran_stages(changed.stdout) == ["plot"]
