"""Where a dataset file may come from, in the order they are tried.

The `DATA_MIRROR` folder or URL when set; Keras's own dataset cache, where a user who ran the
tutorial already has the files; the canonical address. Credentials in a mirror URL never
reach a label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlpipe.data.specs import RemoteFile
from mlpipe.errors import DownloadError, redact

MIRROR_ENV = "DATA_MIRROR"


@dataclass(frozen=True)
class Source:
    label: str
    location: str
    canonical: bool = False

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


def keras_cache_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def mirror_location() -> str | None:
    """The mirror named by DATA_MIRROR, checked; None when unset."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return None
    if mirror.startswith(("http://", "https://")):
        return mirror
    path = Path(mirror.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise DownloadError(f"{MIRROR_ENV}={redact(mirror)} is not a directory or an http(s) URL")
    return str(path.resolve())


def _file_in(mirror: str, name: str) -> str:
    """`name` inside a mirror folder or URL; a URL keeps its query (`?token=...`) at the end."""
    if "://" not in mirror:
        return str(Path(mirror) / name)
    parts = urlsplit(mirror)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def sources(remote: RemoteFile) -> list[Source]:
    found: list[Source] = []
    mirror = mirror_location()
    if mirror is not None:
        location = _file_in(mirror, remote.name)
        found.append(Source(f"{MIRROR_ENV} ({redact(mirror)})", location))
    cache = keras_cache_dir()
    for relative in remote.keras_cache:
        found.append(Source(f"Keras cache ({cache})", str(cache / relative)))
    found.append(Source("canonical address", remote.url, canonical=True))
    return found
