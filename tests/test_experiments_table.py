"""The README's experiments table is what scripts/experiments_table.py measured, unedited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import REPO, script_module

script = script_module("experiments_table")


def readme_block(text: str) -> str:
    return text.split(script.START, 1)[1].split(script.END, 1)[0].strip()


def test_readme_table_is_the_measured_one() -> None:
    results = json.loads((REPO / "docs" / "experiments.json").read_text())
    assert [row["name"] for row in results["rows"]] == [row[0] for row in script.ROWS]
    assert readme_block((REPO / "README.md").read_text()) == script.table(results).strip()


def test_rewrite_replaces_only_the_table(tmp_path: Path) -> None:
    readme = Path(shutil.copy(REPO / "README.md", tmp_path / "README.md"))
    before = readme.read_text()
    results = {
        "machine": "a test machine",
        "rows": [
            {
                "name": "tutorial",
                "model": "mlp",
                "optimizer": "sgd",
                "learning_rate": 0.01,
                "momentum": 0.0,
                "test_accuracy": 0.5,
                "test_loss": 1.25,
                "train_seconds": 25.4,
            },
            {
                "name": "cnn-adam",
                "model": "cnn",
                "optimizer": "adam",
                "learning_rate": 0.001,
                "momentum": None,
                "test_accuracy": 0.75,
                "test_loss": 0.5,
                "train_seconds": 301.6,
            },
        ],
    }
    script.rewrite_readme(results, readme)
    after = readme.read_text()
    assert readme_block(after).splitlines()[2:4] == [
        "| mlp | sgd (the tutorial) | 0.01 | 0 | 0.5000 | 1.2500 | 25 s |",
        "| cnn | adam | 0.001 | \u2013 | **0.7500** | 0.5000 | 302 s |",
    ]
    assert "Measured by `scripts/experiments_table.py` on a test machine;" in after
    # Everything outside the markers is as it was.
    assert after.split(script.START)[0] == before.split(script.START)[0]
    assert after.split(script.END)[1] == before.split(script.END)[1]
