"""preprocess: split the raw dataset into train, validation and test sets.

Reads: params.yaml (base.seed, base.dataset, preprocess.*); data/raw/<dataset>/.
Writes: data/processed/{train,val,test}.npz (uint8 images `x`, integer labels `y`) and
data/processed/summary.csv (samples per class in each split).
Run: `dvc repro preprocess`, or `python -m stages.preprocess` from the repository root.
"""

from __future__ import annotations

import logging

import numpy as np

from mlpipe.atomic import atomic_paths
from mlpipe.config import Params, load_params
from mlpipe.data.preprocessing import class_summary, preprocess
from mlpipe.data.raw import read_raw
from mlpipe.data.specs import SPECS
from mlpipe.paths import HERE, SPLITS, Layout
from mlpipe.runner import run_stage

log = logging.getLogger("preprocess")


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    raw = read_raw(spec, layout.raw_dir(spec.name))
    processed = preprocess(
        raw,
        validation_split=params.preprocess.validation_split,
        train_fraction=params.preprocess.train_fraction,
        seed=params.base.seed,
    )
    # All four appear together or not at all.
    with atomic_paths(*layout.split_files, layout.summary_file) as temps:
        for split, temp in zip(SPLITS, temps, strict=False):
            x, y = processed.split(split)
            np.savez(temp, x=x, y=y)
            log.info("%s: %d samples of shape %s", split, len(x), x.shape[1:])
        class_summary(processed, spec.class_names).to_csv(temps[-1], index=False)


if __name__ == "__main__":
    run_stage("preprocess", main)
