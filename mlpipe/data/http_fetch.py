"""One file over HTTP into a temp path, bounded in time and size, retrying what may pass.

All attempts at one source share one deadline, and every socket operation runs under it, so a
source that trickles or never answers costs about a minute before the next is tried. Nothing
past the file's largest accepted size is written. Credentials in a URL never reach a log line
or an error.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm
from urllib3.util import Timeout

from mlpipe.data.specs import RemoteFile
from mlpipe.errors import DownloadError, redact

log = logging.getLogger(__name__)

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


class NotThere(Exception):
    """The source simply does not hold the file; try the next one."""


class _Retryable(Exception):
    """A failure that may pass: a 5xx or 429, a dropped connection, a timeout, a body cut short."""


class _Refused(Exception):
    """A failure that retrying this source will not fix: try the next one."""


def session() -> requests.Session:
    """An HTTP session that does not retry by itself: `stream` retries, under one deadline.

    urllib3's own retries would each restart the timeouts, multiplying the worst case, and
    would log lines of their own beside ours; its remaining warnings are quieted too.
    """
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return requests.Session()


def deadline_s(remote: RemoteFile) -> float:
    """Seconds one source gets for `remote`, all its attempts together."""
    return max(SOURCE_DEADLINE_S, remote.size / MIN_BYTES_PER_S)


def stream(http: requests.Session, url: str, target: Path, remote: RemoteFile) -> None:
    """Download `url` into `target` before the source's deadline, retrying what may pass."""
    shown = redact(url)
    allowed = deadline_s(remote)
    deadline = time.monotonic() + allowed
    for attempt in range(1, RETRIES + 2):
        try:
            _attempt(http, url, target, remote, deadline)
            return
        except NotThere as exc:
            raise NotThere(f"{shown} {exc}") from exc
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
        raise NotThere("answered 404 Not Found")
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
