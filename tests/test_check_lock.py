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


def test_pinned_libraries_and_frozen_stages_are_checked(tmp_path: Path) -> None:
    """A changed pin in requirements.lock makes the stages it computes stale; a frozen stage,
    which `dvc status` skips, is refused as not checked rather than passed."""
    repo = project_copy(tmp_path / "clone")
    lock = repo / "requirements.lock"
    lock.write_text(lock.read_text().replace("keras==", "keras===", 1))
    result = check(repo)
    assert result.returncode == 1
    for stage in ("preprocess", "train", "evaluate", "plot"):
        assert f"dvc.lock is stale: {stage}: deps requirements.lock modified" in result.stderr
    assert "download:" not in result.stderr  # its outputs are checked by their checksums

    lock.write_text(lock.read_text().replace("keras===", "keras==", 1))
    assert dvc(repo, "freeze", "train").returncode == 0
    result = check(repo)
    assert result.returncode == 1
    assert "dvc.lock cannot be checked for stage train: it is frozen" in result.stderr
    assert "`dvc unfreeze train`" in result.stderr and "stale" not in result.stderr


def test_outside_the_projects_environment_is_one_line() -> None:
    from tests.conftest import REPO

    # -S: no site-packages, as a system Python without PyYAML or DVC.
    result = subprocess.run(
        [sys.executable, "-S", "scripts/check_lock.py"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "not the project's environment" in result.stderr and "make check-lock" in result.stderr
