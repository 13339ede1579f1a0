"""The tracking store is never wedged and never a traceback: checked before MLflow opens it."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from mlpipe import store
from mlpipe.errors import TrackingError
from tests.conftest import REPO, stage_env

pytestmark = pytest.mark.reliability


def uri_of(path: Path) -> str:
    return f"sqlite:///{path}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def close_engines() -> None:
    """Close MLflow's pooled connections, as the end of a process would, before moving a file."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()


def usable(path: Path) -> bool:
    """The store opens in MLflow and takes an experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri_of(path), registry_uri=uri_of(path))
    client.create_experiment(f"check-{time.monotonic_ns()}")
    return True


def execute_sql(path: Path, *statements: str) -> None:
    """Run SQL statements on the SQLite file at `path` (made if need be), then commit."""
    with closing(sqlite3.connect(path)) as connection:
        for statement in statements:
            connection.execute(statement)
        connection.commit()


def refused_untouched(path: Path, match: str) -> None:
    """prepare() refuses the store at `path` with a message matching `match`; bytes unchanged."""
    before = digest(path)
    with pytest.raises(TrackingError, match=match) as caught:
        store.prepare(uri_of(path))
    assert "\n" not in str(caught.value)
    assert digest(path) == before


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only for real: a read-only bind mount as root (who may write any file
    whatever its mode), the write permission taken away otherwise."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    else:
        for path in folder.iterdir():
            path.chmod(0o444)
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)
        for path in folder.iterdir():
            path.chmod(0o644)


# Relative URIs -----------------------------------------------------------------------------


def test_relative_sqlite_uri_resolves_against_the_workspace_not_dvcs_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpipe.paths import Layout

    workspace = (tmp_path / "ws").resolve()
    copy = Layout(workspace / ".dvc" / "tmp" / "exps" / "tmpabc123")
    copy.root.mkdir(parents=True)
    assert copy.workspace == workspace  # from the path alone
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    assert copy.workspace == workspace  # and from DVC's own variable
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert store.tracking_uri(copy.workspace) == f"sqlite:///{workspace / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db?timeout=20")
    uri = store.tracking_uri(copy.workspace)
    assert uri == f"sqlite:///{workspace}/stores/team.db?timeout=20"
    assert store.artifact_root(uri) == (workspace / "stores/mlartifacts").as_uri()
    # A database without a server keeps artifacts in the workspace, not in DVC's copy.
    database = "postgresql://mlflow@db/mlflow"
    assert store.artifact_root(database, copy.workspace) == (workspace / "mlartifacts").as_uri()
    assert store.artifact_root("http://mlflow:5000", copy.workspace) is None
    # Absolute URIs and servers are left as they are.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")
    assert store.tracking_uri(workspace) == "sqlite:////srv/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri(workspace) == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://alice:s3cret@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("postgresql://alice:pa/s3cret@db/mlflow", "postgresql://***@db/mlflow"),
        ("postgresql://alice:p@s3cret@db/mlflow", "postgresql://***@db/mlflow"),
        ("postgresql://alice@db/mlflow?password=s3cret", "postgresql://***@db/mlflow?password=***"),
        ("http://s3cret@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("https://host/data?token=s3cret&x=1", "https://host/data?token=***&x=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_credentials_in_a_store_uri_are_never_shown(uri: str, shown: str) -> None:
    assert store.shown_uri(uri) == shown


# A new store comes into being whole ---------------------------------------------------------


def test_new_store_is_complete_whenever_its_creator_is_killed(tmp_path: Path) -> None:
    """kill -9 at many moments of creation: afterwards there is no store, or a whole one."""
    path = tmp_path / "mlflow.db"
    code = "import sys; from mlpipe.store import prepare; prepare(sys.argv[1])"
    for delay in (0.8, 1.4, 2.0, 2.6):
        path.unlink(missing_ok=True)
        creator = subprocess.Popen(
            [sys.executable, "-c", code, uri_of(path)], env=stage_env(), cwd=REPO
        )
        time.sleep(delay)
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        assert not path.exists() or store.inspect_store(path) == "mlflow", delay
    # The next start removes the killed creator's leftovers and makes a working store.
    store.prepare(uri_of(path))
    assert usable(path)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_half_made_store_without_runs_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    execute_sql(
        path,
        "CREATE TABLE experiments (experiment_id INTEGER)",
        "CREATE TABLE alembic_version (version_num TEXT)",
    )
    assert store.inspect_store(path) == "incomplete"
    store.prepare(uri_of(path))
    assert store.inspect_store(path) == "mlflow"
    assert usable(path)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.touch()
    store.prepare(uri_of(path))
    assert usable(path)


# Refused with one line, the file named, nothing changed -------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.write_text("my notes, not a database\n")
    before = digest(path)
    with pytest.raises(TrackingError, match=r"mlflow\.db: not a SQLite database") as caught:
        store.prepare(uri_of(path))
    assert "\n" not in str(caught.value)
    assert digest(path) == before


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(TrackingError, match=r"mlflow\.db: is a directory"):
        store.prepare(uri_of(tmp_path / "mlflow.db"))


def test_someone_elses_sqlite_file_gets_no_mlflow_tables(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    execute_sql(
        path,
        "CREATE TABLE customers (name TEXT)",
        "INSERT INTO customers VALUES ('ada')",
    )
    refused_untouched(path, r"without MLflow's tables, not an MLflow store")


def test_store_locked_by_another_process_fails_after_a_bounded_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mlflow.db"
    store.prepare(uri_of(path))
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 1.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(TrackingError, match=r"mlflow\.db: locked by another process"):
            store.prepare(uri_of(path))
        assert time.monotonic() - started < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_full_disk_is_one_line_naming_the_store(tmp_path: Path) -> None:
    """A real full file system: a 1 MiB tmpfs (needs root; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        path = mount / "mlflow.db"
        with pytest.raises(TrackingError, match=r"mlflow\.db: cannot create the store \(.*") as e:
            store.prepare(uri_of(path))
        assert "no space left" in str(e.value).lower() or "disk is full" in str(e.value)
        assert not path.exists()
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


READ_ONLY_CHECK = """
import sys
from mlpipe.errors import TrackingError
from mlpipe.store import prepare
try:
    prepare(sys.argv[1], write=sys.argv[2] == "write")
except TrackingError as exc:
    print(f"error: {exc}")
    sys.exit(1)
print("ok")
"""


def test_read_only_store_is_refused_for_writing_and_read_for_reading(tmp_path: Path) -> None:
    """A store on a read-only mount (root writes through any file mode) or, for other users,
    a store without write permission: writing stages refuse it, readers still read it."""
    folder = tmp_path / "ro"
    path = folder / "mlflow.db"
    store.prepare(uri_of(path))
    close_engines()
    before = digest(path)
    run = [sys.executable, "-c", READ_ONLY_CHECK, uri_of(path)]
    with read_only(folder):
        wrote = subprocess.run([*run, "write"], env=stage_env(), capture_output=True, text=True)
        read = subprocess.run([*run, "read"], env=stage_env(), capture_output=True, text=True)
    assert wrote.returncode == 1, wrote.stdout + wrote.stderr
    assert wrote.stdout.startswith("error: ") and "read-only" in wrote.stdout, wrote.stdout
    assert read.returncode == 0, read.stdout + read.stderr
    assert digest(path) == before


# A moved or copied workspace ----------------------------------------------------------------


def test_moved_store_follows_its_workspace(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    old = tmp_path / "old"
    path = old / "mlflow.db"
    store.prepare(uri_of(path))
    client = MlflowClient(tracking_uri=uri_of(path))
    experiment = client.create_experiment("e", store.artifact_root(uri_of(path)))
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "hello", "note.txt")
    new = tmp_path / "new"
    old.rename(new)
    moved = new / "mlflow.db"
    store.prepare(uri_of(moved))
    client = MlflowClient(tracking_uri=uri_of(moved))
    assert client.get_experiment(experiment).artifact_location == (new / "mlartifacts").as_uri()
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith(new.as_uri())
    assert client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    second = client.create_run(experiment)
    client.log_text(second.info.run_id, "again", "note.txt")
    assert not old.exists()


def test_reader_of_a_moved_store_fixes_it_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    old = tmp_path / "old"
    store.prepare(uri_of(old / "mlflow.db"))
    MlflowClient(tracking_uri=uri_of(old / "mlflow.db")).create_experiment(
        "e", store.artifact_root(uri_of(old / "mlflow.db"))
    )
    new = tmp_path / "new"
    old.rename(new)
    (new / "mlartifacts").mkdir()
    close_engines()
    monkeypatch.setattr(store, "_writable", lambda path: False)
    with pytest.raises(TrackingError, match=r"name .*old, where it was before it was moved to"):
        store.prepare(uri_of(new / "mlflow.db"), write=False)
    monkeypatch.undo()
    store.prepare(uri_of(new / "mlflow.db"), write=False)  # a reader that may write fixes it
    client = MlflowClient(tracking_uri=uri_of(new / "mlflow.db"))
    assert client.get_experiment_by_name("e").artifact_location == (new / "mlartifacts").as_uri()


def test_store_moved_without_its_artifacts_says_what_to_move(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    old = tmp_path / "old"
    store.prepare(uri_of(old / "mlflow.db"))
    MlflowClient(tracking_uri=uri_of(old / "mlflow.db")).create_experiment(
        "e", store.artifact_root(uri_of(old / "mlflow.db"))
    )
    (old / "mlartifacts").mkdir()
    new = tmp_path / "new"
    new.mkdir()
    close_engines()
    (old / "mlflow.db").rename(new / "mlflow.db")
    with pytest.raises(TrackingError, match=r"moved from .*old without its mlartifacts/ folder"):
        store.prepare(uri_of(new / "mlflow.db"))


def test_predict_where_no_store_exists_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from mlpipe import predict

    image = tmp_path / "digit.png"
    pixels = Image.new("L", (28, 28), 0)
    pixels.paste(255, (10, 4, 18, 24))
    pixels.save(image)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri_of(tmp_path / "mlflow.db"))
    from mlpipe.paths import Layout

    argv = [str(image), "--model", "models:/keras-tutorial-mnist@champion"]
    assert predict.main(argv, layout=Layout(tmp_path)) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "no MLflow store here" in error
    assert "\n" not in error
    assert list(tmp_path.iterdir()) == [image]


def test_database_store_without_its_driver_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpipe.store import check_reachable

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(TrackingError, match=r"database driver is not installed") as caught:
        check_reachable("postgresql://alice:s3cret@127.0.0.1:9/mlflow")
    assert "s3cret" not in str(caught.value)
    assert "postgresql://***@127.0.0.1:9/mlflow" in str(caught.value)


def test_a_database_with_mlflow_like_table_names_and_data_is_never_rebuilt(tmp_path: Path) -> None:
    """Only a half-made store (MLflow's tables, all empty) is rebuilt; anything else is kept."""
    path = tmp_path / "mlflow.db"
    execute_sql(
        path,
        "CREATE TABLE experiments (id INTEGER, note TEXT)",
        "INSERT INTO experiments VALUES (1, 'lab notes')",
        "CREATE TABLE runs (id INTEGER)",
    )
    refused_untouched(path, r"with data but without all of MLflow's tables")
    execute_sql(
        path,
        "DELETE FROM experiments",
        "CREATE TABLE patients (name TEXT)",
    )
    refused_untouched(path, r"without MLflow's tables, not an MLflow store")


@pytest.mark.parametrize("name", ["sp ace", "ünï", "semi;colon"])
def test_odd_but_safe_folder_names_keep_the_store_inside(tmp_path: Path, name: str) -> None:
    from mlpipe.runs import connect

    workspace = tmp_path / name
    workspace.mkdir()
    client, experiment = connect("e", workspace)
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.set_terminated(run.info.run_id)
    close_engines()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert (workspace / "mlflow.db").is_file()
    assert list((workspace / "mlartifacts").rglob("note.txt"))


@pytest.mark.parametrize("name", ["pc%41", "q?x", "h#x"])
def test_folders_a_uri_would_misread_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str
) -> None:
    from mlpipe.runs import connect

    workspace = tmp_path / name
    workspace.mkdir()
    with pytest.raises(TrackingError, match=r"cannot live in a folder whose path holds"):
        connect("e", workspace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert list(workspace.iterdir()) == []


def test_a_read_only_store_is_read_through_a_snapshot(tmp_path: Path) -> None:
    """WAL mode needs a writable folder even to read: a reader gets a copy instead."""
    from mlflow import MlflowClient

    folder = tmp_path / "ro"
    path = folder / "mlflow.db"
    store.prepare(uri_of(path))
    MlflowClient(tracking_uri=uri_of(path)).create_experiment("kept")
    close_engines()
    with read_only(folder), store.readable(uri_of(path)) as uri:
        assert uri != uri_of(path)
        assert MlflowClient(tracking_uri=uri).get_experiment_by_name("kept") is not None
        close_engines()
