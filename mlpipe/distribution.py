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
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from mlpipe.config import TrainParams
from mlpipe.errors import ConfigError, PipelineError, first_line

log = logging.getLogger(__name__)

ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENVIRONMENT = (ADDRESSES, PROCESSES, PROCESS_ID)
MAX_PROCESSES = 4096
README = "README: Training on several devices or hosts"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<port>\d{1,5})$")


class DistributionError(PipelineError):
    """A multi-process job could not start, or lost one of its processes."""


@dataclass(frozen=True)
class Role:
    """This process's part in the training job."""

    distribution: str  # none | mirrored | multi_worker
    process_id: int = 0
    num_processes: int = 1
    job_addresses: str | None = None

    @property
    def chief(self) -> bool:
        """Whether this process writes the outputs and the MLflow run (process 0)."""
        return self.process_id == 0

    @property
    def label(self) -> str:
        return f"process {self.process_id} of {self.num_processes}"


def plan(params: TrainParams, backend: str, environ: Mapping[str, str]) -> Role:
    """This process's role, from `train.distribution`, the Keras backend and the environment.

    Raises ConfigError naming the key or variable when the backend, the loop or the
    environment cannot give the distribution asked for.
    """
    wanted = params.distribution
    if wanted != "none" and params.loop == "scan":
        raise ConfigError(
            f"params.yaml: train.loop scan trains on one device in one process; it cannot be "
            f"used with train.distribution {wanted} (set train.loop fit or "
            "train.distribution none)"
        )
    if wanted == "none":
        if any(environ.get(name) for name in ENVIRONMENT):
            log.warning(
                "%s is set but train.distribution is none: this process trains alone "
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
            f"of the job needs {', '.join(ENVIRONMENT)} ({README})"
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
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
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


def shard(arrays: tuple[np.ndarray, ...], role: Role, multiple: int = 1) -> tuple[np.ndarray, ...]:
    """This process's share of each array: every `num_processes`-th row from its id.

    Every process gets as many rows of an array as every other (a multiple of `multiple`, its
    local device count), so all take the same steps in lockstep; at most
    `num_processes * multiple - 1` rows of an array are left out. A process alone on one
    device gets the arrays whole.
    """
    shares = []
    for array in arrays:
        rows = len(array) // role.num_processes // multiple * multiple
        if rows == 0:
            raise DistributionError(
                f"{len(array)} rows cannot be shared by {role.num_processes} process(es) with "
                f"{multiple} device(s) each; use more data (preprocess.train_fraction)"
            )
        shares.append(array[role.process_id :: role.num_processes][:rows])
    return tuple(shares)


@dataclass(frozen=True)
class Engine:
    """Keras's engine for a role: the scope to build and fit the model in, and its devices."""

    role: Role
    num_devices: int
    local_devices: int
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

    def record(self, global_batch: int) -> dict[str, int | str]:
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

        from mlpipe.backend import start_up_notices_left_out

        if role.distribution == "multi_worker":
            log.info("%s: joining the job through %s", role.label, role.job_addresses.split(",")[0])
            try:
                with start_up_notices_left_out():
                    keras.distribution.initialize(
                        role.job_addresses, role.num_processes, role.process_id
                    )
            except Exception as exc:  # JAX raises several kinds; each is one line here
                raise DistributionError(
                    f"{role.label} could not join the job at {role.job_addresses}: "
                    f"{first_line(exc)}"
                ) from exc
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
