"""S3 as the team's object store, against a real S3 server: SeaweedFS (`weed`, from the dev
requirements) on loopback ports, requests signed and checked. docs/team.md's S3 commands run
here: the team server with its artifacts in a bucket, and the DVC remote in the same bucket.

One S3 server, one PostgreSQL cluster and one team server for the module; tests run in order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import (
    REPO,
    copy_of,
    dvc,
    error_lines,
    experiment_data,
    files_under,
    free_port,
    quick_workspace,
    run_git,
    run_queue_of_two,
    run_stage_process,
    serve,
    stage_env,
    stop,
)
from tests.services import (
    S3_READER_KEY,
    S3_READER_SECRET,
    S3_SECRET,
    Postgres,
    Seaweed,
    TeamServer,
    add_member,
    create_team_databases,
    pgpass_file,
    start_postgres,
    start_seaweed,
    start_team_server,
    team_serve_command,
)
from tests.test_predict import drawn_digit

pytestmark = pytest.mark.slow

BUCKET = "team"
MEMBER, MEMBER_PASSWORD = "alice", "alice-Secret-pw-1"
MODEL = "keras-tutorial-mnist"


@pytest.fixture(scope="module")
def store() -> Iterator[Seaweed]:
    store = start_seaweed(BUCKET)
    yield store
    store.remove()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Postgres]:
    cluster = start_postgres()
    made = create_team_databases(cluster)
    assert made.returncode == 0, made.stderr
    yield cluster
    cluster.remove()


@pytest.fixture(scope="module")
def server(
    store: Seaweed, cluster: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TeamServer]:
    """The team server with --artifacts-destination s3://team/mlflow; only it has S3
    credentials (served artifacts: members log and load through it)."""
    folder = tmp_path_factory.mktemp("s3-team-server")
    server = start_team_server(cluster, folder, f"s3://{BUCKET}/mlflow", **store.env())
    added = add_member(server, folder, MEMBER, MEMBER_PASSWORD)
    assert added.returncode == 0, added.stderr
    yield server
    stop(server.process)


def member_env(server: TeamServer) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": MEMBER,
        "MLFLOW_TRACKING_PASSWORD": MEMBER_PASSWORD,
    }


def team_serve(
    cluster: Postgres, folder: Path, destination: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """`team serve` run to its end (it should refuse to start): the result, its seconds, port."""
    port = free_port()
    command = team_serve_command(cluster, folder, destination, port)
    environment = stage_env(PGPASSFILE=str(pgpass_file(cluster, folder)), **env)
    started = time.monotonic()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started, port


def no_aws_files(folder: Path) -> dict[str, str]:
    """A home without ~/.aws, so that boto3 finds no credentials but the ones given."""
    home = folder / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
        "AWS_CONFIG_FILE": str(home / "none"),
    }


FAULTS = {
    "wrong secret": (
        lambda store: {**store.env(secret="not-the-secret")},
        BUCKET,
        "S3 refused the credentials (SignatureDoesNotMatch)",
    ),
    "unknown key": (
        lambda store: {**store.env(key="AKIANOSUCHKEY00000")},
        BUCKET,
        "S3 refused the credentials (InvalidAccessKeyId)",
    ),
    "missing bucket": (
        lambda store: store.env(),
        "no-such-bucket",
        "bucket 'no-such-bucket' does not exist (NoSuchBucket); create it first",
    ),
    "read-only credentials": (
        lambda store: store.env(key=S3_READER_KEY, secret=S3_READER_SECRET),
        BUCKET,
        "these credentials may not write and delete objects in bucket 'team' (AccessDenied)",
    ),
    "no credentials": (
        lambda store: {"MLFLOW_S3_ENDPOINT_URL": store.endpoint},
        BUCKET,
        "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ),
    "endpoint down": (
        lambda store: {**store.env(), "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
        BUCKET,
        "does not answer (Could not connect to the endpoint URL",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_serve_checks_the_bucket_before_starting(
    fault: str, store: Seaweed, cluster: Postgres, tmp_path: Path
) -> None:
    """Each S3 fault stops `team serve` in seconds with one line naming S3 and the fix, and no
    server is left listening (MLflow's own server would start and answer HTTP 500 later)."""
    env, bucket, expected = FAULTS[fault]
    done, seconds, port = team_serve(
        cluster, tmp_path, f"s3://{bucket}/mlflow", **no_aws_files(tmp_path), **env(store)
    )
    assert done.returncode == 1, done.stderr
    [line] = error_lines(done.stderr)
    assert f"--artifacts-destination s3://{bucket}/mlflow (S3 endpoint" in line
    assert expected in line, line
    assert S3_SECRET not in done.stderr + done.stdout
    assert seconds < 30
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert not [key for key in store.keys(BUCKET) if ".mlpipe-probe-" in key]


def test_a_run_through_the_server_lands_in_the_bucket(
    store: Seaweed, server: TeamServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A member without S3 credentials trains, evaluates and plots through the server: the
    run's figures and the registered model are objects in the bucket (listed there, not only
    through MLflow), and `predict` and `mlflow models serve` load the champion from it."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("s3-member")
    workspace = quick_workspace(folder / "ws")
    for stage in ("train", "evaluate", "plot"):
        result = run_stage_process(workspace, stage, **member_env(server))
        assert result.returncode == 0, result.stderr[-3000:]
        assert S3_SECRET not in result.stdout + result.stderr
    run_id = json.loads((workspace / "models/run.json").read_text())["run_id"]
    keys = store.keys(BUCKET, "mlflow/")
    ran = [key for key in keys if f"/{run_id}/artifacts/" in key]
    assert any(key.endswith("figures/accuracy.png") for key in ran), ran
    assert any(key.endswith("/MLmodel") and "/models/" in key for key in keys), keys
    os.environ.update(member_env(server))
    listed = {item.path for item in MlflowClient(server.url).list_artifacts(run_id, "figures")}
    assert "figures/accuracy.png" in listed

    with np.load(workspace / "data/processed/test.npz") as test:
        digits = test["x"][:2]
    drawn_digit().save(workspace / "digit.png")
    predicted = subprocess.run(
        [sys.executable, "-m", "mlpipe.predict", "digit.png", "--json"],
        cwd=workspace,
        env=stage_env(**member_env(server)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 1

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve"),
        *("-m", f"models:/{MODEL}@champion", "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    served = serve(command, workspace, f"{url}/ping", **member_env(server))
    try:
        reply = requests.post(f"{url}/invocations", json={"inputs": digits.tolist()}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["predictions"]).shape == (2, 10)
    finally:
        stop(served)


# The DVC remote in the same bucket (s3://team/dvc), between two clones of one Git repository.


def aws_credentials_file(folder: Path, secret: str = S3_SECRET) -> Path:
    """The member's ~/.aws/credentials, readable by them only."""
    from tests.services import S3_ACCESS_KEY

    path = folder / "aws-credentials"
    path.write_text(
        f"[default]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {secret}\n"
    )
    path.chmod(0o600)
    return path


def in_shell(repo: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A docs/team.md command line as a user types it, DVC on PATH."""
    env = stage_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def clones(
    store: Seaweed, small_repro_world: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Alice's clone ran the pipeline and has the team's S3 remote (endpoint and verify
    committed, her credentials file named in .dvc/config.local); Bob's is a fresh clone."""
    folder = tmp_path_factory.mktemp("s3-clones")
    alice = copy_of(small_repro_world, folder / "alice")
    committed = in_shell(
        alice,
        f"dvc remote add -d team s3://{BUCKET}/dvc"
        f" && dvc remote modify team endpointurl {store.endpoint}"
        " && dvc remote modify team verify true"
        f" && dvc remote modify --local team credentialpath {aws_credentials_file(folder)}",
    )
    assert committed.returncode == 0, committed.stderr
    run_git(alice, "commit", "-q", "-am", "Team DVC remote on S3")
    bare = folder / "team.git"
    run_git(folder, "clone", "-q", "--bare", str(alice), str(bare))
    run_git(alice, "remote", "add", "origin", str(bare))
    pushed = dvc(alice, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    bob = folder / "bob"
    run_git(folder, "clone", "-q", str(bare), str(bob))
    return {"alice": alice, "bob": bob, "folder": folder}


def bob_env(store: Seaweed) -> dict[str, str]:
    """Bob's credentials the other AWS way: the environment (no endpoint: it is committed)."""
    return {k: v for k, v in store.env().items() if k.startswith("AWS_")}


def test_results_travel_through_s3(store: Seaweed, clones: dict[str, Path]) -> None:
    alice, bob = clones["alice"], clones["bob"]
    assert store.keys(BUCKET, "dvc/files/md5/"), "dvc push put nothing in the bucket"
    assert S3_SECRET not in (alice / ".dvc/config").read_text()
    assert (alice / ".dvc/config.local").stat().st_mode & 0o777 == 0o600
    assert S3_SECRET not in (alice / ".dvc/config.local").read_text()
    checked = check_remote(alice, **no_aws_files(clones["folder"]))  # her credentialpath
    assert checked.returncode == 0, checked.stderr
    assert f"DVC remote 'team' s3://{BUCKET}/dvc" in checked.stderr and "writable" in checked.stderr
    pulled = dvc(bob, "pull", **bob_env(store))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    result = dvc(bob, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage" not in result.stdout
    shown = [dvc(clone, "metrics", "show", "--json").stdout for clone in (alice, bob)]
    assert json.loads(shown[0]) == json.loads(shown[1])
    assert (alice / "models/model.keras").read_bytes() == (bob / "models/model.keras").read_bytes()
    assert S3_SECRET not in pulled.stdout + pulled.stderr + result.stdout + result.stderr


def test_experiments_and_the_run_cache_travel_through_s3(
    store: Seaweed, server: TeamServer, clones: dict[str, Path]
) -> None:
    """Alice's queue of two experiments runs through the team server, each run's artifacts in
    the bucket; one goes to the bucket with `dvc exp push`, the stage runs with
    `dvc push --run-cache`. Bob pulls the experiment, and his `dvc exp run --pull` of the same
    params restores its trained model instead of training (evaluate runs again, against
    Alice's run on the server)."""
    alice, bob = clones["alice"], clones["bob"]
    names = run_queue_of_two(alice, **member_env(server))
    ran = experiment_data(alice)
    keys = store.keys(BUCKET, "mlflow/")
    for name in names:
        run_id = ran[name]["metrics"]["reports/metrics.json"]["data"]["mlflow_run_id"]
        assert [key for key in keys if f"/{run_id}/artifacts/" in key], name
    [chosen] = [
        name
        for name in names
        if ran[name]["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.2
    ]
    for pushing in (("exp", "push", "origin", chosen), ("push", "--run-cache")):
        pushed = dvc(alice, *pushing)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert store.keys(BUCKET, "dvc/runs/"), "no run cache in the bucket"
    assert dvc(alice, "exp", "apply", chosen).returncode == 0
    model = (alice / "models/model.keras").read_bytes()

    pulled = dvc(bob, "exp", "pull", "origin", chosen, **bob_env(store))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert chosen in dvc(bob, "exp", "list", "--name-only").stdout
    restored = dvc(bob, "exp", "run", "--pull", "-S", "train.learning_rate=0.2",
                   **bob_env(store), **member_env(server))  # fmt: skip
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert "Stage 'train' is cached - skipping run, checking out outputs" in restored.stdout
    assert (bob / "models/model.keras").read_bytes() == model


def small_repo(folder: Path, store: Seaweed) -> tuple[Path, str]:
    """A Git and DVC repository with the team's S3 remote as docs/team.md sets it, and one
    tracked file of its own content, not pushed yet: the repository and the file's S3 key."""
    import hashlib

    folder.mkdir()
    run_git(folder, "init", "-q")
    made = in_shell(
        folder,
        f"dvc init -q && dvc remote add -d team s3://{BUCKET}/dvc"
        f" && dvc remote modify team endpointurl {store.endpoint}"
        " && dvc remote modify team verify true",
    )
    assert made.returncode == 0, made.stderr
    content = f"notes of {folder}\n".encode()
    (folder / "notes.txt").write_bytes(content)
    added = dvc(folder, "add", "notes.txt")
    assert added.returncode == 0, added.stderr
    digest = hashlib.md5(content).hexdigest()
    return folder, f"dvc/files/md5/{digest[:2]}/{digest[2:]}"


def check_remote(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """docs/team.md's `python -m mlpipe.team check-remote`, in `repo`."""
    return subprocess.run(
        [sys.executable, "-m", "mlpipe.team", "check-remote"],
        cwd=repo,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


S3_REFUSALS = {
    "wrong secret": (
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        "S3 refused the credentials (SignatureDoesNotMatch)",
    ),
    "unknown key": (
        {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY00000"},
        "S3 refused the credentials (InvalidAccessKeyId)",
    ),
    "read-only key": (
        {"AWS_ACCESS_KEY_ID": S3_READER_KEY, "AWS_SECRET_ACCESS_KEY": S3_READER_SECRET},
        "these credentials may not write and delete objects in bucket 'team' (AccessDenied)",
    ),
}


@pytest.mark.parametrize("fault", S3_REFUSALS)
def test_a_push_s3_refuses_fails_in_seconds_and_check_remote_names_why(
    fault: str, store: Seaweed, tmp_path: Path
) -> None:
    """`dvc push` fails in bounded time, claims nothing, puts nothing in the bucket and shows
    no secret, but says only "Forbidden" (S3's HEAD answers carry no reason); `team
    check-remote` with the same credentials names the fault and the fix in one line."""
    repo, key = small_repo(tmp_path / "repo", store)
    env = {**bob_env(store), **S3_REFUSALS[fault][0], **no_aws_files(tmp_path)}
    started = time.monotonic()
    pushed = dvc(repo, "push", **env)
    assert time.monotonic() - started < 60
    assert pushed.returncode != 0
    assert "1 file pushed" not in pushed.stdout + pushed.stderr
    assert key not in store.keys(BUCKET, "dvc/")
    checked = check_remote(repo, **env)
    assert checked.returncode == 1, checked.stderr
    [line] = error_lines(checked.stderr)
    assert f"DVC remote 'team' s3://{BUCKET}/dvc (S3 endpoint {store.endpoint})" in line, line
    assert S3_REFUSALS[fault][1] in line, line
    for said in (pushed.stdout + pushed.stderr, checked.stdout + checked.stderr):
        assert S3_SECRET not in said and S3_READER_SECRET not in said


@pytest.mark.reliability
def test_a_damaged_object_in_the_bucket_is_never_checked_out(
    store: Seaweed, tmp_path: Path
) -> None:
    """With `verify true` (docs/team.md), `dvc pull` refuses an object whose bytes no longer
    match its hash, and the workspace never gets it; repaired, the same pull completes."""
    repo, key = small_repo(tmp_path / "repo", store)
    assert dvc(repo, "push", **bob_env(store)).returncode == 0
    original = (repo / "notes.txt").read_bytes()
    shutil.rmtree(repo / ".dvc/cache")
    (repo / "notes.txt").unlink()
    client = store.client()
    client.put_object(Bucket=BUCKET, Key=key, Body=original[:-4] + b"\0" * 4)
    pulled = dvc(repo, "pull", **bob_env(store))
    assert pulled.returncode != 0, pulled.stdout
    assert not (repo / "notes.txt").exists()
    client.put_object(Bucket=BUCKET, Key=key, Body=original)
    again = dvc(repo, "pull", **bob_env(store))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (repo / "notes.txt").read_bytes() == original


@pytest.mark.reliability
def test_the_store_down_is_named_and_the_same_commands_complete_once_it_is_back(
    store: Seaweed, server: TeamServer, tmp_path: Path
) -> None:
    """S3 stopped (killed) under the running team server and a `dvc push`: train fails in one
    line naming the server's artifact store (not its database) and leaves no output; the push
    fails in bounded time and claims nothing. Once S3 is back the same commands complete, and
    what they made is in the bucket. (One outage for both: a restart costs seconds.)"""
    from concurrent.futures import ThreadPoolExecutor

    workspace = quick_workspace(tmp_path / "ws")
    repo, key = small_repo(tmp_path / "repo", store)
    store.stop()
    try:
        with ThreadPoolExecutor(2) as both:
            training = both.submit(run_stage_process, workspace, "train", **member_env(server))
            started = time.monotonic()
            failed_push = dvc(repo, "push", **bob_env(store))
            push_seconds = time.monotonic() - started
            failed_train = training.result()
    finally:
        store.start()
    assert failed_train.returncode == 1, failed_train.stderr[-3000:]
    [line] = error_lines(failed_train.stderr)
    assert "could not store or read an artifact" in line and "artifact store" in line, line
    assert "database" not in line
    assert files_under(workspace / "models") == []
    assert failed_push.returncode != 0, failed_push.stdout
    assert push_seconds < 120
    assert "1 file pushed" not in failed_push.stdout + failed_push.stderr

    result = run_stage_process(workspace, "train", **member_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads((workspace / "models/run.json").read_text())["run_id"]
    assert [key for key in store.keys(BUCKET, "mlflow/") if f"/{run_id}/artifacts/" in key]
    pushed = dvc(repo, "push", **bob_env(store))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "1 file pushed" in pushed.stdout
    assert key in store.keys(BUCKET, "dvc/")


def test_no_file_these_tests_made_holds_a_secret(
    store: Seaweed, cluster: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Last: every file the module's tests left (workspaces, MLflow stores and runs, DVC
    configs and caches, the team server's log, the PostgreSQL data behind MLflow, the S3
    server's log and objects) is searched for the secrets; only the credential files the
    tests wrote on purpose may hold them."""
    secrets = [S3_SECRET.encode(), S3_READER_SECRET.encode()]
    on_purpose = {"aws-credentials", "s3.json"}
    defined = (REPO / "tests/services.py").read_bytes()  # copied with the project's files
    here = [name[:30] for name in globals() if name.startswith("test_")]  # pytest's tmp names
    made = [
        folder
        for folder in tmp_path_factory.getbasetemp().iterdir()
        if folder.name.startswith("s3-") or any(folder.name.startswith(name) for name in here)
    ]
    roots = [*made, store.base, cluster.base]
    holding = [
        str(path)
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and path.name not in on_purpose
        and any(secret in path.read_bytes() for secret in secrets)
        and path.read_bytes() != defined
    ]  # fmt: skip
    assert holding == []
