"""The team set-up, with the real services: PostgreSQL, the team's MLflow server with its login,
a DVC remote and a shared Git repository. The README's "Team set-up" commands run here, with
files and variables where the README prompts (passwords) or names outside services (Caddy, S3).

The tests share one cluster and one server and run in order; the last one stops PostgreSQL
under the running server and starts it again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from tests.conftest import (
    MIRROR,
    copy_of,
    dvc,
    error_lines,
    free_port,
    needs_mirror,
    project_copy,
    quick_workspace,
    run_git,
    run_stage_process,
    serve,
    stage_env,
    stop,
)
from tests.fakes import set_params
from tests.services import (
    ADMIN_PASSWORD,
    DB_PASSWORD,
    Postgres,
    TeamServer,
    add_member,
    create_team_databases,
    credentials_home,
    start_postgres,
    start_team_server,
)

pytestmark = pytest.mark.slow

MEMBER, MEMBER_PASSWORD = "alice", "alice-Secret-pw-1"
ALICE = (MEMBER, MEMBER_PASSWORD)
READER, READER_PASSWORD = "bob", "bob-Secret-pw-2"
MODEL = "keras-tutorial-mnist"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Postgres]:
    cluster = start_postgres()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="module")
def server(cluster: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    made = create_team_databases(cluster)
    assert made.returncode == 0, made.stderr
    folder = tmp_path_factory.mktemp("team-server")
    server = start_team_server(cluster, folder)
    for name, password, permission in (
        (MEMBER, MEMBER_PASSWORD, "EDIT"),
        (READER, READER_PASSWORD, "READ"),
    ):
        added = add_member(server, folder, name, password, permission)
        assert added.returncode == 0, added.stderr
        assert f"user {name} may {permission} experiment keras-tutorial" in added.stderr
    yield server
    stop(server.process)


def login(user: str, password: str, server: TeamServer) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
    }


def admin_client(server: TeamServer):
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN_PASSWORD
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def all_runs(client) -> list:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name("keras-tutorial")
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)


def test_database_script_can_run_again(cluster: Postgres, server: TeamServer) -> None:
    """scripts/team-db.sh is safe to re-run: it keeps the databases and sets the password."""
    import psycopg

    def logs_in(password: str) -> bool:
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=cluster.port,
                user="mlflow",
                dbname="mlflow",
                password=password,
                connect_timeout=5,
            ):
                return True
        except psycopg.OperationalError:
            return False

    try:
        again = create_team_databases(cluster, "a-new Pass'word")
        assert again.returncode == 0, again.stderr
        assert "role mlflow owns databases mlflow, mlflow_auth and optuna" in again.stdout
        assert logs_in("a-new Pass'word") and not logs_in(DB_PASSWORD)
    finally:
        assert create_team_databases(cluster).returncode == 0  # the server's password again
    assert logs_in(DB_PASSWORD)
    # Its state folder holds no secret, and only its owner may read it.
    state = server.state_dir
    assert state.stat().st_mode & 0o077 == 0
    for path in state.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
        text = path.read_text()
        assert ADMIN_PASSWORD not in text and DB_PASSWORD not in text


def test_only_the_team_gets_in(server: TeamServer) -> None:
    api = f"{server.url}/api/2.0/mlflow/experiments/search"
    assert requests.get(api, params={"max_results": 1}, timeout=10).status_code == 401
    assert requests.get(f"{server.url}/", timeout=10).status_code == 401
    wrong = requests.get(api, params={"max_results": 1}, auth=(MEMBER, "guess"), timeout=10)
    assert wrong.status_code == 401
    right = requests.get(api, params={"max_results": 1}, auth=(MEMBER, MEMBER_PASSWORD), timeout=10)
    assert right.status_code == 200
    # A login the server remembers (its 30 s cache) is that password's only: a wrong one for
    # the same user is still refused, on every worker.
    for _ in range(4):
        again = requests.get(api, params={"max_results": 1}, auth=(MEMBER, "guess"), timeout=10)
        assert again.status_code == 401
    # No secret on a command line: the server and its workers were started without one.
    import psutil

    processes = [psutil.Process(server.process.pid)]
    processes += processes[0].children(recursive=True)
    for process in processes:
        command = " ".join(process.cmdline())
        assert ADMIN_PASSWORD not in command and DB_PASSWORD not in command
        # MLflow's GenAI job runner is off: none of its eight processes was started.
        assert "huey" not in command and "_job_runner" not in command


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        (None, None, "asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (MEMBER, "wrong-guess", "refused the login of user 'alice' (wrong password"),
    ],
)
def test_no_or_wrong_login_is_one_line_in_seconds(
    server: TeamServer, tmp_path: Path, user: str | None, password: str | None, expected: str
) -> None:
    workspace = quick_workspace(tmp_path / "ws")
    env = login(user, password, server) if user else {"MLFLOW_TRACKING_URI": server.url}
    start = time.monotonic()
    result = run_stage_process(workspace, "train", **env)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert [expected in line for line in error_lines(result.stderr)] == [True], result.stderr
    assert "Traceback" not in result.stderr
    if password:
        assert password not in result.stdout + result.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (workspace / "models").exists()


@pytest.fixture(scope="module")
def member_workspace(server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace a member trained and evaluated through the server, logged in through
    MLflow's credentials file (not the two variables); the tests below work on copies."""
    folder = tmp_path_factory.mktemp("member")
    workspace = quick_workspace(folder / "ws")
    member = {"MLFLOW_TRACKING_URI": server.url, "HOME": str(credentials_home(folder, *ALICE))}
    for stage in ("train", "evaluate"):
        result = run_stage_process(workspace, stage, **member)
        assert result.returncode == 0, result.stderr[-3000:]
        assert MEMBER_PASSWORD not in result.stdout + result.stderr
    return workspace


def test_a_member_trains_and_promotes_through_the_server(
    server: TeamServer, member_workspace: Path
) -> None:
    client = admin_client(server)
    record = json.loads((member_workspace / "models/run.json").read_text())
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    # No credential in what the run records.
    recorded = json.dumps({**run.data.params, **run.data.tags})
    assert MEMBER_PASSWORD not in recorded and MEMBER not in run.data.params.values()
    version = client.get_model_version(MODEL, str(record["registered_model_version"]))
    assert "challenger" in version.aliases


def test_reader_cannot_log_or_promote(
    server: TeamServer, member_workspace: Path, tmp_path: Path
) -> None:
    """A user with read permission can neither train nor promote, and the failed stage leaves
    no output and no run behind."""
    client = admin_client(server)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    runs_before = len(all_runs(client))

    reader = login(READER, READER_PASSWORD, server)
    other = quick_workspace(tmp_path / "reader")
    result = run_stage_process(other, "train", **reader)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "user 'bob' may not do runs/create here (HTTP 403" in line
    assert "add-member bob" in line
    assert not (other / "models").exists()
    assert len(all_runs(client)) == runs_before

    workspace = copy_of(member_workspace, tmp_path / "ws")
    metrics = (workspace / "reports/metrics.json").read_bytes()
    set_params(workspace, evaluate__batch_size=7)  # so the reader's evaluate has work to do
    result = run_stage_process(workspace, "evaluate", **reader)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "user 'bob' may not do" in line and "HTTP 403" in line
    assert (workspace / "reports/metrics.json").read_bytes() == metrics
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version


def test_member_without_model_permission_cannot_promote(
    server: TeamServer, member_workspace: Path, tmp_path: Path
) -> None:
    """EDIT on the experiment, READ on the registered model: evaluate logs nothing half-way and
    moves no alias; it fails at promotion with one line."""
    from mlflow.server.auth.client import AuthServiceClient

    added = add_member(server, tmp_path, "carol", "carol-Secret-pw-3")
    assert added.returncode == 0, added.stderr
    client = admin_client(server)
    AuthServiceClient(server.url).revoke_user_permission("carol", "registered_model", MODEL)
    workspace = copy_of(member_workspace, tmp_path / "ws")
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    metrics = (workspace / "reports/metrics.json").read_bytes()
    result = run_stage_process(workspace, "evaluate", **login("carol", "carol-Secret-pw-3", server))
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "user 'carol' may not do model-versions/set-tag here (HTTP 403" in line, line
    assert (workspace / "reports/metrics.json").read_bytes() == metrics
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion


def test_add_member_refuses_the_admin(server: TeamServer, tmp_path: Path) -> None:
    """MLflow's admin keeps every right whatever permission is granted: `add-member admin
    --permission READ` would report a limit that does not hold, so it is refused, and the
    admin's password stays as it was."""
    added = add_member(server, tmp_path, "admin", "another-Secret-pw-9", "READ")
    assert added.returncode == 2
    [line] = error_lines(added.stderr)
    assert "user admin is the server's admin" in line and "READ would not hold" in line
    assert admin_client(server).search_experiments()  # its own password still logs in


# The daily commands of the README's "Team set-up", between two clones of one Git repository.


@pytest.fixture(scope="module")
def shared(server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Alice's clone has run the pipeline through the team server and pushed it: code to the
    shared Git repository, data and models to the DVC remote. Bob's clone is fresh."""
    folder = tmp_path_factory.mktemp("shared")
    origin = project_copy(folder / "origin")
    set_params(origin, preprocess__train_fraction=0.05, train__epochs=2)
    run_git(origin, "commit", "-q", "-am", "small")
    remote = folder / "dvc-remote"
    bare = folder / "team.git"
    run_git(folder, "clone", "-q", "--bare", str(origin), str(bare))
    alice = folder / "alice"
    run_git(folder, "clone", "-q", str(bare), str(alice))
    added = dvc(alice, "remote", "add", "-d", "team", str(remote))
    assert added.returncode == 0, added.stderr
    run_git(alice, "commit", "-q", "-am", "Team DVC remote")

    env = {**login(MEMBER, MEMBER_PASSWORD, server), "DATA_MIRROR": str(MIRROR)}
    result = dvc(alice, "repro", **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pushed = dvc(alice, "push", **env)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    run_git(alice, "add", "dvc.lock", "reports/metrics.json")
    run_git(alice, "commit", "-q", "-m", "Results")
    run_git(alice, "push", "-q", "origin", "main")
    bob = folder / "bob"
    run_git(folder, "clone", "-q", str(bare), str(bob))
    return {"alice": alice, "bob": bob, "remote": remote, "origin": bare}


@needs_mirror
def test_results_travel_without_retraining(shared: dict[str, Path]) -> None:
    alice, bob = shared["alice"], shared["bob"]
    pulled = dvc(bob, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    # No MLflow server, no data mirror: nothing may need to run.
    result = dvc(bob, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout
    shown = [dvc(clone, "metrics", "show", "--json").stdout for clone in (alice, bob)]
    assert json.loads(shown[0]) == json.loads(shown[1])
    assert (alice / "models/model.keras").read_bytes() == (bob / "models/model.keras").read_bytes()


@needs_mirror
def test_experiment_travels_with_its_run(server: TeamServer, shared: dict[str, Path]) -> None:
    alice, bob = shared["alice"], shared["bob"]
    env = {**login(MEMBER, MEMBER_PASSWORD, server), "DATA_MIRROR": str(MIRROR)}
    ran = dvc(alice, "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=0.1", **env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    model = (alice / "models/model.keras").read_bytes()
    pushed = dvc(alice, "exp", "push", "origin", "lr-high")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    pulled = dvc(bob, "exp", "pull", "origin", "lr-high")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    shown = dvc(bob, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = [
        revision["data"]
        for baseline in json.loads(shown.stdout)
        for experiment in baseline.get("experiments") or []
        for revision in experiment["revs"]
        if revision.get("name") == "lr-high"
    ]
    assert row["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.1
    metrics = row["metrics"]["reports/metrics.json"]["data"]
    assert 0 < metrics["test_accuracy"] <= 1

    applied = dvc(bob, "exp", "apply", "lr-high")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    restored = dvc(bob, "pull")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert (bob / "models/model.keras").read_bytes() == model
    # Its run id opens the same run on the team server, named after the experiment.
    run = admin_client(server).get_run(metrics["mlflow_run_id"])
    assert run.info.run_name == "lr-high"
    assert run.data.params["train.learning_rate"] == "0.1"


@needs_mirror
def test_champion_from_the_server_predicts_and_serves(
    server: TeamServer, shared: dict[str, Path]
) -> None:
    bob = shared["bob"]
    env = login(READER, READER_PASSWORD, server)  # reading is enough to use the champion
    with np.load(bob / "data/processed/test.npz") as test:
        digits, labels = test["x"][:3], test["y"][:3]
    Image.fromarray(digits[0]).save(bob / "digit.png")
    predicted = subprocess.run(
        [sys.executable, "-m", "mlpipe.predict", "digit.png", "--json"],
        cwd=bob,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert READER_PASSWORD not in predicted.stdout + predicted.stderr
    assert len(json.loads(predicted.stdout)) == 1
    wrong = subprocess.run(
        [sys.executable, "-m", "mlpipe.predict", "digit.png"],
        cwd=bob,
        env=stage_env(**login(READER, "not-it", server)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 1
    [line] = error_lines(wrong.stderr)
    assert "refused the login of user 'bob'" in line

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve"),
        *("-m", f"models:/{MODEL}@champion", "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    served = serve(command, bob, f"{url}/ping", **env)
    try:
        reply = requests.post(f"{url}/invocations", json={"inputs": digits.tolist()}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["predictions"]).shape == (len(labels), 10)
    finally:
        stop(served)


def test_two_pipelines_at_once_lose_nothing_on_the_server(
    server: TeamServer, tmp_path: Path
) -> None:
    """Two members' pipelines at the same moment (as `dvc queue start -j 2` runs them; the queue
    itself is tested on a local store in tests/test_experiments.py): every run finished whole
    with its figures, and the champion is the better model whichever evaluate ended last."""
    env = stage_env(**login(MEMBER, MEMBER_PASSWORD, server))
    workspaces = [quick_workspace(tmp_path / name) for name in ("one", "two")]
    set_params(workspaces[1], train__learning_rate=0.2)
    for stage in ("train", "evaluate", "plot"):
        running = [
            subprocess.Popen(
                [sys.executable, "-m", f"stages.{stage}"],
                cwd=workspace,
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for workspace in workspaces
        ]
        for process in running:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
    client = admin_client(server)
    for workspace in workspaces:
        run_id = json.loads((workspace / "models/run.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "val_accuracy")) == 2
        assert client.list_artifacts(run_id, "figures")
    assert not [run for run in all_runs(client) if run.info.status == "RUNNING"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    best = max(float(version.tags["val_accuracy"]) for version in versions)
    assert float(champion.tags["val_accuracy"]) == best  # ranked on validation


@needs_mirror
def test_one_sweep_on_two_machines(
    cluster: Postgres, server: TeamServer, shared: dict[str, Path], tmp_path: Path
) -> None:
    """Two clones of the team's repository, each a "machine", start `sweep run --storage
    postgresql://...` together against the team's PostgreSQL and MLflow server: one study,
    distinct trials, the total exactly, every run under one parent, and every experiment in
    the origin."""
    from tests.services import pgpass_file

    machines = []
    for name in ("one", "two"):
        clone = tmp_path / name
        run_git(tmp_path, "clone", "-q", str(shared["origin"]), str(clone))
        (clone / "sweep.yaml").write_text(
            yaml.safe_dump(
                {
                    "study": "team-search",
                    "objective": {"metric": "val_accuracy", "direction": "maximize"},
                    "trials": 4,
                    "sampler": {"name": "random"},
                    "pruner": {"name": "none"},
                    "set": {"train.epochs": 2},
                    "space": {"train.learning_rate": {"low": 0.01, "high": 0.3, "log": True}},
                }
            )
        )
        pulled = dvc(clone, "pull")  # the team's data, from its DVC remote
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        machines.append(clone)
    storage = cluster.uri("optuna")
    env = stage_env(
        **login(MEMBER, MEMBER_PASSWORD, server), PGPASSFILE=str(pgpass_file(cluster, tmp_path))
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "mlpipe.sweep", "run", "--storage", storage]
    workers = [
        subprocess.Popen(command, cwd=clone, env=env, stderr=subprocess.PIPE, text=True)
        for clone in machines
    ]
    errors = [worker.communicate(timeout=600)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], (
        errors[0][-2000:] + errors[1][-2000:]
    )

    show = [sys.executable, "-m", "mlpipe.sweep", "show", "--json", "--storage", storage]
    shown = subprocess.run(show, cwd=machines[0], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    trials = json.loads(shown.stdout)["trials"]
    counted = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4 and {t["state"] for t in trials} <= {"COMPLETE", "FAIL"}
    # Both machines worked on it: each ran at least one trial.
    ran_here = [set(re.findall(r"trial (\d+) COMPLETE", err)) for err in errors]
    assert all(ran_here) and not ran_here[0] & ran_here[1], ran_here

    client = admin_client(server)
    experiment = client.get_experiment_by_name("keras-tutorial")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlpipe.sweep.study` = 'team-search'"
    )
    [parent] = [run for run in runs if run.data.tags.get("mlpipe.sweep.role") == "parent"]
    children = [run for run in runs if run is not parent]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.info.run_id for run in children} >= {t["mlflow_run_id"] for t in counted}
    assert parent.info.status == "FINISHED"

    # Every complete trial was pushed: the origin lists them all, whichever clone ran it.
    listed = dvc(machines[0], "exp", "list", "origin", "--all-commits", "--name-only")
    assert listed.returncode == 0, listed.stderr
    assert {t["experiment"] for t in counted} <= set(listed.stdout.split())


def test_database_uri_without_a_server(
    cluster: Postgres, server: TeamServer, tmp_path: Path
) -> None:
    """One person's PostgreSQL store, no server: `MLFLOW_TRACKING_URI=postgresql://...` works,
    its artifacts go to the workspace's mlartifacts/, and its password is never shown."""
    from mlflow import MlflowClient

    made = cluster.as_owner([str(cluster.binaries / "createdb"), "-O", "mlflow", "direct"])
    assert made.returncode == 0, made.stderr
    uri = f"postgresql://mlflow:{DB_PASSWORD}@127.0.0.1:{cluster.port}/direct"
    workspace = quick_workspace(tmp_path / "ws")
    for stage in ("train", "evaluate"):
        result = run_stage_process(workspace, stage, MLFLOW_TRACKING_URI=uri)
        assert result.returncode == 0, result.stderr[-3000:]
        assert DB_PASSWORD not in result.stdout + result.stderr
    record = json.loads((workspace / "models/run.json").read_text())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert DB_PASSWORD not in json.dumps({**run.data.params, **run.data.tags})
    assert run.info.artifact_uri.startswith((workspace / "mlartifacts").as_uri())
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 1


@pytest.mark.reliability
def test_database_stopped_under_the_server(
    cluster: Postgres, server: TeamServer, tmp_path: Path
) -> None:
    """PostgreSQL stops under a running server: a stage fails in seconds with one line; once
    it is back, the same stage completes."""
    workspace = quick_workspace(tmp_path / "ws")
    env = login(MEMBER, MEMBER_PASSWORD, server)
    cluster.stop()
    try:
        start = time.monotonic()
        result = run_stage_process(workspace, "train", **env)
        elapsed = time.monotonic() - start
    finally:
        cluster.start()
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "answers HTTP 5" in line and "database down" in line, line
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (workspace / "models").exists()
    result = run_stage_process(workspace, "train", **env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = admin_client(server).get_run(
        json.loads((workspace / "models/run.json").read_text())["run_id"]
    )
    assert run.info.status == "FINISHED"
