"""How a stage runs: logging, one-line errors and exit codes that tell what happened.

Exit codes: 0 done; 1 a problem with data, models, network or tracking; 2 invalid params or
arguments; 130 interrupted (SIGINT); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from mlpipe.errors import PipelineError, Terminated

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


def describe_os_error(exc: OSError) -> str:
    where = exc.filename or "a file"
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return f"{where}: a file stands where a folder is needed; move it away and run again"
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on device; free some space and run again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: cannot write here ({exc.strerror})"
    return f"{where}: {exc.strerror or exc}"


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Keep TensorFlow's C++ start-up chatter out of the stage logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_stage(name: str, main: Callable[[], None]) -> NoReturn:
    """Run a stage's main and exit with a code that says how it ended.

    SIGTERM is turned into an exception, so `finally` blocks (temp files, MLflow runs) run for
    it just as they do for Ctrl-C.
    """
    configure_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)
    log = logging.getLogger(name)
    try:
        from mlpipe.timing import bookkeeping, write_report
        from mlpipe.tracking import close_orphans_in_workspace

        with bookkeeping():
            close_orphans_in_workspace()
        main()
        write_report(name)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted; no output was left half-written")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        log.error("terminated; no output was left half-written")
        sys.exit(EXIT_TERMINATED)
    except MemoryError:
        print(
            "error: out of memory; make the model (model.hidden_units, model.conv_filters) or "
            "the batches (train.batch_size, evaluate.batch_size) smaller",
            file=sys.stderr,
        )
        sys.exit(1)
    except OSError as exc:
        # Disk full, permission denied, a file where a folder should be: the user's to fix.
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
