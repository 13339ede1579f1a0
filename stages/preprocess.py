"""preprocess: split the raw dataset into train, validation and test sets.

Reads: params.yaml (base.seed, base.dataset, preprocess.*); data/raw/<dataset>/.
Writes: data/processed/{train,val,test}.npz (uint8 images `x`, integer labels `y`) and
data/processed/summary.csv (samples per class in each split).
Run: `dvc repro preprocess`, or `python -m stages.preprocess` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.atomic import write_csv, write_npz
from mlpipe.cli import run_stage
from mlpipe.config import load_params
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
    for split in ("train", "val", "test"):
        x = getattr(processed, f"x_{split}")
        y = getattr(processed, f"y_{split}")
        write_npz(PROCESSED_DIR / f"{split}.npz", x=x, y=y)
        log.info("%s: %d samples of shape %s", split, len(x), x.shape[1:])
    write_csv(PROCESSED_DIR / "summary.csv", class_summary(processed, spec.class_names))


if __name__ == "__main__":
    run_stage("preprocess", main)
