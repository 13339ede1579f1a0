"""evaluate and plot stages on a tiny trained model: outputs, MLflow, aliases, bad models."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import (
    client_for,
    error_lines,
    files_under,
    run_stage,
    run_stage_process,
    stage_env,
)
from tests.fakes import write_processed, write_raw

FIGURES = [
    "accuracy.png",
    "confident_mistakes.png",
    "confusion_matrix.png",
    "loss.png",
    "predictions.png",
    "samples.png",
]


def test_evaluate_writes_metrics_and_logs_to_the_training_run(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "reports/metrics.json").read_text())
    info = json.loads((evaluated / "models/run.json").read_text())
    assert {"test_accuracy", "test_loss", "test_macro_f1", "test_samples"} <= set(metrics)
    assert metrics["mlflow_run_id"] == info["run_id"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    client = client_for(evaluated)
    run = client.get_run(info["run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    [test_input] = [i for i in run.inputs.dataset_inputs if i.dataset.name == "mnist-test"]
    test_file = (evaluated / "data/processed/test.npz").read_bytes()
    assert test_input.dataset.digest == hashlib.md5(test_file).hexdigest()
    assert [(t.key, t.value) for t in test_input.tags] == [("mlflow.data.context", "testing")]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert artifacts == {"evaluation/per_class.csv", "evaluation/confusion.csv"}
    version = client.get_model_version_by_alias(info["registered_model_name"], "champion")
    assert int(version.version) == info["registered_model_version"]
    predictions = (evaluated / "reports/predictions.csv").read_text().splitlines()
    assert predictions[0] == "index,label,predicted,probability"
    assert len(predictions) == 1 + 20


def test_plot_writes_figures_and_logs_them(evaluated: Path) -> None:
    # In its own process, as DVC runs it: plot forks its MLflow process, and a fork of this
    # test process, which other tests filled with TensorFlow's threads, once segfaulted (CI).
    result = run_stage_process(evaluated, "plot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_under(evaluated / "reports/figures") == FIGURES
    for name in FIGURES:
        with Image.open(evaluated / "reports/figures" / name) as image:
            assert image.format == "PNG" and image.width >= 300
    info = json.loads((evaluated / "models/run.json").read_text())
    logged = {a.path for a in client_for(evaluated).list_artifacts(info["run_id"], "figures")}
    assert logged == {f"figures/{name}" for name in FIGURES}


NO_TENSORFLOW = """
import sys
from mlpipe.errors import DownloadError
from stages import {stage}
try:
    {stage}.main()
except DownloadError:
    print("DOWNLOAD FAILED")
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("stage", ["download", "preprocess", "evaluate", "plot"])
def test_stage_does_not_import_tensorflow(evaluated: Path, stage: str) -> None:
    """Each of these stages runs its whole main without TensorFlow or Keras being imported.

    download here finds no source (the tiny raw files are not the published ones): it still
    walks every source and verifies, and fails the way the test expects.
    """
    write_raw(evaluated / "data" / "raw" / "mnist", "mnist")
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW.format(stage=stage)],
        cwd=evaluated,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout
    assert ("DOWNLOAD FAILED" in result.stdout) == (stage == "download")


def _lambda_model(path: Path) -> None:
    import keras

    inputs = keras.Input((28, 28), dtype="uint8")
    outputs = keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32") * 2)(inputs)
    keras.Model(inputs, outputs).save(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "damaged Keras archive"),
        ("not_zip", "not a Keras archive (.keras files are zip archives)"),
        ("flip", "damaged Keras archive"),
        ("lambda", "refused, the model holds a Lambda layer"),
        ("missing", "no such model file; run the train stage first"),
    ],
)
def test_evaluate_refuses_bad_model_files(evaluated: Path, damage: str, message: str) -> None:
    model = evaluated / "models/model.keras"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "not_zip":
        model.write_text("this is not a model")
    elif damage == "flip":
        with zipfile.ZipFile(model) as archive:
            member = max(archive.infolist(), key=lambda m: m.compress_size)
        offset = member.header_offset + 30 + len(member.filename) + member.compress_size // 2
        model.write_bytes(
            data[:offset]
            + bytes(b ^ 0xFF for b in data[offset : offset + 32])
            + data[offset + 32 :]
        )
    elif damage == "lambda":
        _lambda_model(model)
    else:
        model.unlink()
    (evaluated / "reports/metrics.json").unlink()
    result = run_stage(evaluated, "evaluate")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (evaluated / "reports/metrics.json").exists()


def test_evaluate_without_training_says_so(workspace: Path) -> None:
    write_processed(workspace)
    result = run_stage(workspace, "evaluate")
    assert result.returncode == 1
    assert error_lines(result.stderr)[0].endswith("run.json: missing; run the train stage first")


def test_failed_plot_leaves_the_previous_figures(evaluated: Path) -> None:
    assert run_stage(evaluated, "plot").returncode == 0
    folder = evaluated / "reports/figures"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (evaluated / "mlflow.db").unlink()
    (evaluated / "mlflow.db").mkdir()  # the store is unusable: the stage must fail
    result = run_stage(evaluated, "plot")
    assert result.returncode == 1
    assert error_lines(result.stderr)[0].endswith(
        "is a directory, not an MLflow store; move it away"
    )
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
