"""Classifying users' image files: conversion, the command line, and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mlpipe.inference.images import ImageInputError, open_image, to_mnist, to_model_input
from tests.conftest import HAS_MIRROR, MIRROR, StageResult, error_lines, run_predict, stage_env


def drawn_digit(size: int = 400, ink: int = 20, paper: int = 235) -> Image.Image:
    """A "1" drawn dark on light paper, off centre, as a phone photo of a digit might be."""
    image = Image.new("L", (size, size), paper)
    ImageDraw.Draw(image).line(
        [(size * 0.3, size * 0.2), (size * 0.3, size * 0.7)], fill=ink, width=size // 12
    )
    return image


def test_light_background_is_inverted_and_digit_centred() -> None:
    pixels = to_mnist(drawn_digit())
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[0, 0] == 0 and pixels.max() > 200  # white ink on black
    rows, _ = np.nonzero(pixels > 40)
    assert rows.min() >= 3 and rows.max() <= 24  # fitted into the 20-pixel box
    weights = pixels.astype(float)
    centre = [(np.indices(pixels.shape)[axis] * weights).sum() / weights.sum() for axis in (0, 1)]
    assert centre == pytest.approx([14, 14], abs=1.0)


def test_transparent_png_is_read_as_ink_on_paper() -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse([30, 20, 70, 80], outline=(0, 0, 0, 255), width=8)
    pixels = to_mnist(image)
    assert pixels[0, 0] == 0 and pixels.max() > 200


@pytest.mark.skipif(not HAS_MIRROR, reason="real MNIST mirror not found")
def test_real_mnist_digits_survive_the_conversion() -> None:
    with np.load(MIRROR / "mnist.npz") as raw:
        digits = raw["x_test"][:200]
    differences = [np.abs(to_mnist(Image.fromarray(d)).astype(int) - d).mean() for d in digits]
    assert np.median(differences) < 1.0


def test_blank_image_is_refused() -> None:
    with pytest.raises(ImageInputError, match="no digit found"):
        to_mnist(Image.new("L", (50, 50), 255))


def test_colour_models_get_a_resized_rgb_image() -> None:
    pixels = to_model_input(Image.new("RGB", (64, 48), (200, 10, 10)), (32, 32, 3))
    assert pixels.shape == (32, 32, 3) and pixels[0, 0].tolist() == [200, 10, 10]


def test_open_image_failures(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="no such file"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageInputError, match="not an image Pillow can read"):
        open_image(tmp_path / "text.png")
    drawn_digit().save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt image"):
        open_image(tmp_path / "cut.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # 100 megapixels of one colour compress to a few kilobytes.
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(ImageInputError, match="far too large for a digit"):
        open_image(tmp_path / "bomb.png")


def predict(workspace: Path, *args: str) -> StageResult:
    """The command in this process; `predict_process` runs it as a user does, once."""
    return run_predict(workspace, *args)


def predict_process(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlpipe.predict", *args],
        cwd=workspace,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    drawn_digit().save(folder / "one.png")
    drawn_digit(ink=240, paper=10).convert("RGB").save(folder / "dark.jpg", quality=90)
    return folder


def test_cli_with_a_keras_file_text_and_json(trained: Path, images: Path) -> None:
    model = str(trained / "models/model.keras")
    text = predict_process(
        trained, str(images / "one.png"), str(images / "dark.jpg"), "--model", model, "--top", "3"
    )
    assert text.returncode == 0, text.stderr[-2000:]
    lines = text.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(images / "one.png"),
        str(images / "dark.jpg"),
    ]
    assert all(line.count("%") == 3 for line in lines)
    assert f"model: {model}" in text.stderr  # which model answered
    machine = predict(trained, str(images / "one.png"), "--model", model, "--json", "--top", "2")
    assert machine.returncode == 0, machine.stderr[-2000:]
    rows = json.loads(machine.stdout)
    assert rows[0]["file"] == str(images / "one.png")
    assert rows[0]["label"] in [str(d) for d in range(10)]
    assert (
        len(rows[0]["top"]) == 2
        and rows[0]["top"][0]["probability"] >= rows[0]["top"][1]["probability"]
    )
    assert rows[0]["model"] == model


def test_cli_default_is_the_champion(trained: Path, images: Path) -> None:
    """Without --model it loads models:/keras-tutorial-mnist@champion from the workspace store."""
    from tests.conftest import run_stage

    assert run_stage(trained, "evaluate").returncode == 0
    result = predict(trained, str(images / "one.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(images / "one.png"))
    # The alias is resolved to the version that answered.
    assert "model: keras-tutorial-mnist version 1 (champion)" in result.stderr
    machine = predict(trained, str(images / "one.png"), "--json")
    assert json.loads(machine.stdout)[0]["model"] == "keras-tutorial-mnist version 1 (champion)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", "no such file"),
        ("text", "not an image Pillow can read"),
        ("truncated", "truncated or corrupt image"),
        ("bomb", "far too large for a digit"),
        ("no_model", "mlflow.db: no MLflow store here; run the pipeline first"),
    ],
)
def test_cli_bad_input_is_one_line(workspace: Path, images: Path, make: str, message: str) -> None:
    target = workspace / "input.png"
    if make == "text":
        target.write_text("hello")
    elif make == "truncated":
        data = (images / "one.png").read_bytes()
        target.write_bytes(data[: len(data) // 3])
    elif make == "bomb":
        Image.new("1", (10_000, 10_000)).save(target)
    elif make == "no_model":
        target = images / "one.png"
    result = predict(workspace, str(target))
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_cli_bad_arguments_exit_2(workspace: Path, images: Path) -> None:
    result = predict(workspace, str(images / "one.png"), "--top", "0")
    assert result.returncode == 2
    assert "--top must be between 1 and 10 (got 0)" in result.stderr


def test_sigterm_while_fetching_the_model_leaves_no_temp_file(
    evaluated: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict's temp copies (the store's, the model's) go on SIGTERM, as on Ctrl-C: exit 143."""
    import mlflow

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again

    def terminated(*args: object, **kwargs: object) -> None:
        assert list(scratch.iterdir()), "the store's copy should exist by now"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", terminated)
    result = run_predict(evaluated, str(images / "one.png"), TMPDIR=str(scratch))
    assert result.returncode == 143, result.stderr
    assert list(scratch.iterdir()) == []
