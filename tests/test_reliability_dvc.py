"""Faults under `dvc repro` itself, on real MNIST (5%, small epochs): a kill, a lock, corruption.

The tests share one clone and run in order; each leaves the pipeline complete again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import MIRROR, copy_of, dvc, files_under, needs_mirror, run_git, stage_env
from tests.fakes import set_params

pytestmark = [pytest.mark.slow, pytest.mark.reliability, needs_mirror]

FINAL_OUTPUTS = ["models/model.keras", "models/run.json", "reports/history.csv"]


def set_epochs(repo: Path, epochs: int, batch_size: int) -> None:
    set_params(repo, train__epochs=epochs, train__batch_size=batch_size)


@pytest.fixture(scope="module")
def repo(small_repro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's small repro (5% of MNIST, two epochs), this module's copy."""
    return copy_of(small_repro_world, tmp_path_factory.mktemp("faults") / "repo")


def dvc_popen(repo: Path) -> subprocess.Popen:
    env = stage_env(DATA_MIRROR=str(MIRROR))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_epoch(process: subprocess.Popen, marker: str) -> str:
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail("training never reached " + marker + ":\n" + "".join(seen)[-3000:])


def valid_outputs(repo: Path) -> None:
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0 < metrics["test_accuracy"] <= 1
    with zipfile.ZipFile(repo / "models/model.keras") as archive:
        assert archive.testzip() is None
    for png in (repo / "reports/figures").glob("*.png"):
        with Image.open(png) as image:
            image.verify()


def mlflow_statuses(repo: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return [
        run.info.status for run in client.search_runs(["1"], order_by=["attributes.start_time ASC"])
    ]


def test_kill_9_mid_training_then_repro_completes(repo: Path) -> None:
    expected = files_under(repo / "models") + files_under(repo / "reports")
    metrics_before = (repo / "reports/metrics.json").read_text()
    set_epochs(repo, 60, 32)
    process = dvc_popen(repo)
    wait_for_epoch(process, "epoch 2/60")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for name in FINAL_OUTPUTS:
        assert not (repo / name).exists(), name
    leftovers = [
        n for n in files_under(repo / "models") + files_under(repo / "reports") if ".tmp" in n
    ]
    assert leftovers == []
    # Evaluate never started: its metrics are the last complete run's, untouched.
    assert (repo / "reports/metrics.json").read_text() == metrics_before
    assert mlflow_statuses(repo)[-1] == "RUNNING"
    # DVC recorded nothing for the killed stage: it is out of date, so the next repro runs it.
    status = dvc(repo, "status", "train")
    assert "changed" in status.stdout or "modified" in status.stdout or "deleted" in status.stdout

    set_epochs(repo, 3, 500)
    again = dvc(repo, "repro")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "marked KILLED" in again.stdout + again.stderr
    assert files_under(repo / "models") + files_under(repo / "reports") == expected
    valid_outputs(repo)
    statuses = mlflow_statuses(repo)
    assert statuses[-2:] == ["KILLED", "FINISHED"]
    assert "RUNNING" not in statuses


def test_second_repro_fails_at_once_on_the_lock(repo: Path) -> None:
    set_epochs(repo, 20, 32)  # long enough to hold the lock while the second one tries
    first = dvc_popen(repo)
    wait_for_epoch(first, "epoch 2/20")
    started = time.monotonic()
    second = dvc(repo, "repro", timeout=60)
    assert time.monotonic() - started < 20
    assert second.returncode != 0
    # DVC's own words: the repo lock, or (DVC 3) the read-write lock on the running outputs.
    said = second.stderr + second.stdout
    assert "Unable to acquire lock" in said or "is busy, it is being blocked by" in said, said
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    valid_outputs(repo)


def test_corrupt_data_is_named_and_repro_repairs_it(repo: Path) -> None:
    env = stage_env()
    raw = repo / "data/raw/mnist/mnist.npz"
    data = bytearray(raw.read_bytes())
    data[1000:1032] = bytes(32)
    raw.write_bytes(bytes(data))
    failed = subprocess.run(
        [sys.executable, "-m", "stages.preprocess"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert f"{raw}: changed since it was downloaded" in failed.stderr
    repaired = dvc(repo, "repro", DATA_MIRROR=str(MIRROR))
    assert repaired.returncode == 0, repaired.stderr[-2000:]

    processed = repo / "data/processed/train.npz"
    processed.write_bytes(processed.read_bytes()[:5000])
    failed = subprocess.run(
        [sys.executable, "-m", "stages.train"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert f"{processed}: truncated or corrupt" in failed.stderr
    repaired = dvc(repo, "repro")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert dvc(repo, "status").stdout.strip().startswith("Data and pipelines are up to date")
    valid_outputs(repo)


@pytest.mark.parametrize(
    ("stage", "outputs", "in_git"),
    [
        ("train", FINAL_OUTPUTS, ""),
        ("evaluate", ["reports/per_class.csv", "reports/metrics.json"], "reports/metrics.json"),
    ],
)
def test_a_failed_stage_names_what_brings_its_outputs_back(
    repo: Path, stage: str, outputs: list[str], in_git: str
) -> None:
    """Under `dvc repro` DVC removes a stage's outputs before running it, so a stage that fails
    there leaves none (run directly, it keeps the previous ones): its one error line says so
    and names the commands that bring back the last ones, byte for byte."""
    run_git(
        repo, "commit", "-q", "--allow-empty", "-am", "the last outputs"
    )  # as a user's last `dvc repro`
    before = {name: (repo / name).read_bytes() for name in outputs}
    unreachable = "http://127.0.0.1:9"  # the stage fails in seconds, after DVC removed them
    failed = dvc(repo, "repro", "--force", "--single-item", stage, MLFLOW_TRACKING_URI=unreachable)
    assert failed.returncode != 0
    [line] = [n for n in (failed.stdout + failed.stderr).splitlines() if n.startswith("error: ")]
    assert f"DVC removed {stage}'s outputs before running it: `dvc checkout {stage}`" in line
    assert (f"`git checkout {in_git}` the ones kept in Git" in line) == bool(in_git), line
    assert not any((repo / name).exists() for name in outputs)

    assert dvc(repo, "checkout", stage).returncode == 0
    if in_git:
        subprocess.run(["git", "checkout", in_git], cwd=repo, check=True)
    assert {name: (repo / name).read_bytes() for name in outputs} == before
