"""The team's MLflow server as a child process: ready only once a login answers, its exit
status passed on.

`mlflow server` answers /health while its workers still import and its login app still opens
the users' database; the first authenticated request after a start took 3-6 s, so a stage's
5 s check could fail on a server that was fine. `serve_until_stopped` says "ready" only once an
authenticated request as the admin answers, and a supervisor (systemd, a shell's `&&`) sees the
server's own failure as a non-zero exit.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time

from mlpipe.errors import ConfigError, TrackingError

log = logging.getLogger("team")

READY_TIMEOUT_S = 180.0  # a cold start of MLflow's workers on two cores takes 10-20 s
_POLL_S = 0.5
_ENDPOINT = "/api/2.0/mlflow/experiments/search"


def check_port_free(host: str, port: int) -> None:
    """ConfigError naming the port if something on this machine already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
                "stop what uses the port, or pass another --port"
            ) from exc


def serve_until_stopped(
    command: list[str],
    environment: dict[str, str],
    url: str,
    admin: tuple[str, str],
    host_header: str | None = None,
) -> None:
    """Run `command` (the server); log "ready" once `admin`'s login answers at `url` (sent
    with `host_header`, one of the hosts it serves); return when it exits 0, raise
    TrackingError when it exits otherwise or never gets ready.

    SIGTERM is passed on to the server, which shuts down and exits 0: so does this. Ctrl-C
    reaches the server through the terminal (one process group).
    """
    process = subprocess.Popen(command, env=environment)
    previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    interrupted = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _wait_ready(process, url, admin, {"Host": host_header} if host_header else {})
        code = process.wait()
    except BaseException:
        _stop(process)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupted)
    if code != 0:
        raise TrackingError(f"mlflow server exited with status {code}; its log above says why")
    log.info("MLflow server stopped")


def _wait_ready(
    process: subprocess.Popen, url: str, admin: tuple[str, str], headers: dict[str, str]
) -> None:
    import requests

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrackingError(
                f"mlflow server exited with status {process.returncode} before it answered; "
                "its log above says why"
            )
        try:
            reply = requests.get(
                url + _ENDPOINT,
                params={"max_results": 1},
                auth=admin,
                headers=headers,
                timeout=_POLL_S * 10,
            )
        except requests.RequestException:
            time.sleep(_POLL_S)
            continue
        if reply.status_code == 200:
            log.info("ready: %s answers the admin's login", url)
            return
        if reply.status_code == 401:
            raise TrackingError(
                f"the server refuses admin {admin[0]!r} with the password given: the users' "
                "database keeps the admin's password from the server's first start (or its "
                "last change); give that one"
            )
        if reply.status_code < 500:
            raise TrackingError(f"{url}{_ENDPOINT} answered HTTP {reply.status_code} at start")
        time.sleep(_POLL_S)
    raise TrackingError(
        f"{url} did not answer the admin's login within {READY_TIMEOUT_S:.0f} s of starting; "
        "its log above says why"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
