"""Running a study's trials: each one `dvc exp run` of the whole pipeline, K at a time.

A trial is asked of the study, given its params, and run as `dvc exp run --temp -n
<study>-<number> -S key=value ...` with `MLPIPE_SWEEP` naming the trial, so that train reports
each epoch to it. Its value is the validation metric of the experiment's reports/metrics.json
(what `dvc exp show` shows); a train stopped by the pruner makes it PRUNED; any other failure
FAIL, with the line that says why and the trial's log. Several processes, on this machine or
others, may work on one study at once: each asks for a trial only while the study's COMPLETE,
PRUNED and RUNNING trials are fewer than its total, and one asked at the same moment as
another machine's last is told FAIL at once (`surplus`), so the total is reached exactly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipe.errors import PipelineError, first_line, one_line
from mlpipe.search import study as studies
from mlpipe.search.spec import SweepSpec, overrides
from mlpipe.search.trial import ENV, PRUNED_ATTR, RUN_ATTR, TrialLink, experiment_name

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("sweep")

REASON_ATTR = "mlpipe.fail_reason"
MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials all fail stops rather than burn the study
# DVC of this environment, whether or not its bin folder is on PATH.
DVC = (sys.executable, "-m", "dvc")
DVC_EXP = (sys.executable, "-m", "mlpipe.search.dvc_exp")
STOP_GRACE_SECONDS = 60  # after Ctrl-C, for the stages to end their runs and DVC to clean up


def set_options(values: dict[str, Any]) -> list[str]:
    """`-S key=value` for each param; values as JSON, which DVC's YAML parser reads back."""
    pairs = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return [option for pair in pairs for option in ("-S", pair)]


@dataclass
class Workers:
    """The trials one `sweep run` works on, `workers` at a time."""

    spec: SweepSpec
    workspace: Path
    storage: str
    study: optuna.Study
    total: int
    parent_run_id: str
    workers: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _children: dict[int, subprocess.Popen] = field(default_factory=dict)
    _pushes: bool = False
    failures_in_a_row: int = 0
    error: str | None = None

    def run(self) -> None:
        """Work until the study has its total; on Ctrl-C or SIGTERM stop the trials under way
        (their runs end KILLED, their trials FAIL) and re-raise."""
        self._pushes = has_remotes(self.workspace)  # once: the remotes do not change mid-run
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)  # wakes for signals, which land in this thread
        except BaseException:
            self._stop.set()
            self._interrupt_children()
            for thread in threads:
                thread.join(timeout=STOP_GRACE_SECONDS + 10)
            raise
        if self.error:
            raise PipelineError(self.error)

    def _work(self) -> None:
        trial = None
        try:
            while not self._stop.is_set():
                trial = None
                with self._lock:
                    done, running = studies.counts(self.study)
                    if done + running >= self.total:
                        return
                    trial = self.study.ask()
                    studies.own(trial)
                    chosen = studies.suggest(trial, self.spec)
                if studies.surplus(self.study, trial.number, self.total):
                    self._fail(trial, "surplus: the study had its total when it was asked")
                    continue
                self._run_one(trial, chosen)
        except Exception as exc:  # the storage gone, a full disk: this worker stops, and says why
            self.error = f"a sweep worker stopped: {describe(exc)}"
            self._stop.set()
            if trial is not None:
                with suppress(Exception):
                    self._fail(trial, self.error)

    def _run_one(self, trial: optuna.trial.Trial, chosen: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        number = trial.number
        name = experiment_name(self.spec.study, number)
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in chosen.items())
        log.info("trial %d (%s): %s", number, name, shown)
        code, log_file = self._dvc_exp_run(number, name, overrides(self.spec, chosen))
        [frozen] = [t for t in self.study.get_trials(deepcopy=False) if t.number == number]
        if code == 0:
            metrics = experiment_metrics(self.workspace, name)
            value = metrics.get(self.spec.objective.metric) if metrics else None
            if value is None:
                self._fail(trial, f"its reports/metrics.json has no {self.spec.objective.metric}")
                return
            if RUN_ATTR not in frozen.user_attrs and metrics.get("mlflow_run_id"):
                # Restored from DVC's run cache: no epoch was trained, its run is the earlier one.
                trial.set_user_attr(RUN_ATTR, metrics["mlflow_run_id"])
            studies.tell(self.study, number, float(value))
            self._succeeded()
            log.info("trial %d COMPLETE: %s %.6f", number, self.spec.objective.metric, value)
            if self._pushes:
                push(self.workspace, name)
        elif PRUNED_ATTR in frozen.user_attrs and not self._stop.is_set():
            studies.tell(self.study, number, state=TrialState.PRUNED)
            self._succeeded()
            log.info("trial %d PRUNED at epoch %s", number, frozen.user_attrs[PRUNED_ATTR])
        else:
            reason = "stopped" if self._stop.is_set() else failure_line(log_file, code)
            self._fail(trial, f"{reason} (log: {log_file})")

    def _dvc_exp_run(self, number: int, name: str, values: dict[str, Any]) -> tuple[int, Path]:
        link = TrialLink(
            storage=self.storage,
            study=self.spec.study,
            number=number,
            metric=self.spec.objective.metric,
            direction=self.spec.objective.direction,
            pruner=self.spec.pruner.model_dump(),
            parent_run_id=self.parent_run_id,
        )
        log_file = self.workspace / studies.SWEEPS_DIR / self.spec.study / f"{number}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # DVC's command line, reproducing only the entry it queues (see mlpipe.search.dvc_exp).
        command = [*DVC_EXP, "exp", "run", "--temp", "-n", name, *set_options(values)]
        # The stages' `python` is this environment's, as in a shell that activated it.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, ENV: link.to_environment()}
        with log_file.open("w", encoding="utf-8") as output:
            output.write(" ".join(command) + "\n")
            output.flush()
            # Its own process group: a stop reaches DVC and the stage it runs, nothing else.
            child = subprocess.Popen(
                command,
                cwd=self.workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with self._lock:
                self._children[number] = child
            try:
                code = child.wait()
            finally:
                with self._lock:
                    self._children.pop(number, None)
        return code, log_file

    def _interrupt_children(self) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            _signal_group(child, signal.SIGINT)  # as Ctrl-C: runs end KILLED, DVC cleans up
        for child in children:
            try:
                child.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)

    def _fail(self, trial: optuna.trial.Trial, reason: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr(REASON_ATTR, reason)
        studies.tell(self.study, trial, state=TrialState.FAIL)
        if reason.startswith("surplus"):
            return
        log.warning("trial %d FAIL: %s", trial.number, reason)
        with self._lock:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not self._stop.is_set():
                self.error = (
                    f"{self.failures_in_a_row} trials in a row failed, the last: {reason}; "
                    "fix that, then run the sweep again (failed trials do not count)"
                )
                self._stop.set()

    def _succeeded(self) -> None:
        with self._lock:
            self.failures_in_a_row = 0


def describe(exc: BaseException) -> str:
    if isinstance(exc, PipelineError):
        return str(exc)
    if isinstance(exc, OSError):
        from mlpipe.runner import describe_os_error

        return describe_os_error(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def _signal_group(child: subprocess.Popen, sent: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(child.pid, sent)


def failure_line(log_file: Path, code: int) -> str:
    """The line of a trial's log that says why it failed: the stage's `error:` line, else
    DVC's `ERROR:`, else the exit code."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    found = [line for line in lines if line.startswith("error: ")]
    if found:
        return one_line(found[-1].removeprefix("error: "))
    dvc_errors = [index for index, line in enumerate(lines) if line.startswith("ERROR: ")]
    if dvc_errors:
        before, dvc_line = lines[: dvc_errors[0]], lines[dvc_errors[0]].removeprefix("ERROR: ")
        if "Traceback (most recent call last):" in before:  # a crash: its last line says what
            crashed = [line for line in before if line and not line[0].isspace()]
            return one_line(f"{crashed[-1]} ({dvc_line})")
        return one_line(dvc_line)
    return f"dvc exp run exited with code {code}"


def experiment_refs(workspace: Path) -> dict[str, str]:
    """DVC's experiments by name, each with the Git ref it is kept under
    (refs/exps/<base>/<name>)."""
    listed = _git(workspace, "for-each-ref", "--format=%(refname)", "refs/exps")
    return {ref.rsplit("/", 1)[-1]: ref for ref in listed.splitlines()}


def experiment_ref(workspace: Path, name: str) -> str | None:
    return experiment_refs(workspace).get(name)


def experiment_metrics(workspace: Path, name: str) -> dict[str, Any] | None:
    """The experiment's reports/metrics.json, as committed in it (`dvc exp show` reads the same)."""
    ref = experiment_ref(workspace, name)
    if ref is None:
        return None
    try:
        return json.loads(_git(workspace, "show", f"{ref}:reports/metrics.json"))
    except (ValueError, subprocess.CalledProcessError):
        return None


def existing_experiments(workspace: Path, study: str) -> list[str]:
    """The DVC experiments named like this study's trials (`<study>-<number>`)."""
    names = experiment_refs(workspace)
    return sorted(n for n in names if n.startswith(f"{study}-") and n[len(study) + 1 :].isdigit())


def push(workspace: Path, name: str) -> None:
    """`dvc exp push origin <name>`, so any member can `dvc exp pull` it; a failed push is a
    warning."""
    pushed = subprocess.run(
        [*DVC, "exp", "push", "origin", name],
        cwd=workspace,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if pushed.returncode != 0:
        log.warning(
            "experiment %s was not pushed (%s); push it later with `dvc exp push origin %s`",
            name,
            failure_line_of(pushed.stderr) or f"exit code {pushed.returncode}",
            name,
        )


def has_remotes(workspace: Path) -> bool:
    """Whether the repository has both a Git `origin` and a default DVC remote to push to."""
    origin = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=workspace, capture_output=True, text=True
    )
    default = subprocess.run(
        [*DVC, "remote", "default"], cwd=workspace, capture_output=True, text=True
    )
    return origin.returncode == 0 and default.returncode == 0 and bool(default.stdout.strip())


def failure_line_of(text: str) -> str:
    lines = [line.removeprefix("ERROR: ") for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


def _git(workspace: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=workspace, capture_output=True, text=True, check=True
    ).stdout
