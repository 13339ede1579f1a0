"""Where the pipeline's files are, resolved once from a workspace root.

`dvc repro` runs every stage from the repository root, so `HERE` (the current folder when the
stage starts) is the default; tests hand a stage the `Layout` of a temporary folder instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import PipelineError

SPLITS = ("train", "val", "test")


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


HERE = Layout(Path.cwd().resolve())
