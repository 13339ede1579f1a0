"""Benchmark: `train.distribution` on this machine, on the default network and full MNIST.

Run by hand from the repository root, with a folder holding mnist.npz (about 4 minutes on
2 cores; needs the JAX backend: `make setup-jax`):

    DATA_MIRROR=/path/to/mirror .venv/bin/python benchmarks/distribution.py

It trains `none` and `mirrored` on the TensorFlow backend, then `none` and a two-process
`multi_worker` job (both processes on 127.0.0.1) on JAX, each in its own copy of one
preprocessed workspace, and writes benchmarks/DISTRIBUTION.md: seconds per epoch (median of
epochs 2 on: the first compiles), the train stage's wall time and the final val_accuracy, all
read from outside (process wall time, reports/history.csv).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "benchmarks"
WORK = HERE / "work" / "distribution"
sys.path.insert(0, str(REPO))
from benchmarks.run import environment  # noqa: E402
from tests.fakes import set_params  # noqa: E402

TIMEOUT_S = 600


@dataclass(frozen=True)
class Setup:
    distribution: str
    backend: str
    processes: int = 1


SETUPS = (
    Setup("none", "tensorflow"),
    Setup("mirrored", "tensorflow"),
    Setup("none", "jax"),
    Setup("multi_worker", "jax", 2),
)


def stage(workspace: Path, name: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=workspace,
        env=environment(PYTHONPATH=str(REPO), **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait(process: subprocess.Popen[str]) -> None:
    _, err = process.communicate(timeout=TIMEOUT_S)
    if process.returncode != 0:
        raise SystemExit(f"a stage failed:\n{err[-3000:]}")


def prepared(mirror: Path) -> Path:
    """One workspace with MNIST downloaded from the mirror and preprocessed."""
    shutil.rmtree(WORK, ignore_errors=True)
    workspace = WORK / "data"
    workspace.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    for name in ("download", "preprocess"):
        wait(stage(workspace, name, DATA_MIRROR=str(mirror)))
    return workspace


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train(data: Path, setup: Setup) -> dict[str, float]:
    """Train `setup` (each process in its own copy of `data`); what process 0 measured."""
    import pandas as pd

    port = free_port()
    started = time.perf_counter()
    processes = []
    for process_id in range(setup.processes):
        workspace = WORK / f"{setup.distribution}-{setup.backend}-{process_id}"
        shutil.copytree(data, workspace)
        set_params(workspace, train__distribution=setup.distribution)
        job = {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": str(setup.processes),
            "KERAS_DISTRIBUTION_PROCESS_ID": str(process_id),
        }
        extra = job if setup.distribution == "multi_worker" else {}
        processes.append(stage(workspace, "train", KERAS_BACKEND=setup.backend, **extra))
    for process in processes:
        wait(process)
    wall = time.perf_counter() - started
    history = pd.read_csv(WORK / f"{setup.distribution}-{setup.backend}-0/reports/history.csv")
    return {
        "epoch_s": statistics.median(history["seconds"].iloc[1:]),
        "fit_s": float(history["seconds"].sum()),
        "wall_s": wall,
        "val_accuracy": float(history["val_accuracy"].iloc[-1]),
    }


def main() -> None:
    mirror = Path(os.environ.get("DATA_MIRROR", ""))
    if not (mirror / "mnist.npz").is_file():
        raise SystemExit("set DATA_MIRROR to a folder holding mnist.npz")
    data = prepared(mirror)
    lines = [
        "# train.distribution on one machine",
        "",
        f"Measured by `benchmarks/distribution.py` on {os.cpu_count()}-core "
        f"{platform.machine()} CPU, {platform.system()}: the default network and params, full "
        "MNIST, 20 epochs, global batch 500; each setup once.",
        "",
        "| distribution | backend | processes | s per epoch | fit s | train stage wall s "
        "| val_accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for setup in SETUPS:
        measured = train(data, setup)
        print(setup, measured, flush=True)
        lines.append(
            f"| {setup.distribution} | {setup.backend} | {setup.processes} "
            f"| {measured['epoch_s']:.2f} | {measured['fit_s']:.1f} | {measured['wall_s']:.1f} "
            f"| {measured['val_accuracy']:.4f} |"
        )
    lines += [
        "",
        "Two processes on two cores show the mechanism, not a speed-up: both share the same "
        "cores, and every step exchanges the gradients of 640,890 parameters over TCP (gloo).",
        "",
    ]
    (HERE / "DISTRIBUTION.md").write_text("\n".join(lines), encoding="utf-8")
    print((HERE / "DISTRIBUTION.md").read_text())


if __name__ == "__main__":
    main()
