"""The MLflow UI as a user sees it, in headless Chromium: the same script that refreshes the
README's screenshots (`make screenshots`) checks the pages over a store the pipeline filled."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import require_chromium, script_module

pytestmark = pytest.mark.slow


def test_runs_metrics_and_aliases_show_in_the_ui(evaluated: Path, tmp_path: Path) -> None:
    """`capture` starts `python -m mlpipe.ui` and opens the link it prints, as a user would."""
    require_chromium()
    script = script_module("ui_screenshots")
    # `capture` fails naming the page and the text it never showed: the run by its name on the
    # runs table, the val_accuracy chart on the run's page, both aliases in the registry.
    shots = script.capture(evaluated, tmp_path / "shots")
    assert sorted(shots) == ["registry", "run-metrics", "runs"]
    for path in shots.values():
        with Image.open(path) as image:
            assert image.size[0] >= 1000
            low, high = image.convert("L").getextrema()
            assert high - low > 100, f"{path.name} is blank"
