"""A dataset's raw files as the download stage left them: their manifest, and read back whole.

The download stage records each verified file's SHA-256 in a manifest; preprocess checks the
files against it before decoding, so corruption at rest is caught and named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlpipe.data.digests import sha256_file
from mlpipe.data.formats import RawSplits, read_cifar_tar, read_idx_gz, read_mnist_npz
from mlpipe.data.specs import DatasetSpec
from mlpipe.errors import DataError

MANIFEST = "SHA256SUMS"


def manifest_text(folder: Path, names: list[str]) -> str:
    """`sha256sum` lines for the named files, recorded once they have been verified."""
    return "".join(f"{sha256_file(folder / name)}  {name}\n" for name in sorted(names))


def check_manifest(spec: DatasetSpec, folder: Path) -> None:
    """Fail, naming the file, if a raw file is missing or changed since it was verified."""
    for remote in spec.files:
        if not (folder / remote.name).is_file():
            raise DataError(f"{folder / remote.name}: missing; run the download stage first")
    try:
        lines = (folder / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{folder / MANIFEST}: missing or unreadable; run the download stage again"
        ) from exc
    recorded = dict(reversed(line.split("  ", 1)) for line in lines if "  " in line)
    for remote in spec.files:
        path = folder / remote.name
        expected = recorded.get(remote.name)
        found = sha256_file(path)
        if found != expected:
            raise DataError(
                f"{path}: changed since it was downloaded and verified (sha256 {found}, "
                f"manifest says {expected}); run `dvc repro -f download` to fetch it again"
            )


def read_raw(spec: DatasetSpec, folder: Path) -> RawSplits:
    """Decode a dataset from its original, verified files in `folder` and check its shapes."""
    check_manifest(spec, folder)
    if spec.packaging == "npz":
        splits = RawSplits(**read_mnist_npz(folder / spec.files[0].name))
    elif spec.packaging == "idx_gz":
        splits = RawSplits(
            x_train=read_idx_gz(folder / "train-images-idx3-ubyte.gz"),
            y_train=read_idx_gz(folder / "train-labels-idx1-ubyte.gz"),
            x_test=read_idx_gz(folder / "t10k-images-idx3-ubyte.gz"),
            y_test=read_idx_gz(folder / "t10k-labels-idx1-ubyte.gz"),
        )
    else:
        splits = read_cifar_tar(folder / spec.files[0].name)
    _check_shapes(spec, splits, folder)
    return splits


def _check_shapes(spec: DatasetSpec, splits: RawSplits, folder: Path) -> None:
    for part in ("train", "test"):
        x = getattr(splits, f"x_{part}")
        y = getattr(splits, f"y_{part}")
        if x.dtype != np.uint8 or x.shape[1:] != spec.image_shape:
            raise DataError(
                f"{folder}: {part} images should be uint8 of shape (N, "
                f"{', '.join(map(str, spec.image_shape))}), found {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{folder}: {len(y)} {part} labels for {len(x)} images")
        if len(y) and int(y.max()) >= spec.num_classes:
            raise DataError(
                f"{folder}: {part} label {int(y.max())} is out of range 0..{spec.num_classes - 1}"
            )
