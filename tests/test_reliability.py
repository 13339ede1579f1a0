"""Faults injected on purpose: kills, races, a store that goes away, and bad input everywhere.

Each test says which fault it injects and what a user must see: one line that names the
problem, a non-zero exit, no traceback, and nothing half-written under a final name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import (
    QUICK,
    REPO,
    client_for,
    error_lines,
    files_under,
    free_port,
    long_training,
    run_stage,
    serve,
    stage_env,
    stop,
)
from tests.fakes import set_params, write_processed

pytestmark = pytest.mark.reliability


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- Interruption -----------------------------------------------------------------------------


def test_run_of_a_live_process_is_not_closed(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orphan detection checks the owner is gone: a dead process's run is closed KILLED (as
    `kill -9` leaves it; through DVC in tests/test_reliability_dvc.py), a concurrent stage's
    run stays RUNNING."""
    from mlpipe.tracking import orphans, run_lifecycle

    client, experiment = run_lifecycle.connect("keras-tutorial", workspace)
    alive = client.create_run(experiment, tags=orphans.owner_tags())
    orphan = client.create_run(
        experiment, tags={**orphans.owner_tags(), orphans.TAG_PID: str(dead_pid())}
    )
    assert orphans.close_orphaned_runs(client, experiment) == [orphan.info.run_id]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"


def test_stale_temp_file_of_a_killed_writer_is_removed(tmp_path: Path) -> None:
    from mlpipe.atomic import temp_sibling, write_text

    final = tmp_path / "metrics.json"
    stale = temp_sibling(final, pid=dead_pid())
    stale.write_text("{half")
    write_text(final, "{}\n")
    assert files_under(tmp_path) == ["metrics.json"]


# --- Concurrency ------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mlpipe.tracking import orphans, run_lifecycle
    start = float(sys.argv[1])
    while time.time() < start:
        time.sleep(0.005)
    client, experiment = run_lifecycle.connect("race", Path.cwd())
    with run_lifecycle.tracked_run(client, experiment, orphans.owner_tags()) as tracker:
        for epoch in range(1, 21):
            tracker.log_metrics({"loss": 1 / epoch, "accuracy": epoch / 20}, step=epoch)
        try:
            client.create_registered_model("race-model")
        except Exception:
            pass  # another process created it first
        version = client.create_model_version("race-model", "file:///tmp/x", run_id=tracker.run_id)
        print("VERSION", version.version)
    """
)


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_four_processes_on_an_empty_store_at_once(workspace: Path) -> None:
    start = time.time() + 3  # all four import first, then start together
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(start)],
            cwd=workspace,
            env=stage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=180) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
        assert "database is locked" not in stderr
    versions = sorted(
        int(line.split()[1])
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("VERSION")
    )
    assert versions == [1, 2, 3, 4]  # distinct versions for concurrent registrations
    client = client_for(workspace)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(
            range(1, 21)
        )


# --- Tracking server --------------------------------------------------------------------------


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on loopback with a SQLite backend."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # Without MLflow's GenAI job runner (eight processes this pipeline never uses), as the
    # team server runs; a start then costs seconds less.
    return serve(
        command,
        folder,
        f"http://127.0.0.1:{port}/health",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )


@pytest.mark.slow
def test_real_tracking_server_then_server_lost_mid_run(workspace: Path, tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        write_processed(workspace)
        set_params(workspace, **QUICK)
        first = run_stage(workspace, "train", MLFLOW_TRACKING_URI=uri)
        assert first.returncode == 0, first.stderr[-3000:]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        info = json.loads((workspace / "models/run.json").read_text())
        assert client.get_run(info["run_id"]).info.status == "FINISHED"
        assert client.get_model_version("keras-tutorial-mnist", "1").run_id == info["run_id"]

        # Now the server goes away during a long run.
        before = {
            name: (workspace / "models" / name).read_bytes() for name in ("model.keras", "run.json")
        }
        process = long_training(workspace, MLFLOW_TRACKING_URI=uri)
        stop(server)
        lost_at = time.monotonic()
        _, rest = process.communicate(timeout=120)
        assert time.monotonic() - lost_at < 60
        assert process.returncode == 1
        assert "Traceback" not in rest
        assert len(error_lines(rest)) == 1
        # The failed run left the first run's outputs exactly as they were, and no temp file.
        assert files_under(workspace / "models") == sorted(before)
        assert all(
            (workspace / "models" / name).read_bytes() == data for name, data in before.items()
        )
    finally:
        stop(server)


@pytest.mark.slow
def test_readme_mlflow_ui_binds_loopback(tmp_path: Path) -> None:

    readme = (REPO / "README.md").read_text()
    commands = [
        line.strip() for line in readme.splitlines() if line.strip().startswith("mlflow ui")
    ]
    assert commands, "README gives no mlflow ui command"
    for command in commands:
        assert "--host 127.0.0.1" in command
    port = free_port()
    args = commands[0].split()
    args[args.index("--port") + 1] = str(port)
    ui = serve(
        [sys.executable, "-m", "mlflow", *args[1:]], tmp_path, f"http://127.0.0.1:{port}/health"
    )
    try:
        import psutil

        listening = {
            c.laddr.ip
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == "LISTEN"
        }
        assert listening == {"127.0.0.1"}
    finally:
        stop(ui)


def test_a_failed_writer_leaves_the_previous_outputs_whole(tmp_path: Path) -> None:
    """All or nothing across outputs: a failure midway keeps every previous file as it was."""
    from mlpipe.atomic import atomic_paths

    finals = [tmp_path / "metrics.json", tmp_path / "per_class.csv"]
    for final in finals:
        final.write_text(f"previous {final.name}\n")
    with pytest.raises(OSError), atomic_paths(*finals) as temps:
        temps[0].write_text("new metrics\n")
        raise OSError(28, "No space left on device")
    assert [final.read_text() for final in finals] == [f"previous {f.name}\n" for f in finals]
    assert files_under(tmp_path) == sorted(final.name for final in finals)
