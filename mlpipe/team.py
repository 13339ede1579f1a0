"""The team's shared MLflow server: PostgreSQL behind it, MLflow's own login in front.

    python -m mlpipe.team serve [--port 5000] [--artifacts-destination DIR] ...
    python -m mlpipe.team add-member NAME [--permission EDIT] [--password-file FILE]

`serve` starts `mlflow server --app-name basic-auth` over the PostgreSQL databases that
`scripts/team-db.sh` created: runs and the registry in one, users and permissions in the other.
A new user may read every experiment and model but change only what they created
(`default_permission = READ`). The admin's password comes from MLFLOW_AUTH_ADMIN_PASSWORD or
`--admin-password-file`, never from a default; the database password from libpq's own
`~/.pgpass` (or PGPASSWORD), so no secret is ever on a command line.

`add-member` (run by the admin, with MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD set) creates a user and lets them run the pipeline: it grants them
`--permission` on the experiment and the registered models that params.yaml names.

Exit codes: 0 done; 1 the server, database or a request failed; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import warnings
from pathlib import Path

from mlpipe.atomic import atomic_path
from mlpipe.config import DATASETS, load_params, registered_model_name
from mlpipe.errors import ConfigError, TrackingError
from mlpipe.paths import HERE
from mlpipe.runner import execute
from mlpipe.tracking.failures import tracking_failure
from mlpipe.tracking.members import ensure_registered_model, existing_user, grant, team_experiment
from mlpipe.tracking.object_store import check_dvc_remote, check_s3_writable
from mlpipe.tracking.reachability import check_reachable
from mlpipe.tracking.server_access import refused_status
from mlpipe.tracking.server_process import check_port_free, serve_until_stopped
from mlpipe.tracking.store import shown_uri

log = logging.getLogger("team")

DEFAULT_STATE = Path.home() / "mlflow-team"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE")
# What a user gets on what they did not create: they can read it and build on it (compare runs,
# load a model), never change or delete it.
DEFAULT_PERMISSION = "READ"
# How long each server worker trusts a login it has verified: checking a password hash costs
# tens of milliseconds by design and MLflow's login checks it several times per request (about
# 1 s per request on 2 cores). A changed password or removed user is refused by every worker
# within this time (docs/decisions/0007-login-cache.md).
LOGIN_CACHE_S = 30
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command and its options; argparse prints usage and exits 2 on a bad one."""
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.team", description="Run and administer the team's MLflow server."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the team's tracking server")
    serve.add_argument(
        "--backend-store-uri",
        default="postgresql://mlflow@localhost/mlflow",
        help="runs and registry (password in ~/.pgpass or PGPASSWORD, not here)",
    )
    serve.add_argument(
        "--auth-database-uri",
        help="users and permissions (default: the backend's server, database mlflow_auth)",
    )
    serve.add_argument(
        "--artifacts-destination",
        default=str(DEFAULT_STATE / "artifacts"),
        help="where the server keeps models and figures: a folder, or s3://bucket/path",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=port_number, default=5000)
    serve.add_argument(
        "--allowed-hosts",
        help="Host headers to accept, comma-separated (needed behind a proxy or on 0.0.0.0)",
    )
    serve.add_argument("--workers", type=int, help="server processes (default: MLflow's)")
    serve.add_argument("--admin-username", default="admin")
    serve.add_argument(
        "--admin-password-file",
        type=Path,
        help=f"the admin's password, first line (default: ${ADMIN_PASSWORD_ENV})",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help="where the server's auth configuration is written",
    )

    member = commands.add_parser("add-member", help="create a user and let them run the pipeline")
    member.add_argument("username")
    member.add_argument(
        "--permission",
        choices=PERMISSIONS,
        default="EDIT",
        help="on the team's experiment and registered models (default: EDIT)",
    )
    member.add_argument(
        "--password-file",
        type=Path,
        help="the new member's password, first line (default: ask, or read standard input)",
    )
    member.add_argument(
        "--params", type=Path, default=HERE.params_file, help="names the experiment"
    )
    remote = commands.add_parser(
        "check-remote", help="probe the team's DVC remote on S3 as dvc push reaches it"
    )
    remote.add_argument("name", nargs="?", help="the DVC remote (default: the default remote)")
    return parser.parse_args(argv)


def port_number(text: str) -> int:
    """A TCP port, 1-65535, for argparse (which names the option and exits 2 otherwise)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def read_secret(
    path: Path | None, what: str, environment: str | None = None, option: str = ""
) -> str:
    """A password from the first line of `path`, else from `environment`, else refused."""
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from exc
        secret = lines[0] if lines else ""
        if not secret:
            raise ConfigError(f"{path}: empty; its first line must be {what}")
        return secret
    secret = os.environ.get(environment or "", "")
    if not secret:
        raise ConfigError(f"no {what} given: set {environment}, or pass {option} FILE")
    return secret


def auth_config(default_permission: str, database_uri: str, admin_username: str) -> str:
    """The basic-auth app's configuration; it holds no secret (the admin's is in the env).

    MLflow reads it with configparser, which takes `%` for interpolation: it is doubled.
    """
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {LOGIN_CACHE_S}\n"
    )


def write_private(path: Path, text: str) -> None:
    """Write `path` whole or not at all, readable by this user only."""
    with atomic_path(path) as temp:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)


def _secret_key(state_dir: Path) -> str:
    """The key that signs the login forms' CSRF tokens: made once, kept private, reused, so a
    restarted server accepts the forms it served before."""
    import secrets

    path = state_dir / "flask-secret-key"
    key = path.read_text(encoding="utf-8").strip() if path.exists() else ""
    if not key:
        key = secrets.token_hex(32)
        write_private(path, key)
    return key


def sibling_database(uri: str, name: str) -> str:
    """`uri` with its database (the path) replaced by `name`, query kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


def check_database_uri(uri: str, option: str) -> None:
    """A database server's URI with no password in it (it would show in `ps` and the auth
    configuration): libpq reads the password from ~/.pgpass."""
    from urllib.parse import urlsplit

    if not uri.startswith(("postgresql", "mysql")):
        raise ConfigError(
            f"{option} {shown_uri(uri)}: the team's server needs a database server "
            "(postgresql://...); SQLite is for one person's workspace"
        )
    if urlsplit(uri).password or "password=" in uri:
        raise ConfigError(
            f"{option} {shown_uri(uri)}: holds a password, which would show in the process "
            "list; put it in ~/.pgpass (host:port:database:user:password) instead"
        )


# Hosts no team names: a pattern that lets one in lets in any name a rebinding attacker picks.
HOSTILE_HOSTS = ("rebind.attacker-controlled.invalid", "203.0.113.7", "203.0.113.7:5000")
ALLOWED_HOSTS_ENV = "MLFLOW_SERVER_ALLOWED_HOSTS"  # MLflow reads it when the option is not given


def check_allowed_hosts(allowed: str | None, given: str = "--allowed-hosts") -> None:
    """Refuse a Host pattern that lets in any host (`*`, `*:5000`, `*.*`; MLflow matches them
    with fnmatch): its Host check, the guard against DNS rebinding, would be off."""
    from fnmatch import fnmatch

    for pattern in filter(None, (part.strip() for part in (allowed or "").split(","))):
        if any(fnmatch(host, pattern) for host in HOSTILE_HOSTS):
            raise ConfigError(
                f"{given} {pattern!r} accepts any Host header, which turns off the server's "
                "check against DNS rebinding; name the hosts it is reached by (e.g. "
                "mlflow.example.org,mlflow.example.org:5000)"
            )


def serve(args: argparse.Namespace) -> None:
    """Check the databases, the artifact store and the port, write the auth configuration,
    then run the server until it stops."""
    password = read_secret(
        args.admin_password_file, "admin password", ADMIN_PASSWORD_ENV, "--admin-password-file"
    )
    if args.host not in LOOPBACK and not args.allowed_hosts:
        raise ConfigError(
            f"--host {args.host}: passwords would cross the network in clear; keep the server "
            "on 127.0.0.1 behind a TLS proxy, or name the hosts it serves with --allowed-hosts"
        )
    check_allowed_hosts(args.allowed_hosts)
    check_allowed_hosts(os.environ.get(ALLOWED_HOSTS_ENV), ALLOWED_HOSTS_ENV)
    auth_uri = args.auth_database_uri or sibling_database(args.backend_store_uri, "mlflow_auth")
    for uri, option in (
        (args.backend_store_uri, "--backend-store-uri"),
        (auth_uri, "--auth-database-uri"),
    ):
        check_database_uri(uri, option)
        check_reachable(uri, option)
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    args.state_dir.chmod(0o700)
    config = args.state_dir / "basic_auth.ini"
    write_private(config, auth_config(DEFAULT_PERMISSION, auth_uri, args.admin_username))
    if args.artifacts_destination.startswith("s3://"):
        check_s3_writable(args.artifacts_destination)
    elif "://" not in args.artifacts_destination:
        Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
    check_port_free(args.host, args.port)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        args.backend_store_uri,
        "--artifacts-destination",
        args.artifacts_destination,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if args.workers:
        command += ["--workers", str(args.workers)]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    environment = {
        # MLflow's job runner serves its GenAI features (scorers, trace roll-ups), which this
        # pipeline does not use: eight more processes, each importing MLflow as the server
        # starts (measured: 13.7 s to answer with them, 10.0 s without). A user may turn it on.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        ADMIN_PASSWORD_ENV: password,
        SECRET_KEY_ENV: os.environ.get(SECRET_KEY_ENV) or _secret_key(args.state_dir),
    }
    log.info(
        "MLflow server on http://%s:%d, store %s, users in %s, artifacts in %s",
        args.host,
        args.port,
        shown_uri(args.backend_store_uri),
        shown_uri(auth_uri),
        shown_uri(args.artifacts_destination),
    )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    url = f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"
    served = (args.allowed_hosts or "").split(",")[0].strip()
    serve_until_stopped(
        command,
        environment,
        url,
        (args.admin_username, password),
        host_header=served if served and "*" not in served else None,
    )


def add_member(args: argparse.Namespace) -> None:
    """Create the user (or, given --password-file, set an existing user's password) and grant
    them `--permission` on what the pipeline writes to."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ConfigError("set MLFLOW_TRACKING_URI to the team's server (http://host:port)")
    params = load_params(args.params)
    check_reachable(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        # Importing the auth client imports the server app, which warns about Starlette.
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = params.mlflow.experiment_name
    models = [registered_model_name(params.mlflow.registered_model_name, d) for d in DATASETS]
    try:
        user = existing_user(auth, args.username)
        if user is not None and user.is_admin:
            raise ConfigError(
                f"user {args.username} is the server's admin: MLflow gives an admin every right "
                f"whatever --permission says, so {args.permission} would not hold; "
                "add-member is for the other members"
            )
        if user is None:
            auth.create_user(args.username, member_password(args))
        elif args.password_file is not None:
            auth.update_user_password(args.username, member_password(args))
            log.info("user %s exists already: password set", args.username)
        else:
            log.info("user %s exists already: password unchanged", args.username)
        experiment_id = team_experiment(client, experiment)
        grant(auth, args.username, "experiment", experiment_id, args.permission)
        for name in models:
            ensure_registered_model(client, name)
            grant(auth, args.username, "registered_model", name, args.permission)
    except MlflowException as exc:
        refused = refused_status(exc)
        if refused and refused[0] == 403:
            raise TrackingError(
                f"MLflow tracking server {shown_uri(uri)}: only its admin may add members; "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's"
            ) from exc
        raise TrackingError(tracking_failure(exc, uri)) from exc
    log.info(
        "user %s may %s experiment %s and models %s",
        args.username,
        args.permission,
        experiment,
        ", ".join(models),
    )


def member_password(args: argparse.Namespace) -> str:
    """The new member's password: from --password-file, else asked twice, else standard input."""
    if args.password_file is not None:
        return read_secret(args.password_file, f"{args.username}'s password")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
        if password != getpass.getpass("again: "):
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConfigError(f"no password given for {args.username}")
    return password


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    actions = {"serve": serve, "add-member": add_member, "check-remote": check_remote}
    return execute("team", lambda: actions[args.command](args))


def check_remote(args: argparse.Namespace) -> None:
    """Write and delete a probe object on the DVC remote; the fault named if S3 refuses."""
    log.info("%s", check_dvc_remote(args.name))


if __name__ == "__main__":
    sys.exit(main())
