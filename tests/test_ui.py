"""`make ui` (python -m mlpipe.ui): the MLflow UI on the workspace's runs, at their page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mlpipe.ui import runs_link
from tests.conftest import REPO, error_lines, free_port, stage_env, stop


def test_link_asks_for_the_training_view() -> None:
    assert runs_link("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    )


def ui_command(port: int) -> list[str]:
    return [sys.executable, "-m", "mlpipe.ui", "--port", str(port)]


def test_without_a_store_it_says_so_and_creates_none(workspace: Path) -> None:
    result = subprocess.run(
        ui_command(free_port()), cwd=workspace, env=stage_env(), capture_output=True, text=True
    )
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "no MLflow store here; run the pipeline first" in line
    assert not (workspace / "mlflow.db").exists()


def start_ui(workspace: Path) -> tuple[subprocess.Popen, str]:
    """`python -m mlpipe.ui` on a free port; return it once its link answers, and the link."""
    import time

    port = free_port()
    process = subprocess.Popen(
        ui_command(port),
        cwd=workspace,
        env={**stage_env(), "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    first = process.stderr.readline()
    assert "open http://127.0.0.1:" in first, first + process.stderr.read()[-2000:]
    link = first.split("open ", 1)[1].split(" ", 1)[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, link
        except requests.ConnectionError:
            time.sleep(0.5)
    stop(process)
    pytest.fail("mlflow ui did not answer within 120 s")


@pytest.mark.slow
def test_ui_serves_the_runs_page(trained: Path) -> None:
    process, link = start_ui(trained)
    try:
        assert link.endswith("/#/experiments/1/runs?workflowType=machine_learning")
        assert requests.get(link.split("#")[0], timeout=10).status_code == 200
    finally:
        stop(process)
