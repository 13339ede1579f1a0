"""`python -m mlpipe.team`: what it refuses before any server starts, in one line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mlpipe import team
from mlpipe.errors import ConfigError
from tests.conftest import error_lines


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = team.main(list(argv))
    return code, capsys.readouterr().err


def test_serve_needs_an_admin_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    code, err = run(capsys, "serve", "--state-dir", str(tmp_path / "state"))
    assert code == 2
    assert error_lines(err) == [
        "error: no admin password given: set MLFLOW_AUTH_ADMIN_PASSWORD, "
        "or pass --admin-password-file FILE"
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    state = ["--state-dir", str(tmp_path / "state")]
    code, err = run(capsys, "serve", "--admin-password-file", str(empty), *state)
    assert code == 2
    assert f"{empty}: empty; its first line must be admin password" in err
    assert not (tmp_path / "state").exists()


def test_serve_keeps_passwords_off_the_network_and_the_process_list(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "s3cret-admin")
    state = ["--state-dir", str(tmp_path / "state")]
    code, err = run(capsys, "serve", "--host", "0.0.0.0", *state)
    assert code == 2
    assert "--host 0.0.0.0: passwords would cross the network in clear" in err
    # Every Host header, on any interface: MLflow matches the patterns with fnmatch.
    for wildcard in ("*", "mlflow.example.org,*:5000", "**", "?*", "*.*"):
        for host in ("0.0.0.0", "127.0.0.1"):
            code, err = run(capsys, "serve", "--host", host, "--allowed-hosts", wildcard, *state)
            assert code == 2
            [line] = error_lines(err)
            assert "accepts any Host header" in line and "check against DNS rebinding" in line
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "*")  # what MLflow reads without the option
    code, err = run(capsys, "serve", *state)
    assert code == 2 and "MLFLOW_SERVER_ALLOWED_HOSTS '*' accepts any Host header" in err
    monkeypatch.delenv("MLFLOW_SERVER_ALLOWED_HOSTS")
    named = ["--host", "0.0.0.0", "--allowed-hosts", "*.team.example.org,192.168.1.*"]
    code, err = run(capsys, "serve", *named, "--backend-store-uri", "sqlite:///x.db", *state)
    assert "Host header" not in err  # patterns that name hosts pass; the next check speaks
    for uri in (
        "postgresql://mlflow:db-s3cret@127.0.0.1:9/mlflow",
        "postgresql://mlflow@127.0.0.1:9/mlflow?password=db-s3cret",
    ):
        code, err = run(capsys, "serve", "--backend-store-uri", uri, *state)
        assert code == 2
        assert "holds a password, which would show in the process list" in err
        assert "db-s3cret" not in err
    assert not (tmp_path / "state").exists()


def test_serve_refuses_sqlite_and_an_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "s3cret-admin")
    state = ["--state-dir", str(tmp_path / "state")]
    code, err = run(capsys, "serve", "--backend-store-uri", "sqlite:///mlflow.db", *state)
    assert code == 2
    assert "the team's server needs a database server (postgresql://...)" in err
    uri = "postgresql://mlflow@127.0.0.1:9/mlflow"
    code, err = run(capsys, "serve", "--backend-store-uri", uri, *state)
    assert code == 1
    [line] = error_lines(err)
    assert "postgresql://***@127.0.0.1:9/mlflow is not reachable" in line
    assert "check --backend-store-uri" in line
    assert "s3cret-admin" not in err


def test_add_member_needs_the_server_and_a_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, err = run(capsys, "add-member", "alice")
    assert code == 2
    assert "set MLFLOW_TRACKING_URI to the team's server (http://host:port)" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code, err = run(capsys, "add-member", "alice")
    assert code == 1
    assert "MLflow tracking server http://127.0.0.1:9 (MLFLOW_TRACKING_URI) is not reachable" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(ConfigError, match="no password given for alice"):
        team.member_password(team.parse_args(["add-member", "alice"]))
    code, err = run(capsys, "add-member", "alice", "--permission", "OWNER")
    assert code == 2
    assert "invalid choice: 'OWNER'" in err


def test_auth_configuration_holds_no_secret() -> None:
    text = team.auth_config("READ", "postgresql://mlflow@db/mlflow_auth", "admin")
    assert "default_permission = READ" in text
    assert "database_uri = postgresql://mlflow@db/mlflow_auth" in text
    assert "password" not in text
    # Verified logins are trusted for 30 s by each worker, not re-hashed on every request.
    assert "auth_cache_ttl_seconds = 30" in text
    # configparser would read a URL-encoded `%` as interpolation.
    assert "database_uri = postgresql://m%%40x@db/auth" in team.auth_config(
        "READ", "postgresql://m%40x@db/auth", "a"
    )
    assert team.sibling_database("postgresql://u@h:5432/mlflow?sslmode=require", "mlflow_auth") == (
        "postgresql://u@h:5432/mlflow_auth?sslmode=require"
    )


def test_refused_logins_and_permissions_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """As MLflow words them (`verify_rest_response`), a 401 or 403 becomes what to do."""
    from mlflow.exceptions import MlflowException

    from mlpipe.tracking.server_access import refusal

    uri = "http://127.0.0.1:5000"

    def rest_error(endpoint: str, code: int) -> MlflowException:
        return MlflowException(
            f"API request to endpoint {endpoint} failed with error code {code} != 200. "
            "Response body: 'Permission denied'"
        )

    assert refusal(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"), uri) is None
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials either
    assert "asks for a login: set MLFLOW_TRACKING_USERNAME" in refusal(
        rest_error("/api/2.0/mlflow/runs/create", 401), uri
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-s3cret")
    wrong = refusal(rest_error("/api/2.0/mlflow/runs/create", 401), uri)
    assert "refused the login of user 'bob'" in wrong and "bob-s3cret" not in wrong
    denied = refusal(rest_error("/api/2.0/mlflow/registered-models/alias", 403), uri)
    assert "user 'bob' may not do registered-models/alias here (HTTP 403" in denied
    assert denied.endswith("python -m mlpipe.team add-member bob")


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "80.5"])
def test_serve_refuses_a_port_that_is_not_one(capsys: pytest.CaptureFixture[str], port: str):
    code, err = run(capsys, "serve", "--port", port)
    assert code == 2
    assert f"argument --port: {port!r} is not a port (1-65535)" in err


def test_a_port_in_use_is_named_before_the_server_starts() -> None:
    import socket

    from mlpipe.tracking.server_process import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port {port}: cannot listen there .*another"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


@pytest.mark.parametrize("uri", ["s3://", "s3:///path", "s3://key:secret@bucket/x", "gs://b/x"])
def test_an_s3_destination_must_name_a_bucket(uri: str) -> None:
    from mlpipe.tracking.object_store import split_s3_uri

    with pytest.raises(ConfigError, match="not an S3 location; write s3://bucket/path") as raised:
        split_s3_uri(uri)
    assert "secret" not in str(raised.value)


def test_a_failed_artifact_request_names_the_artifact_store_not_the_database() -> None:
    from mlflow.exceptions import MlflowException

    from mlpipe.tracking.failures import tracking_failure

    server = "http://127.0.0.1:5000"
    template = (
        "API request to {0}/api/2.0/{1} failed with exception HTTPConnectionPool(host="
        "'127.0.0.1', port=5000): Max retries exceeded with url: /api/2.0/{1} ({2})"
    )
    upload = "mlflow-artifacts/artifacts/1/abc/artifacts/figures/accuracy.png"
    status = "Caused by ResponseError('too many 500 error responses')"
    timeout = 'Caused by ReadTimeoutError("Read timed out. (read timeout=10)")'
    for path, cause, expected in (
        (upload, status, "could not store or read an artifact (HTTP 500 from /mlflow-artifacts/"),
        (upload, timeout, "could not store or read an artifact (no answer in time"),
        ("mlflow/runs/log-batch", status, "answers HTTP 500 (is its database down?)"),
    ):
        line = tracking_failure(MlflowException(template.format(server, path, cause)), server)
        assert expected in line, line


def test_check_remote_names_a_missing_remote_and_a_remote_that_is_not_s3(tmp_path: Path) -> None:
    from dvc.repo import Repo

    from mlpipe.tracking.object_store import check_dvc_remote

    with pytest.raises(ConfigError, match="is not a DVC repository; run it in the clone"):
        check_dvc_remote(root=str(tmp_path))
    Repo.init(str(tmp_path), no_scm=True).close()
    with pytest.raises(ConfigError, match="no DVC remote named and none is the default"):
        check_dvc_remote(root=str(tmp_path))
    with pytest.raises(ConfigError, match="no DVC remote 'team' here; dvc remote list"):
        check_dvc_remote("team", root=str(tmp_path))
    (tmp_path / ".dvc/config").write_text(
        "[core]\n    no_scm = true\n    remote = team\n"
        f"['remote \"team\"']\n    url = {tmp_path / 'store'}\n"
    )
    with pytest.raises(ConfigError, match="not an S3 location"):
        check_dvc_remote(root=str(tmp_path))
