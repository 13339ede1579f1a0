"""Shared fixtures: an isolated environment, a scratch workspace, a way to run stages."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import chdir, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIRROR = REPO.parent / "shared" / "data"
HAS_MIRROR = (MIRROR / "mnist.npz").is_file()
needs_mirror = pytest.mark.skipif(
    not HAS_MIRROR, reason=f"real MNIST mirror not found at {MIRROR} (../shared/data)"
)


@pytest.fixture(autouse=True)
def isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No test sees the user's Keras cache, data mirror, tracking store or DVC experiment, nor
    what an earlier test's in-process stage left: MLflow's store URIs (which it also exports as
    environment variables, for subprocesses to inherit) are forgotten after each test."""
    import mlflow

    saved = dict(os.environ)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    for name in ISOLATED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("mlpipe.data.http_fetch.BACKOFF_S", 0.01)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder laid out like the repository root, with the default params.yaml."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


ISOLATED_VARIABLES = (
    "DATA_MIRROR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    # The user's own S3 credentials and endpoints: the S3 tests set their server's.
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
)


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARIABLES}
    env["PYTHONPATH"] = str(REPO)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


@dataclass
class StageResult:
    """How a stage run ended, as a subprocess would report it."""

    returncode: int
    stdout: str
    stderr: str


@contextmanager
def environment(**env: str) -> Iterator[None]:
    """`stage_env(**env)` as this process's environment for a while, then exactly as before."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(stage_env(**env))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def forget_mlflow_state() -> None:
    """What a new process would not have: MLflow's artifact locations cached per run id (a
    copied workspace has the same run ids at another place) and its pooled connections."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()
    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()


def run_stage(workspace: Path, name: str, **env: str) -> StageResult:
    """Run stage `name` on `workspace` in this process, as `python -m stages.<name>` would.

    The stage gets the workspace's layout and the given environment; what it prints and logs
    is captured; its exit code is what `python -m` would exit with. TensorFlow is imported
    once per test session, not once per stage.
    """
    from mlpipe.paths import Layout
    from mlpipe.runner import execute

    module = importlib.import_module(f"stages.{name}")
    forget_mlflow_state()
    out, err = io.StringIO(), io.StringIO()
    with chdir(workspace), environment(**env), redirect_stdout(out), redirect_stderr(err):
        code = execute(name, lambda: module.main(Layout(workspace.resolve())))
    return StageResult(code, out.getvalue(), err.getvalue())


def run_stage_process(
    workspace: Path, name: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m stages.<name>` in `workspace` as DVC would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=workspace,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_predict(workspace: Path, *args: str, **env: str) -> StageResult:
    """`python -m mlpipe.predict ARGS` from `workspace`, in this process."""
    from mlpipe import predict
    from mlpipe.paths import Layout

    forget_mlflow_state()
    out, err = io.StringIO(), io.StringIO()
    with chdir(workspace), environment(**env), redirect_stdout(out), redirect_stderr(err):
        try:
            code = predict.main(list(args), layout=Layout(workspace.resolve()))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return StageResult(code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def files_under(folder: Path) -> list[str]:
    """Every file below `folder`, hidden temp files included, relative and sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def project_copy(destination: Path) -> Path:
    """A fresh git repository holding the project's files, as a clone of main would.

    Files git would track (committed or not yet) are copied; ignored ones (data, models,
    the virtual environment, mlflow.db) are not.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # What `make setup` adds beside the tracked files: the offline page template for plots,
    # and the clone's own DVC setting that names it.
    for name in ("plots/offline.html", "config.local"):
        made = REPO / ".dvc" / name
        if made.is_file():
            (destination / ".dvc" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(made, destination / ".dvc" / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=destination, check=True)
    return destination


def dvc(
    workspace: Path, *args: str, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the DVC command line in `workspace`, with this interpreter's tools on PATH."""
    environment = stage_env(**env)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["GIT_AUTHOR_NAME"] = environment["GIT_COMMITTER_NAME"] = "test"
    environment["GIT_AUTHOR_EMAIL"] = environment["GIT_COMMITTER_EMAIL"] = "test@example.com"
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def experiment_data(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's name -> its data (params, metrics)."""
    shown = dvc(repo, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    found = {}
    for baseline in json.loads(shown.stdout):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                name = revision.get("name") or experiment.get("name")
                found[name] = revision.get("data") or {}
    return found


def run_queue_of_two(repo: Path, **env: str) -> set[str]:
    """Queue two learning rates, run them with `dvc queue start -j 2`, wait; their names."""
    import time

    queued = dvc(repo, "exp", "run", "--queue", "-S", "train.learning_rate=0.05,0.2", **env)
    assert queued.returncode == 0, queued.stderr
    started = dvc(repo, "queue", "start", "-j", "2", **env)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    dvc(repo, "queue", "stop")
    assert status.count("Success") == 2, status
    return {line.split()[1] for line in status.splitlines() if "Success" in line}


def script_module(name: str):
    """A file of scripts/ (scripts, not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_chromium() -> None:
    """Skip (fail under CI, whose script installs them) without Debian's Chromium and driver."""
    script = script_module("ui_screenshots")
    missing = [p for p in (script.CHROMIUM, script.CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)


def headless_browser():
    """Debian's headless Chromium through scripts/ui_screenshots.py's settings."""
    require_chromium()
    return script_module("ui_screenshots").browser()


# A training run small enough for a test: two epochs of a 16-unit network on tiny data.
QUICK = {"train__epochs": 2, "train__batch_size": 16, "model__hidden_units": [16]}


def quick_workspace(folder: Path) -> Path:
    """A new workspace at `folder` with tiny processed data and QUICK training params."""
    from tests.fakes import set_params, write_processed

    folder.mkdir()
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    write_processed(folder)
    set_params(folder, **QUICK)
    return folder


def real_workspace(folder: Path, **params: object) -> Path:
    """A new workspace at `folder` with real MNIST from the mirror, preprocessed with `params`
    (section__key=value, e.g. preprocess__train_fraction=0.1 for a stratified subset)."""
    from tests.fakes import set_params

    if not HAS_MIRROR:
        pytest.skip(f"real MNIST mirror not found at {MIRROR} (../shared/data)")
    folder.mkdir()
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    set_params(folder, **params)
    for name in ("download", "preprocess"):
        result = run_stage(folder, name, DATA_MIRROR=str(MIRROR))
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


# Worlds: each is built once per test session, and every test that writes works on a copy of
# it (`copy_of`). Building one means training (seconds each, many tests need one).


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace (a git repository, its params committed) where train ran on tiny data."""
    workspace = quick_workspace(tmp_path_factory.mktemp("trained") / "ws")
    run_git(workspace, "init", "-q")
    run_git(workspace, "add", "params.yaml")
    run_git(workspace, "commit", "-q", "-m", "params")
    result = run_stage(workspace, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace


@pytest.fixture(scope="session")
def evaluated_world(trained_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained world after evaluate, which made its model the champion."""
    workspace = copy_of(trained_world, tmp_path_factory.mktemp("evaluated") / "ws")
    result = run_stage(workspace, "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no version held champion" in result.stderr
    return workspace


@pytest.fixture(scope="session")
def complete_world(evaluated_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluated world after plot: every stage has run once."""
    workspace = copy_of(evaluated_world, tmp_path_factory.mktemp("complete") / "ws")
    result = run_stage(workspace, "plot")
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace


def copy_of(world: Path, destination: Path, *, follow: bool = True) -> Path:
    """A copy of a world at `destination`, as `cp -a` makes it; with `follow`, its store already
    points at the copy's own artifacts, as the next writing stage would make it."""
    from mlpipe.tracking.relocation import relocate

    copy = Path(shutil.copytree(world, destination, symlinks=True))
    forget_mlflow_state()
    if follow and (copy / "mlflow.db").exists():
        relocate(copy / "mlflow.db")
    return copy


@pytest.fixture
def trained(trained_world: Path, tmp_path: Path) -> Path:
    """A test's own copy of the trained world."""
    return copy_of(trained_world, tmp_path / "trained")


@pytest.fixture
def evaluated(evaluated_world: Path, tmp_path: Path) -> Path:
    """A test's own copy of the evaluated world."""
    return copy_of(evaluated_world, tmp_path / "evaluated")


@pytest.fixture
def complete(complete_world: Path, tmp_path: Path) -> Path:
    """A test's own copy of the complete world."""
    return copy_of(complete_world, tmp_path / "complete")


SMALL_REPRO = {"preprocess__train_fraction": 0.05, "train__epochs": 2}


@pytest.fixture(scope="session")
def small_repro_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the project where `dvc repro` ran on 5% of real MNIST for 2 epochs, its
    results committed: the DVC-level tests start from copies of it."""
    from tests.fakes import set_params

    if not HAS_MIRROR:
        pytest.skip(f"real MNIST mirror not found at {MIRROR} (../shared/data)")
    repo = project_copy(tmp_path_factory.mktemp("small-repro") / "repo")
    set_params(repo, **SMALL_REPRO)
    result = dvc(repo, "repro", DATA_MIRROR=str(MIRROR))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (repo.parent / "repro.log").write_text(result.stdout + result.stderr)  # what DVC said
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "baseline")
    return repo


@pytest.fixture
def small_repro(small_repro_world: Path, tmp_path: Path) -> Path:
    """A test's own copy of the small repro (its DVC cache and MLflow store with it)."""
    return copy_of(small_repro_world, tmp_path / "repo")


def client_for(workspace: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_git(repo: Path, *args: str) -> str:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(
        [*git, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def long_training(workspace: Path, **env: str) -> subprocess.Popen[str]:
    """Start a train stage that would run for minutes; return once its second epoch ended.

    Its own process group, so a test can signal the stage and everything it started.
    """
    from tests.fakes import set_params, write_processed

    write_processed(workspace, n=600)
    set_params(workspace, train__epochs=500, train__batch_size=8, model__hidden_units=[16])
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=workspace,
        env=stage_env(**env),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "epoch 2/500" in line:
            return process
    process.wait()
    pytest.fail("training ended before its second epoch:\n" + "".join(seen)[-3000:])


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(
    command: list[str],
    cwd: Path,
    health_url: str,
    timeout: float = 120,
    log: Path | None = None,
    **env: str,
) -> subprocess.Popen:
    """Start a server (its own process group) and wait until `health_url` answers 200; its
    output goes to `log`, if given."""
    import time

    import requests

    environment = stage_env(**env)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    with open(log or os.devnull, "ab") as output:
        server = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # servers fork workers: stop the whole group at the end
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{' '.join(command[:4])} exited with {server.returncode} before answering")
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            time.sleep(0.5)
    stop(server)
    pytest.fail(f"{' '.join(command[:4])} did not answer {health_url} within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """Stop a server started by `serve`, and its workers."""
    import signal

    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
