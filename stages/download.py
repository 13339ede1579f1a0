"""download: fetch the dataset named by `base.dataset`, verified, into data/raw/<dataset>/.

Reads: params.yaml (base.dataset); the DATA_MIRROR environment variable, when set.
Writes: data/raw/<dataset>/ with the dataset's files in their original packaging, and a
SHA256SUMS manifest of them that later stages check.
Run: `dvc repro download`, or `python -m stages.download` from the repository root.
"""

from __future__ import annotations

import logging

from mlpipe.config import Params, load_params
from mlpipe.data.download import download_dataset
from mlpipe.data.specs import SPECS
from mlpipe.paths import HERE, Layout
from mlpipe.runner import run_stage

log = logging.getLogger("download")


def main(layout: Layout = HERE, params: Params | None = None) -> None:
    params = params or load_params(layout.params_file)
    spec = SPECS[params.base.dataset]
    folder = layout.raw_dir(spec.name)
    download_dataset(spec, folder)
    log.info("%s: %d file(s) verified in %s", spec.name, len(spec.files), folder)


if __name__ == "__main__":
    run_stage("download", main)
