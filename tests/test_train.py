"""The train stage with a temporary SQLite tracking store: runs, metrics, tags, the model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUICK, client_for, error_lines, files_under, long_training, run_stage
from tests.fakes import set_params, write_processed


def test_run_is_recorded_whole(trained: Path) -> None:
    info = json.loads((trained / "models/run.json").read_text())
    client = client_for(trained)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.01"
    assert run.data.params["model.hidden_units"] == "[16]"
    assert run.data.params["base.dataset"] == "mnist"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    tags = run.data.tags
    assert tags["keras.backend"] == "tensorflow"
    assert len(tags["data.sha256"]) == 64
    assert tags["mlflow.mlpipe.pid"].isdigit()  # out of sight in the UI, as mlflow.* tags are
    # Metrics are what the model scored; its size and the timings are a param and tags.
    assert set(run.data.metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert run.data.params["model.trainable_params"] == str(28 * 28 * 16 + 16 + 170)
    assert float(tags["mlpipe.fit_seconds"]) > 0
    assert float(tags["mlpipe.tracking_seconds"]) >= 0
    # The experiment opens on the MLflow UI's model-training view.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The run names its data the MLflow way, by DVC's hash and the file in the workspace.
    inputs = {
        item.dataset.name: (item.dataset, {tag.key: tag.value for tag in item.tags})
        for item in run.inputs.dataset_inputs
    }
    assert sorted(inputs) == ["mnist-train", "mnist-val"]
    for split, context in (("train", "training"), ("val", "validation")):
        dataset, input_tags = inputs[f"mnist-{split}"]
        path = trained / f"data/processed/{split}.npz"
        assert dataset.digest == hashlib.md5(path.read_bytes()).hexdigest()
        assert json.loads(dataset.source) == {"uri": f"data/processed/{split}.npz"}
        assert input_tags["mlflow.data.context"] == context
    # Artifacts land in the workspace's own folder, not wherever the process ran.
    assert run.info.artifact_uri.startswith((trained / "mlartifacts").as_uri())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "model_summary.txt", "serving_input_example.json"} <= artifacts
    # History: one row per epoch.
    history = (trained / "reports/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    assert len(history) == 3


def test_registered_model_predicts_raw_images(trained: Path) -> None:
    import mlflow

    info = json.loads((trained / "models/run.json").read_text())
    assert info["registered_model_name"] == "keras-tutorial-mnist"
    assert info["registered_model_version"] == 1
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(info["registered_model_uri"])
    with np.load(trained / "data/processed/test.npz") as test:
        probabilities = np.asarray(model.predict(test["x"].astype(np.float64)))
        count = len(test["y"])
    assert probabilities.shape == (count, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    # The example batch logged with the run is a valid serving request for this model.
    example = mlflow.artifacts.load_text(f"runs:/{info['run_id']}/serving_input_example.json")
    batch = np.asarray(json.loads(example)["inputs"], dtype=np.float64)
    assert np.asarray(model.predict(batch)).shape == (5, 10)


def test_second_training_is_a_new_version(trained: Path) -> None:
    result = run_stage(trained, "train")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((trained / "models/run.json").read_text())
    assert info["registered_model_version"] == 2


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_sigterm_during_training_ends_run_killed(workspace: Path) -> None:
    """The stage as DVC runs it, in its own process; the run ends KILLED, nothing is written.
    (Ctrl-C takes the same path, checked in-process below.)"""
    process = long_training(workspace)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 143, rest
    assert "terminated; no output was left half-written" in rest
    runs = client_for(workspace).search_runs(["1"])
    assert [run.info.status for run in runs] == ["KILLED"]
    assert files_under(workspace / "models") == []
    assert files_under(workspace / "reports") == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_lost_in_a_finalizer_still_stops_training(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, signum: int, code: int
) -> None:
    """Python runs a signal's handler between any two bytecodes, a finalizer's too, and drops
    an exception raised there: the stop must still happen, at the end of that epoch."""
    from mlpipe.tracking.tracker import Tracker

    write_processed(workspace)
    set_params(workspace, **{**QUICK, "train__epochs": 3})

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs in here; its exception is dropped
                pass

    logged: list[int] = []
    log_epoch = Tracker.log_epoch

    def log_and_lose_a_signal(self: Tracker, epoch: int, metrics: dict[str, float]) -> None:
        log_epoch(self, epoch, metrics)
        logged.append(epoch)
        if epoch == 1:
            Finalized()  # made and collected at once: the signal arrives inside its __del__

    monkeypatch.setattr(Tracker, "log_epoch", log_and_lose_a_signal)
    result = run_stage(workspace, "train")
    assert result.returncode == code, result.stderr[-3000:]
    assert logged == [1], "training went on after the signal"
    runs = client_for(workspace).search_runs(["1"])
    assert [run.info.status for run in runs] == ["KILLED"]
    assert files_under(workspace / "models") == []


def test_exception_ends_run_failed_and_leaves_no_output(workspace: Path) -> None:
    write_processed(workspace)
    set_params(workspace, **QUICK)
    (workspace / "models").write_text("a file where the models folder should be")
    result = run_stage(workspace, "train")
    assert result.returncode == 1
    assert len(error_lines(result.stderr)) == 1
    assert "Traceback" not in result.stderr
    runs = client_for(workspace).search_runs(["1"])
    assert [run.info.status for run in runs] == ["FAILED"]
    assert files_under(workspace / "reports") == []


def test_unreachable_tracking_server_fails_fast_naming_it(workspace: Path) -> None:
    write_processed(workspace)
    started = time.monotonic()
    result = run_stage(workspace, "train", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: MLflow tracking server http://127.0.0.1:9 (MLFLOW_TRACKING_URI) is not reachable "
        "(ConnectionError); start it, or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
    ]
    assert files_under(workspace / "models") == []


def test_missing_processed_data_is_named(workspace: Path) -> None:
    result = run_stage(workspace, "train")
    assert result.returncode == 1
    assert error_lines(result.stderr)[0].endswith(
        "train.npz: missing; run the preprocess stage first"
    )
    assert not (workspace / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("dataset", "shape"), [("fashion_mnist", (28, 28)), ("cifar10", (32, 32, 3))]
)
def test_other_dataset_and_cnn_need_no_other_edit(
    workspace: Path, dataset: str, shape: tuple
) -> None:
    write_processed(workspace, shape=shape)
    set_params(
        workspace,
        base__dataset=dataset,
        model__type="cnn",
        model__conv_filters=[4],
        train__epochs=1,
        train__batch_size=16,
        model__hidden_units=[8],
    )
    result = run_stage(workspace, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((workspace / "models/run.json").read_text())
    # One registered model per dataset: champions of different datasets never compete.
    assert info["registered_model_name"] == f"keras-tutorial-{dataset}"
    assert info["registered_model_version"] == 1
    evaluated = run_stage(workspace, "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    table = (workspace / "reports/per_class.csv").read_text()
    assert ("Ankle boot" if dataset == "fashion_mnist" else "airplane") in table
