"""The champion served over HTTP on loopback answers /invocations with raw pixel arrays."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import free_port, run_stage, serve, stop

pytestmark = pytest.mark.slow


def test_served_champion_answers_invocations(trained: Path) -> None:
    assert run_stage(trained, "evaluate").returncode == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/keras-tutorial-mnist@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = serve(
        command, trained, f"{url}/ping", MLFLOW_TRACKING_URI=f"sqlite:///{trained / 'mlflow.db'}"
    )
    try:
        with np.load(trained / "data/processed/test.npz") as test:
            batch = test["x"][:3]
        # The request the README documents: raw uint8 pixels, one 28x28 array per image.
        reply = requests.post(f"{url}/invocations", json={"inputs": batch.tolist()}, timeout=60)
        assert reply.status_code == 200, reply.text
        probabilities = np.asarray(reply.json()["predictions"])
        assert probabilities.shape == (3, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        # The same pixels sent as a JSON file, as with curl --data @file.
        example = json.dumps({"inputs": batch[:1].tolist()})
        reply = requests.post(
            f"{url}/invocations",
            data=example,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert np.asarray(reply.json()["predictions"]).shape == (1, 10)
        # Pixels scaled to [0, 1] would be cast to zeros and answered as a blank image:
        # the served model refuses them and says what pixels must be.
        binary = (batch > np.median(batch)).astype(int)  # every pixel 0 or 1: a [0, 1] image
        for scaled in ((batch / 255.0).tolist(), binary.tolist()):
            reply = requests.post(f"{url}/invocations", json={"inputs": scaled}, timeout=60)
            assert reply.status_code == 400, reply.text
            assert "pixels must be integers from 0 to 255" in reply.text
    finally:
        stop(server)
