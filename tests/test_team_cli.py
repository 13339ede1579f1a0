"""`python -m mlpipe.team`: what it refuses before any server starts, in one line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mlpipe import team
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
    code, err = run(capsys, "serve", "--admin-password-file", str(empty))
    assert code == 2
    assert f"{empty}: empty; its first line must be admin password" in err
    assert not (tmp_path / "state").exists()


def test_serve_refuses_sqlite_and_an_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "s3cret-admin")
    state = ["--state-dir", str(tmp_path / "state")]
    code, err = run(capsys, "serve", "--backend-store-uri", "sqlite:///mlflow.db", *state)
    assert code == 2
    assert "the team's server needs a database server (postgresql://...)" in err
    uri = "postgresql://mlflow:db-s3cret@127.0.0.1:9/mlflow"
    code, err = run(capsys, "serve", "--backend-store-uri", uri, *state)
    assert code == 1
    [line] = error_lines(err)
    assert "postgresql://***@127.0.0.1:9/mlflow is not reachable" in line
    assert "db-s3cret" not in err and "s3cret-admin" not in err


def test_add_member_needs_the_server_and_a_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, err = run(capsys, "add-member", "alice")
    assert code == 2
    assert "set MLFLOW_TRACKING_URI to the team's server (http://host:port)" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    code, err = run(capsys, "add-member", "alice")
    assert code == 2
    assert "no password given for alice" in err
    code, err = run(capsys, "add-member", "alice", "--permission", "OWNER")
    assert code == 2
    assert "invalid choice: 'OWNER'" in err


def test_auth_configuration_holds_no_secret() -> None:
    text = team.auth_config("READ", "postgresql://mlflow@db/mlflow_auth", "admin")
    assert "default_permission = READ" in text
    assert "database_uri = postgresql://mlflow@db/mlflow_auth" in text
    assert "password" not in text
    assert team.sibling_database("postgresql://u@h:5432/mlflow?sslmode=require", "mlflow_auth") == (
        "postgresql://u@h:5432/mlflow_auth?sslmode=require"
    )
