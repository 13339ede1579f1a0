"""The processed splits: reading them back with errors that name the file, and their digest."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlpipe.data.digests import file_digest, sha256_file
from mlpipe.data.specs import DatasetSpec
from mlpipe.errors import DataError
from mlpipe.paths import Layout

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

Split = tuple[np.ndarray, np.ndarray]  # a split's images and labels

# MLflow's names for what a dataset was used for (its UI shows them beside the dataset).
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def load_split(layout: Layout, split: str, spec: DatasetSpec) -> Split:
    """Images (uint8, the dataset's shape) and integer labels of one processed split."""
    path = layout.split_file(split)
    if not path.is_file():
        raise DataError(f"{path}: missing; run the preprocess stage first")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if isinstance(archive, np.lib.npyio.NpzFile) and not {"x", "y"} & set(archive.files):
                raise DataError(
                    f"{path}: a zip archive without the split's arrays x and y (it holds "
                    f"{', '.join(archive.files[:3]) or 'nothing'}): another program's "
                    "file, left as it is; move it away, then `dvc repro -f preprocess`"
                )
            x, y = archive["x"], archive["y"]
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as exc:
        raise DataError(
            f"{path}: truncated or corrupt ({exc}); run `dvc repro -f preprocess` to rebuild it"
        ) from exc
    if x.dtype != np.uint8 or x.shape[1:] != spec.image_shape or len(x) != len(y):
        raise DataError(
            f"{path}: expected uint8 images of shape {spec.image_shape} for {spec.name}, found "
            f"{x.dtype} {x.shape[1:]} with {len(y)} labels for {len(x)} images; "
            "run `dvc repro preprocess`"
        )
    if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
        raise DataError(f"{path}: labels outside 0..{spec.num_classes - 1}")
    return x, y


def dataset_input(layout: Layout, split: str, rows: int, spec: DatasetSpec) -> DatasetInput:
    """A split as an MLflow dataset input, so the runs table says what a run was trained on:
    its digest is DVC's hash of the file (md5), its source the file in the workspace."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    path = layout.split_file(split)
    source = path.relative_to(layout.root).as_posix()
    dataset = Dataset(
        name=f"{spec.name}-{split}",
        digest=file_digest(path, "md5"),
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps({"num_rows": rows}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", CONTEXTS[split])])


def data_digest(paths: list[Path]) -> str:
    """One SHA-256 over the given files' names and contents: names the exact data a run saw."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()
