"""End to end: `dvc repro` in a fresh copy of the project, on real MNIST from the mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MIRROR, dvc, needs_mirror, project_copy

pytestmark = [pytest.mark.slow, needs_mirror]


def ran_stages(output: str) -> list[str]:
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]


def test_download_and_preprocess_real_mnist(tmp_path: Path) -> None:
    repo = project_copy(tmp_path / "project")
    first = dvc(repo, "repro", "preprocess", DATA_MIRROR=str(MIRROR))
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran_stages(first.stdout) == ["download", "preprocess"]
    assert "served by DATA_MIRROR" in first.stderr
    with (
        np.load(repo / "data/processed/train.npz") as train,
        np.load(repo / "data/processed/val.npz") as val,
    ):
        assert len(train["y"]) + len(val["y"]) == 60_000
        assert abs(len(val["y"]) - 6_000) <= 10
        assert train["x"].shape[1:] == (28, 28) and train["x"].dtype == np.uint8
    with np.load(repo / "data/processed/test.npz") as test:
        assert np.bincount(test["y"]).tolist() == [
            980,
            1135,
            1032,
            1010,
            982,
            892,
            958,
            1028,
            974,
            1009,
        ]
    # Nothing changed: nothing runs. The mirror is where data comes from, not a dependency.
    second = dvc(repo, "repro", "preprocess")
    assert second.returncode == 0, second.stderr
    assert ran_stages(second.stdout) == []
