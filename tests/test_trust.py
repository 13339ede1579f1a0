"""Results are never lost, mislabelled or stale: real stages on tiny data.

A moved or copied workspace keeps working and never writes to its old place; every run has a
name of its own; the same params give the same numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import client_for, copy_of, run_git, run_predict, run_stage, stage_env

pytestmark = pytest.mark.reliability


def run_ok(workspace: Path, *stages: str, **env: str) -> None:
    for name in stages:
        result = run_stage(workspace, name, **env)
        assert result.returncode == 0, result.stderr[-3000:]


def files_and_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_moved_workspace_loads_its_champion_and_trains_into_itself(
    evaluated: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(evaluated, tmp_path / "original", symlinks=True)
    (tmp_path / "original").rename(moved)  # `mv`: the old folder is gone
    original = tmp_path / "original"
    predicted = run_predict(
        moved,
        "--json",
        "--model",
        "models:/keras-tutorial-mnist@champion",
        str(image_of_a_digit(tmp_path)),
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads(predicted.stdout)[0]["label"] in "0123456789"
    run_ok(moved, "train")
    client = client_for(moved)
    for run in client.search_runs(["1"]):
        assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    assert not original.exists(), "something was written to the workspace's old place"


def every_byte(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder below `folder`, hidden ones included: a file with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in folder.rglob("*")
    }


@pytest.mark.parametrize(
    "case", ["the champion answers", "a bad image", "a version that is gone", "no artifacts"]
)
def test_predict_on_a_moved_workspace_changes_no_byte_of_it(
    evaluated: Path, tmp_path: Path, case: str
) -> None:
    """A command that only reads never writes: not the store (no relocation, no side file),
    not the registry, not any file of the workspace, whatever it answers."""
    moved = tmp_path / "moved"
    copy_of(evaluated, tmp_path / "original", follow=False).rename(moved)
    image = image_of_a_digit(tmp_path)
    model = "models:/keras-tutorial-mnist@champion"
    if case == "a bad image":
        image.write_bytes(b"not an image")
    elif case == "a version that is gone":
        model = "models:/keras-tutorial-mnist/7"
    elif case == "no artifacts":
        shutil.rmtree(moved / "mlartifacts")
    before = every_byte(moved)
    arguments = ["--json", "--model", model, str(image)]
    if case == "the champion answers":  # as a user runs it, to its exit
        result = subprocess.run(
            [sys.executable, "-m", "mlpipe.predict", *arguments],
            cwd=moved,
            env=stage_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        result = run_predict(moved, *arguments)
    assert result.returncode == (0 if case == "the champion answers" else 1), result.stderr
    assert every_byte(moved) == before
    if case == "the champion answers":
        assert json.loads(result.stdout)[0]["label"] in "0123456789"


def test_copied_workspace_writes_nothing_into_the_original(evaluated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy, symlinks=True)  # `cp -a`: both folders exist
    before = files_and_times(evaluated)
    run_ok(copy, "train", "evaluate")
    assert files_and_times(evaluated) == before
    info = json.loads((copy / "models/run.json").read_text())
    run = client_for(copy).get_run(info["run_id"])
    assert run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert (copy / "mlartifacts" / info["run_id"]).is_dir()


def test_every_run_has_its_own_name(evaluated: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "names"
    shutil.copytree(evaluated, workspace, symlinks=True)
    commit = run_git(workspace, "rev-parse", "HEAD").strip()[:7]
    run_ok(workspace, "train")
    run_ok(workspace, "train", DVC_EXP_NAME="lr-high")
    run_ok(workspace, "train", DVC_EXP_NAME="lr-high")
    names = sorted(run.info.run_name for run in client_for(workspace).search_runs(["1"]))
    assert names == sorted([f"{commit}-1", f"{commit}-2", "lr-high", "lr-high-2"])


def test_same_params_give_the_same_numbers(evaluated: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(evaluated / "params.yaml", again / "params.yaml")
    shutil.copytree(evaluated / "data", again / "data")
    run_ok(again, "train", "evaluate")
    first = pd.read_csv(evaluated / "reports/history.csv").drop(columns="seconds")
    second = pd.read_csv(again / "reports/history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    keep = ("test_accuracy", "test_loss", "test_macro_f1")
    metrics = [json.loads((ws / "reports/metrics.json").read_text()) for ws in (evaluated, again)]
    first_metrics, second_metrics = ({k: m[k] for k in keep} for m in metrics)
    assert first_metrics == second_metrics
    assert (evaluated / "reports/predictions.csv").read_bytes() == (
        again / "reports/predictions.csv"
    ).read_bytes()


def image_of_a_digit(folder: Path) -> Path:
    from PIL import Image

    image = Image.new("L", (28, 28), 0)
    image.paste(255, (12, 4, 16, 24))
    path = folder / "one.png"
    image.save(path)
    return path


def test_temp_folders_of_a_killed_process_go_with_the_next_command(tmp_path: Path) -> None:
    """kill -9 runs no cleanup: a process killed while it holds a copy (registration's model,
    predict's store) leaves its temp folder; the next command to make one removes it, and
    leaves alone those of a process still running."""
    import os
    import signal

    hold = (
        "import sys, time; from pathlib import Path; from mlpipe.paths import scratch_dir\n"
        "with scratch_dir(sys.argv[1]) as folder:\n"
        "    (Path(folder) / 'model.keras').write_bytes(b'x' * 1000)\n"
        "    print(folder, flush=True); time.sleep(600)\n"
    )
    env = stage_env(TMPDIR=str(tmp_path))

    def holding(kind: str) -> tuple[subprocess.Popen[str], Path]:
        process = subprocess.Popen(
            [sys.executable, "-c", hold, kind], env=env, stdout=subprocess.PIPE, text=True
        )
        return process, Path(process.stdout.readline().strip())

    killed, orphan = holding("register")
    running, live = holding("store")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert orphan.is_dir() and (orphan / "model.keras").is_file()
    # The same dead process id on another host sharing this temp folder: not ours to judge.
    host = orphan.name.split("-")[2]
    elsewhere = tmp_path / orphan.name.replace(host, "0" * len(host))
    elsewhere.mkdir()
    try:
        made = subprocess.run(
            [sys.executable, "-c", "from mlpipe.paths import scratch_dir; scratch_dir('model')"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert not orphan.exists()
        assert live.is_dir() and elsewhere.is_dir()
    finally:
        running.kill()
        running.wait()


def test_every_temp_folder_is_made_by_scratch_dir() -> None:
    """So that none escapes the clean-up of killed processes' folders."""
    from tests.conftest import REPO

    makers = ("TemporaryDirectory(", "mkdtemp(")
    found = [
        str(path.relative_to(REPO))
        for folder in ("mlpipe", "stages")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "paths.py" and any(maker in path.read_text() for maker in makers)
    ]
    assert found == []


def another_model(path: Path, into: Path) -> None:
    """The model at `path` with one bias nudged, saved at `into`: loads and answers the same
    way, and is not the same model."""
    import keras

    model = keras.models.load_model(path)
    weights = model.get_weights()
    weights[-1] = weights[-1] + 0.5
    model.set_weights(weights)
    model.save(into)


def test_a_version_is_tagged_and_used_only_with_its_registered_model(
    evaluated: Path, tmp_path: Path
) -> None:
    """Train records the registered file's sha256 on the version. A models/model.keras swapped
    afterwards is refused by evaluate before it tags anything; a registered model overwritten in
    the artifact store is refused by predict, not answered with under the same label."""
    from PIL import Image

    from mlpipe.data.digests import sha256_file
    from mlpipe.tracking.model_identity import MODEL_SHA256_TAG

    name = "keras-tutorial-mnist"
    client = client_for(evaluated)
    tags = client.get_model_version(name, "1").tags
    assert tags[MODEL_SHA256_TAG] == sha256_file(evaluated / "models/model.keras")
    metrics = (evaluated / "reports/metrics.json").read_bytes()

    original = evaluated / "models/model.keras"
    another_model(original, tmp_path / "other.keras")
    kept = tmp_path / "trained.keras"
    shutil.copy(original, kept)
    shutil.copy(tmp_path / "other.keras", original)
    swapped = run_stage(evaluated, "evaluate")
    assert swapped.returncode == 1
    [line] = [n for n in swapped.stderr.splitlines() if n.startswith("error: ")]
    assert f"not the model registered as {name} version 1 (its sha256 is" in line
    assert "`dvc checkout train` brings back the trained one" in line
    assert client_for(evaluated).get_model_version(name, "1").tags == tags
    assert (evaluated / "reports/metrics.json").read_bytes() == metrics
    shutil.copy(kept, original)

    # The same version's file overwritten where the store keeps it (as the artifact proxy of
    # a team server lets any EDIT member do).
    [stored] = [
        path
        for path in (evaluated / "mlartifacts").rglob("model.keras")
        if sha256_file(path) == tags[MODEL_SHA256_TAG]
    ]
    shutil.copy(tmp_path / "other.keras", stored)
    Image.new("L", (28, 28), 0).save(evaluated / "digit.png")
    answered = run_predict(evaluated, "digit.png")
    assert answered.returncode == 1 and answered.stdout == ""
    [line] = [n for n in answered.stderr.splitlines() if n.startswith("error: ")]
    assert f"model models:/{name}@champion: its model.keras is not the one registered" in line
    assert "changed in the artifact store after registration" in line


def test_the_committed_run_id_is_called_a_run_of_another_store(
    evaluated: Path, tmp_path: Path
) -> None:
    """A fresh clone's reports/metrics.json names the run of the store where the commit's
    pipeline ran: predict asked for it says so, not "not found"."""
    from PIL import Image

    foreign = "0123456789abcdef0123456789abcdef"
    metrics = json.loads((evaluated / "reports/metrics.json").read_text())
    (evaluated / "reports/metrics.json").write_text(
        json.dumps({**metrics, "mlflow_run_id": foreign})
    )
    Image.new("L", (28, 28), 0).save(evaluated / "digit.png")
    said = {
        foreign: ": it is the run reports/metrics.json names, a run of the store where",
        "f" * 32: " (a mistyped id, or another store's)",
    }
    for run_id, why in said.items():
        asked = run_predict(evaluated, "digit.png", "--model", f"runs:/{run_id}/model")
        assert asked.returncode == 1
        [line] = [n for n in asked.stderr.splitlines() if n.startswith("error: ")]
        assert f"run {run_id} is not in " in line and "not found" not in line
        assert why in line, line


def test_predict_answers_from_a_read_only_workspace_without_side_files(
    evaluated: Path, tmp_path: Path
) -> None:
    """A read-only mount of a workspace whose store has no -wal or -shm beside it (SQLite
    cannot make them there): predict still answers, and changes nothing."""
    from PIL import Image, ImageDraw

    from tests.test_store import read_only

    digit = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(digit).line([(14, 4), (14, 24)], fill=255, width=3)  # a "1"
    digit.save(evaluated / "digit.png")
    for side in ("mlflow.db-wal", "mlflow.db-shm"):
        (evaluated / side).unlink(missing_ok=True)
    before = files_and_times(evaluated)
    with read_only(evaluated):
        answered = run_predict(evaluated, "digit.png", "--json")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)[0]["model"].startswith("keras-tutorial-mnist version 1")
    assert files_and_times(evaluated) == before
