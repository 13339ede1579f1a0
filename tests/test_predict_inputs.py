"""predict's inputs: deep and transparent images, special files, escaped names, lazy decoding,
models for the wrong dataset or with broken weights, and model archives that lie about size."""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import threading
import time
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from mlpipe import predict
from mlpipe.errors import ModelError
from mlpipe.inference.images import ImageInputError, check_image, open_image, to_mnist
from mlpipe.model.loading import load_keras_model
from mlpipe.paths import Layout


def digit(ink: int = 20, paper: int = 235, size: int = 60) -> np.ndarray:
    """An 8-bit "7", dark on light by default: the pixels every deeper format must give back."""
    image = Image.new("L", (size, size), paper)
    ImageDraw.Draw(image).line(
        [(size * 0.25, size * 0.2), (size * 0.7, size * 0.2), (size * 0.4, size * 0.8)],
        fill=ink,
        width=size // 10,
    )
    return np.asarray(image)


def saved(tmp_path: Path, name: str, pixels: np.ndarray) -> Image.Image:
    Image.fromarray(pixels).save(tmp_path / name)
    return open_image(tmp_path / name)


# Deep images: scaled to 8 bits, not clipped at 255.


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    pixels = digit()
    image = saved(tmp_path, f"deep.{suffix}", pixels.astype(np.uint16) * 257)
    assert image.mode == "I;16"
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels)))


def deep_png(path: Path, pixels: np.ndarray, bits: int, sbit: bool) -> Path:
    """`pixels` (8-bit) as `bits`-bit values in a 16-bit PNG, with PNG's sBIT chunk saying so
    when `sbit` (Pillow writes none: it goes in right after IHDR, as the PNG spec places it)."""
    deep = np.rint(pixels.astype(np.float64) * ((1 << bits) - 1) / 255).astype(np.uint16)
    Image.fromarray(deep).save(path)
    if sbit:
        data = path.read_bytes()
        after_ihdr = 8 + 8 + 13 + 4  # signature; IHDR's length and type, its 13 bytes, its CRC
        chunk = struct.pack(">4sB", b"sBIT", bits)
        chunk = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
        path.write_bytes(data[:after_ihdr] + chunk + data[after_ihdr:])
    return path


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_deep_pngs_are_read_by_their_significant_bits(tmp_path: Path, bits: int) -> None:
    pixels = digit()
    image = open_image(deep_png(tmp_path / "deep.png", pixels, bits, sbit=True))
    assert image.mode == "I;16"
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels)))


def test_a_tiff_is_read_by_its_max_sample_value(tmp_path: Path) -> None:
    pixels = digit()
    deep = np.rint(pixels.astype(np.float64) * 4095 / 255).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.tif", tiffinfo={281: 4095})  # MaxSampleValue
    image = open_image(tmp_path / "deep.tif")
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels)))


@pytest.mark.parametrize("bits", [10, 12])
def test_a_deep_image_that_hides_its_depth_is_named_not_blank(
    tmp_path: Path,
    models: dict[str, Path],
    offline: None,
    capsys: pytest.CaptureFixture[str],
    bits: int,
) -> None:
    """Without sBIT a 12-bit digit in 16 bits is all but black read as 16 bits: refused with
    the bits its values use, never called blank."""
    path = deep_png(tmp_path / "deep.png", digit(paper=255), bits, sbit=False)
    code = predict.main([str(path), "--model", str(models["good"])])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert f"{path}: a 16-bit image whose values reach only {(1 << bits) - 1} ({bits} bits)" in line
    assert "does not say its bit depth (no PNG sBIT" in line and "blank" not in line
    # Full 16-bit contrast needs no declaration (test_16_bit_images_are_scaled_not_clipped);
    # a faint image without contrast is blank, whatever its depth.
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((40, 40), 1000, dtype=np.uint16)).save(flat)
    code = predict.main([str(flat), "--model", str(models["good"])])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "no digit found: the image is blank" in line


@pytest.mark.parametrize(
    ("scale", "why"), [(257, "values that fit in 16 bits"), (16843009, "the full 32-bit range")]
)
def test_32_bit_integer_tiff_is_scaled_by_its_range(tmp_path: Path, scale: int, why: str) -> None:
    pixels = digit()
    # Pillow reads an unsigned 32-bit TIFF into signed mode I; the same bits are stored here.
    deep = (pixels.astype(np.uint64) * scale).astype(np.uint32).view(np.int32)
    image = saved(tmp_path, "deep.tif", deep)
    assert image.mode == "I"
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels))), why


def test_float_tiff_in_0_1_is_scaled_by_255(tmp_path: Path) -> None:
    pixels = digit()
    image = saved(tmp_path, "float.tif", (pixels / 255).astype(np.float32))
    assert image.mode == "F"
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels)))


def test_float_tiff_in_another_range_is_stretched(tmp_path: Path) -> None:
    pixels = digit(ink=0, paper=255)
    image = saved(tmp_path, "float.tif", (pixels / 255 * 2 + 3).astype(np.float32))
    assert np.array_equal(to_mnist(image), to_mnist(Image.fromarray(pixels)))


@pytest.mark.reliability
def test_float_tiff_with_nan_pixels_is_refused(tmp_path: Path) -> None:
    pixels = (digit() / 255).astype(np.float32)
    pixels[0, 0] = np.nan
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        to_mnist(saved(tmp_path, "nan.tif", pixels))


# Transparency: the paper takes the colour opposite to the ink.


@pytest.mark.parametrize(
    ("mode", "clear", "white"), [("RGBA", (0, 0, 0, 0), (255,) * 4), ("LA", (0, 0), (255, 255))]
)
def test_light_ink_on_transparent_is_read_as_ink(
    mode: str, clear: tuple[int, ...], white: tuple[int, ...]
) -> None:
    image = Image.new(mode, (100, 100), clear)
    ImageDraw.Draw(image).ellipse([30, 20, 70, 80], outline=white, width=8)
    on_black = Image.new("L", (100, 100), 0)
    ImageDraw.Draw(on_black).ellipse([30, 20, 70, 80], outline=255, width=8)
    assert np.array_equal(to_mnist(image), to_mnist(on_black))


# Files that are not images: refused before any model loads, with the right words.


def _within(seconds: float, call: Callable[[], object]) -> object:
    """`call()`'s result or exception, failing the test if it blocks (as opening a FIFO does)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"blocked for more than {seconds} s"
    return outcome[0]


def _special(tmp_path: Path, kind: str) -> Path:
    """A path of the given kind that is not a usable image."""
    path = tmp_path / f"{kind}.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        return Path("/dev/null")
    elif kind == "text":
        path.write_text("not an image")
    elif kind in ("cut_png", "cut_jpeg"):
        whole = tmp_path / ("whole.png" if kind == "cut_png" else "whole.jpg")
        Image.fromarray(digit(size=300)).save(whole)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


SPECIAL = [
    ("directory", "is a directory"),
    ("fifo", "is a named pipe (FIFO)"),
    ("device", "is a device"),
    ("text", "not an image Pillow can read"),
    ("cut_png", "truncated or corrupt image"),
    ("cut_jpeg", "truncated or corrupt image"),
]


@pytest.mark.reliability
@pytest.mark.parametrize(("kind", "message"), SPECIAL)
def test_check_image_refuses_without_blocking(tmp_path: Path, kind: str, message: str) -> None:
    path = _special(tmp_path, kind)
    error = _within(5, lambda: check_image(path))
    assert isinstance(error, ImageInputError) and message in str(error), error


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """predict as a user runs it, but with no params.yaml to read and quiet TensorFlow."""
    monkeypatch.setattr(predict, "HERE", Layout(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _no_model(layout: Layout, source: str) -> None:
    raise AssertionError(f"the model {source} was loaded before every image was checked")


@pytest.mark.reliability
@pytest.mark.parametrize(("kind", "message"), SPECIAL)
def test_cli_refuses_a_bad_file_before_loading_the_model(
    tmp_path: Path,
    offline: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    message: str,
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(digit()).save(good)
    monkeypatch.setattr(predict, "load_model", _no_model)
    path = _special(tmp_path, kind)
    code = _within(10, lambda: predict.main([str(good), str(path), "--model", "m.keras"]))
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]


# Models built in-process: a good one, one for three classes, one with NaN weights.


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, classes in (("good", 10), ("three", 3), ("nan", 10)):
        inputs = keras.Input((28, 28), dtype="uint8")
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
        dense = keras.layers.Dense(classes, activation="softmax")
        model = keras.Model(inputs, dense(x))
        if name == "nan":
            kernel, bias = dense.get_weights()
            dense.set_weights([np.full_like(kernel, np.nan), bias])
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    return paths


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(digit()).save(folder / "seven.png")
    return folder


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("three", "gives 3 outputs per image, but the dataset has 10 classes"),
        ("nan", "gives NaN or infinite outputs for 1 of 1 images; its weights are broken"),
    ],
)
def test_cli_refuses_a_model_that_cannot_answer(
    models: dict[str, Path],
    digits: Path,
    offline: None,
    capsys: pytest.CaptureFixture[str],
    model: str,
    message: str,
) -> None:
    code = predict.main([str(digits / "seven.png"), "--model", str(models[model])])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    # TensorFlow warns about retracing after many models predict in one process: a test's
    # artefact, since a user's predict loads one model per process.
    lines = [line for line in captured.err.strip().splitlines() if "retracing" not in line]
    assert len(lines) == 1 and message in lines[0] and str(models[model]) in lines[0]


@pytest.mark.reliability
def test_cli_says_a_model_folder_is_a_directory(
    digits: Path, offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = predict.main([str(digits / "seven.png"), "--model", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: is a directory; give a .keras file or an MLflow model URI"
    )


def test_check_model_outputs() -> None:
    from mlpipe.report.evaluation import check_model_outputs

    check_model_outputs(np.full((4, 10), 0.1), 10, "m.keras")
    with pytest.raises(ModelError, match=r"^m.keras: gives 3 outputs per image, .* 10 classes"):
        check_model_outputs(np.full((4, 3), 0.3), 10, "m.keras")
    with pytest.raises(ModelError, match=r"outputs of shape \(4,\)"):
        check_model_outputs(np.full(4, 0.3), 10, "m.keras")
    for bad in (np.nan, np.inf):
        probabilities = np.full((4, 10), 0.1)
        probabilities[2, 5] = bad
        with pytest.raises(ModelError, match="NaN or infinite outputs for 1 of 4 images"):
            check_model_outputs(probabilities, 10, "m.keras")


# Names with control characters or undecodable bytes are printed escaped.

STRANGE = {"a\nb.png": "a\\nb.png", "\x1b[31m.png": "\\x1b[31m.png", "\udcff.png": "\\xff.png"}


@pytest.mark.reliability
def test_cli_escapes_strange_file_names(
    models: dict[str, Path], tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in STRANGE:
        Image.fromarray(digit()).save(tmp_path / name, format="PNG")
    paths = [str(tmp_path / name) for name in STRANGE]
    assert predict.main([*paths, "--model", str(models["good"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(": ", 1)[0] for line in lines] == [
        f"{tmp_path}/{shown}" for shown in STRANGE.values()
    ]
    missing = str(tmp_path / "x\x1b[2J\ny.png")
    assert predict.main([missing, "--model", str(models["good"])]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}/x\\x1b[2J\\ny.png: no such file\n"


# One image decoded at a time, and none before the model is loaded.


def test_cli_decodes_one_image_at_a_time(
    models: dict[str, Path],
    tmp_path: Path,
    offline: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = []
    for index in range(24):
        paths.append(tmp_path / f"digit{index}.png")
        Image.fromarray(digit(size=200)).save(paths[-1])
    decoded: list[weakref.ref[Image.Image]] = []  # images are unhashable: no WeakSet
    most_alive, before_model = [0], []

    def alive() -> int:
        return len({id(image()) for image in decoded if image() is not None})

    original_load, original_model = ImageFile.ImageFile.load, predict.load_model

    def spy_load(self: ImageFile.ImageFile) -> object:
        decoded.append(weakref.ref(self))
        most_alive[0] = max(most_alive[0], alive())
        return original_load(self)

    def spy_model(layout: Layout, source: str) -> object:
        before_model.append(len(decoded))
        return original_model(layout, source)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(predict, "load_model", spy_model)
    assert predict.main([*map(str, paths), "--model", str(models["good"])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 24
    assert before_model == [0], "images were decoded before the model was loaded"
    assert most_alive[0] <= 2, f"{most_alive[0]} decoded images were alive at once"


# Model archives: judged from their zip directory, never decompressed to be judged.


def _archive(path: Path, members: dict[str, bytes], declare: dict[str, int] | None = None) -> Path:
    """A zip with `members`, stored; `declare` overwrites a member's declared size."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = bytearray(path.read_bytes())
    for name, size in (declare or {}).items():
        # The central directory entry: its signature, then the name at offset 46.
        entry = data.index(b"PK\x01\x02")
        while data[entry + 46 : entry + 46 + len(name)] != name.encode():
            entry = data.index(b"PK\x01\x02", entry + 4)
        data[entry + 24 : entry + 28] = struct.pack("<I", size)  # its uncompressed size
    path.write_bytes(bytes(data))
    return path


def _deflate_bomb(path: Path, size: int) -> Path:
    """A real bomb: `size` zero bytes, deflated to about a thousandth."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b"{}")
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(size // 2**20):
                member.write(bytes(2**20))
    return path


def _refuses_unread(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The error for `path`, checking no member was opened and it took under a second."""

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was decompressed to judge the archive")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    started = time.perf_counter()
    with pytest.raises(ModelError) as error:
        load_keras_model(path)
    assert time.perf_counter() - started < 1.0
    return str(error.value)


@pytest.mark.reliability
def test_archive_declaring_gigabytes_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {"config.json": b"{}", "model.weights.h5": bytes(1000)}
    path = _archive(tmp_path / "m.keras", members, declare={"model.weights.h5": 3 * 2**30})
    assert path.stat().st_size < 2000
    message = _refuses_unread(path, monkeypatch)
    assert message.startswith(f"{path}: refused, its members declare 3.0 GiB uncompressed")


@pytest.mark.reliability
def test_archive_inflating_a_thousandfold_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _deflate_bomb(tmp_path / "m.keras", 64 * 2**20)
    assert path.stat().st_size < 200_000
    message = _refuses_unread(path, monkeypatch)
    assert "member 'model.weights.h5' declares 67,108,864 bytes" in message
    assert "a possible decompression bomb" in message


@pytest.mark.reliability
def test_archive_with_thousands_of_members_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {"config.json": b"{}", **{f"assets/{i}": b"" for i in range(1500)}}
    message = _refuses_unread(_archive(tmp_path / "m.keras", members), monkeypatch)
    assert "1,501 members" in message


@pytest.mark.reliability
@pytest.mark.parametrize("member", ["model.weights.h5", "config.json"])
def test_damaged_member_is_found_when_keras_reads_it(
    models: dict[str, Path], tmp_path: Path, member: str
) -> None:
    data = bytearray(models["good"].read_bytes())
    with zipfile.ZipFile(models["good"]) as archive:
        entry = archive.getinfo(member)
    start = entry.header_offset + 30 + len(entry.filename) + entry.compress_size // 2
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    path = tmp_path / "damaged.keras"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as error:
        load_keras_model(path)
    assert str(error.value) == f"{path}: damaged Keras archive (Bad CRC-32 for file {member!r})"


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("kind", "message"),
    [("directory", "is a directory, not a .keras file"), ("fifo", "is not a regular file")],
)
def test_model_path_that_is_not_a_file(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "model.keras"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    error = _within(5, lambda: load_keras_model(path))
    assert isinstance(error, ModelError) and str(error).startswith(f"{path}: {message}"), error


# Model URIs whose copy cannot be made: refused before copying, or named when the copy fails.


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_model_uri_that_is_not_a_file_is_refused_before_copying(
    tmp_path: Path, digits: Path, offline: None, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A copy of /dev/zero would fill the temp disk and a FIFO would block it forever."""
    if kind == "device":
        target, named = Path("/dev/zero"), "is a device"
    else:
        target, named = tmp_path / "pipe", "is a named pipe (FIFO)"
        os.mkfifo(target)
    argv = [str(digits / "seven.png"), "--model", f"file://{target}"]
    code = _within(10, lambda: predict.main(argv))
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert f"model file://{target}: {target} {named}, not a model file or folder" in line


@pytest.fixture
def small_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB temp folder for real: a tmpfs mount (root may mount), as TMPDIR would set it."""
    folder = tmp_path / "small-tmp"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    monkeypatch.setattr(tempfile, "tempdir", str(folder))  # what TMPDIR gives a new process
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.reliability
def test_a_model_copy_without_room_in_the_temp_folder_is_named(
    tmp_path: Path,
    digits: Path,
    offline: None,
    capsys: pytest.CaptureFixture[str],
    small_tmp: Path,
) -> None:
    """Larger than the room left: refused before copying. Many small files whose sizes fit
    but whose copy does not (tmpfs gives each file a 4 KiB page): the copy fails, and the line
    says so, not "not found". Either way the temp folder is left empty."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "weights.bin").write_bytes(b"\0" * (2 << 20))
    many = tmp_path / "many"
    many.mkdir()
    for number in range(400):
        (many / f"{number}.bin").write_bytes(b"x")
    for folder, said in (
        (big, f"a copy needs 2.0 MiB and {small_tmp} has 1.0 MiB free; set TMPDIR"),
        (many, f"no space left in {small_tmp} for a copy of it; set TMPDIR"),
    ):
        code = predict.main([str(digits / "seven.png"), "--model", f"file://{folder}"])
        [line] = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and f"model file://{folder}: {said}" in line, line
        assert list(small_tmp.iterdir()) == []
