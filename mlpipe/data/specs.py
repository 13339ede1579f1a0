"""The three datasets as published: where each file comes from, its hash and size, its classes.

Each dataset is kept in its original packaging (see `mlpipe.data.formats`): the Keras
`mnist.npz`, the four gzipped IDX files of Fashion-MNIST, the CIFAR-10 python `tar.gz`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

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
