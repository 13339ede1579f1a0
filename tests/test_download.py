"""The download stage against a local HTTP server: the real download code, no network."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlpipe.data import http_fetch
from mlpipe.data.download import download_dataset, verify
from mlpipe.data.raw import read_raw
from mlpipe.data.specs import DatasetSpec
from mlpipe.errors import DataError, DownloadError
from tests.conftest import error_lines, files_under, run_stage
from tests.fakes import WRITERS, FileServer, served, tiny_arrays, write_mnist


def fetch_all(spec: DatasetSpec, dest: Path) -> list[str]:
    return download_dataset(spec, dest)


@pytest.fixture
def origin(tmp_path: Path) -> FileServer:
    server = FileServer(tmp_path / "origin")
    with server.running():
        yield server


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_each_dataset_downloads_verified_and_decodes(
    origin: FileServer, tmp_path: Path, name: str
) -> None:
    spec = served(WRITERS[name](origin.folder), origin.url)
    dest = tmp_path / "raw"
    assert fetch_all(spec, dest) == ["canonical address"] * len(spec.files)
    assert files_under(dest) == sorted(["SHA256SUMS", *(f.name for f in spec.files)])
    raw = read_raw(spec, dest)
    assert raw.x_train.shape[1:] == spec.image_shape
    assert raw.x_train.dtype == np.uint8
    assert set(raw.y_test.tolist()) == set(range(10))


def test_checksum_mismatch_is_rejected_and_nothing_is_left(
    origin: FileServer, tmp_path: Path
) -> None:
    spec = served(write_mnist(origin.folder), origin.url)
    wrong = replace(spec, files=(replace(spec.files[0], sha256="0" * 64),))
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError, match=r"sha256 mismatch: expected 0{64}, found [0-9a-f]{64}"):
        fetch_all(wrong, dest)
    assert files_under(dest) == []


def test_truncated_transfer_is_retried_then_reported(origin: FileServer, tmp_path: Path) -> None:
    spec = served(write_mnist(origin.folder), origin.url)
    origin.faults["mnist.npz"] = ["truncate"] * 10
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError, match="transfer failed"):
        fetch_all(spec, dest)
    assert origin.requests.count("mnist.npz") == http_fetch.RETRIES + 1
    assert files_under(dest) == []


def test_truncated_once_then_complete(origin: FileServer, tmp_path: Path) -> None:
    spec = served(write_mnist(origin.folder), origin.url)
    origin.faults["mnist.npz"] = ["truncate"]
    assert fetch_all(spec, tmp_path / "raw") == ["canonical address"]
    assert origin.requests.count("mnist.npz") == 2


def test_503_is_retried_then_succeeds(origin: FileServer, tmp_path: Path) -> None:
    spec = served(write_mnist(origin.folder), origin.url)
    origin.faults["mnist.npz"] = [503, 503]
    assert fetch_all(spec, tmp_path / "raw") == ["canonical address"]
    assert origin.requests.count("mnist.npz") == 3


def test_persistent_503_gives_up(origin: FileServer, tmp_path: Path) -> None:
    spec = served(write_mnist(origin.folder), origin.url)
    origin.faults["mnist.npz"] = [503] * 20
    with pytest.raises(DownloadError, match="canonical address"):
        fetch_all(spec, tmp_path / "raw")
    assert origin.requests.count("mnist.npz") == http_fetch.RETRIES + 1


def test_404_is_not_retried(origin: FileServer, tmp_path: Path) -> None:
    spec = served(write_mnist(tmp_path / "elsewhere"), origin.url)
    with pytest.raises(DownloadError, match="404 Not Found") as caught:
        fetch_all(spec, tmp_path / "raw")
    assert origin.requests == ["mnist.npz"]
    assert "set DATA_MIRROR" in str(caught.value)


def test_mirror_directory_is_used_first(
    origin: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = served(write_mnist(tmp_path / "mirror"), origin.url)
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    assert fetch_all(spec, tmp_path / "raw")[0].startswith("DATA_MIRROR")
    assert origin.requests == []


def test_mirror_url_is_used_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = FileServer(tmp_path / "mirror")
    spec = served(write_mnist(mirror.folder), "http://127.0.0.1:9/")  # discard port: unused
    with mirror.running():
        monkeypatch.setenv("DATA_MIRROR", mirror.url)
        assert fetch_all(spec, tmp_path / "raw")[0] == f"DATA_MIRROR ({mirror.url})"
    assert mirror.requests == ["mnist.npz"]


def test_repacked_mirror_accepted_on_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = tiny_arrays((28, 28))
    spec = write_mnist(tmp_path / "canonical", arrays)
    # Same arrays, other bytes: uncompressed instead of compressed.
    (tmp_path / "mirror").mkdir()
    np.savez(tmp_path / "mirror" / "mnist.npz", **arrays)
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    assert fetch_all(served(spec, "http://127.0.0.1:9/"), tmp_path / "raw")[0].startswith(
        "DATA_MIRROR"
    )


def test_mirror_with_other_content_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_mnist(tmp_path / "canonical")
    write_mnist(tmp_path / "mirror", tiny_arrays((28, 28), seed=1))
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(DownloadError, match="arrays x_test, x_train differ") as caught:
        fetch_all(served(spec, "http://127.0.0.1:9/"), tmp_path / "raw")
    assert "Keras cache" in str(caught.value)
    assert files_under(tmp_path / "raw") == []


def test_keras_cache_serves_a_previous_tutorial_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = write_mnist(tmp_path / "keras" / "datasets")
    label = fetch_all(served(spec, "http://127.0.0.1:9/"), tmp_path / "raw")[0]
    assert label == f"Keras cache ({tmp_path / 'keras' / 'datasets'})"


def test_mirror_pointing_nowhere_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "nowhere"))
    spec = write_mnist(tmp_path / "canonical")
    with pytest.raises(DownloadError, match=r"DATA_MIRROR=.*nowhere is not a directory"):
        fetch_all(spec, tmp_path / "raw")


def test_existing_verified_copy_is_kept(tmp_path: Path) -> None:
    spec = write_mnist(tmp_path / "raw")
    assert fetch_all(served(spec, "http://127.0.0.1:9/"), tmp_path / "raw") == ["existing copy"]


def test_truncated_file_says_what_was_expected(tmp_path: Path) -> None:
    spec = write_mnist(tmp_path)
    path = tmp_path / "mnist.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        DataError, match=r"sha256 differs and the content cannot be read.*truncated or corrupt"
    ):
        verify(spec, spec.files[0], path, canonical=False)
    with pytest.raises(
        DataError, match=f"expected {spec.files[0].sha256}, found .* \\(100 bytes\\)"
    ):
        verify(spec, spec.files[0], path, canonical=True)


def test_stage_offline_without_mirror_fails_fast_naming_data_mirror(workspace: Path) -> None:
    """The real stage, canonical address unreachable: a quick, one-line error naming DATA_MIRROR."""
    started = time.monotonic()
    # An unroutable proxy stands in for "no network" without touching any real host.
    result = run_stage(
        workspace,
        "download",
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert "no source gave a verified mnist.npz" in lines[0]
    assert "set DATA_MIRROR" in lines[0]
    assert "Traceback" not in result.stderr
    assert files_under(workspace / "data") == []


def test_unresolvable_host_is_not_retried_and_points_to_the_readme(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline as a firewall makes it: no DNS. One attempt, one short line, the README's way out."""
    import socket

    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    result = run_stage(workspace, "download")
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "cannot resolve storage.googleapis.com" in line
    assert 'offline? set DATA_MIRROR to a folder or URL holding mnist.npz (README: "Offline' in line
    assert "retry" not in result.stderr  # a host that does not resolve is not tried again
    assert files_under(workspace / "data") == []


def test_a_rejected_mirror_file_is_named_as_the_user_gave_it(
    origin: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is checked in a temp file beside the target; the line names the mirror's file
    or URL (credentials masked), never that temp file, which is gone by then."""
    spec = served(write_mnist(tmp_path / "canonical"), "http://127.0.0.1:9/")
    mirror = tmp_path / "mirror"
    for folder in (mirror, origin.folder):
        folder.mkdir(exist_ok=True)
        (folder / "mnist.npz").write_bytes(b"PK\x03\x04junk")
    dest = tmp_path / "raw"
    given = origin.url.replace("http://", "http://reader:s3cret@")
    for location, named in ((str(mirror), f"{mirror}/mnist.npz"), (given, "http://***@")):
        monkeypatch.setenv("DATA_MIRROR", location)
        with pytest.raises(DownloadError) as caught:
            fetch_all(spec, dest)
        message = str(caught.value)
        assert named in message and "sha256 differs and the content cannot be read" in message
        assert str(dest) not in message and "s3cret" not in message
        assert files_under(dest) == []
