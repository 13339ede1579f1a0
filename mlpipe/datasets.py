"""The three datasets: where they come from, how they are checked and how they are decoded.

Each dataset is kept in its original packaging: the Keras `mnist.npz`, the four gzipped IDX
files of Fashion-MNIST, the CIFAR-10 python `tar.gz`. Decoding never unpickles arbitrary
objects: CIFAR-10's batches are read with an unpickler that accepts only plain containers and
NumPy arrays.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mlpipe.errors import DataError

KERAS_BUCKET = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published: its name, canonical address, SHA-256 and size.

    The size bounds a download: a source that sends more is cut off rather than allowed to
    fill the disk.
    """

    name: str
    url: str
    sha256: str
    # Bytes of the published file.
    size: int
    # Where Keras's own `load_data()` caches it, relative to `<KERAS_HOME>/datasets/`.
    keras_cache: tuple[str, ...] = ()
    # The largest copy accepted, where a mirror may re-pack the same content into other
    # bytes (an uncompressed npz, say); None accepts nothing bigger than the published file.
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"{self.name}: size must be positive, got {self.size}")
        if self.max_size is not None and self.max_size < self.size:
            raise ValueError(
                f"{self.name}: max_size {self.max_size} is below the published size {self.size}"
            )

    @property
    def cap(self) -> int:
        """The most bytes any source may deliver for this file."""
        return self.max_size or self.size


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    packaging: Literal["npz", "idx_gz", "cifar_tar"]
    files: tuple[RemoteFile, ...]
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    # MD5 of each array re-encoded as its canonical IDX file. A mirror may re-pack a dataset
    # (other bytes, same arrays); these let us accept it on content rather than on bytes.
    content_md5: Mapping[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


MNIST = DatasetSpec(
    name="mnist",
    packaging="npz",
    files=(
        RemoteFile(
            name="mnist.npz",
            url=KERAS_BUCKET + "mnist.npz",
            sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            size=11_490_434,
            keras_cache=("mnist.npz",),
            # The same arrays stored uncompressed take about 55 MB; allow that re-packing.
            max_size=64 * 2**20,
        ),
    ),
    image_shape=(28, 28),
    class_names=tuple(str(digit) for digit in range(10)),
    content_md5={
        "x_train": "6bbc9ace898e44ae57da46a324031adb",
        "y_train": "a25bea736e30d166cdddb491f175f624",
        "x_test": "2646ac647ad5339dbf082846283269ea",
        "y_test": "27ae3e4e09519cfbb04c329615203637",
    },
)

# Keras does not pin these; the SHA-256s are those published with the files and used by other
# dataset loaders (checked against two independent listings), with the files' sizes in bytes.
_FASHION_FILES = {
    "train-labels-idx1-ubyte.gz": (
        "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        29_515,
    ),
    "train-images-idx3-ubyte.gz": (
        "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        26_421_880,
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        5_148,
    ),
    "t10k-images-idx3-ubyte.gz": (
        "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        4_422_102,
    ),
}

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    packaging="idx_gz",
    files=tuple(
        RemoteFile(
            name=name,
            url=KERAS_BUCKET + name,
            sha256=sha256,
            size=size,
            keras_cache=(f"fashion-mnist/{name}",),
        )
        for name, (sha256, size) in _FASHION_FILES.items()
    ),
    image_shape=(28, 28),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    packaging="cifar_tar",
    files=(
        RemoteFile(
            name="cifar-10-python.tar.gz",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            size=170_498_071,
            # Keras 3.x keeps the archive under this name; older versions used the second.
            keras_cache=("cifar-10-batches-py-target_archive", "cifar-10-batches-py.tar.gz"),
        ),
    ),
    image_shape=(32, 32, 3),
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
)

SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST, CIFAR10)}


@dataclass(frozen=True)
class RawSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ---------------------------------------------------------------------------------------------
# IDX, the format of the original MNIST files: a magic number (two zero bytes, a type code,
# the number of dimensions), the dimensions as big-endian int32, then the raw data.

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


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes, read in blocks (md5 is what DVC's hashes are)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Decoding each packaging.


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


def _read_idx_gz(path: Path) -> np.ndarray:
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
            x_train=_read_idx_gz(folder / "train-images-idx3-ubyte.gz"),
            y_train=_read_idx_gz(folder / "train-labels-idx1-ubyte.gz"),
            x_test=_read_idx_gz(folder / "t10k-images-idx3-ubyte.gz"),
            y_test=_read_idx_gz(folder / "t10k-labels-idx1-ubyte.gz"),
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
