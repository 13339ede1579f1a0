"""Real services for the team tests: a PostgreSQL cluster of the test's own, the team's
MLflow server started by `python -m mlpipe.team serve` over it, and a SeaweedFS S3 server.

The cluster is made with Debian's PostgreSQL binaries (`apt-get install postgresql`) in a temp
folder on a free port, so a test may stop and start it without touching the machine's own.
PostgreSQL refuses to run as root: as root, every server command runs as the `postgres` user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, serve

ADMIN_PASSWORD = "team-admin-Secret-42"
DB_PASSWORD = "db-Secret-pw-17"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's server binaries (Debian's layout), if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    return found[-1].parent if found else None


def require_postgres() -> Path:
    """The binaries, or skip (fail under CI, whose script installs them) saying what to do."""
    binaries = postgres_bin()
    if binaries is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run installs it")
        pytest.skip(reason)
    return binaries


@dataclass
class Postgres:
    """A PostgreSQL cluster on 127.0.0.1:`port`; local superuser `postgres` needs no password,
    TCP logins need one (scram-sha-256), as on a real server."""

    binaries: Path
    base: Path
    port: int

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    def as_owner(self, command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        environment = {**os.environ, "PGHOST": str(self.socket_dir), "PGPORT": str(self.port)}
        return subprocess.run(
            [*prefix, *command], env=environment, capture_output=True, text=True, **kwargs
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        pg_ctl = [str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l"]
        started = self.as_owner([*pg_ctl, str(self.base / "log"), "-o", options, "-w", "start"])
        assert started.returncode == 0, started.stdout + started.stderr

    def stop(self) -> None:
        self.as_owner([str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def uri(self, database: str, user: str = "mlflow") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


def start_postgres() -> Postgres:
    """A new cluster in its own temp folder (directly under the temp root, so that the
    `postgres` user can reach it); `remove` it when done."""
    binaries = require_postgres()
    base = Path(tempfile.mkdtemp(prefix="mlpipe-postgres-"))
    cluster = Postgres(binaries, base, free_port())
    cluster.socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(cluster.socket_dir, "postgres")
    made = cluster.as_owner(
        [
            str(binaries / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]
    )
    assert made.returncode == 0, made.stdout + made.stderr
    cluster.start()
    return cluster


def create_team_databases(
    cluster: Postgres, password: str = DB_PASSWORD
) -> subprocess.CompletedProcess[str]:
    """The README's command: scripts/team-db.sh as the superuser, the password on stdin (the
    script's text as an argument, since the postgres user may not read the checkout)."""
    script = (REPO / "scripts/team-db.sh").read_text()
    return cluster.as_owner(["bash", "-c", script, "team-db.sh"], input=password + "\n")


def pgpass_file(cluster: Postgres, folder: Path) -> Path:
    """libpq's password file, where the team server's database password lives."""
    path = folder / "pgpass"
    path.write_text(f"127.0.0.1:{cluster.port}:*:mlflow:{DB_PASSWORD}\n")
    path.chmod(0o600)
    return path


def secret_file(folder: Path, name: str, secret: str) -> Path:
    path = folder / f"{name}.password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def credentials_home(folder: Path, username: str, password: str) -> Path:
    """A home folder holding MLflow's credentials file, the alternative to the two variables."""
    home = folder / f"home-{username}"
    (home / ".mlflow").mkdir(parents=True)
    credentials = home / ".mlflow" / "credentials"
    credentials.write_text(
        f"[mlflow]\nmlflow_tracking_username = {username}\nmlflow_tracking_password = {password}\n"
    )
    credentials.chmod(0o600)
    return home


@dataclass
class TeamServer:
    url: str
    process: subprocess.Popen
    artifacts: Path
    state_dir: Path


def team_serve_command(cluster: Postgres, folder: Path, destination: str, port: int) -> list[str]:
    """The README's `python -m mlpipe.team serve` over `cluster`, state and the admin's
    password file in `folder`, artifacts at `destination`."""
    return [
        *(sys.executable, "-m", "mlpipe.team", "serve"),
        *("--backend-store-uri", cluster.uri("mlflow"), "--artifacts-destination", destination),
        *("--port", str(port), "--workers", "2", "--state-dir", str(folder / "state")),
        *("--admin-password-file", str(secret_file(folder, "admin", ADMIN_PASSWORD))),
    ]


def start_team_server(
    cluster: Postgres, folder: Path, destination: str | None = None, **env: str
) -> TeamServer:
    """`python -m mlpipe.team serve` on a free loopback port, artifacts in `folder` or at
    `destination` (s3://...), its output in `folder`/server.log; ready when /health answers."""
    port = free_port()
    artifacts = folder / "artifacts"
    command = team_serve_command(cluster, folder, destination or str(artifacts), port)
    url = f"http://127.0.0.1:{port}"
    process = serve(
        command,
        folder,
        f"{url}/health",
        timeout=180,
        log=folder / "server.log",
        PGPASSFILE=str(pgpass_file(cluster, folder)),
        **env,
    )
    return TeamServer(url, process, artifacts, folder / "state")


def add_member(
    server: TeamServer, folder: Path, username: str, password: str, permission: str = "EDIT"
) -> subprocess.CompletedProcess[str]:
    """The README's command, run by the admin: `python -m mlpipe.team add-member`."""
    secret = secret_file(folder, username, password)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mlpipe.team",
            "add-member",
            username,
            "--permission",
            permission,
            "--password-file",
            str(secret),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


# SeaweedFS's S3 identities: requests are signed and checked, as on AWS.
S3_ACCESS_KEY = "AKIAMLPIPETEST0001"
S3_SECRET = "s3-Secret-key-77+mlpipe"
S3_READER_KEY = "AKIAMLPIPEREADER01"
S3_READER_SECRET = "s3-Reader-secret-31"


@dataclass
class Seaweed:
    """One `weed server -s3` process on loopback ports of its own, data in `base`."""

    base: Path
    ports: tuple[int, int, int, int]  # master, volume, filer, S3
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    def env(self, key: str = S3_ACCESS_KEY, secret: str = S3_SECRET) -> dict[str, str]:
        """What a user of this store sets: credentials the AWS way, the endpoint MLflow's."""
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client().get_paginator("list_objects_v2")
        pages = listing.paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def start(self, timeout: float = 60) -> None:
        import time

        master, volume, filer, s3 = self.ports
        command = [
            str(Path(sys.executable).parent / "weed"), "-logtostderr", "server", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-dir={self.base / 'data'}", f"-master.port={master}",
            f"-volume.port={volume}", "-filer", f"-filer.port={filer}", "-s3",
            f"-s3.port={s3}", f"-s3.config={self.base / 's3.json'}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-s3.autoCreateBucket=false", "-volume.preStopSeconds=0",
            f"-s3.localSocket={self.base / 's3.sock'}",
            f"-filer.localSocket={self.base / 'filer.sock'}",
            "-master.volumeSizeLimitMB=64", "-volume.max=16", "-master.peers=none",
        ]  # fmt: skip
        log = open(self.base / "weed.log", "ab")  # noqa: SIM115 (the server's, until it stops)
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"weed server exited: {(self.base / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                return
            except Exception:  # not up yet: connection refused, or the filer not ready
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"weed server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """Stopped as by a crash: SIGKILL (on SIGTERM weed takes over 20 s to exit)."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        for port in self.ports:  # gRPC sockets weed puts in /tmp, no flag moves them
            for socket in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10000}.sock"):
                socket.unlink(missing_ok=True)


def loopback_port_pairs(count: int) -> tuple[int, ...]:
    """`count` free loopback ports whose gRPC twins (port + 10000) are free too."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 50000)
        if port not in found and free(port) and free(port + 10000):
            found.append(port)
    return tuple(found)


def start_seaweed(*buckets: str) -> Seaweed:
    """A SeaweedFS S3 server with an admin identity and a read-only one, `buckets` created;
    `remove` it when done. Skips (fails under CI) without the `weed` binary."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        reason = "SeaweedFS is not installed (pip install -r requirements-dev.lock)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="mlpipe-seaweed-"))
    (base / "data").mkdir()
    identities = [
        {"name": "team", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader",
         "credentials": [{"accessKey": S3_READER_KEY, "secretKey": S3_READER_SECRET}],
         "actions": ["Read", "List"]},
    ]  # fmt: skip
    (base / "s3.json").write_text(json.dumps({"identities": identities}))
    store = Seaweed(base, loopback_port_pairs(4))  # type: ignore[arg-type]
    store.start()
    for bucket in buckets:
        store.client().create_bucket(Bucket=bucket)
    return store
