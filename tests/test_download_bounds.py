"""A bad source costs little: downloads are bounded in time, size and memory (issue 10, part 3).

Each test puts a misbehaving mirror in front of a good canonical server on 127.0.0.1 and
checks that the mirror is given up quickly, with one line saying why, and that the canonical
copy is then used. Deadlines and caps are patched or generated small, so each test takes
about a second.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpipe.data import http_fetch, sources
from mlpipe.data.download import download_dataset
from mlpipe.data.formats import check_mnist_npz
from mlpipe.data.specs import MNIST, SPECS, DatasetSpec
from mlpipe.errors import DataError, DownloadError
from tests.conftest import HAS_MIRROR, MIRROR, error_lines, files_under, free_port, run_stage
from tests.fakes import FileServer, served, tiny_arrays, write_mnist

pytestmark = pytest.mark.reliability

SECRET = "s3cr3t-token"


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[FileServer]:
    """The canonical address: a server holding the good file."""
    server = FileServer(tmp_path / "origin")
    with server.running():
        yield server


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A DATA_MIRROR server, tried first, holding the same good file."""
    server = FileServer(tmp_path / "mirror")
    with server.running():
        monkeypatch.setenv("DATA_MIRROR", server.url)
        yield server


def good_spec(origin: FileServer, mirror: FileServer | None = None) -> DatasetSpec:
    """A tiny MNIST served by `origin` (and copied to `mirror`), with its real, small size."""
    spec = served(write_mnist(origin.folder), origin.url)
    if mirror is not None:
        mirror.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(origin.folder / "mnist.npz", mirror.folder / "mnist.npz")
    return spec


def capped(spec: DatasetSpec, max_size: int) -> DatasetSpec:
    return replace(spec, files=(replace(spec.files[0], max_size=max_size),))


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]


def fetch_timed(spec: DatasetSpec, dest: Path) -> tuple[list[str], float]:
    started = time.monotonic()
    served_by = download_dataset(spec, dest)
    return served_by, time.monotonic() - started


# --- Time -----------------------------------------------------------------------------------


def test_trickling_mirror_is_given_up_at_the_deadline(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1 KiB every 0.2 s would take ~10 s; the 1 s deadline ends it as data arrives."""
    monkeypatch.setattr(http_fetch, "SOURCE_DEADLINE_S", 1.0)
    spec = good_spec(origin, mirror)
    mirror.faults["mnist.npz"] = ["trickle"] * 5
    served_by, elapsed = fetch_timed(spec, tmp_path / "raw")
    assert served_by == ["canonical address"]
    assert elapsed < 4
    [line] = rejections(caplog)
    assert "no complete file within 1 s" in line
    assert "bytes received by the deadline" in line
    assert mirror.requests == ["mnist.npz"]


def test_silent_mirror_is_given_up_at_the_deadline(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accepts, never answers: the read timeout (20 s) is cut to the time left (1 s)."""
    monkeypatch.setattr(http_fetch, "SOURCE_DEADLINE_S", 1.0)
    spec = good_spec(origin, mirror)
    mirror.faults["mnist.npz"] = ["silent"] * 5
    served_by, elapsed = fetch_timed(spec, tmp_path / "raw")
    assert served_by == ["canonical address"]
    assert elapsed < 4
    [line] = rejections(caplog)
    assert "no complete file within 1 s (timed out" in line


def test_redirect_chain_is_given_up_at_the_deadline(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each hop answers in time, but 30 hops of 0.2 s would outlast the 1 s deadline."""
    monkeypatch.setattr(http_fetch, "SOURCE_DEADLINE_S", 1.0)
    spec = good_spec(origin, mirror)
    mirror.faults["mnist.npz"] = ["redirect"] * 100
    served_by, elapsed = fetch_timed(spec, tmp_path / "raw")
    assert served_by == ["canonical address"]
    assert elapsed < 3
    [line] = rejections(caplog)
    assert "no complete file within 1 s (deadline reached at 302 Found)" in line


def test_big_files_get_time_for_their_size() -> None:
    """The deadline is a minute, longer only where the file needs it at a modest rate."""
    assert http_fetch.deadline_s(MNIST.files[0]) == http_fetch.SOURCE_DEADLINE_S == 60
    cifar = http_fetch.deadline_s(SPECS["cifar10"].files[0])
    assert http_fetch.SOURCE_DEADLINE_S < cifar < 3 * 60


# --- Size -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("endless", "sent more than the 100000 bytes a copy of mnist.npz can be; cut off"),
        ("huge", "announces 1000000000000 bytes, more than the 100000"),
        ("gzip_bomb", "sent more than the 100000 bytes a copy of mnist.npz can be; cut off"),
    ],
)
def test_body_past_the_size_cap_is_cut_off(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    reason: str,
) -> None:
    """8 MiB of zeros, a terabyte announced, or 8 KiB of gzip inflating to 8 MiB: cut at 100 kB."""
    spec = capped(good_spec(origin, mirror), 100_000)
    mirror.faults["mnist.npz"] = [fault] * 5
    served_by, elapsed = fetch_timed(spec, tmp_path / "raw")
    assert served_by == ["canonical address"]
    assert elapsed < 4
    [line] = rejections(caplog)
    assert reason in line
    assert mirror.requests == ["mnist.npz"]


def test_local_mirror_file_over_the_cap_is_refused_before_copying(
    origin: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = capped(good_spec(origin), 100_000)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "mnist.npz").write_bytes(bytes(100_001))
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "folder"))

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized mirror file was copied")

    monkeypatch.setattr(shutil, "copyfile", no_copy)
    assert download_dataset(spec, tmp_path / "raw") == ["canonical address"]
    [line] = rejections(caplog)
    assert "100001 bytes, more than the 100000 a copy of mnist.npz can be" in line


def test_full_disk_names_the_file_and_folder_and_stops(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk fails every source alike: one line, and the canonical host is not tried."""
    spec = good_spec(origin, mirror)
    real_open = open

    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return FullDisk() if "w" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(http_fetch, "open", full_open, raising=False)
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as caught:
        download_dataset(spec, dest)
    message = str(caught.value)
    assert message == (
        f"no space left on device writing mnist.npz into {dest}; free some space there "
        "and run again"
    )
    assert origin.requests == []
    assert files_under(dest) == []


# --- Memory, and files that are not the dataset ----------------------------------------------


def npz_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """A small npz whose x_train header declares `shape` but holds no data."""
    arrays = tiny_arrays((28, 28))
    np.savez(path, **arrays)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("x_train.npy", header.getvalue())


def test_npz_declaring_a_huge_array_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    with pytest.warns(UserWarning, match="Duplicate name"):
        npz_declaring(path, (10**9, 28, 28))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(DataError, match=r"not the dataset: x_train declares \(1000000000, "):
            check_mnist_npz(path, (28, 28), MNIST.files[0].cap)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1
    assert peak < 10 << 20


def test_npz_whose_honest_arrays_exceed_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, **tiny_arrays((28, 28), n_train=2000))
    with pytest.raises(DataError, match=r"its arrays hold \d+ bytes, more than 1000000"):
        check_mnist_npz(path, (28, 28), 1_000_000)


def npz_changing(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """A writer of the tiny dataset's npz with one array changed."""

    def write(path: Path) -> None:
        arrays = tiny_arrays((28, 28))
        arrays[name] = change(arrays[name])
        np.savez(path, **arrays)

    return write


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("write", "found"),
    [
        (
            npz_changing("x_train", lambda x: x.astype(np.float32) / 255),
            "x_train is float32 (40, 28, 28), expected uint8 (N, 28, 28)",
        ),
        (
            npz_changing("y_train", lambda y: y.astype(np.int64)),
            "y_train is int64 (40,), expected uint8 (N,)",
        ),
        (
            npz_changing("x_test", lambda x: np.zeros((20, 32, 32, 3), np.uint8)),
            "x_test is uint8 (20, 32, 32, 3), expected uint8 (N, 28, 28)",
        ),
        (npz_changing("y_test", lambda y: y[:5]), "5 test labels for 20 images"),
        (
            lambda path: npz_declaring(path, (10**9, 28, 28)),
            "x_train declares (1000000000, 28, 28) (784000000000 bytes) but holds 0 bytes",
        ),
    ],
    ids=["float_pixels", "int64_labels", "cifar_shape", "fewer_labels", "huge_declared"],
)
def test_mirror_npz_that_is_not_the_dataset_gets_one_line(
    origin: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    write: Callable[[Path], None],
    found: str,
) -> None:
    """Refused from the array headers, quickly, naming what was found; the next source serves."""
    spec = good_spec(origin)
    (tmp_path / "folder").mkdir()
    write(tmp_path / "folder" / "mnist.npz")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "folder"))
    started = time.monotonic()
    assert download_dataset(spec, tmp_path / "raw") == ["canonical address"]
    assert time.monotonic() - started < 2
    [line] = rejections(caplog)
    assert "not the dataset: " + found in line
    assert "\n" not in line


def test_html_page_is_named_as_such(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = good_spec(origin, mirror)
    mirror.faults["mnist.npz"] = ["html"]
    assert download_dataset(spec, tmp_path / "raw") == ["canonical address"]
    [line] = rejections(caplog)
    assert "mnist.npz: an HTML page (" in line
    assert line.endswith("bytes), not the dataset")
    # The canonical address answering with a page is named the same way.
    origin.faults["mnist.npz"] = ["html"]
    mirror.faults["mnist.npz"] = ["html"]
    with pytest.raises(
        DownloadError, match=r"canonical address: http://\S+/mnist\.npz: an HTML page"
    ):
        download_dataset(spec, tmp_path / "other")


@pytest.mark.skipif(not HAS_MIRROR, reason=f"real MNIST mirror not found at {MIRROR}")
def test_real_repacked_mnist_passes_the_header_check() -> None:
    """The caps and checks refuse nothing real: the mirror's re-packed copy of MNIST."""
    path = MIRROR / "mnist.npz"
    assert MNIST.files[0].size < path.stat().st_size < MNIST.files[0].cap
    check_mnist_npz(path, MNIST.image_shape, MNIST.files[0].cap)


# --- What is printed ------------------------------------------------------------------------


def test_mirror_credentials_never_printed(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Retry lines, rejections, the final error and the progress bar all mask user:password."""
    spec = good_spec(origin, mirror)
    (origin.folder / "mnist.npz").unlink()  # the canonical address answers 404
    monkeypatch.setenv("DATA_MIRROR", mirror.url.replace("://", f"://reader:{SECRET}@"))
    mirror.faults["mnist.npz"] = ["truncate"] * 10
    descriptions: list[str] = []
    real_tqdm = http_fetch.tqdm

    def recording_tqdm(*args: Any, **kwargs: Any) -> Any:
        descriptions.append(str(kwargs.get("desc")))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(http_fetch, "tqdm", recording_tqdm)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DownloadError) as caught:
        download_dataset(spec, tmp_path / "raw")
    printed = capsys.readouterr()
    assert "retry 1 of 3" in caplog.text
    assert "http://***@127.0.0.1" in str(caught.value)
    assert descriptions == ["mnist.npz"] * 4
    for text in (str(caught.value), caplog.text, printed.out, printed.err, *descriptions):
        assert SECRET not in text


def test_mistyped_mirror_with_credentials_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_MIRROR", f"htps://reader:{SECRET}@example.org/data")
    with pytest.raises(DownloadError, match=r"DATA_MIRROR=htps://\*\*\*@example.org/data") as e:
        sources.mirror_location()
    assert SECRET not in str(e.value)


def test_retry_lines_are_ours(
    origin: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mirror refusing connections: one line of ours per retry, none of urllib3's."""
    spec = good_spec(origin)
    monkeypatch.setenv("DATA_MIRROR", f"http://127.0.0.1:{free_port()}/")
    caplog.set_level(logging.DEBUG, logger="mlpipe.data")
    assert download_dataset(spec, tmp_path / "raw") == ["canonical address"]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("mlpipe.data.")]
    assert sum("connection failed" in line and "; retry" in line for line in ours) == 3
    assert [r for r in caplog.records if r.name.startswith("urllib3")] == []


def test_urllib3_warnings_stay_out_of_the_output(
    origin: FileServer,
    mirror: FileServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed header line makes urllib3 log a warning with a traceback; it is quieted."""
    spec = good_spec(origin, mirror)
    mirror.faults["mnist.npz"] = ["bad_headers"]
    assert download_dataset(spec, tmp_path / "raw")[0].startswith("DATA_MIRROR")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == []


def test_stage_output_has_no_credentials_and_no_urllib3_lines(
    workspace: Path, tmp_path: Path
) -> None:
    """The real stage, in a subprocess: an HTML-answering mirror behind user:password, the
    canonical host unreachable. One error line, our retry lines, no secret anywhere."""
    server = FileServer(tmp_path / "mirror")
    server.faults["mnist.npz"] = ["html"]
    with server.running():
        result = run_stage(
            workspace,
            "download",
            DATA_MIRROR=server.url.replace("://", f"://reader:{SECRET}@"),
            HTTPS_PROXY="http://127.0.0.1:9",
            HTTP_PROXY="http://127.0.0.1:9",
            NO_PROXY="127.0.0.1",
        )
    assert result.returncode == 1, result.stderr
    assert SECRET not in result.stdout + result.stderr
    [line] = error_lines(result.stderr)
    assert "DATA_MIRROR (http://***@127.0.0.1" in line
    assert "an HTML page" in line
    assert "retry 1 of 3" in result.stderr
    assert "Retrying (Retry(" not in result.stderr
    assert "Traceback" not in result.stderr
