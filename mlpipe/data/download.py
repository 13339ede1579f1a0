"""Placing a verified copy of each dataset file, from the first source that has one.

Every candidate (`mlpipe.data.sources`) is copied or streamed (`mlpipe.data.http_fetch`) to a
temp file beside its final name, verified against the published hash or, for a re-packed
mirror copy, against the canonical content, and only then renamed into place.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from mlpipe.atomic import atomic_path, write_text
from mlpipe.data.digests import sha256_file
from mlpipe.data.formats import content_md5, read_mnist_npz
from mlpipe.data.http_fetch import NotThere, session, stream
from mlpipe.data.raw import MANIFEST, manifest_text
from mlpipe.data.sources import MIRROR_ENV, Source, sources
from mlpipe.data.specs import DatasetSpec, RemoteFile
from mlpipe.errors import DataError, DownloadError, redact

log = logging.getLogger(__name__)


def looks_like_html(path: Path) -> bool:
    """Whether the file starts as a web page: what a login wall or an error page sends."""
    with open(path, "rb") as handle:
        head = handle.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<") and (b"<html" in head or b"<!doctype html" in head)


def verify(
    spec: DatasetSpec, remote: RemoteFile, path: Path, *, canonical: bool, shown: str = ""
) -> str:
    """Accept `path` as `remote` or raise DataError saying what was expected and found.

    Returns how it was accepted. A canonical download must match the pinned SHA-256. A copy
    from a mirror or cache may be a re-packing: it is accepted when its decoded arrays match
    the canonical content, where the dataset publishes content digests. Errors name `shown`
    (the source the user gave, for a copy in a temp file), else `path`.
    """
    shown = shown or str(path)
    digest = sha256_file(path)
    if digest == remote.sha256:
        return "sha256 matches"
    size = path.stat().st_size
    if looks_like_html(path):
        raise DataError(f"{shown}: an HTML page ({size} bytes), not the dataset")
    if canonical or not spec.content_md5:
        raise DataError(
            f"{shown}: sha256 mismatch: expected {remote.sha256}, found {digest} "
            f"({size} bytes); truncated, corrupt or not the published file"
        )
    try:
        found = content_md5(read_mnist_npz(path, spec.image_shape, remote.cap))
    except DataError as exc:
        reason = str(exc).removeprefix(f"{path}: ")  # the readers name the file they read
        raise DataError(
            f"{shown}: sha256 differs and the content cannot be read: {reason}"
        ) from exc
    wrong = sorted(name for name, md5 in spec.content_md5.items() if found.get(name) != md5)
    if wrong:
        raise DataError(
            f"{shown}: neither bytes nor content match the canonical {spec.name}: "
            f"arrays {', '.join(wrong)} differ (expected IDX MD5 "
            f"{', '.join(spec.content_md5[name] for name in wrong)})"
        )
    return "re-packed, content matches the canonical IDX MD5s"


def _copy_or_download(
    source: Source, target: Path, remote: RemoteFile, http: requests.Session
) -> None:
    if source.is_url:
        stream(http, source.location, target, remote)
        return
    origin = Path(source.location)
    if not origin.is_file():
        raise NotThere(f"{origin} does not exist")
    size = origin.stat().st_size
    if size > remote.cap:
        raise DataError(
            f"{origin}: {size} bytes, more than the {remote.cap} a copy of {remote.name} "
            "can be; not the dataset, not copied"
        )
    shutil.copyfile(origin, target)


@contextmanager
def _naming_full_disk(name: str, folder: Path) -> Iterator[None]:
    """Turn "no space left" into one line naming the file and the folder it was going into.

    A full disk fails every source alike, so it ends the download instead of trying the next.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DownloadError(
            f"no space left on device writing {name} into {folder}; free some space there "
            "and run again"
        ) from exc


def fetch(
    spec: DatasetSpec, remote: RemoteFile, folder: Path, http: requests.Session | None = None
) -> str:
    """Place a verified `remote` in `folder`; returns the label of the source that served it."""
    final = folder / remote.name
    if final.is_file():
        try:
            how = verify(spec, remote, final, canonical=False)
        except DataError as exc:
            log.warning("%s: existing copy rejected (%s); fetching again", final, exc)
        else:
            log.info("%s: already present (%s)", final, how)
            return "existing copy"
    with _naming_full_disk(remote.name, folder):
        return _first_verified(spec, remote, final, http or session())


def _first_verified(
    spec: DatasetSpec, remote: RemoteFile, final: Path, http: requests.Session
) -> str:
    """Try each source in turn until one gives a verified copy; one line per rejection."""
    problems = []
    for source in sources(remote):
        try:
            with atomic_path(final) as temp:
                _copy_or_download(source, temp, remote, http)
                shown = redact(source.location)  # what the user gave, not the temp file
                how = verify(spec, remote, temp, canonical=source.canonical, shown=shown)
        except NotThere as exc:
            # A folder's label names it already; an address says what it answered (404).
            problems.append(f"{source.label}: {redact(str(exc)) if source.is_url else 'no copy'}")
            continue
        except (DataError, DownloadError) as exc:
            log.warning("%s from %s rejected: %s", remote.name, source.label, redact(str(exc)))
            problems.append(f"{source.label}: {redact(str(exc))}")
            continue
        log.info("%s: served by %s, %s", remote.name, source.label, how)
        return source.label
    hint = (
        ""
        if os.environ.get(MIRROR_ENV)
        else f"; offline? set {MIRROR_ENV} to a folder or URL holding {remote.name} "
        '(README: "Offline: a data mirror")'
    )
    raise DownloadError(f"no source gave a verified {remote.name}: " + "; ".join(problems) + hint)


def download_dataset(
    spec: DatasetSpec, folder: Path, http: requests.Session | None = None
) -> list[str]:
    """Fetch every file of `spec` into `folder`, then record their hashes in a manifest.

    Later stages check the files against the manifest, so corruption at rest is caught.
    Returns the label of the source that served each file.
    """
    http = http or session()
    served = [fetch(spec, remote, folder, http) for remote in spec.files]
    with _naming_full_disk(MANIFEST, folder):
        write_text(folder / MANIFEST, manifest_text(folder, [r.name for r in spec.files]))
    return served
