"""download: fetch the dataset named by `base.dataset`, verified, into data/raw/<dataset>/.

Reads: params.yaml (base.dataset); the DATA_MIRROR environment variable, when set.
Writes: data/raw/<dataset>/ with the dataset's files in their original packaging, and a
SHA256SUMS manifest of them that later stages check.
Run: `dvc repro download`, or `python -m stages.download` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.cli import run_stage
from mlpipe.config import load_params
from mlpipe.datasets import SPECS
from mlpipe.download import download_dataset
from mlpipe.paths import RAW_DIR

log = logging.getLogger("download")


def main() -> None:
    params = load_params()
    spec = SPECS[params.base.dataset]
    folder = RAW_DIR / spec.name
    download_dataset(spec, folder)
    log.info("%s: %d file(s) verified in %s", spec.name, len(spec.files), folder)


if __name__ == "__main__":
    run_stage("download", main)
