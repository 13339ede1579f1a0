"""TensorFlow's C++ start-up notices stay out of what a user reads; real errors do not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipe.model.keras_import import native_notices_left_out, without_notices
from tests.conftest import REPO, quick_workspace, run_stage_process, stage_env

NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796010466.633462   23561 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results.\n"
    "I0000 00:00:1796010466.633762   23561 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
    "E0000 00:00:1796010466.633762   23561 cuda_executor.cc:1228] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL = (
    "E0000 00:00:1796010466.700000   23561 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n"
)
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d [\w.]+: \S")
SHOWN_BY_TENSORFLOW = ("absl::InitializeLog", "oneDNN custom operations", "cuda drivers")


def test_notices_go_and_every_other_line_stays() -> None:
    assert without_notices(NOTICES) == ""
    assert without_notices(NOTICES + REAL + "plain text\n") == REAL + "plain text\n"


def test_native_output_is_written_back_without_the_notices(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with native_notices_left_out():
        os.write(2, (NOTICES + REAL).encode())
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert REAL in err and "a Python warning" in err
    assert not [marker for marker in SHOWN_BY_TENSORFLOW if marker in err]


def test_import_keras_prints_no_notice() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlpipe.model.keras_import import import_keras; print(import_keras())",
        ],
        cwd=REPO,
        env={**stage_env(), "TF_CPP_MIN_LOG_LEVEL": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "module 'keras'" in result.stdout
    assert not [marker for marker in SHOWN_BY_TENSORFLOW if marker in result.stderr]


@pytest.mark.slow
def test_stages_print_only_log_lines(tmp_path: Path) -> None:
    """Train (twice: the second registers a new version of an existing model) and evaluate
    print one line per event, all in the log's format: no TensorFlow notice, no MLflow print."""
    workspace = quick_workspace(tmp_path / "ws")
    for stage in ("train", "train", "evaluate"):
        result = run_stage_process(workspace, stage)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout == ""
        strays = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
        assert strays == [], f"{stage} printed outside the log:\n" + "\n".join(strays)
