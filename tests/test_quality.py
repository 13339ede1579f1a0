"""Model quality on real MNIST: the convnet learns what the Dense network cannot (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import needs_mirror, real_workspace, run_stage
from tests.fakes import set_params

pytestmark = [pytest.mark.slow, needs_mirror]

# A tenth of MNIST, a few epochs, small batches: enough steps for both networks to learn, in
# well under a minute on two cores.
SUBSET = {"preprocess__train_fraction": 0.1}
TRAINING = {
    "train__optimizer": "adam",
    "train__learning_rate": 0.001,
    "train__epochs": 4,
    "train__batch_size": 64,
}


def test_cnn_beats_the_mlp_on_the_same_subset_and_epochs(tmp_path: Path) -> None:
    data = real_workspace(tmp_path / "data", **SUBSET)
    accuracy = {}
    for kind in ("mlp", "cnn"):
        workspace = Path(shutil.copytree(data, tmp_path / kind))
        set_params(workspace, model__type=kind, **TRAINING)
        for stage in ("train", "evaluate"):
            result = run_stage(workspace, stage)
            assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
        accuracy[kind] = metrics["test_accuracy"]
    # Measured on a 2-core CPU: mlp about 0.94, cnn about 0.97+ (10,000 test images).
    assert accuracy["cnn"] >= accuracy["mlp"] + 0.015, accuracy
