"""preprocess: split the raw dataset into train, validation and test sets.

Reads: params.yaml (base.seed, base.dataset, preprocess.*); data/raw/<dataset>/.
Writes: data/processed/{train,val,test}.npz (uint8 images `x`, integer labels `y`) and
data/processed/summary.csv (samples per class in each split).
Run: `dvc repro preprocess`, or `python -m stages.preprocess` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.atomic import atomic_paths
from mlpipe.cli import run_stage
from mlpipe.config import load_params
from mlpipe.data import processed_file
from mlpipe.datasets import SPECS, read_raw
from mlpipe.paths import PROCESSED_DIR, RAW_DIR
from mlpipe.preprocessing import class_summary, preprocess

log = logging.getLogger("preprocess")


def main() -> None:
    params = load_params()
    spec = SPECS[params.base.dataset]
    raw = read_raw(spec, RAW_DIR / spec.name)
    processed = preprocess(
        raw,
        validation_split=params.preprocess.validation_split,
        train_fraction=params.preprocess.train_fraction,
        seed=params.base.seed,
    )
    import numpy as np

    splits = ("train", "val", "test")
    finals = [processed_file(split) for split in splits] + [PROCESSED_DIR / "summary.csv"]
    # All four appear together or not at all.
    with atomic_paths(*finals) as temps:
        for split, temp in zip(splits, temps, strict=False):
            x = getattr(processed, f"x_{split}")
            np.savez(temp, x=x, y=getattr(processed, f"y_{split}"))
            log.info("%s: %d samples of shape %s", split, len(x), x.shape[1:])
        class_summary(processed, spec.class_names).to_csv(temps[-1], index=False)


if __name__ == "__main__":
    run_stage("preprocess", main)
