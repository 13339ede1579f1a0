"""How a stage runs: logging, one-line errors and exit codes that tell what happened.

`MLPIPE_DEBUG=1` prints the full traceback behind a one-line error.

Exit codes: 0 done; 1 a problem with data, models, network or tracking; 2 invalid params or
arguments; 3 pruned (a sweep's trial stopped by its pruner); 130 interrupted (SIGINT); 143
terminated (SIGTERM).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from mlpipe.errors import PipelineError, Pruned, Terminated, one_line

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
DEBUG_ENV = "MLPIPE_DEBUG"  # set to 1 to see the full traceback behind a one-line error
QUIETED_LOGGERS = ("mlflow.store.db.utils", "mlflow.utils.async_logging")
# Libraries whose INFO lines repeat ours ("Created version 3 of model ...") or narrate their
# internals (alembic's migrations of a new store, JAX's backend probing and joining a job):
# their warnings and errors still show.
WARNING_ONLY_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "urllib3", "jax")


# The stop signal this stage received and has not yet ended for. Python runs a signal's handler
# between any two bytecodes, finalizers (`__del__`, weakref callbacks) included, and an
# exception raised there is printed and dropped: a stage whose handler ran inside one of
# JAX's or Keras's finalizers would train on. So the signal is also remembered, and training
# raises it again at the end of each epoch (`raise_if_stopped`).
_stopped_by: int | None = None


def _stop(signum: int, frame: FrameType | None) -> None:
    global _stopped_by
    _stopped_by = signum
    _raise_stop(signum)


def _raise_stop(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"received signal {signum}")


def raise_if_stopped() -> None:
    """Raise what a SIGINT or SIGTERM received by this stage raised, if it was lost on the way
    (dropped in a finalizer); nothing otherwise."""
    if _stopped_by is not None:
        _raise_stop(_stopped_by)


def describe_os_error(exc: OSError) -> str:
    if not exc.filename:
        if exc.errno == errno.ENOSPC:
            return "no space left on device while writing an output; free some space and run again"
        return f"{exc.strerror or exc} while writing an output"
    where = exc.filename
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return f"{where}: a file stands where a folder is needed; move it away and run again"
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on device; free some space and run again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: cannot write here ({exc.strerror})"
    return f"{where}: {exc.strerror or exc}"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now, so a stage run in-process logs where it prints."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging() -> None:
    """One line per event, `HH:MM:SS logger: message`, on standard error; set up once."""
    root = logging.getLogger()
    if not any(isinstance(handler, _CurrentStderr) for handler in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # MLflow's loggers go through this handler, in this format, rather than their own.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    for name in WARNING_ONLY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if os.environ.get(DEBUG_ENV, "") in ("", "0"):
        # MLflow logs a traceback of its own for a store error that the stage then reports in
        # one line (and its background metric writer another); MLPIPE_DEBUG=1 shows them.
        for name in QUIETED_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # Keep TensorFlow's C++ start-up chatter out of the stage logs (mlpipe.model.keras_import
    # drops the lines that this setting cannot reach).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # MLflow prints run links to standard output; the log's run line carries the link instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def execute(name: str, main: Callable[[], None]) -> int:
    """Run a stage's main; return the exit code that says how it ended.

    Errors a user can act on are one line; `MLPIPE_DEBUG=1` prints the whole traceback first.
    SIGTERM is turned into an exception, so `finally` blocks (temp files, MLflow runs) run for
    it just as they do for Ctrl-C; both are remembered until the stage ends, for
    `raise_if_stopped`.
    """
    global _stopped_by
    configure_logging()
    _stopped_by = None
    previous = {sent: signal.getsignal(sent) for sent in (signal.SIGTERM, signal.SIGINT)}
    for sent, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a stage started ignoring Ctrl-C (nohup) keeps doing so
            signal.signal(sent, _stop)
    log = logging.getLogger(name)
    try:
        main()
        if _stopped_by is not None:  # received, and its exception lost, after the last epoch
            _raise_stop(_stopped_by)
    except Pruned as exc:
        log.warning("%s; this pipeline run stops here", exc)
        return exc.exit_code
    except PipelineError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted; no output was left half-written%s", _dvc_removed_outputs())
        return EXIT_INTERRUPTED
    except Terminated:
        log.error("terminated; no output was left half-written%s", _dvc_removed_outputs())
        return EXIT_TERMINATED
    except MemoryError:
        return _fail(
            "out of memory; make the model (model.hidden_units, or model.conv_filters and "
            "model.cnn_dense_units for cnn) or "
            "the batches (train.batch_size, evaluate.batch_size) smaller",
            1,
        )
    except OSError as exc:
        # Disk full, permission denied, a file where a folder should be: the user's to fix.
        return _fail(describe_os_error(exc), 1)
    finally:
        _stopped_by = None
        for sent, handler in previous.items():
            signal.signal(sent, signal.SIG_DFL if handler is None else handler)
    return 0


def _fail(message: str, code: int) -> int:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exc(file=sys.stderr)
    if code == 2 and _experiment_in_workspace():
        # `dvc exp run -S` wrote the refused values into the workspace's params.yaml (a queued
        # or --temp run works on a copy, and leaves the workspace's file alone).
        message += (
            "; `dvc exp run -S` left these values in params.yaml: `git diff params.yaml` "
            "shows them, `git checkout params.yaml` restores the committed file"
        )
    print(f"error: {one_line(message + _dvc_removed_outputs())}", file=sys.stderr)
    return code


def _dvc_removed_outputs() -> str:
    """Under `dvc repro` (or `dvc exp run` in the workspace), what a failure left: DVC removes
    a stage's outputs before it runs the command, and its cache holds the last ones."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or os.path.join(".dvc", "tmp", "exps") in os.getcwd():  # a temp copy's
        return ""
    said = (
        f"; DVC removed {stage}'s outputs before running it: `dvc checkout {stage}` brings back "
        "the last ones from its cache (if it ran before)"
    )
    in_git = _uncached_outputs(stage)
    return said + (f", `git checkout {' '.join(in_git)}` the ones kept in Git" if in_git else "")


def _uncached_outputs(stage: str) -> list[str]:
    """The stage's outputs that dvc.yaml keeps in Git (`cache: false`): not in DVC's cache."""
    import yaml

    try:
        text = Path(os.environ.get("DVC_ROOT", "."), "dvc.yaml").read_text(encoding="utf-8")
        declared = yaml.safe_load(text)["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    entries = [entry for kind in ("outs", "metrics", "plots") for entry in declared.get(kind, [])]
    return [
        path
        for entry in entries
        if isinstance(entry, dict)
        for path, options in entry.items()
        if isinstance(options, dict) and options.get("cache") is False
    ]


def _experiment_in_workspace() -> bool:
    """Whether this stage runs under `dvc exp run` in the user's own workspace."""
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_EXP_NAME") or not root:
        return False
    return os.path.realpath(root) == os.path.realpath(os.getcwd())


def run_stage(name: str, main: Callable[[], None]) -> NoReturn:
    """`python -m stages.<name>`: run the stage and exit with its code."""
    try:
        code = execute(name, main)
    except BaseException:
        if not _joined_a_job():
            raise
        traceback.print_exc()  # an unexpected error, as the interpreter would show it
        code = 1
    if _joined_a_job():
        # JAX's exit hook waits at a barrier for every process of the job: with one of them
        # dead, or gone without the barrier after a failure, it would hold this process until
        # its heartbeat timeout (100 s), then abort it. The run and the outputs are settled by
        # now, every file closed: every process of a job leaves without the interpreter's exit.
        _leave(code)
    exit_without_collecting(code)


def exit_without_collecting(code: int) -> NoReturn:
    """Exit with `code`, skipping the garbage collection of the interpreter's shutdown.

    Everything is settled by now (outputs renamed into place, the MLflow run ended, files
    closed); exit handlers still run. What is skipped is the last collection over every object
    of TensorFlow's and MLflow's modules: 1.4 s after TensorFlow, 0.8 s after MLflow, measured
    on a 2-core machine (benchmarks/run.py), which every stage paid on the way out. Objects
    left in reference cycles are not finalised: nothing of ours relies on that at exit.
    """
    gc.freeze()
    sys.exit(code)


def _leave(code: int) -> NoReturn:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _joined_a_job() -> bool:
    """Whether this process joined, or began joining, a multi-process JAX job
    (`train.distribution multi_worker`): JAX sets its client before it connects, so a process
    stopped or timed out while waiting for the others counts too."""
    jax = sys.modules.get("jax")  # only a process that imported JAX can have joined one
    return jax is not None and jax.distributed.is_initialized()
