"""Loading a saved Keras model safely, with errors a user can act on.

The archive is judged from its zip directory before Keras reads a byte of it, so the check
costs the same however much a member claims to hold: too many members, more than
MAX_UNCOMPRESSED declared in all, or a member that declares far more than deflate could give
from what it stores, are refused without decompressing anything. zipfile never inflates a
member past its declared size, so these bounds also bound what Keras reads. Damage inside a
member is found while Keras reads it (zipfile checks each CRC then) and reported the same way.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import ModelError, first_line

if TYPE_CHECKING:
    import keras

    from mlpipe.model.numpy_forward import NumpyModel

# A Keras archive holds a config, a metadata file, the weights and maybe a few assets.
MAX_MEMBERS = 1_000
# This project's models are megabytes; 2 GiB leaves room for far larger ones.
MAX_UNCOMPRESSED = 2 * 1024**3
# Keras stores members uncompressed, and deflate cannot exceed about 1032:1; a large member
# declaring more than MAX_RATIO times what it stores is a bomb or a lie.
MAX_RATIO = 100
RATIO_FLOOR = 16 * 1024**2


def _require_regular_file(path: Path) -> None:
    """Refuse a missing path, a folder or a special file before opening it (a FIFO would block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file; run the train stage first") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise ModelError(f"{path}: is a directory, not a .keras file")
    if not stat.S_ISREG(mode):
        raise ModelError(f"{path}: is not a regular file, so not a .keras file")


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def _check_entries(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive whose directory promises more than a model could hold; reads no data."""
    if len(entries) > MAX_MEMBERS:
        raise ModelError(
            f"{path}: refused, {len(entries):,} members (a Keras archive has a handful; "
            f"limit {MAX_MEMBERS:,})"
        )
    total = sum(entry.file_size for entry in entries)
    if total > MAX_UNCOMPRESSED:
        raise ModelError(
            f"{path}: refused, its members declare {_gib(total)} uncompressed "
            f"(limit {_gib(MAX_UNCOMPRESSED)}); a possible decompression bomb"
        )
    for entry in entries:
        if entry.file_size > RATIO_FLOOR and entry.file_size > MAX_RATIO * entry.compress_size:
            raise ModelError(
                f"{path}: refused, member {entry.filename!r} declares {entry.file_size:,} bytes "
                f"from {entry.compress_size:,} stored (over {MAX_RATIO}:1); "
                "a possible decompression bomb"
            )


def _read_directory(path: Path) -> None:
    """Check the zip directory and that a Keras config is listed, decompressing nothing."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            starts_like_zip = handle.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            raise ModelError(
                f"{path}: damaged Keras archive (truncated: its zip directory is missing)"
            )
        raise ModelError(f"{path}: not a Keras archive (.keras files are zip archives)")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(f"{path}: damaged Keras archive ({exc})") from exc
    _check_entries(path, entries)
    if "config.json" not in {entry.filename for entry in entries}:
        raise ModelError(f"{path}: not a Keras archive (no config.json inside)")


def load_for_inference(path: Path) -> NumpyModel | keras.Model:
    """The model in a `.keras` archive, ready to predict, checked as `load_keras_model` checks.

    A model of the layers this project builds runs in NumPy (`mlpipe.model.numpy_forward`), without
    importing TensorFlow; any other is loaded by Keras, in safe mode. Both give the same
    `input_shape`, `output_shape` and `predict`.
    """
    _require_regular_file(path)
    _read_directory(path)

    from mlpipe.model import numpy_forward

    try:
        return numpy_forward.read(path)
    except numpy_forward.Unsupported:
        return _load_with_keras(path)  # checked above
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ModelError(f"{path}: damaged Keras archive ({exc})") from exc
    except MemoryError:
        raise  # the runner's advice (smaller batches) fits it better
    except Exception as exc:  # json, h5py and a missing or misshapen weight raise many types.
        raise ModelError(f"{path}: cannot be loaded ({first_line(exc)})") from exc


def load_keras_model(path: Path) -> keras.Model:
    """Load a `.keras` archive for inference: no compile, `safe_mode` on (no Lambda code).

    A missing file, a folder, a file that is not a Keras archive, an archive that declares
    more than a model could hold, a damaged archive and one that needs unsafe deserialisation
    each get a one-line error naming the file.
    """
    _require_regular_file(path)
    _read_directory(path)
    return _load_with_keras(path)


def _load_with_keras(path: Path) -> keras.Model:
    """`load_keras_model` for an archive whose file and directory are already checked."""
    from mlpipe.model.keras_import import import_keras

    keras = import_keras()

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ModelError(f"{path}: damaged Keras archive ({exc})") from exc
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise ModelError(
                f"{path}: refused, the model holds a Lambda layer (arbitrary code); "
                "safe_mode forbids loading it"
            ) from exc
        raise ModelError(f"{path}: cannot be loaded ({first_line(exc)})") from exc
    except Exception as exc:  # Keras raises many types for damaged contents.
        raise ModelError(f"{path}: cannot be loaded ({first_line(exc)})") from exc


def check_output_count(
    model: NumpyModel | keras.Model, num_classes: int, source: str, fix: str
) -> None:
    """Refuse a model made for another dataset (another class count) before it is used."""
    shape = model.output_shape
    if not isinstance(shape, tuple):
        raise ModelError(f"{source}: has {len(shape)} outputs; a classifier has a single one")
    if shape[-1] != num_classes:
        raise ModelError(
            f"{source}: gives {shape[-1]} outputs per image, but the dataset has "
            f"{num_classes} classes; {fix}"
        )


def check_input_shape(
    model: NumpyModel | keras.Model, dataset: str, image_shape: tuple[int, ...], source: str
) -> None:
    """Refuse a model made for images of another shape (another dataset) before it is used."""
    if tuple(model.input_shape[1:]) != image_shape:
        raise ModelError(
            f"{source}: takes images of shape {tuple(model.input_shape[1:])}, "
            f"but {dataset} has {image_shape}; run the train stage again"
        )
