"""Keras, imported once per process with TensorFlow's C++ start-up notices left out.

TensorFlow's native libraries print a block of lines while they load, before any logging
setting applies (`TF_CPP_MIN_LOG_LEVEL` does not reach them): the absl pre-initialisation
warning, the oneDNN notice, "Could not find cuda drivers" and a failed `cuInit` on a machine
without a GPU. The first `import keras` runs with the process's standard error (the file
descriptor, where native code writes) captured; afterwards every captured line that is not one
of those notices is written back, so a real error from the import is still seen. A process
that aborts inside the import (a native fatal error) loses what was captured: MLPIPE_DEBUG=1
turns the capture off.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType

# Start-up notices only: each names the library file that prints it and its fixed wording.
NOTICES = tuple(
    re.compile(pattern)
    for pattern in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
        r"STDERR$",
        r"^I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\.",
        r"^I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
        r"^E\d{4} [\d:.]+ +\d+ cuda_executor\.cc:\d+\] failed call to cuInit: "
        r"(INTERNAL: CUDA error: Failed call to cuInit: )?(UNKNOWN ERROR \(303\)|"
        r"CUDA_ERROR_NO_DEVICE)",
    )
)


def without_notices(text: str) -> str:
    """`text` less the lines that are TensorFlow's start-up notices."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not any(n.search(line.rstrip("\n")) for n in NOTICES))


@contextmanager
def native_notices_left_out() -> Iterator[None]:
    """Capture file descriptor 2 for a while; then write back what is not a start-up notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = without_notices(capture.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_keras() -> ModuleType:
    """The `keras` module; its first import in this process leaves the notices out."""
    if "keras" not in sys.modules:
        with start_up_notices_left_out():
            import keras  # noqa: F401
    return sys.modules["keras"]


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed`, which also imports TensorFlow (when it is installed) to
    seed it, whatever the backend: on JAX that import is the first, so its notices are left
    out here."""
    keras = import_keras()
    with start_up_notices_left_out():
        keras.utils.set_random_seed(seed)


def start_up_notices_left_out() -> AbstractContextManager[None]:
    """Around a call that may load TensorFlow's native libraries for the first time in this
    process (Keras on JAX imports it to seed it). Not around a call that may block or abort:
    what it prints is only seen once it returns."""
    if "tensorflow" in sys.modules:
        return nullcontext()
    debugging = os.environ.get("MLPIPE_DEBUG", "") not in ("", "0")
    return nullcontext() if debugging else native_notices_left_out()
