"""Fetching dataset files from the first source that has a verified copy.

Sources, in order: the `DATA_MIRROR` folder or URL when set; Keras's own dataset cache, where a
user who ran the tutorial already has the files; the canonical address. Every candidate is
streamed to a temp file beside its final name, verified, and only then renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from mlpipe.atomic import atomic_path, write_text
from mlpipe.datasets import (
    MANIFEST,
    DatasetSpec,
    RemoteFile,
    content_md5,
    manifest_text,
    read_mnist_npz,
    sha256_file,
)
from mlpipe.errors import DataError, DownloadError

log = logging.getLogger(__name__)

MIRROR_ENV = "DATA_MIRROR"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# Each retry waits BACKOFF_S * 2**(n - 1) seconds; with these values a dead network fails in
# well under a minute: DNS and refused connections fail at once, silent hosts after timeouts.
RETRIES = 3
BACKOFF_S = 0.5
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Source:
    label: str
    location: str
    canonical: bool = False

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


class _NotThere(Exception):
    """The source simply does not hold the file; try the next one."""


def keras_cache_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def mirror_location() -> str | None:
    """The mirror named by DATA_MIRROR, checked; None when unset."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return None
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/"
    path = Path(mirror.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise DownloadError(f"{MIRROR_ENV}={mirror} is not a directory or an http(s) URL")
    return str(path.resolve())


def sources(remote: RemoteFile) -> list[Source]:
    found: list[Source] = []
    mirror = mirror_location()
    if mirror is not None:
        location = mirror + remote.name if "://" in mirror else str(Path(mirror) / remote.name)
        found.append(Source(f"{MIRROR_ENV} ({mirror})", location))
    cache = keras_cache_dir()
    for relative in remote.keras_cache:
        found.append(Source(f"Keras cache ({cache})", str(cache / relative)))
    found.append(Source("canonical address", remote.url, canonical=True))
    return found


def session() -> requests.Session:
    """An HTTP session that retries connection errors, timeouts and 5xx, but never a 404."""
    retry = Retry(
        total=RETRIES,
        connect=RETRIES,
        read=RETRIES,
        status=RETRIES,
        backoff_factor=BACKOFF_S,
        status_forcelist=RETRY_STATUSES,
        allowed_methods={"GET"},
        raise_on_status=True,
    )
    http = requests.Session()
    http.mount("http://", HTTPAdapter(max_retries=retry))
    http.mount("https://", HTTPAdapter(max_retries=retry))
    return http


def _stream(http: requests.Session, url: str, target: Path, name: str) -> None:
    """Download `url` into `target`; a transfer cut short is retried, then reported."""
    for attempt in range(1, RETRIES + 2):
        streaming = False
        try:
            with http.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as reply:
                streaming = True
                if reply.status_code == 404:
                    raise _NotThere(f"{url} answered 404 Not Found")
                reply.raise_for_status()
                expected = int(reply.headers.get("Content-Length", 0)) or None
                received = 0
                with (
                    open(target, "wb") as out,
                    tqdm(total=expected, unit="B", unit_scale=True, desc=name, disable=None) as bar,
                ):
                    for chunk in reply.iter_content(chunk_size=1 << 16):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if expected is not None and received != expected:
                    raise requests.exceptions.ChunkedEncodingError(
                        f"got {received} of {expected} bytes"
                    )
                return
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ConnectionError,
        ) as exc:
            # Connecting is retried inside urllib3; here we retry only bodies cut short.
            if not streaming or attempt > RETRIES:
                raise DownloadError(f"{url}: transfer failed ({_reason(exc)})") from None
            log.warning("%s: transfer cut short (%s); retrying", url, _reason(exc))
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        except requests.exceptions.Timeout as exc:
            raise DownloadError(f"{url}: timed out ({_reason(exc)})") from None
        except requests.exceptions.HTTPError as exc:
            raise DownloadError(
                f"{url}: {exc.response.status_code} {exc.response.reason}"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise DownloadError(f"{url}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The innermost, most specific reason of a requests/urllib3 error, on one line."""
    inner: BaseException = exc
    for _ in range(5):
        nested = getattr(inner, "reason", None)
        if (
            not isinstance(nested, BaseException)
            and inner.args
            and isinstance(inner.args[0], BaseException)
        ):
            nested = inner.args[0]
        if not isinstance(nested, BaseException):
            break
        inner = nested
    text = str(inner)
    # Drop urllib3's "HTTPSConnection(host=..., port=...): " prefix.
    if "): " in text:
        text = text.split("): ", 1)[1]
    text = text.strip("()'\" ")
    return text.splitlines()[0] if text else type(inner).__name__


def verify(spec: DatasetSpec, remote: RemoteFile, path: Path, *, canonical: bool) -> str:
    """Accept `path` as `remote` or raise DataError saying what was expected and found.

    Returns how it was accepted. A canonical download must match the pinned SHA-256. A copy
    from a mirror or cache may be a re-packing: it is accepted when its decoded arrays match
    the canonical content, where the dataset publishes content digests.
    """
    digest = sha256_file(path)
    if digest == remote.sha256:
        return "sha256 matches"
    size = path.stat().st_size
    if canonical or not spec.content_md5:
        raise DataError(
            f"{remote.name}: sha256 mismatch: expected {remote.sha256}, found {digest} "
            f"({size} bytes); truncated, corrupt or not the published file"
        )
    try:
        found = content_md5(read_mnist_npz(path))
    except DataError as exc:
        raise DataError(
            f"{remote.name}: sha256 differs and the content cannot be read: {exc}"
        ) from None
    wrong = sorted(name for name, md5 in spec.content_md5.items() if found.get(name) != md5)
    if wrong:
        raise DataError(
            f"{remote.name}: neither bytes nor content match the canonical {spec.name}: "
            f"arrays {', '.join(wrong)} differ (expected IDX MD5 "
            f"{', '.join(spec.content_md5[name] for name in wrong)})"
        )
    return "re-packed, content matches the canonical IDX MD5s"


def _copy_or_download(source: Source, target: Path, name: str, http: requests.Session) -> None:
    if source.is_url:
        _stream(http, source.location, target, name)
        return
    origin = Path(source.location)
    if not origin.is_file():
        raise _NotThere(f"{origin} does not exist")
    shutil.copyfile(origin, target)


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
    http = http or session()
    problems = []
    for source in sources(remote):
        try:
            with atomic_path(final) as temp:
                _copy_or_download(source, temp, remote.name, http)
                how = verify(spec, remote, temp, canonical=source.canonical)
        except _NotThere as exc:
            problems.append(f"{source.label}: {exc}")
            continue
        except (DataError, DownloadError) as exc:
            log.warning("%s from %s rejected: %s", remote.name, source.label, exc)
            problems.append(f"{source.label}: {exc}")
            continue
        log.info("%s: served by %s, %s", remote.name, source.label, how)
        return source.label
    hint = (
        ""
        if os.environ.get(MIRROR_ENV)
        else f"; offline? set {MIRROR_ENV} to a folder or URL holding {remote.name}"
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
    write_text(folder / MANIFEST, manifest_text(folder, [remote.name for remote in spec.files]))
    return served
