"""Training beyond one process: which distribution `train.distribution` asks for, this
process's part in it, and Keras 3's engine that runs it.

- `none`: one process, Keras's default device (today's behaviour).
- `mirrored`: every local device of one machine; TensorFlow's `MirroredStrategy`, or Keras's
  `DataParallel` on the JAX backend.
- `multi_worker`: several processes or hosts, on the JAX backend, joined by
  `keras.distribution.initialize` from `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
  `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID` (the same command on
  every host; the role comes from the environment). Each process feeds its own equal shard
  of the data; `train.batch_size` stays the global batch. Process 0 is the chief: only it
  writes the stage's outputs and talks to MLflow.

The plan (`plan`) is read from params and the environment before any heavy import, so a bad
setting fails in a second; the engine (`start`) needs Keras.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from mlpipe.config import DISTRIBUTIONS, TrainParams
from mlpipe.data.splits import Split
from mlpipe.errors import ConfigError, PipelineError, first_line

log = logging.getLogger(__name__)

ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENVIRONMENT = (ADDRESSES, PROCESSES, PROCESS_ID)
MAX_PROCESSES = 4096
# How long a process waits for the whole job to join. JAX's own limit (300 s) ends in a native
# abort with a stack trace; this one, a little earlier, in one line.
JOIN_TIMEOUT_S = 280.0
README_SECTION = "docs/distributed.md"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


class DistributionError(PipelineError):
    """A multi-process job could not start, or lost one of its processes."""


@dataclass(frozen=True)
class Role:
    """This process's part in the training job."""

    distribution: Literal[DISTRIBUTIONS]
    process_id: int = 0
    num_processes: int = 1
    job_addresses: str | None = None

    @property
    def chief(self) -> bool:
        """Whether this process writes the outputs and the MLflow run (process 0)."""
        return self.process_id == 0

    @property
    def coordinator(self) -> str:
        """`host:port` of process 0, which serves the job (the first address)."""
        return (self.job_addresses or "").split(",")[0]

    @property
    def label(self) -> str:
        return f"process {self.process_id} of {self.num_processes}"


def plan(params: TrainParams, backend: str, environ: Mapping[str, str]) -> Role:
    """This process's role, from `train.distribution`, the Keras backend and the environment.

    Raises ConfigError naming the key or variable when the backend or the environment cannot
    give the training loop or the distribution asked for (`train.loop scan` with a
    distribution is refused by the config).
    """
    if params.loop == "scan" and backend != "jax":
        raise ConfigError(
            f"params.yaml: train.loop scan needs KERAS_BACKEND=jax (got {backend}); use loop fit"
        )
    wanted = params.distribution
    if wanted == "none":
        if any(environ.get(name) for name in ENVIRONMENT):
            log.warning(
                "%s set but train.distribution is none: this process trains alone "
                "(set train.distribution multi_worker to join the job)",
                ", ".join(name for name in ENVIRONMENT if environ.get(name)),
            )
        return Role("none")
    if wanted == "mirrored":
        if backend not in ("tensorflow", "jax"):
            raise ConfigError(
                "params.yaml: train.distribution mirrored needs KERAS_BACKEND tensorflow or "
                f"jax (got {backend})"
            )
        return Role("mirrored")
    if backend != "jax":
        raise ConfigError(
            "params.yaml: train.distribution multi_worker needs KERAS_BACKEND=jax (got "
            f"{backend}): TensorFlow's MultiWorkerMirroredStrategy fails inside Keras 3's "
            "model.fit; install the JAX backend (requirements-jax.txt)"
        )
    missing = [name for name in ENVIRONMENT if not environ.get(name, "").strip()]
    if missing:
        raise ConfigError(
            f"train.distribution multi_worker: {', '.join(missing)} not set; every process "
            f"of the job needs {', '.join(ENVIRONMENT)} ({README_SECTION})"
        )
    processes = _integer(environ, PROCESSES, 1, MAX_PROCESSES)
    process_id = _integer(environ, PROCESS_ID, 0, processes - 1)
    addresses = _addresses(environ[ADDRESSES], processes)
    if params.batch_size % processes:
        raise ConfigError(
            f"params.yaml: train.batch_size must be divisible by the {processes} processes of "
            f"the job ({PROCESSES}), each feeding an equal share (got {params.batch_size})"
        )
    return Role("multi_worker", process_id, processes, addresses)


def _integer(environ: Mapping[str, str], name: str, low: int, high: int) -> int:
    text = environ[name].strip()
    if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
        raise ConfigError(
            f"train.distribution multi_worker: {name} must be an integer from {low} to {high} "
            f"(got {text[:40]!r})"
        )
    return int(text)


def _addresses(text: str, processes: int) -> str:
    """`host:port` of the coordinator (process 0), or of every process, comma-separated."""
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) not in (1, processes):
        raise ConfigError(
            f"train.distribution multi_worker: {ADDRESSES} must name the coordinator or all "
            f"{processes} processes ({PROCESSES}), as host:port[,host:port...] "
            f"(got {len(entries)} addresses)"
        )
    for entry in entries:
        found = _HOST_PORT.match(entry)
        if not found or not 1 <= int(found["port"]) <= 65535:
            raise ConfigError(
                f"train.distribution multi_worker: {ADDRESSES} entries must be host:port with "
                f"a port from 1 to 65535 (got {entry[:60]!r})"
            )
    return ",".join(entries)


def shard(splits: dict[str, Split], role: Role, multiple: int = 1) -> dict[str, Split]:
    """This process's share of each split: every `num_processes`-th image from its id.

    Every process gets as many images of a split as every other (a multiple of `multiple`,
    its local device count), so all take the same steps in lockstep; at most
    `num_processes * multiple - 1` images of a split are left out. A process alone on one
    device gets the splits whole.
    """
    shares = {}
    for name, (images, labels) in splits.items():
        rows = len(images) // role.num_processes // multiple * multiple
        if rows == 0:
            raise DistributionError(
                f"data/processed/{name}.npz: {len(images)} image(s) cannot be shared by "
                f"{role.num_processes} process(es) with {multiple} device(s) each; use more "
                "data (preprocess.train_fraction, preprocess.validation_split)"
            )
        step = slice(role.process_id, None, role.num_processes)
        shares[name] = (images[step][:rows], labels[step][:rows])
    return shares


@dataclass(frozen=True)
class Engine:
    """Keras's engine for a role: the scope to build and fit the model in, and its devices."""

    role: Role
    num_devices: int
    num_local_devices: int
    scope: Callable[[], AbstractContextManager]

    @contextmanager
    def training(self) -> Iterator[None]:
        """Fit under the engine; in a multi-process job, a lost peer becomes one line.

        When a process of the job dies, the others' next collective fails at once (its
        connection is closed) with a runtime error from JAX; it is reported as this
        process's failure, so its MLflow run ends FAILED.
        """
        with self.scope():
            try:
                yield
            except (RuntimeError, ValueError) as exc:
                if self.role.num_processes == 1:
                    raise
                raise DistributionError(
                    f"{self.role.label} stopped training: {first_line(exc)} (when a process of "
                    "the job dies or loses its connection the others stop here; its own log "
                    "says why)"
                ) from exc

    def batch_per_process(self, global_batch: int) -> int:
        return global_batch // self.role.num_processes

    def record(self, global_batch: int) -> dict[str, int]:
        """What an MLflow run says about how it was trained."""
        return {
            "distribution.num_processes": self.role.num_processes,
            "distribution.num_devices": self.num_devices,
            "distribution.global_batch_size": global_batch,
        }


def start(role: Role, keras: ModuleType, global_batch: int) -> Engine:
    """Set up Keras for `role` (joining the job for multi_worker); check the global batch."""
    if role.distribution == "none":
        return Engine(role, 1, 1, nullcontext)
    if role.distribution == "mirrored" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        engine = Engine(
            role, strategy.num_replicas_in_sync, strategy.num_replicas_in_sync, strategy.scope
        )
    else:
        import jax

        if role.distribution == "multi_worker":
            log.info("%s: joining the job through %s", role.label, role.coordinator)
            _join(keras, role)
        devices = keras.distribution.list_devices()
        data_parallel = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=role.distribution != "multi_worker"
        )
        engine = Engine(role, len(devices), jax.local_device_count(), data_parallel.scope)
    if global_batch % engine.num_devices:
        raise ConfigError(
            f"params.yaml: train.batch_size must be divisible by the {engine.num_devices} "
            f"devices of train.distribution {role.distribution} (got {global_batch})"
        )
    log.info(
        "train.distribution %s: %d process(es), %d device(s), global batch %d",
        role.distribution,
        role.num_processes,
        engine.num_devices,
        global_batch,
    )
    return engine


def _join(keras: ModuleType, role: Role) -> None:
    """`keras.distribution.initialize`, bounded by JOIN_TIMEOUT_S, and stoppable meanwhile.

    The join runs in a thread: JAX blocks in native code until every process has joined, and
    only the main thread runs Python's handlers for Ctrl-C and SIGTERM. A job that does not
    assemble in time is an error here, not JAX's native abort at its own limit.
    """
    import jax

    # JAX's preemption service takes SIGTERM for itself (to checkpoint at a sync point) and its
    # coordination client aborts the process natively when a peer fails: this pipeline stops
    # on SIGTERM like any stage and learns of a lost peer from the failed exchange instead.
    jax.config.update("jax_enable_preemption_service", False)
    jax.config.update("jax_enable_recoverability", True)
    coordinator = role.coordinator
    if role.chief:
        _check_port_free(role)
    failed: list[BaseException] = []

    def join() -> None:
        try:
            # The seed is set before (the train stage's set_random_seed), so Keras does not
            # agree on a random one across the processes here.
            keras.distribution.initialize(role.job_addresses, role.num_processes, role.process_id)
        except BaseException as exc:  # handed to the main thread, which reports it
            failed.append(exc)

    joining = threading.Thread(target=join, name="join-job", daemon=True)
    joining.start()
    joining.join(JOIN_TIMEOUT_S)
    if joining.is_alive():
        raise DistributionError(
            f"{role.label}: the job did not assemble within {JOIN_TIMEOUT_S:.0f} s at "
            f"{coordinator}; start all {role.num_processes} processes with the same "
            f"{ADDRESSES} and {PROCESSES}, and let them reach the coordinator's port"
        )
    if failed:
        raise DistributionError(
            f"{role.label} could not join the job at {coordinator}: {first_line(failed[0])}"
        ) from failed[0]


def _check_port_free(role: Role) -> None:
    """Refuse a coordinator port that is taken on this host (process 0's).

    Process 0 serves the job on that port, on every interface as JAX does; a port already
    taken would crash JAX's server instead of failing with a message.
    """
    port = int(role.coordinator.rsplit(":", 1)[1])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: try IPv4
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise DistributionError(
                    f"{role.label} cannot serve the job on port {port} ({ADDRESSES}): "
                    f"{exc.strerror}; choose a free port on process 0's host"
                ) from exc
        return


def check_same_job(role: Role, fingerprint: str) -> None:
    """Refuse to train when the processes' params or data differ (a fingerprint of both)."""
    if role.num_processes == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.frombuffer(hashlib.sha256(fingerprint.encode()).digest(), dtype=np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [index for index, row in enumerate(everyone) if not np.array_equal(row, everyone[0])]
    if differ:
        raise DistributionError(
            f"process(es) {', '.join(map(str, differ))} of the job have other params or data "
            "than process 0; run every process from the same commit, params.yaml and "
            "data/processed"
        )
