"""Decoding each dataset's original packaging, checked before anything large is allocated.

IDX (the original MNIST files), Keras's `mnist.npz` (judged from its array headers first) and
CIFAR-10's python batches. Decoding never unpickles arbitrary objects: CIFAR-10's batches are
read with an unpickler that accepts only plain containers and NumPy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.data.specs import MNIST
from mlpipe.errors import DataError


@dataclass(frozen=True)
class RawSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


_IDX_UBYTE = 0x08


def idx_header(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding here is for uint8 arrays (got {array.dtype})")
    return struct.pack(">HBB", 0, _IDX_UBYTE, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )


def idx_encode(array: np.ndarray) -> bytes:
    return idx_header(array) + np.ascontiguousarray(array).tobytes()


def idx_decode(data: bytes, source: str) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(data)} bytes)")
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != _IDX_UBYTE or not 1 <= ndim <= 4:
        raise DataError(f"{source}: not an unsigned-byte IDX file (bad magic number)")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{source}: IDX header is cut short")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(shape)) + header_size
    if len(data) != expected:
        raise DataError(
            f"{source}: IDX data is {len(data)} bytes, expected {expected} for shape {shape} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def content_md5(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """MD5 of each array's canonical IDX encoding, without building the encoding in memory."""
    digests = {}
    for name, array in arrays.items():
        digest = hashlib.md5(idx_header(array))
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
        digests[name] = digest.hexdigest()
    return digests


MNIST_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class NpyHeader:
    """What one array of an npz declares, read without loading it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    # Bytes the shape and dtype imply, and bytes the archive says follow the header.
    declared_bytes: int
    stored_bytes: int


def _npy_header(archive: zipfile.ZipFile, member: str) -> NpyHeader:
    info = archive.getinfo(member)
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"{member}: unknown .npy format version {version}")
        header_bytes = handle.tell()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return NpyHeader(tuple(shape), dtype, declared, info.file_size - header_bytes)


def npz_headers(path: Path, names: tuple[str, ...]) -> dict[str, NpyHeader]:
    """The header of each named array in an npz, reading a few bytes of each.

    This is what lets a checker refuse a wrong or hostile file before anything is allocated:
    `np.load` allocates whatever shape a header declares before reading a byte of data.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            missing = sorted(set(names) - {n.removesuffix(".npy") for n in archive.namelist()})
            if missing:
                raise DataError(f"{path}: not the dataset: lacks arrays {missing}")
            return {name: _npy_header(archive, f"{name}.npy") for name in names}
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        OSError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise DataError(
            f"{path}: not a readable .npz archive, truncated or corrupt ({exc})"
        ) from exc


def _array_problem(name: str, header: NpyHeader, image_shape: tuple[int, ...]) -> str | None:
    """Why this array cannot be the dataset's, or None when it could be."""
    wanted = image_shape if name.startswith("x_") else ()
    expected = f"uint8 {('N', *wanted)}".replace("'", "")
    if header.dtype != np.uint8 or header.shape[1:] != wanted or not header.shape:
        return f"{name} is {header.dtype} {header.shape}, expected {expected}"
    if header.declared_bytes != header.stored_bytes:
        return (
            f"{name} declares {header.shape} ({header.declared_bytes} bytes) "
            f"but holds {header.stored_bytes} bytes"
        )
    return None


def check_mnist_npz(path: Path, image_shape: tuple[int, ...], max_bytes: int) -> None:
    """Refuse, from the array headers alone, an npz that cannot hold the dataset.

    Checks dtype, shape, that each header agrees with the bytes stored, and that all arrays
    together fit in `max_bytes`; so a small file declaring a huge array costs nothing.
    """
    headers = npz_headers(path, MNIST_ARRAYS)
    for name, header in headers.items():
        problem = _array_problem(name, header, image_shape)
        if problem:
            raise DataError(f"{path}: not the dataset: {problem}")
    for part in ("train", "test"):
        images, labels = headers[f"x_{part}"].shape[0], headers[f"y_{part}"].shape[0]
        if images != labels:
            raise DataError(f"{path}: not the dataset: {labels} {part} labels for {images} images")
    total = sum(header.declared_bytes for header in headers.values())
    if total > max_bytes:
        raise DataError(
            f"{path}: not the dataset: its arrays hold {total} bytes, more than {max_bytes}"
        )


def read_mnist_npz(
    path: Path,
    image_shape: tuple[int, ...] = MNIST.image_shape,
    max_bytes: int = MNIST.files[0].cap,
) -> dict[str, np.ndarray]:
    """The four arrays of a Keras-style mnist.npz, checked from their headers before loading."""
    check_mnist_npz(path, image_shape, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in MNIST_ARRAYS}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path}: not a readable .npz archive, truncated or corrupt ({exc})"
        ) from exc


def read_idx_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file, truncated or corrupt ({exc})") from exc
    return idx_decode(data, str(path))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays, and refuses every other global."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.uint8)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise DataError(f"{source}: not a CIFAR-10 batch ({exc})") from exc
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
        raise DataError(f"{source}: unexpected CIFAR-10 batch shape {pixels.shape}")
    # Stored channels-first, row-major; Keras and matplotlib want height, width, channels.
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_tar(path: Path) -> RawSplits:
    train_x = []
    test: tuple[np.ndarray, np.ndarray] | None = None
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or not (
                    base.startswith("data_batch_") or base == "test_batch"
                ):
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                x, y = _read_cifar_batch(handle.read(), f"{path}:{member.name}")
                if base == "test_batch":
                    test = (x, y)
                else:
                    train_x.append((base, x, y))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path}: not a readable tar.gz archive, truncated or corrupt ({exc})"
        ) from exc
    if not train_x or test is None:
        raise DataError(f"{path}: lacks the data_batch_* and test_batch files of CIFAR-10")
    train_x.sort(key=lambda item: item[0])
    return RawSplits(
        x_train=np.concatenate([x for _, x, _ in train_x]),
        y_train=np.concatenate([y for _, _, y in train_x]),
        x_test=test[0],
        y_test=test[1],
    )
