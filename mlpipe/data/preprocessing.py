"""Pure functions that turn raw splits into the train, validation and test sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlpipe.data.formats import RawSplits
from mlpipe.errors import ConfigError
from mlpipe.paths import SPLITS


@dataclass(frozen=True)
class Processed:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split, by its name in `mlpipe.paths.SPLITS`."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of each class held out, chosen by `seed`.

    Each class contributes round(fraction * count) samples, at least one when the class has
    two or more, so every class is seen in both parts. Indices come back sorted, so the order
    of the data is the dataset's own and only membership depends on the seed.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = round(fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out, assume_unique=True)
    return kept, held_out


def preprocess(
    raw: RawSplits, validation_split: float, train_fraction: float, seed: int
) -> Processed:
    """Subsample the training set (stratified) if asked, then hold out a validation set.

    Pixels stay uint8: scaling is the model's job, so a served model takes images as users
    have them. Labels stay integers.
    """
    x, y = raw.x_train, raw.y_train.astype(np.uint8)
    if train_fraction < 1.0:
        _, keep = stratified_split(y, train_fraction, seed)
        x, y = x[keep], y[keep]
    # A different stream from the subsampling one, so the two choices are independent.
    train, val = stratified_split(y, validation_split, seed + 1)
    for part, count in (("validation", len(val)), ("training", len(train))):
        if count == 0:
            raise ConfigError(
                f"params.yaml: preprocess.train_fraction {train_fraction} with "
                f"preprocess.validation_split {validation_split} leaves {len(y)} training "
                f"images and an empty {part} set; raise train_fraction or change validation_split"
            )
    return Processed(
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=raw.x_test,
        y_test=raw.y_test.astype(np.uint8),
    )


def class_summary(processed: Processed, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Samples per class in each split, one row per class."""
    counts = {
        split: np.bincount(processed.split(split)[1], minlength=len(class_names))
        for split in SPLITS
    }
    return pd.DataFrame(
        {
            "class": np.arange(len(class_names)),
            "name": list(class_names),
            "train": counts["train"],
            "validation": counts["val"],
            "test": counts["test"],
        }
    )
