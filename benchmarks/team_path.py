"""Benchmark: what the team's server costs a train stage, against a local MLflow store.

Run by hand from the repository root (PostgreSQL's binaries installed, as for the team tests):

    .venv/bin/python benchmarks/team_path.py [--repeats 3]

It starts what the team tests start (tests/services.py): a PostgreSQL cluster, SeaweedFS's S3
server, and `python -m mlpipe.team serve` twice, artifacts on the server's disk and in an S3
bucket, each with a member's login. The same 2-epoch train stage (tiny data, so that its
MLflow calls are most of its time) runs `--repeats` times against each of: the workspace's own
SQLite store, the server with local artifacts, the server with S3 artifacts; one unmeasured run
first warms each (a new store's tables, the server's first login). For each it reports the
stage's median wall time and, from inside the stage, the HTTP requests it made and the seconds
spent in them. The training is the same everywhere, so a wall time's excess over the local
store's is what the server path costs. It writes benchmarks/team_path_results.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work" / "team_path"
sys.path.insert(0, str(REPO))
from tests.conftest import quick_workspace, stage_env, stop  # noqa: E402
from tests.services import (  # noqa: E402
    add_member,
    create_team_databases,
    start_postgres,
    start_seaweed,
    start_team_server,
)

MEMBER, PASSWORD = "bench", "bench-Secret-pw-1"
# The train stage, with every HTTP request it makes timed (MLflow's client uses requests).
TIMED_TRAIN = """
import atexit, json, runpy, time, requests
spent = []
send = requests.Session.request
def timed(self, *args, **kwargs):
    started = time.monotonic()
    try:
        return send(self, *args, **kwargs)
    finally:
        spent.append(time.monotonic() - started)
requests.Session.request = timed
atexit.register(lambda: print(json.dumps({"requests": len(spent), "seconds": sum(spent)})))
runpy.run_module("stages.train", run_name="__main__")
"""


def train(workspace: Path, **env: str) -> dict[str, float]:
    """One train stage in `workspace`: its wall time, HTTP requests and seconds in them."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", TIMED_TRAIN],
        cwd=workspace, env=stage_env(**env), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"train failed:\n{done.stderr[-3000:]}")
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, **calls}


def measure(workspace: Path, repeats: int, **env: str) -> dict[str, float]:
    train(workspace, **env)  # warm: tables created, first login checked
    runs = [train(workspace, **env) for _ in range(repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cluster = start_postgres()
    store = start_seaweed("team")
    servers = []
    try:
        made = create_team_databases(cluster)
        if made.returncode != 0:
            raise SystemExit(made.stderr)
        results = {"local store": measure(quick_workspace(WORK / "local"), repeats)}
        for label, destination, env in (
            ("team server, local artifacts", None, {}),
            ("team server, S3 artifacts", "s3://team/mlflow", store.env()),
        ):
            folder = WORK / label.replace(" ", "-").replace(",", "")
            folder.mkdir()
            server = start_team_server(cluster, folder, destination, **env)
            servers.append(server)
            if add_member(server, folder, MEMBER, PASSWORD).returncode != 0:
                raise SystemExit(f"{label}: add-member failed")
            login = {
                "MLFLOW_TRACKING_URI": server.url,
                "MLFLOW_TRACKING_USERNAME": MEMBER,
                "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            }
            results[label] = measure(quick_workspace(folder / "ws"), repeats, **login)
    finally:
        for server in servers:
            stop(server.process)
        store.remove()
        cluster.remove()

    local = results["local store"]["wall"]
    rows = []
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    print(f"train stage, 2 epochs on tiny data, median of {repeats} ({machine}):")
    for label, got in results.items():
        extra = got["wall"] - local
        print(
            f"  {label:30} {got['wall']:6.2f} s  (+{extra:5.2f} s)  "
            f"{got['requests']:.0f} HTTP requests, {got['seconds']:.2f} s in them"
        )
        rows += [
            (f"{label}: train wall time, median", round(got["wall"], 2), "s"),
            (f"{label}: more than the local store", round(extra, 2), "s"),
            (f"{label}: HTTP requests", got["requests"], "count"),
            (f"{label}: seconds in HTTP requests", round(got["seconds"], 2), "s"),
        ]
    with open(REPO / "benchmarks" / "team_path_results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["measure", "value", "unit", "machine"])
        writer.writerows((*row, machine) for row in rows)


if __name__ == "__main__":
    main()
