"""train.distribution: the plan read from params and the environment, the data shards, and
real jobs (mirrored on this CPU; two processes on 127.0.0.1, one of them killed)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlpipe.config import TrainParams
from mlpipe.errors import ConfigError
from mlpipe.model import distribution
from mlpipe.model.distribution import DistributionError, Role, plan, shard
from tests.conftest import (
    REPO,
    client_for,
    error_lines,
    files_under,
    free_port,
    needs_mirror,
    quick_workspace,
    real_workspace,
    run_stage,
    stage_env,
)
from tests.fakes import set_params

DEFAULTS = TrainParams(
    optimizer="sgd",
    learning_rate=0.01,
    momentum=0.0,
    loss="categorical_crossentropy",
    batch_size=500,
    epochs=20,
    early_stopping_patience=0,
    loop="fit",
    distribution="multi_worker",
)
JOB = {
    "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
    "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
    "KERAS_DISTRIBUTION_PROCESS_ID": "1",
}


def planned(environ: dict[str, str] = JOB, backend: str = "jax", **changes: object) -> Role:
    return plan(DEFAULTS.model_copy(update=changes), backend, environ)


def test_a_worker_takes_its_role_from_the_environment() -> None:
    role = planned()
    assert role == Role("multi_worker", 1, 2, "10.0.0.1:1234,10.0.0.2:1234")
    assert not role.chief
    assert planned({**JOB, "KERAS_DISTRIBUTION_PROCESS_ID": "0"}).chief
    # The coordinator alone is enough, as for Keras and JAX.
    alone = planned({**JOB, "KERAS_DISTRIBUTION_JOB_ADDRESSES": " [::1]:80 "})
    assert alone.job_addresses == "[::1]:80"


def test_none_and_mirrored_need_no_environment() -> None:
    assert planned({}, distribution="none") == Role("none")
    assert planned({}, backend="tensorflow", distribution="mirrored") == Role("mirrored")


def test_scan_with_a_distribution_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match=r"train\.loop scan trains on one device in one process"):
        DEFAULTS.model_validate({**DEFAULTS.model_dump(), "loop": "scan"})


def test_none_warns_when_a_job_environment_is_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mlpipe.model.distribution"):
        assert planned(distribution="none").chief
    assert "_PROCESS_ID set but train.distribution is none: this process trains alone" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("environ", "backend", "changes", "expected"),
    [
        (JOB, "tensorflow", {}, "multi_worker needs KERAS_BACKEND=jax (got tensorflow)"),
        ({}, "torch", {"distribution": "mirrored"}, "mirrored needs KERAS_BACKEND tensorflow"),
        (
            {k: v for k, v in JOB.items() if "PROCESS_ID" not in k},
            "jax",
            {},
            "KERAS_DISTRIBUTION_PROCESS_ID not set",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_PROCESS_ID": "2"},
            "jax",
            {},
            "KERAS_DISTRIBUTION_PROCESS_ID must be an integer from 0 to 1 (got '2')",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_PROCESS_ID": "-1"},
            "jax",
            {},
            "KERAS_DISTRIBUTION_PROCESS_ID must be an integer from 0 to 1 (got '-1')",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_NUM_PROCESSES": "two"},
            "jax",
            {},
            "KERAS_DISTRIBUTION_NUM_PROCESSES must be an integer from 1 to 4096 (got 'two')",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_NUM_PROCESSES": "4"},
            "jax",
            {},
            "KERAS_DISTRIBUTION_JOB_ADDRESSES must name the coordinator or all 4 processes",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:70000"},
            "jax",
            {},
            "entries must be host:port with a port from 1 to 65535 (got '10.0.0.1:70000')",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_JOB_ADDRESSES": "http://10.0.0.1:80"},
            "jax",
            {},
            "entries must be host:port",
        ),
        (
            {**JOB, "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234"},
            "jax",
            {"batch_size": 501},
            "train.batch_size must be divisible by the 2 processes of the job",
        ),
    ],
    ids=[
        "multi-worker-on-tensorflow",
        "mirrored-on-torch",
        "process-id-missing",
        "process-id-too-high",
        "process-id-negative",
        "process-count-not-a-number",
        "address-count",
        "port-out-of-range",
        "address-not-host-port",
        "batch-not-divisible",
    ],
)
def test_a_job_it_cannot_run_is_refused_naming_the_key(
    environ: dict[str, str], backend: str, changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        planned(environ, backend, **changes)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("rows", "processes", "devices"), [(10, 1, 1), (103, 2, 1), (103, 3, 4)])
def test_shards_are_equal_disjoint_and_cover_all_but_a_remainder(
    rows: int, processes: int, devices: int
) -> None:
    x = np.arange(rows)
    shares = [
        shard({"train": (x, x * 10)}, Role("multi_worker", index, processes, "h:1"), devices)
        for index in range(processes)
    ]
    sizes = {len(share["train"][0]) for share in shares}
    assert len(sizes) == 1 and sizes.pop() % devices == 0
    seen = np.concatenate([share["train"][0] for share in shares])
    assert len(np.unique(seen)) == len(seen)
    assert rows - len(seen) < processes * devices
    for share in shares:
        images, labels = share["train"]
        np.testing.assert_array_equal(labels, images * 10)  # images and labels stay paired
    if processes == 1 and devices == 1:
        np.testing.assert_array_equal(shares[0]["train"][0], x)


def test_a_split_too_small_for_the_job_is_named() -> None:
    splits = {"train": (np.arange(8), np.arange(8)), "val": (np.arange(3), np.arange(3))}
    with pytest.raises(DistributionError) as refused:
        shard(splits, Role("multi_worker", 0, 2, "h:1"), 2)
    assert str(refused.value).startswith(
        "data/processed/val.npz: 3 image(s) cannot be shared by 2 process(es) with 2 device(s)"
    )
    assert "preprocess.validation_split" in str(refused.value)


@pytest.mark.parametrize("digits", ["\u0662", "\uff12"])
def test_only_ascii_digits_are_numbers(digits: str) -> None:
    with pytest.raises(ConfigError, match="KERAS_DISTRIBUTION_NUM_PROCESSES must be an integer"):
        planned({**JOB, "KERAS_DISTRIBUTION_NUM_PROCESSES": digits})


def test_the_jax_backend_installs_at_the_locked_versions() -> None:
    """requirements-jax.txt (make setup-jax), the dev lock and docs/distributed.md's GPU line
    agree."""
    text = (REPO / "requirements-jax.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    locked = dict(
        line.split(";")[0].strip().split("==")
        for line in (REPO / "requirements-dev.lock").read_text().splitlines()
        if "==" in line and not line.startswith(" ")
    )
    assert set(pins) == {"jax", "jaxlib"}
    assert pins == {name: locked[name] for name in pins}
    gpu = f'"jax[cuda12]=={pins["jax"]}"'
    assert gpu in text and gpu in (REPO / "docs" / "distributed.md").read_text()


def test_the_docs_quote_the_distribution_benchmark() -> None:
    """docs/distributed.md's figures are benchmarks/DISTRIBUTION.md's, row for row."""
    measured = (REPO / "benchmarks" / "DISTRIBUTION.md").read_text()
    readme = (REPO / "docs" / "distributed.md").read_text()
    rows = [line for line in measured.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5  # a header and four setups
    for row in rows[1:]:
        distribution, backend, processes, epoch_s, _, _, accuracy = (
            cell.strip() for cell in row.strip("|").split("|")
        )
        quoted = f"| {distribution} | {backend} | {processes} | {epoch_s} | {accuracy} |"
        assert quoted in readme


# Real jobs -----------------------------------------------------------------------------------

JOB_TIMEOUT_S = 240


def start_process(
    workspace: Path, process_id: int, processes: int, port: int, **env: str
) -> subprocess.Popen[str]:
    """`python -m stages.train` as process `process_id` of a job on 127.0.0.1:`port`."""
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=workspace,
        env=stage_env(
            KERAS_BACKEND="jax",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes),
            KERAS_DISTRIBUTION_PROCESS_ID=str(process_id),
            **env,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Wait for every process; their exit codes and standard errors."""
    ended = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"a process of the job hung: {err[-3000:]}")
        ended.append((process.returncode, err))
    return ended


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in files_under(folder)}


def runs_of(workspace: Path) -> list:
    client = client_for(workspace)
    experiment = client.get_experiment_by_name("keras-tutorial")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


EPOCHS = 20  # the tutorial's: at 10, two runs of the same training differed by 0.011


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a stratified quarter of real MNIST, preprocessed."""
    folder = tmp_path_factory.mktemp("subset") / "ws"
    return real_workspace(folder, preprocess__train_fraction=0.25, train__epochs=EPOCHS)


def copy_of(workspace: Path, destination: Path, **params: object) -> Path:
    copy = Path(shutil.copytree(workspace, destination))
    set_params(copy, **params)
    return copy


def last_epoch(workspace: Path) -> dict[str, float]:
    import pandas as pd

    return pd.read_csv(workspace / "reports" / "history.csv").iloc[-1].to_dict()


@pytest.mark.slow
@needs_mirror
def test_mirrored_on_this_cpu_trains_as_none(subset: Path, tmp_path: Path) -> None:
    results = {}
    for kind in ("none", "mirrored"):
        workspace = copy_of(subset, tmp_path / kind, train__distribution=kind)
        result = run_stage(workspace, "train")
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = runs_of(workspace)
        assert run.data.params["train.distribution"] == kind
        assert run.data.params["distribution.num_devices"] == "1"
        results[kind] = last_epoch(workspace)["val_accuracy"]
    assert abs(results["mirrored"] - results["none"]) <= 0.01, results


@pytest.mark.slow
@needs_mirror
def test_two_processes_train_as_one_and_only_process_0_writes(subset: Path, tmp_path: Path) -> None:
    alone = copy_of(subset, tmp_path / "alone")
    result = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=alone,
        env=stage_env(KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Two "hosts": each its own clone of the workspace; the same command, roles from the env.
    chief = copy_of(subset, tmp_path / "host0", train__distribution="multi_worker")
    worker = copy_of(subset, tmp_path / "host1", train__distribution="multi_worker")
    worker_before = snapshot(worker)
    port = free_port()
    ended = finish([start_process(chief, 0, 2, port), start_process(worker, 1, 2, port)])
    for code, err in ended:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err and error_lines(err) == []

    assert snapshot(worker) == worker_before  # process 1 wrote nothing, made no store
    (run,) = runs_of(chief)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.distribution"] == "multi_worker"
    assert params["distribution.num_processes"] == "2"
    assert params["distribution.num_devices"] == "2"
    assert params["distribution.global_batch_size"] == params["train.batch_size"] == "500"
    client = client_for(chief)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in history] == list(range(1, EPOCHS + 1))
    versions = client.search_model_versions("name='keras-tutorial-mnist'")
    assert [version.run_id for version in versions] == [run.info.run_id]
    assert (chief / "models" / "model.keras").is_file()

    together, single = last_epoch(chief)["val_accuracy"], last_epoch(alone)["val_accuracy"]
    assert abs(together - single) <= 0.01, (together, single)
    assert history[-1].value == pytest.approx(together)


@pytest.mark.slow
def test_sigterm_to_process_0_stops_the_job_within_bounds(tmp_path: Path) -> None:
    """The job level's interruption: process 0 ends as any stage does (143, its run KILLED, no
    output); process 1 stops at its next exchange with one line and writes nothing."""
    workspaces = [quick_workspace(tmp_path / f"host{index}") for index in (0, 1)]
    for workspace in workspaces:
        set_params(workspace, train__distribution="multi_worker", train__epochs=5000)
    worker_before = snapshot(workspaces[1])
    port = free_port()
    chief, worker = (start_process(workspaces[index], index, 2, port) for index in (0, 1))
    watchdog = threading.Timer(JOB_TIMEOUT_S, worker.kill)  # the loop below must not hang
    watchdog.start()
    seen = ""
    for line in worker.stderr:  # every process logs each epoch; strike once training runs
        seen += line
        if "epoch 3/" in line:
            break
    else:
        pytest.fail(f"process 1 never trained: {seen[-3000:]}")
    chief.send_signal(signal.SIGTERM)
    struck_at = time.monotonic()
    try:
        rest = worker.stderr.read()
        worker.wait(timeout=60)
        _, chief_err = chief.communicate(timeout=60)
    finally:
        watchdog.cancel()
        for process in (chief, worker):
            process.kill()
            process.communicate()
    # About a second when a peer's connection closes; the bound leaves room for a busy machine.
    assert time.monotonic() - struck_at < 20, (rest[-1500:], chief_err[-1500:])
    assert chief.returncode == 143, chief_err[-3000:]
    assert "terminated; no output was left half-written" in chief_err
    assert worker.returncode == 1, (seen + rest)[-3000:]
    (line,) = error_lines(rest)
    assert line.startswith("error: process 1 of 2 stopped training:"), line
    assert "Traceback" not in rest
    (run,) = runs_of(workspaces[0])
    assert run.info.status == "KILLED"
    assert not (workspaces[0] / "models" / "model.keras").exists()
    assert snapshot(workspaces[1]) == worker_before


# Refusals and waits of a job, as functions: no job is started for them.


def blocking_keras(released: threading.Event) -> SimpleNamespace:
    """Keras whose `distribution.initialize` waits, as JAX's does until every process joined."""
    return SimpleNamespace(
        distribution=SimpleNamespace(initialize=lambda *args: released.wait(JOB_TIMEOUT_S))
    )


WAITING = Role("multi_worker", 1, 2, "127.0.0.1:9")


@pytest.mark.parametrize(("how", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_process_waiting_for_the_job_stops_on_a_signal(how: int, code: int) -> None:
    """The join runs in a thread: the stage's main thread still hears Ctrl-C and SIGTERM."""
    from mlpipe.runner import execute

    released = threading.Event()
    threading.Timer(0.5, os.kill, (os.getpid(), how)).start()
    started = time.monotonic()
    try:
        ended = execute("train", lambda: distribution._join(blocking_keras(released), WAITING))
    finally:
        released.set()
    assert ended == code
    assert time.monotonic() - started < 10


def test_a_job_that_never_assembles_ends_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded before JAX's own native abort, with the coordinator's address named."""
    monkeypatch.setattr(distribution, "JOIN_TIMEOUT_S", 1.0)
    released = threading.Event()
    try:
        with pytest.raises(DistributionError) as refused:
            distribution._join(blocking_keras(released), WAITING)
    finally:
        released.set()
    said = str(refused.value)
    assert "process 1 of 2: the job did not assemble within 1 s at 127.0.0.1:9" in said
    assert "start all 2 processes with the same KERAS_DISTRIBUTION_JOB_ADDRESSES" in said


def test_a_coordinator_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        role = Role("multi_worker", 0, 2, f"127.0.0.1:{port}")
        with pytest.raises(DistributionError) as refused:
            distribution._check_port_free(role)
    said = str(refused.value)
    assert f"process 0 of 2 cannot serve the job on port {port}" in said
    assert "Address already in use" in said


def test_processes_with_other_params_refuse_to_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process shares a fingerprint of its params and data; any that differs is named."""
    multihost_utils = pytest.importorskip("jax.experimental.multihost_utils")
    shared = []

    def gather(mine: np.ndarray) -> np.ndarray:
        other = np.roll(mine, 1)  # what a process with other params would send
        shared.append(mine)
        return np.stack([mine, other, mine])

    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    role = Role("multi_worker", 0, 3, "127.0.0.1:9")
    with pytest.raises(DistributionError) as refused:
        distribution.check_same_job(role, '[{"base.seed": 1}, "digest"]')
    assert "process(es) 1 of the job have other params or data than process 0" in str(refused.value)
    distribution.check_same_job(Role("none"), "alone")  # one process: nothing to compare
    assert len(shared) == 1


def test_a_lost_peer_during_training_is_one_line_and_fails_the_run() -> None:
    """JAX's failed collective, when a peer is gone, becomes this process's one-line error
    (the stage then ends its run FAILED, as for any error, and writes no output)."""
    engine = distribution.Engine(Role("multi_worker", 0, 2, "h:1"), 2, 1, nullcontext)
    with pytest.raises(DistributionError) as lost, engine.training():
        raise RuntimeError("UNAVAILABLE: connection to process 1 closed\nmore detail")
    said = str(lost.value)
    assert said.startswith("process 0 of 2 stopped training: UNAVAILABLE: connection to")
    assert "\n" not in said
    alone = distribution.Engine(Role("none"), 1, 1, nullcontext)
    with pytest.raises(RuntimeError), alone.training():
        raise RuntimeError("a bug, not a lost peer")
