"""End to end: `dvc repro` in a fresh copy of the project, on real MNIST from the mirror.

The session's small repro (5% of MNIST, two epochs; tests/conftest.py) is shared by the tests
below. The full-size run is CI's `make pipeline`, whose results scripts/check_pipeline.py
checks; here the same script checks the small run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, dvc, files_under, headless_browser, needs_mirror, stage_env

pytestmark = [pytest.mark.slow, needs_mirror]

OUTPUTS = [
    "data/processed/summary.csv",
    "data/processed/test.npz",
    "data/processed/train.npz",
    "data/processed/val.npz",
    "data/raw/mnist/SHA256SUMS",
    "data/raw/mnist/mnist.npz",
    "models/model.keras",
    "models/run.json",
    "reports/confusion.csv",
    "reports/figures/accuracy.png",
    "reports/figures/confident_mistakes.png",
    "reports/figures/confusion_matrix.png",
    "reports/figures/loss.png",
    "reports/figures/predictions.png",
    "reports/figures/samples.png",
    "reports/history.csv",
    "reports/metrics.json",
    "reports/per_class.csv",
    "reports/predictions.csv",
]


def ran_stages(output: str) -> list[str]:
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]


def test_repro_builds_every_output(small_repro_world: Path) -> None:
    repo = small_repro_world
    output = (repo.parent / "repro.log").read_text()
    assert ran_stages(output) == ["download", "preprocess", "train", "evaluate", "plot"]
    produced = [p for p in OUTPUTS if (repo / p).is_file()]
    assert produced == OUTPUTS
    assert "served by DATA_MIRROR" in output
    # No temp file was left beside any output.
    for folder in ("data", "models", "reports"):
        leftovers = [n for n in files_under(repo / folder) if ".tmp" in n]
        assert leftovers == []


def check_pipeline(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "check_pipeline.py"),
            "--workspace",
            str(repo),
            *args,
        ],
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_pipeline_check_passes_a_real_run_and_names_what_is_off(small_repro: Path) -> None:
    """CI's check of the full run, on the small one: the splits, every epoch in MLflow,
    evaluate's metrics as Keras's own, the champion served by MLflow all hold; the tutorial's
    accuracy range does not (two epochs on 5%), and the check says so and fails."""
    ranged = check_pipeline(small_repro, "--accuracy-range", "0", "1")
    assert ranged.returncode == 0, ranged.stdout + ranged.stderr
    assert ranged.stdout.count("ok: ") == 6, ranged.stdout
    assert "2 epochs of 4 metrics" in ranged.stdout
    (small_repro / "models" / "run.json").unlink()
    tutorial = check_pipeline(small_repro)
    assert tutorial.returncode == 1, tutorial.stdout
    failed = [line for line in tutorial.stdout.splitlines() if line.startswith("FAILED")]
    assert failed[0] == "FAILED: outputs: missing outputs: ['models/run.json']"
    assert failed[1].startswith("FAILED: accuracy: test accuracy") and "[0.91, 0.94]" in failed[1]


def test_metrics_show_has_the_run(small_repro_world: Path) -> None:
    repo = small_repro_world
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    shown = dvc(repo, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert str(metrics["test_accuracy"]) in shown.stdout
    assert metrics["mlflow_run_id"] in shown.stdout


def test_plots_show_writes_html(small_repro: Path) -> None:
    result = dvc(small_repro, "plots", "show", "-o", "plots_html")
    assert result.returncode == 0, result.stderr
    html = (small_repro / "plots_html" / "index.html").read_text()
    assert "Accuracy per epoch" in html and "Confusion matrix" in html


def test_plots_render_offline(small_repro: Path) -> None:
    """`dvc plots show`'s page draws its three vega charts with the network switched off: the
    page template (make setup) carries vega itself, and no script comes from elsewhere."""
    result = dvc(small_repro, "plots", "show", "-o", "offline_plots")
    assert result.returncode == 0, result.stderr
    page = small_repro / "offline_plots" / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text(), "run make setup: the template loads a CDN"
    driver = headless_browser()
    try:
        driver.set_network_conditions(offline=True, latency=0, throughput=0)
        driver.get(page.as_uri())
        deadline = time.monotonic() + 30
        drawn = []
        while time.monotonic() < deadline and len(drawn) < 3:
            drawn = driver.find_elements("css selector", ".vega-embed svg, .vega-embed canvas")
            time.sleep(0.5)
        assert len(drawn) >= 3, "the interactive plots stayed blank offline"
    finally:
        driver.quit()


def test_second_repro_runs_nothing_then_plot_param_reruns_only_plot(small_repro: Path) -> None:
    again = dvc(small_repro, "repro")
    assert again.returncode == 0, again.stderr
    assert ran_stages(again.stdout) == []
    params = small_repro / "params.yaml"
    params.write_text(params.read_text().replace("wrong_count: 16", "wrong_count: 9"))
    changed = dvc(small_repro, "repro")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert ran_stages(changed.stdout) == ["plot"]
