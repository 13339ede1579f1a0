"""Real services for the team tests: a PostgreSQL cluster of the test's own, and the team's
MLflow server started by `python -m mlpipe.team serve` over it.

The cluster is made with Debian's PostgreSQL binaries (`apt-get install postgresql`) in a temp
folder on a free port, so a test may stop and start it without touching the machine's own.
PostgreSQL refuses to run as root: as root, every server command runs as the `postgres` user.
"""

from __future__ import annotations

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


def start_team_server(cluster: Postgres, folder: Path) -> TeamServer:
    """`python -m mlpipe.team serve` on a free loopback port; ready when /health answers."""
    port = free_port()
    artifacts = folder / "artifacts"
    command = [
        sys.executable,
        "-m",
        "mlpipe.team",
        "serve",
        "--backend-store-uri",
        cluster.uri("mlflow"),
        "--artifacts-destination",
        str(artifacts),
        "--port",
        str(port),
        "--workers",
        "2",
        "--state-dir",
        str(folder / "state"),
        "--admin-password-file",
        str(secret_file(folder, "admin", ADMIN_PASSWORD)),
    ]
    url = f"http://127.0.0.1:{port}"
    process = serve(
        command,
        folder,
        f"{url}/health",
        timeout=180,
        PGPASSFILE=str(pgpass_file(cluster, folder)),
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
