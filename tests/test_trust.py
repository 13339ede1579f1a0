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
