"""Paths of the pipeline, resolved once from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

# Stages run from the repository root, as `dvc repro` runs them; tests point them at a
# temporary copy of the layout by changing the working directory.
ROOT = Path.cwd().resolve()
PARAMS_FILE = ROOT / "params.yaml"

RAW_DIR = ROOT / "data" / "raw"
PROCESSED_DIR = ROOT / "data" / "processed"
MODELS_DIR = ROOT / "models"
REPORTS_DIR = ROOT / "reports"
FIGURES_DIR = REPORTS_DIR / "figures"

MODEL_FILE = MODELS_DIR / "model.keras"
RUN_INFO_FILE = MODELS_DIR / "run.json"
HISTORY_FILE = REPORTS_DIR / "history.csv"
METRICS_FILE = REPORTS_DIR / "metrics.json"
PER_CLASS_FILE = REPORTS_DIR / "per_class.csv"
CONFUSION_FILE = REPORTS_DIR / "confusion.csv"
PREDICTIONS_FILE = REPORTS_DIR / "predictions.csv"


def workspace_root(root: Path = ROOT) -> Path:
    """The user's workspace, which may differ from the folder the code runs in.

    `dvc exp run --queue` and `--temp` run stages in a throwaway copy under
    `<workspace>/.dvc/tmp/exps/`. Anything that must outlive the run (the MLflow store) belongs
    to the workspace. DVC names it in `DVC_ROOT` for queued runs; the path itself tells for the
    rest.
    """
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and not _inside_exp_copy(Path(dvc_root)):
        return Path(dvc_root).resolve()
    parts = root.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return root


def _inside_exp_copy(path: Path) -> bool:
    return ".dvc" in path.resolve().parts
