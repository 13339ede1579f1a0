"""`make ui` (python -m mlpipe.ui): the MLflow UI on the workspace's runs, at their page.

The UI started and its pages seen in headless Chromium: tests/test_browser.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlpipe.ui import runs_link
from tests.conftest import error_lines, free_port, stage_env


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


def test_on_a_moved_workspace_it_says_so_and_changes_nothing(
    evaluated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before it becomes MLflow's UI, `ui` only reads, through a copy of the store: a moved
    store is named as moved (its figures show once a stage has run there), and not rewritten."""
    from mlpipe import ui
    from mlpipe.paths import Layout
    from tests.test_trust import every_byte

    moved = evaluated.rename(tmp_path / "moved")  # `mv`: the store still names the old place
    before = every_byte(moved)
    started = []
    monkeypatch.setattr(ui.os, "execve", lambda path, command, env: started.append(command))
    with caplog.at_level("WARNING"):
        ui.main(Layout(moved), ["--port", "5999"])
    [command] = started
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{moved / 'mlflow.db'}"
    assert f"was moved from {evaluated}" in caplog.text
    assert "once a stage has run here" in caplog.text
    assert every_byte(moved) == before
