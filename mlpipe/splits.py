"""The processed splits: reading them back with errors that name the file, and their digest."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from mlpipe.datasets import DatasetSpec, sha256_file
from mlpipe.errors import DataError
from mlpipe.paths import Layout


def load_split(layout: Layout, split: str, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, the dataset's shape) and integer labels of one processed split."""
    path = layout.split_file(split)
    if not path.is_file():
        raise DataError(f"{path}: missing; run the preprocess stage first")
    try:
        with np.load(path, allow_pickle=False) as archive:
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


def data_digest(paths: list[Path]) -> str:
    """One SHA-256 over the given files' names and contents: names the exact data a run saw."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()
