"""Bad input everywhere, table-driven: params, data files, model files, images, environment.

Every case must end the same way: a non-zero exit, exactly one `error:` line that names the
problem, no traceback, and no partial output (no new or changed file, no temp file left).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import chdir
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import (
    StageResult,
    error_lines,
    run_predict,
    run_stage,
    run_stage_process,
    stage_env,
)
from tests.fakes import set_params, write_processed, write_raw

pytestmark = pytest.mark.reliability

ENOSPC_PREPROCESS = """
import errno, numpy as np
def full_disk(file, *args, **kwargs):
    with open(file, "wb") as handle:
        handle.write(b"half an archive")
    raise OSError(errno.ENOSPC, "No space left on device", str(file))
np.savez = full_disk
from mlpipe.runner import run_stage
from stages import preprocess
run_stage("preprocess", preprocess.main)
"""


DELETE_VERSION = """
from mlflow import MlflowClient
client = MlflowClient(tracking_uri="sqlite:///mlflow.db", registry_uri="sqlite:///mlflow.db")
client.delete_model_version("keras-tutorial-mnist", "1")
"""
NAN_WEIGHTS = """
import keras, numpy as np
model = keras.saving.load_model("models/model.keras", compile=False)
model.layers[-1].kernel.assign(np.full(model.layers[-1].kernel.shape, np.nan, "float32"))
model.save("models/model.keras")
"""
THREE_CLASSES = """
import keras
inputs = keras.Input((28, 28), dtype="uint8")
outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
keras.Model(inputs, outputs).save("models/model.keras")
"""


def run_python(ws: Path, code: str) -> None:
    """Damage `ws` with `code`, run in this process (Keras and MLflow are loaded already)."""
    with chdir(ws):
        exec(code, {})


def foreign_sqlite(path: Path) -> None:
    import sqlite3
    from contextlib import closing

    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
        connection.commit()


def foreign_zip(path: Path) -> None:
    """A zip archive of another program's, at one of the pipeline's paths."""
    import zipfile

    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not the pipeline's")


def chain(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(ws: Path) -> None:
        for one in damages:
            one(ws)

    return damage


@dataclass(frozen=True)
class Case:
    id: str
    command: list[str]  # arguments to python
    expected: str
    damage: Callable[[Path], None] = field(default=lambda ws: None)
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int = 1


def stage(name: str) -> list[str]:
    return ["-m", f"stages.{name}"]


def predict(*args: str) -> list[str]:
    return ["-m", "mlpipe.predict", *args]


def params_edit(old: str, new: str) -> Callable[[Path], None]:
    def edit(ws: Path) -> None:
        text = (ws / "params.yaml").read_text()
        assert old in text, old
        (ws / "params.yaml").write_text(text.replace(old, new, 1))

    return edit


def truncate(relative: str) -> Callable[[Path], None]:
    def cut(ws: Path) -> None:
        path = ws / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return cut


def flip(relative: str) -> Callable[[Path], None]:
    def damage(ws: Path) -> None:
        data = bytearray((ws / relative).read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        (ws / relative).write_bytes(bytes(data))

    return damage


def write(relative: str, text: str) -> Callable[[Path], None]:
    def put(ws: Path) -> None:
        (ws / relative).write_text(text)

    return put


def remove(relative: str) -> Callable[[Path], None]:
    def delete(ws: Path) -> None:
        path = ws / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return delete


def replace_with_file(relative: str) -> Callable[[Path], None]:
    def block(ws: Path) -> None:
        shutil.rmtree(ws / relative)
        (ws / relative).write_text("a file where a folder should be")

    return block


def lambda_model(ws: Path) -> None:
    import keras

    inputs = keras.Input((28, 28), dtype="uint8")
    outputs = keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32") / 255.0)(inputs)
    keras.Model(inputs, outputs).save(ws / "models/model.keras")


def image(name: str, make: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def create(ws: Path) -> None:
        if make is not None:
            make(ws / name)

    return create


def bomb(path: Path) -> None:
    Image.new("1", (12_000, 12_000)).save(path)


def cut_png(path: Path) -> None:
    Image.new("L", (200, 200), 200).save(path)
    path.write_bytes(path.read_bytes()[:60])


def blank_png(path: Path) -> None:
    Image.new("L", (64, 64), 255).save(path)


CASES = [
    # params.yaml
    Case(
        "params-negative-epochs",
        stage("preprocess"),
        "train.epochs must be an integer greater than 0 and at most 100000 (got -1)",
        params_edit("epochs: 2", "epochs: -1"),
        exit_code=2,
    ),
    Case(
        "params-unknown-key",
        stage("preprocess"),
        "train.epoch is not a known key",
        params_edit("epochs: 2", "epochs: 2\n  epoch: 3"),
        exit_code=2,
    ),
    Case(
        "params-string-batch",
        stage("preprocess"),
        "train.batch_size must be an integer greater than 0 and at most 1000000 (got 'big')",
        params_edit("batch_size: 16", "batch_size: big"),
        exit_code=2,
    ),
    Case(
        "params-unknown-optimizer",
        stage("preprocess"),
        "train.optimizer must be one of sgd, adam, rmsprop",
        params_edit("optimizer: sgd", "optimizer: lbfgs"),
        exit_code=2,
    ),
    Case(
        "params-unknown-dataset",
        stage("download"),
        "base.dataset must be one of mnist",
        params_edit("dataset: mnist", "dataset: imagenet"),
        exit_code=2,
    ),
    Case(
        "params-missing-key",
        stage("preprocess"),
        "preprocess.validation_split is missing",
        params_edit("validation_split: 0.1", "other: 0.1"),
        exit_code=2,
    ),
    Case(
        "params-bad-yaml",
        stage("preprocess"),
        "params.yaml: not valid YAML at line",
        params_edit("base:", "base: [unclosed"),
        exit_code=2,
    ),
    Case(
        "params-python-tag",
        stage("preprocess"),
        "params.yaml: not valid YAML",
        params_edit("seed: 42", "seed: !!python/object/apply:os.getpid []"),
        exit_code=2,
    ),
    Case(
        "params-file-missing",
        stage("preprocess"),
        "params.yaml: not found",
        remove("params.yaml"),
        exit_code=2,
    ),
    Case(
        "params-scan-needs-jax",
        stage("train"),
        "train.loop scan needs KERAS_BACKEND=jax",
        params_edit("loop: fit", "loop: scan"),
        exit_code=2,
    ),
    Case(
        "params-multi-worker-needs-jax",
        stage("train"),
        "train.distribution multi_worker needs KERAS_BACKEND=jax (got tensorflow)",
        params_edit("distribution: none", "distribution: multi_worker"),
        exit_code=2,
    ),
    Case(
        "params-scan-with-distribution",
        stage("train"),
        "train.loop scan trains on one device in one process; it cannot be used with "
        "train.distribution mirrored",
        lambda ws: set_params(ws, train__loop="scan", train__distribution="mirrored"),
        env={"KERAS_BACKEND": "jax"},
        exit_code=2,
    ),
    Case(
        "multi-worker-process-id-out-of-range",
        stage("train"),
        "KERAS_DISTRIBUTION_PROCESS_ID must be an integer from 0 to 1 (got '2')",
        params_edit("distribution: none", "distribution: multi_worker"),
        env={
            "KERAS_BACKEND": "jax",
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:9",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": "2",
        },
        exit_code=2,
    ),
    Case(
        "params-split-out-of-range",
        stage("preprocess"),
        "preprocess.validation_split must be a number greater than 0 and less than 1 (got 1.5)",
        params_edit("validation_split: 0.1", "validation_split: 1.5"),
        exit_code=2,
    ),
    # data files
    Case(
        "raw-truncated",
        stage("preprocess"),
        "mnist.npz: changed since it was downloaded",
        truncate("data/raw/mnist/mnist.npz"),
    ),
    Case(
        "raw-flipped",
        stage("preprocess"),
        "mnist.npz: changed since it was downloaded",
        flip("data/raw/mnist/mnist.npz"),
    ),
    Case(
        "raw-manifest-missing",
        stage("preprocess"),
        "SHA256SUMS: missing or unreadable",
        remove("data/raw/mnist/SHA256SUMS"),
    ),
    Case("raw-missing", stage("preprocess"), "run the download stage first", remove("data/raw")),
    Case(
        "processed-truncated",
        stage("train"),
        "train.npz: truncated or corrupt",
        truncate("data/processed/train.npz"),
    ),
    Case(
        "processed-missing",
        stage("train"),
        "train.npz: missing; run the preprocess stage first",
        remove("data/processed/train.npz"),
    ),
    Case(
        "processed-wrong-shape",
        stage("evaluate"),
        "test.npz: expected uint8 images of shape (28, 28)",
        lambda ws: write_processed(ws, shape=(32, 32, 3)),
    ),
    Case(
        "history-garbage",
        stage("plot"),
        "history.csv: lacks columns",
        write("reports/history.csv", "x\n1\n"),
    ),
    Case(
        "plot-run-info-corrupt",
        stage("plot"),
        "run.json: unreadable",
        write("models/run.json", "[1, 2"),
    ),
    Case(
        "run-info-corrupt",
        stage("evaluate"),
        "run.json: unreadable",
        write("models/run.json", "{not json"),
    ),
    # Another program's files where ours should be: named as not ours, and left as they are.
    Case(
        "run-info-someone-elses-json",
        stage("evaluate"),
        "run.json: a JSON object without any key of the pipeline's run record",
        write("models/run.json", '{"name": "my notes", "tags": []}'),
    ),
    Case(
        "model-someone-elses-zip",
        stage("evaluate"),
        "model.keras: not a Keras archive (no config.json inside)",
        lambda ws: foreign_zip(ws / "models/model.keras"),
    ),
    Case(
        "processed-someone-elses-zip",
        stage("evaluate"),
        "test.npz: a zip archive without the split's arrays x and y (it holds notes.txt)",
        lambda ws: foreign_zip(ws / "data/processed/test.npz"),
    ),
    Case(
        "predict-store-someone-elses-sqlite",
        predict("digit.png"),
        "mlflow.db: a SQLite database without MLflow's tables, not an MLflow store",
        lambda ws: (
            foreign_sqlite(ws / "mlflow.db"),
            Image.new("L", (40, 40), 0).save(ws / "digit.png"),
        ),
    ),
    # model files
    Case(
        "model-truncated",
        stage("evaluate"),
        "damaged Keras archive",
        truncate("models/model.keras"),
    ),
    Case(
        "model-not-keras",
        stage("evaluate"),
        "not a Keras archive",
        write("models/model.keras", "hello"),
    ),
    Case(
        "model-lambda", stage("evaluate"), "refused, the model holds a Lambda layer", lambda_model
    ),
    Case(
        "predict-model-corrupt",
        predict("digit.png", "--model", "models/model.keras"),
        "damaged Keras archive",
        lambda ws: (
            truncate("models/model.keras")(ws),
            Image.new("L", (40, 40), 255).save(ws / "digit.png"),
        ),
    ),
    Case(
        "predict-model-uri-unknown",
        predict("digit.png", "--model", "models:/nothing@champion"),
        "model models:/nothing@champion not found",
        lambda ws: Image.new("L", (40, 40), 0).save(ws / "digit.png"),
    ),
    # image files
    Case("image-missing", predict("nope.png"), "nope.png: no such file"),
    Case(
        "image-not-an-image",
        predict("notes.png"),
        "not an image Pillow can read",
        write("notes.png", "just text"),
    ),
    Case(
        "image-truncated",
        predict("cut.png"),
        "truncated or corrupt image",
        image("cut.png", cut_png),
    ),
    Case("image-bomb", predict("bomb.png"), "far too large for a digit", image("bomb.png", bomb)),
    Case("image-blank", predict("blank.png"), "no digit found", image("blank.png", blank_png)),
    # environment
    Case(
        "mirror-nowhere",
        stage("download"),
        "DATA_MIRROR=/nonexistent/mirror is not a directory",
        remove("data/raw"),
        env={"DATA_MIRROR": "/nonexistent/mirror"},
    ),
    Case(
        "mirror-corrupt-file",
        stage("download"),
        "sha256 differs and the content cannot be read",
        lambda ws: (
            remove("data/raw")(ws),
            (ws / "mirror").mkdir(),
            (ws / "mirror/mnist.npz").write_text("junk"),
        ),
        env={"DATA_MIRROR": "mirror", "HTTPS_PROXY": "http://127.0.0.1:9"},
    ),
    Case(
        "tracking-server-down",
        stage("train"),
        "MLflow tracking server http://127.0.0.1:9",
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    ),
    Case(
        "output-folder-blocked",
        stage("preprocess"),
        "data/processed: a file stands where a folder is needed",
        replace_with_file("data/processed"),
    ),
    Case("disk-full", ["-c", ENOSPC_PREPROCESS], "no space left on device; free some space"),
    # params.yaml read as DVC reads it (YAML 1.2), and bounded.
    Case(
        "params-duplicate-key",
        stage("preprocess"),
        'found duplicate key "seed"',
        lambda ws: (ws / "params.yaml").write_text(
            (ws / "params.yaml").read_text().replace("  seed: 42", "  seed: 42\n  seed: 7", 1)
        ),
        exit_code=2,
    ),
    Case(
        "params-nesting-bomb",
        stage("preprocess"),
        "params.yaml: nested too deeply",
        lambda ws: (ws / "params.yaml").write_text("[" * 50_000 + "]" * 50_000),
        exit_code=2,
    ),
    Case(
        "preprocess-empty-validation",
        stage("preprocess"),
        "preprocess.train_fraction 0.01 with preprocess.validation_split 0.1 leaves",
        lambda ws: set_params(ws, preprocess__train_fraction=0.01),
        exit_code=2,
    ),
    Case(
        "model-too-large-for-memory",
        stage("train"),
        "model.hidden_units [100000000] (with train.batch_size 16) needs about",
        lambda ws: set_params(ws, model__hidden_units=[100_000_000]),
        exit_code=2,
    ),
    Case(
        "cnn-more-blocks-than-the-image-allows",
        stage("train"),
        "model.conv_filters has 5 blocks, each halving the image; mnist's 28x28 images allow",
        lambda ws: set_params(ws, model__type="cnn", model__conv_filters=[4] * 5),
        exit_code=2,
    ),
    # The tracking store: refused before MLflow touches it.
    Case(
        "store-not-sqlite",
        stage("evaluate"),
        "mlflow.db: not a SQLite database, so not an MLflow store",
        lambda ws: (ws / "mlflow.db").write_text("notes\n"),
    ),
    Case(
        "store-someone-elses-sqlite",
        stage("train"),
        "mlflow.db: a SQLite database without MLflow's tables",
        lambda ws: foreign_sqlite(ws / "mlflow.db"),
    ),
    Case(
        "store-is-a-directory",
        stage("train"),
        "mlflow.db: is a directory, not an MLflow store",
        chain(remove("mlflow.db"), lambda ws: (ws / "mlflow.db").mkdir()),
    ),
    Case(
        "store-postgresql-unreachable",
        stage("train"),
        "MLflow store postgresql://***@127.0.0.1:9/mlflow is not reachable",
        env={"MLFLOW_TRACKING_URI": "postgresql://mlpipe:s3cret@127.0.0.1:9/mlflow"},
    ),
    Case(
        "store-password-with-an-at-sign",
        stage("train"),
        "MLflow store postgresql://***@127.0.0.1:9/mlflow is not reachable",
        env={"MLFLOW_TRACKING_URI": "postgresql://mlpipe:p@s3cret@127.0.0.1:9/mlflow"},
    ),
    Case(
        "store-token-in-a-server-url",
        stage("train"),
        "MLflow tracking server http://***@127.0.0.1:9",
        env={"MLFLOW_TRACKING_URI": "http://s3cret@127.0.0.1:9"},
    ),
    Case(
        "store-is-a-file-store",
        stage("evaluate"),
        "MLFLOW_TRACKING_URI=mlruns names a file store",
        env={"MLFLOW_TRACKING_URI": "mlruns"},
    ),
    Case(
        "store-is-a-pipe",
        stage("evaluate"),
        "mlflow.db: not a regular file (a pipe or a device)",
        chain(remove("mlflow.db"), lambda ws: os.mkfifo(ws / "mlflow.db")),
    ),
    Case(
        "params-is-a-pipe",
        stage("preprocess"),
        "params.yaml: not a regular file",
        chain(remove("params.yaml"), lambda ws: os.mkfifo(ws / "params.yaml")),
        exit_code=2,
    ),
    Case(
        "predict-remote-model-without-its-client",
        predict("digit.png", "--model", "s3://bucket/model"),
        "model s3://bucket/model: its files cannot be fetched",
        lambda ws: Image.new("L", (40, 40), 0).save(ws / "digit.png"),
    ),
    Case(
        "registry-version-deleted-by-hand",
        stage("evaluate"),
        "registered model keras-tutorial-mnist version 1 (from models/run.json) is not in the "
        "registry",
        lambda ws: run_python(ws, DELETE_VERSION),
    ),
    # Models that would give wrong answers are never evaluated or promoted.
    Case(
        "model-nan-weights",
        stage("evaluate"),
        "gives NaN or infinite outputs",
        lambda ws: run_python(ws, NAN_WEIGHTS),
    ),
    Case(
        "model-other-class-count",
        stage("evaluate"),
        "gives 3 outputs per image, but the dataset has 10 classes",
        lambda ws: run_python(ws, THREE_CLASSES),
    ),
]


def snapshot(ws: Path) -> dict[str, str]:
    """Content hash of every file but the tracking store (which records failed runs too)."""
    skip = ("mlflow.db", "mlartifacts/")
    return {
        str(path.relative_to(ws)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(ws.rglob("*"))
        if path.is_file() and not str(path.relative_to(ws)).startswith(skip)
    }


def with_raw(ws: Path) -> Path:
    """A copy of the complete world (conftest) with the raw files download leaves, too."""
    write_raw(ws / "data/raw/mnist", "mnist")
    return ws


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)


def run_case(case: Case, ws: Path) -> StageResult | subprocess.CompletedProcess[str]:
    """Stages and predict run in this process (TensorFlow loads once); scripts in their own."""
    if case.command[:1] == ["-m"] and case.command[1].startswith("stages."):
        return run_stage(ws, case.command[1].removeprefix("stages."), **case.env)
    if case.command[:2] == ["-m", "mlpipe.predict"]:
        return run_predict(ws, *case.command[2:], **case.env)
    return subprocess.run(
        [sys.executable, *case.command],
        cwd=ws,
        env=stage_env(**case.env),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, complete: Path, tmp_path: Path) -> None:
    ws = with_raw(complete)
    case.damage(ws)
    before = snapshot(ws)
    result = run_case(case, ws)
    assert result.returncode == case.exit_code, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert case.expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    after = snapshot(ws)
    added = sorted(set(after) - set(before))
    changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    assert added == [] and changed == [], (added, changed)


@pytest.mark.parametrize(
    ("stage", "damage", "exit_code"),
    [("evaluate", remove("models/run.json"), 1), ("train", lambda ws: None, 2)],
    ids=["problem-exits-1", "bad-params-exit-2"],
)
def test_exit_code_contract_of_a_real_process(
    complete: Path, tmp_path: Path, stage: str, damage: Callable[[Path], None], exit_code: int
) -> None:
    """The exit codes DVC sees, from `python -m stages.<name>` in its own process."""
    ws = with_raw(complete)
    damage(ws)
    if exit_code == 2:
        set_params(ws, train__epochs=-1)
    result = run_stage_process(ws, stage)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert len(error_lines(result.stderr)) == 1
    assert "Traceback" not in result.stderr


def test_debug_switch_prints_the_traceback_behind_the_line(complete: Path, tmp_path: Path) -> None:
    ws = with_raw(complete)
    (ws / "models/run.json").unlink()
    quiet = run_stage(ws, "evaluate")
    loud = run_stage(ws, "evaluate", MLPIPE_DEBUG="1")
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "FileNotFoundError" in loud.stderr
    assert error_lines(loud.stderr) == error_lines(quiet.stderr)
