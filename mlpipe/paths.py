"""Where the pipeline's files are, resolved once from a workspace root.

`dvc repro` runs every stage from the repository root, so `HERE` (the current folder when the
stage starts) is the default; tests hand a stage the `Layout` of a temporary folder instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import PipelineError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# A command's temp folders: mlpipe-<kind>-<host>-<pid>-<random>, so that the next command on
# this host removes those of a process killed before it could (kill -9 runs no cleanup); the
# host, because a temp folder shared between machines or containers shares no process ids.
SCRATCH = re.compile(r"mlpipe-([a-z]+)-([a-z0-9]+)-(\d+)-\w+")


@dataclass(frozen=True)
class Layout:
    """The files of one workspace: inputs, outputs and the params that drive them."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def raw_dir(self, dataset: str) -> Path:
        return self.root / "data" / "raw" / dataset

    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed"

    def split_file(self, split: str) -> Path:
        return self.processed_dir / f"{split}.npz"

    @property
    def split_files(self) -> list[Path]:
        return [self.split_file(split) for split in SPLITS]

    @property
    def summary_file(self) -> Path:
        return self.processed_dir / "summary.csv"

    @property
    def model_file(self) -> Path:
        return self.root / "models" / "model.keras"

    @property
    def run_record_file(self) -> Path:
        return self.root / "models" / "run.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def history_file(self) -> Path:
        return self.reports_dir / "history.csv"

    @property
    def metrics_file(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def per_class_file(self) -> Path:
        return self.reports_dir / "per_class.csv"

    @property
    def confusion_file(self) -> Path:
        return self.reports_dir / "confusion.csv"

    @property
    def predictions_file(self) -> Path:
        return self.reports_dir / "predictions.csv"

    @property
    def figures_dir(self) -> Path:
        return self.reports_dir / "figures"

    @property
    def workspace(self) -> Path:
        """The user's workspace, which may differ from the folder the stage runs in.

        `dvc exp run --queue` and `--temp` run stages in a throwaway copy under
        `<workspace>/.dvc/tmp/exps/`. Anything that must outlive the run (the MLflow store)
        belongs to the workspace. DVC names it in `DVC_ROOT` for queued runs; the path itself
        tells for the rest.
        """
        dvc_root = os.environ.get("DVC_ROOT")
        if dvc_root and ".dvc" not in Path(dvc_root).resolve().parts:
            return Path(dvc_root).resolve()
        parts = self.root.parts
        for index in range(len(parts) - 2):
            if parts[index : index + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:index])
        return self.root


def scratch_root() -> Path:
    """The folder for a command's temp files; PipelineError when Python found no writable temp
    folder and would use the current one (the workspace, which a reader must not write)."""
    root = Path(tempfile.gettempdir()).resolve()
    if root == Path.cwd().resolve():
        raise PipelineError(
            f"no writable temp folder (TMPDIR, /tmp, /var/tmp): {root} would be used, the current "
            "folder; set TMPDIR to a folder with room"
        )
    return root


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temp folder for one command's copies (a model, a store, figures), in `scratch_root`,
    named with this process's id; first, those of killed processes are removed."""
    root = scratch_root()
    removed = remove_orphaned_scratch()
    if removed:
        log.info("removed %d temp folders of killed runs from %s", len(removed), root)
    prefix = f"mlpipe-{kind}-{_host()}-{os.getpid()}-"
    return tempfile.TemporaryDirectory(prefix=prefix, dir=root)


def remove_orphaned_scratch() -> list[Path]:
    """Remove this user's temp folders whose process is gone; the ones removed."""
    removed = []
    for path in scratch_root().glob(f"mlpipe-*-{_host()}-*"):
        found = SCRATCH.fullmatch(path.name)
        if not found or found.group(2) != _host():
            continue
        pid = int(found.group(3))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _host() -> str:
    """This host, as a short tag: the hash of its whole name (cut names would collide)."""
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


HERE = Layout(Path.cwd().resolve())
