"""The tracking store is never wedged and never a traceback: checked before MLflow opens it."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from mlpipe.errors import TrackingError
from mlpipe.tracking import relocation, snapshot, sqlite_store, store
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


def close_engine(uri: str) -> None:
    """Close MLflow's pooled connections to the store at `uri` only."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


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
        sqlite_store.prepare(uri_of(path))
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


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_new_store_is_complete_whenever_its_creator_is_killed(tmp_path: Path) -> None:
    """kill -9 at many moments of creation: afterwards there is no store, or a whole one."""
    path = tmp_path / "mlflow.db"
    code = "import sys; from mlpipe.tracking.sqlite_store import prepare; prepare(sys.argv[1])"
    for delay in (0.8, 1.4, 2.0, 2.6):
        path.unlink(missing_ok=True)
        creator = subprocess.Popen(
            [sys.executable, "-c", code, uri_of(path)], env=stage_env(), cwd=REPO
        )
        time.sleep(delay)
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        assert not path.exists() or sqlite_store.inspect_store(path) == "mlflow", delay
    # The next start removes the killed creator's leftovers and makes a working store.
    sqlite_store.prepare(uri_of(path))
    assert usable(path)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_half_made_store_without_runs_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    execute_sql(
        path,
        "CREATE TABLE experiments (experiment_id INTEGER)",
        "CREATE TABLE alembic_version (version_num TEXT)",
    )
    assert sqlite_store.inspect_store(path) == "incomplete"
    sqlite_store.prepare(uri_of(path))
    assert sqlite_store.inspect_store(path) == "mlflow"
    assert usable(path)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.touch()
    sqlite_store.prepare(uri_of(path))
    assert usable(path)


# Refused with one line, the file named, nothing changed -------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.write_text("my notes, not a database\n")
    before = digest(path)
    with pytest.raises(TrackingError, match=r"mlflow\.db: not a SQLite database") as caught:
        sqlite_store.prepare(uri_of(path))
    assert "\n" not in str(caught.value)
    assert digest(path) == before


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(TrackingError, match=r"mlflow\.db: is a directory"):
        sqlite_store.prepare(uri_of(tmp_path / "mlflow.db"))


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
    sqlite_store.prepare(uri_of(path))
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 1.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(TrackingError, match=r"mlflow\.db: locked by another process"):
            sqlite_store.prepare(uri_of(path))
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
            sqlite_store.prepare(uri_of(path))
        assert "no space left" in str(e.value).lower() or "disk is full" in str(e.value)
        assert not path.exists()
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


READ_ONLY_CHECK = """
import sys
from mlpipe.errors import TrackingError
from mlpipe.tracking.snapshot import reading
from mlpipe.tracking.sqlite_store import prepare
try:
    if sys.argv[2] == "write":
        prepare(sys.argv[1])
    else:
        with reading(sys.argv[1]):
            pass
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
    sqlite_store.prepare(uri_of(path))
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


def moved_workspace(tmp_path: Path) -> tuple[Path, Path, str]:
    """A workspace whose store has an experiment and a run with an artifact, then moved from
    `old` to `new`; the run's id."""
    from mlflow import MlflowClient

    from mlpipe.tracking.run_lifecycle import connect

    old = tmp_path / "old"
    old.mkdir()
    client, experiment = connect("e", old)
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.set_terminated(run.info.run_id)
    assert MlflowClient(tracking_uri=uri_of(old / "mlflow.db")).get_run(run.info.run_id)
    close_engines()
    os.environ.pop("MLFLOW_TRACKING_URI")  # which connect exported, as a stage does
    new = tmp_path / "new"
    old.rename(new)
    return old, new, run.info.run_id


def test_the_next_writing_stage_points_a_moved_store_at_its_workspace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlpipe.tracking.run_lifecycle import connect

    old, new, run_id = moved_workspace(tmp_path)
    with caplog.at_level("WARNING"):
        client, experiment = connect("e", new)
    assert f"the workspace moved from {old} to {new}" in caplog.text
    assert client.get_experiment(experiment).artifact_location == (new / "mlartifacts").as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith(new.as_uri())
    assert client.download_artifacts(run_id, "note.txt", str(tmp_path))
    second = client.create_run(experiment)
    client.log_text(second.info.run_id, "again", "note.txt")
    assert not old.exists()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`, hidden ones included, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_reader_of_a_moved_store_reads_it_as_moved_and_changes_nothing(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    old, new, run_id = moved_workspace(tmp_path)
    before = tree(new)
    with snapshot.reading(uri_of(new / "mlflow.db")) as seen:
        assert seen.moved_from == (old,)
        client = MlflowClient(tracking_uri=seen.uri)
        assert client.get_run(run_id).info.artifact_uri.startswith(new.as_uri())
        assert client.download_artifacts(run_id, "note.txt", str(tmp_path / "got"))
        close_engines()
    assert tree(new) == before  # no side file, no rewritten location
    # Read again, it is still the moved store: only a writing stage rewrites it.
    with snapshot.reading(uri_of(new / "mlflow.db")) as seen:
        assert seen.moved_from == (old,)
    relocation.relocate(new / "mlflow.db")
    with snapshot.reading(uri_of(new / "mlflow.db")) as seen:
        assert seen.moved_from == ()


def test_a_reader_sees_what_a_running_writer_has_committed_and_leaves_its_files(
    tmp_path: Path,
) -> None:
    """A stage holding the store open keeps recent commits in the write-ahead log: the reader's
    copy carries them, and the store's own files are not touched."""
    from mlflow import MlflowClient

    from mlpipe.tracking.run_lifecycle import connect

    client, _ = connect("e", tmp_path)
    os.environ.pop("MLFLOW_TRACKING_URI")
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as writer:
        writer.execute("SELECT COUNT(*) FROM experiments").fetchall()  # holds the store open
        client.create_experiment("written-while-open")
        assert Path(f"{tmp_path / 'mlflow.db'}-wal").stat().st_size > 0
        before = tree(tmp_path)
        with snapshot.reading(uri_of(tmp_path / "mlflow.db")) as seen:
            found = MlflowClient(tracking_uri=seen.uri).get_experiment_by_name("written-while-open")
            close_engine(seen.uri)
        assert found is not None
        assert tree(tmp_path) == before


def test_relocation_rewrites_every_location_column_of_mlflows_schema() -> None:
    """MLflow's SQLAlchemy models are read for every column that may hold a location: each is
    rewritten on a move, or said not to be a location here. A new MLflow column fails this
    until it is one or the other."""
    import re

    import mlflow.store.model_registry.dbmodels.models  # noqa: F401 (registry tables)
    from mlflow.store.tracking.dbmodels.models import Base

    not_locations = {
        ("datasets", "dataset_source"): "a JSON description; the pipeline's source is relative",
        ("runs", "source_name"): "the entry point's name (stages/train.py)",
        ("mcp_server_versions", "source"): "where an MCP server's code came from; unused here",
        ("evaluation_dataset_records", "source"): "a GenAI record's origin; unused here",
        ("workspaces", "trace_archival_location"): "a workspace's trace archive; none made here",
    }
    may_hold_a_location = re.compile(r"(location|uri|path|source)$")
    found = {
        (table.name, column.name)
        for table in Base.metadata.tables.values()
        for column in table.columns
        if may_hold_a_location.search(column.name) and not column.name.endswith(("_type", "_id"))
    }
    rewritten = set(relocation.LOCATION_COLUMNS)
    assert found - rewritten - set(not_locations) == set(), "classify these columns"
    assert rewritten <= found, "a rewritten column left MLflow's schema"


def test_store_moved_without_its_artifacts_says_what_to_move(tmp_path: Path) -> None:
    from mlpipe.tracking.run_lifecycle import connect

    old, new, _ = moved_workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (new / "mlflow.db").rename(elsewhere / "mlflow.db")
    new.rename(old)  # the artifacts are back where the store says; the store is not
    for attempt in (
        lambda: connect("e", elsewhere),
        lambda: snapshot.reading(uri_of(elsewhere / "mlflow.db")).__enter__(),
    ):
        with pytest.raises(
            TrackingError, match=r"moved from .*old without its mlartifacts/ folder"
        ):
            attempt()


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
    from mlpipe.tracking.reachability import check_reachable

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
    from mlpipe.tracking.run_lifecycle import connect

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
    from mlpipe.tracking.run_lifecycle import connect

    workspace = tmp_path / name
    workspace.mkdir()
    with pytest.raises(TrackingError, match=r"cannot live in a folder whose path holds"):
        connect("e", workspace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert list(workspace.iterdir()) == []


def test_a_read_only_store_is_read_through_a_snapshot(tmp_path: Path) -> None:
    """WAL mode needs a writable folder even to read: a reader gets a copy instead, and no
    side file appears (none could)."""
    from mlflow import MlflowClient

    folder = tmp_path / "ro"
    path = folder / "mlflow.db"
    sqlite_store.prepare(uri_of(path))
    MlflowClient(tracking_uri=uri_of(path)).create_experiment("kept")
    close_engines()
    before = tree(folder)
    with read_only(folder), snapshot.reading(uri_of(path)) as seen:
        assert seen.uri != uri_of(path)
        assert MlflowClient(tracking_uri=seen.uri).get_experiment_by_name("kept") is not None
        close_engines()
    assert tree(folder) == before


# Readers and odd stores (from a hostile test) -------------------------------------------------


def test_a_reader_of_a_linked_store_sees_the_journal_beside_the_file_it_links_to(
    tmp_path: Path,
) -> None:
    """SQLite keeps a linked store's journal beside its target: the copy must take that one."""
    from mlflow import MlflowClient

    from mlpipe.tracking.run_lifecycle import connect

    real = tmp_path / "elsewhere"
    real.mkdir()
    client, _ = connect("e", real)
    os.environ.pop("MLFLOW_TRACKING_URI")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "mlflow.db").symlink_to(real / "mlflow.db")
    with closing(sqlite3.connect(real / "mlflow.db")) as writer:
        writer.execute("SELECT COUNT(*) FROM experiments").fetchall()  # holds the store open
        client.create_experiment("in-the-journal")
        assert Path(f"{real / 'mlflow.db'}-wal").stat().st_size > 0
        with snapshot.reading(uri_of(workspace / "mlflow.db")) as seen:
            found = MlflowClient(tracking_uri=seen.uri).get_experiment_by_name("in-the-journal")
            close_engine(seen.uri)
    assert found is not None


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda path: path.write_text("hello\n"), "not a SQLite database"),
        (lambda path: os.truncate(path, 4096), "damaged (SQLite's integrity check of it fails)"),
    ],
    ids=["not-sqlite", "truncated"],
)
def test_a_reader_of_a_broken_store_says_so_at_once(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    from mlflow import MlflowClient

    path = tmp_path / "mlflow.db"
    sqlite_store.prepare(uri_of(path))
    client = MlflowClient(tracking_uri=uri_of(path))
    for index in range(40):  # enough pages that a cut leaves a database with holes
        client.create_experiment(f"e{index}", tags={"note": "x" * 2000})
    close_engines()
    damage(path)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=re.escape(said)), snapshot.reading(uri_of(path)):
        pass
    assert time.monotonic() - started < 5, "it waited as if a stage were writing"


def test_a_side_file_that_cannot_be_copied_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    sqlite_store.prepare(uri_of(path))
    close_engines()
    Path(f"{path}-wal").mkdir()
    said = r"mlflow\.db-wal: cannot be read \(Is a directory\)"
    with pytest.raises(TrackingError, match=said), snapshot.reading(uri_of(path)):
        pass


def test_a_broken_link_where_the_store_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").symlink_to(tmp_path / "gone.db")
    said = r"a symbolic link to .*gone\.db, which does not exist"
    with pytest.raises(TrackingError, match=said), snapshot.reading(uri_of(tmp_path / "mlflow.db")):
        pass


def test_readers_never_make_the_workspace_their_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python falls back to the current folder when no temp folder is writable."""
    from mlpipe.errors import PipelineError
    from mlpipe.paths import scratch_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    with pytest.raises(PipelineError, match=r"no writable temp folder .*set TMPDIR"):
        scratch_root()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["mlruns", "file:///{tmp}/newstore"])
def test_predict_refuses_a_file_store_and_makes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], uri: str
) -> None:
    from mlpipe import predict
    from mlpipe.paths import Layout

    image = tmp_path / "digit.png"
    write_digit(image)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    argv = [str(image), "--model", "models:/keras-tutorial-mnist@champion"]
    assert predict.main(argv, layout=Layout(tmp_path)) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "names a file store" in error
    assert list(tmp_path.iterdir()) == [image]


def write_digit(path: Path) -> None:
    from PIL import Image

    pixels = Image.new("L", (28, 28), 0)
    pixels.paste(255, (10, 4, 18, 24))
    pixels.save(path)
