"""The MLflow UI as a user sees it, in headless Chromium: the same script that refreshes the
README's screenshots (`make screenshots`) checks the pages over a store the pipeline filled."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_stage

pytestmark = pytest.mark.slow


def screenshots_script():
    spec = importlib.util.spec_from_file_location(
        "ui_screenshots", REPO / "scripts/ui_screenshots.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_chromium(script) -> None:
    missing = [p for p in (script.CHROMIUM, script.CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)


def test_runs_metrics_and_aliases_show_in_the_ui(trained: Path, tmp_path: Path) -> None:
    script = screenshots_script()
    require_chromium(script)
    assert run_stage(trained, "evaluate").returncode == 0
    # `capture` fails naming the page and the text it never showed: the run by its name on the
    # runs table, the val_accuracy chart on the run's page, both aliases in the registry.
    shots = script.capture(trained, tmp_path / "shots")
    assert sorted(shots) == ["registry", "run-metrics", "runs"]
    for path in shots.values():
        with Image.open(path) as image:
            assert image.size[0] >= 1000
            low, high = image.convert("L").getextrema()
            assert high - low > 100, f"{path.name} is blank"
