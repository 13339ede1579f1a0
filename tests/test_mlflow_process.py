"""mlpipe.tracking.mlflow_process: a stage's MLflow work in a second process, and how that can fail.

The prepare and work functions here stand in for MLflow's: they write marker files, sleep or
fail, so each test sees what the second process did and did not do.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mlpipe.errors import DataError, Terminated, TrackingError
from mlpipe.tracking.mlflow_process import BackgroundError, alongside


def test_work_gets_what_prepare_made_and_the_payload() -> None:
    with alongside(lambda: os.getpid(), lambda pid, payload: (pid, payload * 2)) as ask:
        pid, doubled = ask(21)
    assert doubled == 42
    assert pid != os.getpid()  # prepared in the second process


def test_prepare_runs_while_the_stage_works() -> None:
    """Two seconds of each, side by side: well under the four they would take in turn."""

    def prepare() -> float:
        time.sleep(2.0)
        return time.perf_counter()

    started = time.perf_counter()
    with alongside(prepare, lambda ready, _: ready) as ask:
        time.sleep(2.0)  # the stage's own work, at the same time
        ready = ask(None)
    assert time.perf_counter() - started < 3.5
    assert ready - started >= 2.0


def test_an_error_of_the_work_is_raised_in_the_stage_as_it_was() -> None:
    def work(_: None, payload: str) -> None:
        raise TrackingError(f"store away while logging {payload}")

    expected = r"^store away while logging figures$"
    with pytest.raises(TrackingError, match=expected), alongside(lambda: None, work) as ask:
        ask("figures")


def test_an_error_of_prepare_is_raised_when_the_stage_asks() -> None:
    def prepare() -> None:
        raise TrackingError("sqlite:///x/mlflow.db: not a tracking store")

    with (
        pytest.raises(TrackingError, match="not a tracking store"),
        alongside(prepare, lambda *_: None) as ask,
    ):
        ask(None)


def test_a_bug_in_the_work_is_one_line() -> None:
    def work(*_: object) -> None:
        raise KeyError("run_id")

    with pytest.raises(TrackingError) as error, alongside(lambda: None, work) as ask:
        ask(None)
    assert str(error.value) == "MLflow logging failed ('run_id')"


def test_an_answer_that_cannot_be_sent_is_one_line() -> None:
    with (
        pytest.raises(TrackingError, match=r"^MLflow logging failed \(.*pickle"),
        alongside(lambda: None, lambda *_: lambda: "a function cannot be pickled") as ask,
    ):
        ask(None)


def test_a_stage_that_fails_first_has_nothing_logged(tmp_path: Path) -> None:
    marker = tmp_path / "logged"
    with (
        pytest.raises(DataError),
        alongside(lambda: time.sleep(0.5), lambda *_: marker.touch()),
    ):
        raise DataError("reports/history.csv: missing")
    time.sleep(0.5)
    assert not marker.exists()


def test_the_second_process_never_outlives_the_block(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def prepare() -> None:
        pid_file.write_text(str(os.getpid()))
        time.sleep(1.0)

    with pytest.raises(DataError), alongside(prepare, lambda *_: None):
        while not pid_file.exists():
            time.sleep(0.05)
        raise DataError("bad input")
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_second_process_killed_is_a_clear_error() -> None:
    def prepare() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(BackgroundError) as error, alongside(prepare, lambda *_: None) as ask:
        ask(None)
    assert str(error.value) == (
        "the MLflow logging process ended without an answer (exit code -9); run the stage again"
    )
    assert isinstance(error.value, TrackingError)  # exit code 1, as a store failure


def test_sigterm_to_the_stage_stops_the_work_too(tmp_path: Path) -> None:
    marker = tmp_path / "logged"

    def work(*_: object) -> None:
        time.sleep(2.0)
        marker.touch()

    def terminate(*_: object) -> None:
        raise Terminated("received signal 15")

    previous = signal.signal(signal.SIGTERM, terminate)
    started = time.perf_counter()
    try:
        with pytest.raises(Terminated), alongside(lambda: None, work) as ask:
            # The stage alone is sent SIGTERM (as `kill <pid>` does), half a second in.
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            ask(None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert time.perf_counter() - started < 1.5
    time.sleep(2.0)
    assert not marker.exists()


class _TwoArguments(TrackingError):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def test_an_answer_that_cannot_be_rebuilt_is_one_line() -> None:
    def work(*_: object) -> None:
        raise _TwoArguments("store", "away")  # pickles, but not back: its arguments differ

    with (
        pytest.raises(TrackingError, match=r"^the MLflow logging process's answer cannot be read"),
        alongside(lambda: None, work) as ask,
    ):
        ask(None)


def _stop_myself(prepared: object, payload: object) -> None:
    os.kill(os.getpid(), signal.SIGSTOP)  # frozen, as `kill -STOP` leaves it


def test_a_stopped_second_process_is_waited_on_with_a_deadline_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process frozen by SIGSTOP answers nothing: the stage says every WAIT_LINE_S that it
    waits, and after ANSWER_TIMEOUT_S it kills the process and fails in one line."""
    from mlpipe.tracking import mlflow_process

    monkeypatch.setattr(mlflow_process, "ANSWER_TIMEOUT_S", 2.0)
    monkeypatch.setattr(mlflow_process, "WAIT_LINE_S", 0.5)
    started = time.monotonic()
    with (
        caplog.at_level("INFO", logger="mlpipe.tracking.mlflow_process"),
        pytest.raises(BackgroundError, match=r"gave no answer in 2 s \(stopped") as caught,
        alongside(lambda: None, _stop_myself) as ask,
    ):
        ask("anything")
    assert time.monotonic() - started < 10
    assert "it was killed: run the stage again" in str(caught.value)
    waiting = [r.getMessage() for r in caplog.records if "waiting for the MLflow" in r.getMessage()]
    assert len(waiting) >= 2
