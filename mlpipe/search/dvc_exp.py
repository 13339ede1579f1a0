"""`dvc exp run --temp` that reproduces the experiment it queued, and no other.

`python -m mlpipe.search.dvc_exp exp run --temp -n NAME -S ...` is DVC's own command line
with one change. DVC's `exp run --temp` stashes its params in the workspace's one experiment
stash, then reproduces stashed entries until the stash is empty, taking the *first* each time
(dvc/repo/experiments/queue/workspace.py, `reproduce`, and tempdir.py, `get`). With several
running at once, one process runs another's params, or runs its own and then another's,
under its own environment: a trial's train reported to the wrong trial (seen in CI: a trial
whose DVC experiment held another trial's MLflow run). Here each process reproduces exactly
the entry it queued; the stages check the experiment's name besides (`trial.current`). Runs
started together queue one at a time (a lock in .dvc/tmp, held until the entry is stashed),
so none waits out DVC's few seconds for its repository lock. The rest is DVC's code path,
unchanged (the stash, the temp executor, the collection of results).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _reproduce_own_entry(exp: Any, tmp_dir: bool = False, **kwargs: Any) -> dict[str, str]:
    """`Experiments.reproduce_one` for a temp-dir run: queue one entry, reproduce that one."""
    from dvc.repo.experiments.executor.local import TempDirExecutor
    from dvc.repo.experiments.utils import unlocked_repo

    if not tmp_dir:
        return _original(exp, tmp_dir=tmp_dir, **kwargs)
    copy_paths, message = kwargs.pop("copy_paths", None), kwargs.pop("message", None)
    queue = exp.tempdir_queue
    entry = exp.queue_one(queue, **kwargs)
    _starting.release()  # queued: the next trial may take DVC's lock

    @unlocked_repo  # as DVC's `_reproduce_queue`: the repo lock is free while stages run
    def reproduce(exp: Any) -> dict[str, str]:
        # Takes this entry (by its own stash rev) out of the stash, as DVC's `get` would.
        executor = queue.init_executor(exp, entry, TempDirExecutor, wdir=queue._standalone_tmp_dir)
        done = queue._reproduce_entry(entry, executor, copy_paths=copy_paths, message=message)
        return {rev: ref for result in done.values() for rev, ref in result.items()}

    results = reproduce(exp)
    if results:
        exp._log_reproduced(results, tmp_dir=True)
    return results


class _StartLock:
    """Held from start until this run's entry is queued: trials started together would each
    wait on DVC's repository lock, which DVC gives up on after a few seconds."""

    def __init__(self) -> None:
        self._handle: Any = None

    def acquire(self, folder: Path) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self._handle = (folder / "mlpipe-exp-start.lock").open("a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


def main(argv: list[str]) -> int:
    from dvc.cli import main as dvc_main
    from dvc.repo.experiments import Experiments

    global _original
    _original = Experiments.reproduce_one
    Experiments.reproduce_one = _reproduce_own_entry
    _starting.acquire(Path(".dvc") / "tmp")
    try:
        return dvc_main(argv)
    finally:
        _starting.release()


_original: Any = None
_starting = _StartLock()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
