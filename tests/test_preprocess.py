"""Splitting raw data into train, validation and test sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlpipe.data.formats import RawSplits
from mlpipe.data.preprocessing import class_summary, preprocess, stratified_split
from mlpipe.data.raw import manifest_text, read_raw
from mlpipe.data.specs import SPECS
from mlpipe.errors import DataError
from tests.conftest import error_lines, files_under, run_stage
from tests.fakes import WRITERS, tiny_arrays, write_raw


def raw_splits(n_train: int = 200, shape: tuple[int, ...] = (28, 28)) -> RawSplits:
    return RawSplits(**tiny_arrays(shape, n_train=n_train, n_test=30))


def test_shapes_dtypes_labels_and_sizes() -> None:
    out = preprocess(raw_splits(), validation_split=0.1, train_fraction=1.0, seed=1)
    assert out.x_train.shape == (180, 28, 28) and out.x_val.shape == (20, 28, 28)
    assert out.x_test.shape == (30, 28, 28)
    for part in ("train", "val", "test"):
        assert getattr(out, f"x_{part}").dtype == np.uint8
        assert getattr(out, f"y_{part}").dtype == np.uint8
        assert set(getattr(out, f"y_{part}").tolist()) == set(range(10))


def test_split_is_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), [100, 50, 30, 20, 10, 100, 50, 30, 20, 10])
    kept, held = stratified_split(labels, 0.1, seed=3)
    assert np.intersect1d(kept, held).size == 0
    assert len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [10, 5, 3, 2, 1, 10, 5, 3, 2, 1]


def test_same_seed_same_split_other_seed_other_split() -> None:
    raw = raw_splits()
    first = preprocess(raw, 0.2, 1.0, seed=7)
    again = preprocess(raw, 0.2, 1.0, seed=7)
    other = preprocess(raw, 0.2, 1.0, seed=8)
    assert np.array_equal(first.x_val, again.x_val) and np.array_equal(first.y_train, again.y_train)
    assert not np.array_equal(first.x_val, other.x_val)


def test_train_fraction_subsamples_by_class() -> None:
    out = preprocess(raw_splits(n_train=1000), validation_split=0.1, train_fraction=0.3, seed=1)
    assert len(out.y_train) + len(out.y_val) == 300
    assert np.bincount(out.y_train).tolist() == [27] * 10
    assert len(out.y_test) == 30


def test_pixels_are_kept_raw() -> None:
    raw = raw_splits()
    out = preprocess(raw, 0.1, 1.0, seed=0)
    assert np.array_equal(out.x_test, raw.x_test)
    assert out.x_train.max() > 1


def test_class_summary_counts_each_split() -> None:
    out = preprocess(raw_splits(), 0.1, 1.0, seed=0)
    table = class_summary(out, SPECS["fashion_mnist"].class_names)
    assert list(table.columns) == ["class", "name", "train", "validation", "test"]
    assert table["name"].iloc[9] == "Ankle boot"
    assert table[["train", "validation", "test"]].sum().tolist() == [180, 20, 30]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_stage_writes_processed_arrays_for_each_dataset(workspace: Path, name: str) -> None:
    text = (workspace / "params.yaml").read_text().replace("dataset: mnist", f"dataset: {name}")
    (workspace / "params.yaml").write_text(text)
    spec = write_raw(workspace / "data" / "raw" / name, name)
    result = run_stage(workspace, "preprocess")
    assert result.returncode == 0, result.stderr
    processed = workspace / "data" / "processed"
    assert files_under(processed) == ["summary.csv", "test.npz", "train.npz", "val.npz"]
    with np.load(processed / "train.npz") as train:
        assert train["x"].shape[1:] == spec.image_shape
        assert train["x"].dtype == np.uint8
    summary = pd.read_csv(processed / "summary.csv", dtype={"name": str})
    assert summary["name"].tolist() == list(spec.class_names)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_damaged_raw_file_is_named(tmp_path: Path, name: str, damage: str) -> None:
    spec = write_raw(tmp_path, name)
    path = tmp_path / spec.files[-1].name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: changed since it was downloaded"):
        read_raw(spec, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_damaged_file_is_named_by_the_decoder_too(tmp_path: Path, name: str, damage: str) -> None:
    """Even past the manifest (a file damaged before it was recorded), decoding names the file."""
    spec = WRITERS[name](tmp_path)
    path = tmp_path / spec.files[-1].name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    (tmp_path / "SHA256SUMS").write_text(manifest_text(tmp_path, [f.name for f in spec.files]))
    with pytest.raises(DataError, match=str(path)):
        read_raw(spec, tmp_path)


def test_stage_without_raw_data_says_run_download(workspace: Path) -> None:
    result = run_stage(workspace, "preprocess")
    assert result.returncode == 1
    assert len(error_lines(result.stderr)) == 1
    assert "run the download stage first" in result.stderr
    assert files_under(workspace / "data") == []
