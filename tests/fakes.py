"""Tiny datasets in the real on-disk formats, and a local HTTP server to serve them."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import pickle
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from mlpipe.data.formats import content_md5, idx_encode
from mlpipe.data.raw import MANIFEST, manifest_text
from mlpipe.data.specs import CIFAR10, FASHION_MNIST, MNIST, DatasetSpec


def tiny_arrays(
    shape: tuple[int, ...], n_train: int = 40, n_test: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random uint8 images with every class present in both splits."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_mnist(folder: Path, arrays: dict[str, np.ndarray] | None = None) -> DatasetSpec:
    """Write a Keras-style mnist.npz; return a spec whose pinned hashes are this file's."""
    arrays = arrays or tiny_arrays((28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist.npz"
    np.savez_compressed(path, **arrays)
    remote = replace(MNIST.files[0], sha256=_sha256(path), size=path.stat().st_size)
    return replace(MNIST, files=(remote,), content_md5=content_md5(arrays))


def write_fashion(folder: Path, arrays: dict[str, np.ndarray] | None = None) -> DatasetSpec:
    arrays = arrays or tiny_arrays((28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        "train-labels-idx1-ubyte.gz": "y_train",
        "train-images-idx3-ubyte.gz": "x_train",
        "t10k-labels-idx1-ubyte.gz": "y_test",
        "t10k-images-idx3-ubyte.gz": "x_test",
    }
    remotes = []
    for remote in FASHION_MNIST.files:
        path = folder / remote.name
        path.write_bytes(gzip.compress(idx_encode(arrays[names[remote.name]])))
        remotes.append(replace(remote, sha256=_sha256(path), size=path.stat().st_size))
    return replace(FASHION_MNIST, files=tuple(remotes))


def write_cifar(folder: Path, arrays: dict[str, np.ndarray] | None = None) -> DatasetSpec:
    """A CIFAR-10 python tar.gz with five training batches and a test batch."""
    arrays = arrays or tiny_arrays((32, 32, 3), n_train=50)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CIFAR10.files[0].name

    def batch(x: np.ndarray, y: np.ndarray) -> bytes:
        flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        return pickle.dumps({b"data": flat, b"labels": [int(v) for v in y]})

    with tarfile.open(path, "w:gz") as archive:
        parts = np.array_split(np.arange(len(arrays["x_train"])), 5)
        members = [
            (f"data_batch_{i + 1}", batch(arrays["x_train"][idx], arrays["y_train"][idx]))
            for i, idx in enumerate(parts)
        ]
        members.append(("test_batch", batch(arrays["x_test"], arrays["y_test"])))
        for name, data in members:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    remote = replace(CIFAR10.files[0], sha256=_sha256(path), size=path.stat().st_size)
    return replace(CIFAR10, files=(remote,))


def served(spec: DatasetSpec, url: str) -> DatasetSpec:
    """The spec with its canonical addresses moved to a local server at `url`."""
    return replace(spec, files=tuple(replace(f, url=url + f.name) for f in spec.files))


WRITERS: dict[str, Callable[[Path], DatasetSpec]] = {
    "mnist": write_mnist,
    "fashion_mnist": write_fashion,
    "cifar10": write_cifar,
}


def write_raw(folder: Path, name: str) -> DatasetSpec:
    """A dataset as the download stage leaves it: its files and their verified manifest."""
    spec = WRITERS[name](folder)
    (folder / MANIFEST).write_text(manifest_text(folder, [f.name for f in spec.files]))
    return spec


HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body></html>\n"
)


class FileServer:
    """Serves files from a folder on 127.0.0.1, with scripted faults per file name.

    `faults[name]` is a list consumed one request at a time: an HTTP status to answer with,
    or one of these misbehaviours:

    - "truncate": half the body under a full Content-Length;
    - "trickle": the file under its full Content-Length, `trickle_bytes` every `trickle_s`;
    - "silent": accept the request and answer nothing for `silent_s`, then hang up;
    - "endless": 200 without a Content-Length, then zeros (`endless_bytes` at most);
    - "huge": a Content-Length of a terabyte, then a few bytes;
    - "gzip_bomb": a small gzip Content-Encoding body that inflates to `endless_bytes`;
    - "html": 200 with a web page, as a login wall or a captive portal answers;
    - "bad_headers": the file, under a header line that is not `Name: value`;
    - "redirect": after `trickle_s`, a redirect to the same address.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.faults: dict[str, list[int | str]] = {}
        self.requests: list[str] = []
        self.trickle_bytes = 1024
        self.trickle_s = 0.2
        self.endless_bytes = 8 << 20
        self.silent_s = 10.0
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                pending = server.faults.get(name) or []
                fault = pending.pop(0) if pending else None
                path = server.folder / name
                if isinstance(fault, int):
                    self.send_response(fault)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault in MISBEHAVIOURS:
                    with contextlib.suppress(OSError):
                        MISBEHAVIOURS[fault](server, self, path)
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if fault == "truncate" else data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    @contextmanager
    def running(self) -> Iterator[FileServer]:
        thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.httpd.shutdown()
            self.httpd.server_close()


def _headers(handler: BaseHTTPRequestHandler, **headers: str | int) -> None:
    handler.send_response(200)
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), str(value))
    handler.end_headers()


def _trickle(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    data = path.read_bytes()
    _headers(handler, Content_Length=len(data))
    for start in range(0, len(data), server.trickle_bytes):
        handler.wfile.write(data[start : start + server.trickle_bytes])
        handler.wfile.flush()
        if server.stopping.wait(server.trickle_s):
            return


def _silent(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    server.stopping.wait(server.silent_s)


def _endless(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    _headers(handler, Content_Type="application/octet-stream")
    block = bytes(1 << 16)
    for _ in range(server.endless_bytes // len(block)):
        handler.wfile.write(block)


def _huge(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    _headers(handler, Content_Length=10**12)
    handler.wfile.write(bytes(1024))


def _gzip_bomb(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    body = gzip.compress(bytes(server.endless_bytes))
    _headers(handler, Content_Length=len(body), Content_Encoding="gzip")
    handler.wfile.write(body)


def _html(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    _headers(handler, Content_Length=len(HTML_PAGE), Content_Type="text/html; charset=utf-8")
    handler.wfile.write(HTML_PAGE)


def _bad_headers(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    data = path.read_bytes()
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\nNo colon on this line\r\n\r\n"
    handler.wfile.write(head.encode() + data)


def _redirect(server: FileServer, handler: BaseHTTPRequestHandler, path: Path) -> None:
    if server.stopping.wait(server.trickle_s):
        return
    handler.send_response(302)
    handler.send_header("Location", handler.path)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


MISBEHAVIOURS: dict[str, Callable[[FileServer, BaseHTTPRequestHandler, Path], None]] = {
    "trickle": _trickle,
    "silent": _silent,
    "endless": _endless,
    "huge": _huge,
    "gzip_bomb": _gzip_bomb,
    "html": _html,
    "bad_headers": _bad_headers,
    "redirect": _redirect,
}


def write_processed(
    workspace: Path, shape: tuple[int, ...] = (28, 28), n: int = 60, seed: int = 0
) -> None:
    """Processed splits as the preprocess stage writes them, with learnable labels.

    Each image's brightness encodes its class, so a model can learn something in one epoch.
    """
    rng = np.random.default_rng(seed)
    folder = workspace / "data" / "processed"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", n // 3), ("test", n // 3)):
        y = (np.arange(count) % 10).astype(np.uint8)
        base = (y.astype(np.int32) * 25).reshape(-1, *([1] * len(shape)))
        noise = rng.integers(0, 20, (count, *shape))
        x = np.clip(base + noise, 0, 255).astype(np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=y)


def set_params(workspace: Path, **values: object) -> None:
    """Change params.yaml keys given as section__key=value."""
    import yaml

    path = workspace / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in values.items():
        section, leaf = key.split("__")
        raw[section][leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
