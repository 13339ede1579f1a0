"""scripts/check_lock.py: the committed dvc.lock must be true to the code, params and commands;
outputs that a fresh clone does not have yet are fine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import dvc, project_copy, script_module

problems = script_module("check_lock").problems

PRODUCED = {"data/raw", "models/model.keras"}


def test_missing_outputs_and_produced_inputs_are_fine() -> None:
    status = {
        "download": [{"changed outs": {"data/raw": "not in cache"}}],
        "train": [
            {"changed deps": {"data/raw": "deleted"}},
            {"changed outs": {"models/model.keras": "deleted"}},
        ],
    }
    assert problems(status, PRODUCED) == []


def test_changed_code_params_command_and_lost_sources_are_stale() -> None:
    status = {
        "train": [
            {
                "changed deps": {
                    "mlpipe/model/training.py": "modified",
                    "params.yaml": {"train": "modified"},
                }
            },
            {"changed deps": {"mlpipe/gone.py": "deleted", "mlpipe/new.py": "new"}},
            {"changed outs": {"models/model.keras": "modified"}},
            "changed command",
        ]
    }
    assert problems(status, PRODUCED) == [
        "train: deps mlpipe/model/training.py modified",
        "train: params in params.yaml: train modified",
        "train: deps mlpipe/gone.py deleted",
        "train: deps mlpipe/new.py new",
        "train: outs models/model.keras modified",
        "train: changed command",
    ]


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/check_lock.py"], cwd=repo, capture_output=True, text=True
    )


def test_this_checkout_then_an_edited_stage(tmp_path: Path) -> None:
    """On a copy of this checkout (no data, no models) the lock holds; after an edit to a
    stage's code it is stale, and the message says which file and what to do."""
    repo = project_copy(tmp_path / "clone")
    result = check(repo)
    assert result.returncode == 0, result.stderr
    # The committed metrics make main the baseline of `dvc exp show`, with nothing pulled.
    shown = dvc(repo, "exp", "show", "--json")
    [commit] = [row for row in json.loads(shown.stdout) if row["rev"] != "workspace"]
    metrics = commit["data"]["metrics"]["reports/metrics.json"]["data"]
    assert 0.9 < metrics["test_accuracy"] <= 1
    with (repo / "mlpipe/report/figures.py").open("a") as file:
        file.write("# an edit\n")
    result = check(repo)
    assert result.returncode == 1
    assert "error: dvc.lock is stale: plot: deps mlpipe/report/figures.py modified" in result.stderr
    assert "commit dvc.lock" in result.stderr
