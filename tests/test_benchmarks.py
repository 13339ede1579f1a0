"""docs/performance.md's figures are those of the latest benchmark run (benchmarks/)."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import REPO

TIMES = "\N{MULTIPLICATION SIGN}"  # as docs/performance.md writes a ratio (1.31 and this sign)
# docs/performance.md row label: (benchmarks/results.csv measure, how the README shows its value)
QUOTED = {
    "bare tutorial script": ("baseline (bare tutorial script), median", "{:.1f} s"),
    "`dvc repro` from a clean state": ("dvc repro from a clean state, median", "{:.1f} s"),
    "end to end, against the bare script": ("end-to-end ratio to baseline", "{:.2f}" + TIMES),
    "overhead: `dvc repro` less its fit": ("overhead: dvc repro less its fit, median", "{:.1f} s"),
    "evaluate stage": ("evaluate: wall time", "{:.2f} s"),
    "plot stage": ("plot: wall time", "{:.2f} s"),
    "train: before its first epoch, more than the bare script": (
        "train: before its first epoch, more than the baseline",
        "{:.2f} s",
    ),
    "`python -m mlpipe.predict`, one image, the champion": (
        "predict one image (the champion, from MLflow)",
        "{:.2f} s",
    ),
    "no-op `dvc repro`": ("no-op dvc repro", "{:.2f} s"),
    "a plot-only param change (reruns plot only)": ("plot-only change (reran plot)", "{:.2f} s"),
    "training throughput, train stage against `model.fit`": ("throughput ratio", "{:.2f}" + TIMES),
}


def _measured() -> dict[str, float]:
    with open(REPO / "benchmarks" / "results.csv", newline="") as handle:
        return {row["measure"]: float(row["value"]) for row in csv.DictReader(handle)}


def _readme_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (REPO / "docs" / "performance.md").read_text().splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("label", sorted(QUOTED))
def test_the_docs_quote_the_latest_benchmark(label: str) -> None:
    measure, shown = QUOTED[label]
    *_, now, _ = _readme_rows()[label]
    assert now == shown.format(_measured()[measure])
