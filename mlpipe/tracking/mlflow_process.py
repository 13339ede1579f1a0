"""A stage's MLflow work in a second process, started first, so it runs on the other core.

Importing MLflow and opening the store take 2-3 s of one core (benchmarks/run.py); the plot
stage draws its figures in about as long, and nothing of one needs the other until the end.
(evaluate computes in under a second, less than its MLflow work: measured, a second process
made it no faster.) `alongside(prepare, work)` forks a process that runs `prepare()` (connect)
at once, then waits for the stage to hand it a payload (what to log) and runs
`work(prepared, payload)`; the stage gets back the result, or the process's error raised in
the stage as the same PipelineError. The stage's outputs still move into place only after that
answer, so the workspace and the MLflow run never disagree.

The second process is never killed by the stage: when the stage fails before it asks, the
process sees its pipe close and stops, once what it is doing (maybe creating the store) is
done. Ctrl-C reaches both (one process group); SIGTERM to the stage is passed on to it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from mlpipe.errors import PipelineError, Terminated, TrackingError, first_line
from mlpipe.runner import DEBUG_ENV

log = logging.getLogger(__name__)

Prepared = TypeVar("Prepared")
Result = TypeVar("Result")

# After the stage is done with it: how long the process may take to finish what it is doing
# (MLflow's own timeouts bound a call to a server).
FINISH_TIMEOUT_S = 300
# How long the stage waits for an answer (a stopped or hung process has none), and how often
# it says that it is waiting.
ANSWER_TIMEOUT_S = 300
WAIT_LINE_S = 30


class BackgroundError(TrackingError):
    """The second process ended without an answer."""


def _serve(
    connection: Connection,
    stage_end: Connection,
    prepare: Callable[[], Any],
    work: Callable[[Any, Any], Any],
) -> None:
    """The second process: prepare at once, then do the one piece of work it is handed."""
    stage_end.close()  # the fork's copy: only the stage's may hold the pipe open
    _drop_inherited_connections()
    try:
        prepared, failure = prepare(), None
    except Exception as exc:  # kept for the stage, which hears of it when it asks
        prepared, failure = None, exc
    except (KeyboardInterrupt, Terminated):
        os._exit(1)
    try:
        payload = connection.recv()
    except (EOFError, OSError, KeyboardInterrupt, Terminated):
        os._exit(0)  # the stage failed or was stopped before it asked: nothing to do
    try:
        if failure is not None:
            raise failure
        answer: tuple[str, Any] = ("done", work(prepared, payload))
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc(file=sys.stderr)
        answer = ("error", _as_pipeline_error(exc))
    except (KeyboardInterrupt, Terminated):
        os._exit(1)
    try:
        connection.send(answer)
    except (OSError, ValueError):
        pass  # the stage stopped listening: nothing to tell
    except Exception as exc:  # an answer that cannot be pickled: say so, in one line
        with suppress(Exception):
            connection.send(("error", _as_pipeline_error(exc)))
    os._exit(0)


def _as_pipeline_error(exc: Exception) -> PipelineError:
    """A PipelineError as it is; anything else (a bug) as one line the stage can show."""
    if isinstance(exc, PipelineError):
        return exc
    return TrackingError(f"MLflow logging failed ({first_line(exc)})")


def _drop_inherited_connections() -> None:
    """A process that opened the store before the fork (a test running stages in-process)
    left pooled connections this copy must not use: SQLite forbids sharing one across a fork.
    A stage run as `python -m` has not imported MLflow yet: nothing to drop."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in store.SqlAlchemyStore._engine_map.values():
            engine.dispose(close=False)  # forget them without closing the parent's


def _wait_for_answer(ours: Connection, process: Any) -> None:
    """Return once the process answered or ended; a line every WAIT_LINE_S while it has not;
    after ANSWER_TIMEOUT_S it is killed (stopped with SIGSTOP, or hung) and the stage told."""
    waited = 0.0
    while not ours.poll(min(WAIT_LINE_S, ANSWER_TIMEOUT_S - waited)):
        if not process.is_alive():
            return  # recv() then finds the pipe closed
        waited = min(waited + WAIT_LINE_S, ANSWER_TIMEOUT_S)
        if waited >= ANSWER_TIMEOUT_S:
            process.kill()  # SIGKILL ends a stopped process too
            process.join()
            raise BackgroundError(
                f"the MLflow logging process (pid {process.pid}) gave no answer in "
                f"{ANSWER_TIMEOUT_S:.0f} s (stopped, or a server that hangs?); it was killed: "
                "run the stage again"
            )
        log.info("waiting for the MLflow logging process (pid %d): %.0f s", process.pid, waited)


@contextmanager
def alongside(
    prepare: Callable[[], Prepared], work: Callable[[Prepared, Any], Result]
) -> Iterator[Callable[[Any], Result]]:
    """Start `prepare` in a second process; yield `ask(payload)`, which runs `work` there.

    Leaving the block waits for the process to end: it never outlives the stage.
    """
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    # Children of a fork inherit the stage's signal handlers and logging; stdio is flushed
    # first so nothing buffered is written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    process = context.Process(target=_serve, args=(theirs, ours, prepare, work), daemon=True)
    process.start()
    theirs.close()

    def ask(payload: Any) -> Result:
        try:
            ours.send(payload)
            _wait_for_answer(ours, process)
            status, value = ours.recv()
        except BackgroundError:
            raise
        except (EOFError, OSError):  # its end of the pipe closed, or reset
            process.join()
            raise BackgroundError(
                f"the MLflow logging process ended without an answer (exit code "
                f"{process.exitcode}); run the stage again"
            ) from None
        except Exception as exc:  # an answer that pickled but cannot be rebuilt here
            raise TrackingError(
                f"the MLflow logging process's answer cannot be read ({first_line(exc)})"
            ) from exc
        if status == "error":
            raise value
        return value

    try:
        yield ask
    except (KeyboardInterrupt, Terminated) as exc:
        # Passed on, in case it was sent to the stage alone (as `kill` does); Ctrl-C at a
        # terminal reached both, so the process may be ending already.
        process.join(0.2)
        if process.is_alive():
            sent = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            os.kill(process.pid, sent)
        raise
    finally:
        ours.close()
        process.join(1.0)
        if process.is_alive():
            log.info("waiting for the MLflow process to finish what it is doing")
            process.join(FINISH_TIMEOUT_S)
        if process.is_alive():
            log.error("the MLflow process did not finish in %d s; stopping it", FINISH_TIMEOUT_S)
            process.terminate()
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
