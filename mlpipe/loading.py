"""Loading a saved Keras model safely, with errors a user can act on."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import ModelError

if TYPE_CHECKING:
    import keras


def load_keras_model(path: Path) -> keras.Model:
    """Load a `.keras` archive for inference: no compile, `safe_mode` on (no Lambda code).

    A missing file, a file that is not a Keras archive, a damaged archive and one that needs
    unsafe deserialisation each get a one-line error naming the file.
    """
    if not path.is_file():
        raise ModelError(f"{path}: no such model file; run the train stage first")
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
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(f"{path}: damaged Keras archive ({exc})") from None
    if broken is not None:
        raise ModelError(f"{path}: damaged Keras archive (bad CRC in {broken})")
    if "config.json" not in names:
        raise ModelError(f"{path}: not a Keras archive (no config.json inside)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise ModelError(
                f"{path}: refused, the model holds a Lambda layer (arbitrary code); "
                "safe_mode forbids loading it"
            ) from None
        raise ModelError(f"{path}: cannot be loaded ({text.splitlines()[0]})") from None
    except Exception as exc:  # Keras raises many types for damaged contents.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot be loaded ({first})") from None
