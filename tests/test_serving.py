"""The champion served over HTTP on loopback answers /invocations with raw pixel arrays."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import run_stage, stage_env

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_served_champion_answers_invocations(trained: Path) -> None:
    assert run_stage(trained, "evaluate").returncode == 0
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{trained / 'mlflow.db'}")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    server = subprocess.Popen(
        [
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
        ],
        cwd=trained,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the server forks workers: stop the whole group at the end
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("the model server did not start within two minutes")
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
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
