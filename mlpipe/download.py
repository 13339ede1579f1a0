"""Fetching dataset files from the first source that has a verified copy.

Sources, in order: the `DATA_MIRROR` folder or URL when set; Keras's own dataset cache, where a
user who ran the tutorial already has the files; the canonical address. Every candidate is
streamed to a temp file beside its final name, verified, and only then renamed into place.

Each source is bounded, so a bad one costs little before the next is tried: in time (one
deadline for all its attempts, and every socket operation under it), in size (nothing past the
file's published or largest accepted size is written) and in memory (an npz is checked from
its array headers before anything is loaded). Credentials in a mirror URL never reach a
log line or an error.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from tqdm import tqdm
from urllib3.util import Timeout

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
from mlpipe.errors import DataError, DownloadError, redact

log = logging.getLogger(__name__)

MIRROR_ENV = "DATA_MIRROR"
# All attempts at one source share one deadline, so a mirror that trickles or never answers
# is given up in about a minute and the next source is tried. A big file gets longer, as long
# as it arrives at MIN_BYTES_PER_S on average (CIFAR-10's 170 MB: about 160 s).
SOURCE_DEADLINE_S = 60.0
MIN_BYTES_PER_S = 1 << 20
# Every connect and every read is bounded by these and by the time left before the deadline,
# so a source is given up at most READ_TIMEOUT_S after its deadline.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 20.0
# Each retry waits BACKOFF_S * 2**(n - 1) seconds, within the source's deadline.
RETRIES = 3
BACKOFF_S = 0.5
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Read what has arrived, at most this much at a time: the deadline is checked between reads,
# and a compressed body is inflated no more than this at a time.
CHUNK_BYTES = 1 << 16


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


class _Retryable(Exception):
    """A failure that may pass: a 5xx or 429, a dropped connection, a timeout, a body cut short."""


class _Refused(Exception):
    """A failure that retrying this source will not fix: try the next one."""


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


def session() -> requests.Session:
    """An HTTP session that does not retry by itself: `_stream` retries, under one deadline.

    urllib3's own retries would each restart the timeouts, multiplying the worst case, and
    would log lines of their own beside ours; its remaining warnings are quieted too.
    """
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return requests.Session()


def deadline_s(remote: RemoteFile) -> float:
    """Seconds one source gets for `remote`, all its attempts together."""
    return max(SOURCE_DEADLINE_S, remote.size / MIN_BYTES_PER_S)


def _stream(http: requests.Session, url: str, target: Path, remote: RemoteFile) -> None:
    """Download `url` into `target` before the source's deadline, retrying what may pass."""
    shown = redact(url)
    allowed = deadline_s(remote)
    deadline = time.monotonic() + allowed
    for attempt in range(1, RETRIES + 2):
        try:
            _attempt(http, url, target, remote, deadline)
            return
        except _NotThere as exc:
            raise _NotThere(f"{shown} {exc}") from exc
        except _Refused as exc:
            raise DownloadError(f"{shown}: {exc}") from exc
        except _Retryable as exc:
            delay = BACKOFF_S * 2 ** (attempt - 1)
            if time.monotonic() + delay >= deadline:
                raise DownloadError(
                    f"{shown}: no complete file within {allowed:g} s ({exc}); too slow"
                ) from exc
            if attempt > RETRIES:
                raise DownloadError(
                    f"{shown}: transfer failed after {attempt} attempts ({exc})"
                ) from exc
            log.warning("%s: %s; retry %d of %d in %.1f s", shown, exc, attempt, RETRIES, delay)
            time.sleep(delay)


def _attempt(
    http: requests.Session, url: str, target: Path, remote: RemoteFile, deadline: float
) -> None:
    """One GET of `url` into `target`; every socket wait ends by the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Retryable("deadline reached")
    timeout = Timeout(
        connect=min(CONNECT_TIMEOUT_S, left), read=min(READ_TIMEOUT_S, left), total=left
    )
    try:
        with http.get(
            url, stream=True, timeout=timeout, hooks={"response": _stop_at(deadline)}
        ) as reply:
            _check_status(reply)
            _save(reply, target, remote, deadline)
    except requests.exceptions.SSLError as exc:
        raise _Refused(f"TLS failed ({_reason(exc)})") from exc
    except requests.exceptions.Timeout as exc:
        raise _Retryable(f"timed out ({_reason(exc)})") from exc
    except requests.exceptions.ConnectionError as exc:
        if _unresolved(exc):  # no DNS for the host (offline, a firewall): retrying will not help
            raise _Refused(f"cannot resolve {urlsplit(url).hostname}") from exc
        raise _Retryable(f"connection failed ({_reason(exc)})") from exc
    except requests.exceptions.RequestException as exc:
        raise _Refused(_reason(exc)) from exc


def _unresolved(exc: BaseException) -> bool:
    """Whether a connection failed because the host name did not resolve (a temporary DNS
    failure included: offline, it never passes). requests wraps urllib3's MaxRetryError,
    whose `reason` is the NameResolutionError."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return True
        pending += [getattr(current, "reason", None), current.__cause__, *current.args[:1]]
    return False


def _stop_at(deadline: float) -> Callable[..., None]:
    """A response hook that ends a chain of redirects at the deadline, not 30 hops later."""

    def check(reply: requests.Response, **kwargs: object) -> None:
        if time.monotonic() >= deadline:
            reply.close()
            raise _Retryable(f"deadline reached at {reply.status_code} {reply.reason}")

    return check


def _check_status(reply: requests.Response) -> None:
    if reply.status_code == 404:
        raise _NotThere("answered 404 Not Found")
    if reply.status_code in RETRY_STATUSES:
        raise _Retryable(f"{reply.status_code} {reply.reason}")
    if not reply.ok:
        raise _Refused(f"{reply.status_code} {reply.reason}")


def _declared_length(reply: requests.Response) -> int | None:
    """The Content-Length header as a number, or None when absent or not a number."""
    try:
        return int(reply.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _save(reply: requests.Response, target: Path, remote: RemoteFile, deadline: float) -> None:
    """Write the body to `target`, cut off past the size cap, checked against Content-Length."""
    length = _declared_length(reply)
    encoded = reply.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if length is not None and not encoded and length > remote.cap:
        raise _Refused(
            f"announces {length} bytes, more than the {remote.cap} a copy of {remote.name} "
            "can be; not the dataset"
        )
    received = 0
    with (
        open(target, "wb") as out,
        tqdm(
            total=None if encoded else length,
            unit="B",
            unit_scale=True,
            desc=remote.name,
            disable=None,
        ) as bar,
    ):
        while chunk := _read_some(reply, deadline, received):
            received += len(chunk)
            if received > remote.cap:
                raise _Refused(
                    f"sent more than the {remote.cap} bytes a copy of {remote.name} can be; "
                    "cut off there, not the dataset"
                )
            out.write(chunk)
            bar.update(len(chunk))
    if length is not None and reply.raw.tell() != length:
        raise _Retryable(f"transfer cut short (got {reply.raw.tell()} of {length} bytes)")


def _read_some(reply: requests.Response, deadline: float, received: int) -> bytes:
    """The next piece of the body as soon as any has arrived; b"" at its end.

    `iter_content` would wait for a whole chunk, so a trickle could hold it far past the
    deadline; `read1` returns what one socket read gives.
    """
    if time.monotonic() >= deadline:
        raise _Retryable(f"{received} bytes received by the deadline")
    try:
        return reply.raw.read1(CHUNK_BYTES, decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise _Retryable(f"timed out after {received} bytes ({_reason(exc)})") from exc
    except urllib3.exceptions.DecodeError as exc:
        raise _Refused(f"body could not be decoded ({_reason(exc)})") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _Retryable(f"transfer cut short after {received} bytes ({_reason(exc)})") from exc


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


def looks_like_html(path: Path) -> bool:
    """Whether the file starts as a web page: what a login wall or an error page sends."""
    with open(path, "rb") as handle:
        head = handle.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<") and (b"<html" in head or b"<!doctype html" in head)


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
    if looks_like_html(path):
        raise DataError(f"{remote.name}: an HTML page ({size} bytes), not the dataset")
    if canonical or not spec.content_md5:
        raise DataError(
            f"{remote.name}: sha256 mismatch: expected {remote.sha256}, found {digest} "
            f"({size} bytes); truncated, corrupt or not the published file"
        )
    try:
        found = content_md5(read_mnist_npz(path, spec.image_shape, remote.cap))
    except DataError as exc:
        raise DataError(
            f"{remote.name}: sha256 differs and the content cannot be read: {exc}"
        ) from exc
    wrong = sorted(name for name, md5 in spec.content_md5.items() if found.get(name) != md5)
    if wrong:
        raise DataError(
            f"{remote.name}: neither bytes nor content match the canonical {spec.name}: "
            f"arrays {', '.join(wrong)} differ (expected IDX MD5 "
            f"{', '.join(spec.content_md5[name] for name in wrong)})"
        )
    return "re-packed, content matches the canonical IDX MD5s"


def _copy_or_download(
    source: Source, target: Path, remote: RemoteFile, http: requests.Session
) -> None:
    if source.is_url:
        _stream(http, source.location, target, remote)
        return
    origin = Path(source.location)
    if not origin.is_file():
        raise _NotThere(f"{origin} does not exist")
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
                how = verify(spec, remote, temp, canonical=source.canonical)
        except _NotThere as exc:
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
