"""Turning a user's image file into the raw pixels a model of this project takes.

For 28x28 grayscale models the conversion follows how MNIST itself was made: grayscale, white
ink on black (inverted when the background is light), the ink's bounding box scaled to fit
20x20 and placed in a 28x28 frame with its centre of mass at the centre. Colour models get the
image resized to their size. Decompression bombs are refused before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Far beyond any photo of a digit; Pillow's own limit is ~89 MP, with a warning only.
MAX_PIXELS = 40_000_000
INK_THRESHOLD = 40  # of 255, after inversion: what counts as ink when cropping
DIGIT_BOX = 20
# MNIST digits have their centre of mass at pixel (14, 14), counting from 0.
MASS_CENTRE = 14.0


class ImageInputError(ValueError):
    """The file cannot be used as an image for this model."""


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file, refusing what is not a sane image."""
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageInputError(
                    f"{path}: {width}x{height} pixels is far too large for a digit "
                    f"(limit {MAX_PIXELS:,} pixels); refusing a possible decompression bomb"
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(
            f"{path}: far too large for a digit ({exc}); refusing a possible decompression bomb"
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{path}: truncated or corrupt image ({exc})") from None
    return ImageOps.exif_transpose(image)


def _grayscale(image: Image.Image) -> np.ndarray:
    """Grayscale pixels, transparent areas shown as white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_mnist(image: Image.Image) -> np.ndarray:
    """28x28 uint8, white digit on black, centred by mass as in MNIST."""
    pixels = _grayscale(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: invert to MNIST's white on black
        pixels = 255 - pixels
    ink = np.argwhere(pixels > INK_THRESHOLD)
    if not len(ink):
        raise ImageInputError("no digit found: the image is blank")
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    crop = Image.fromarray(pixels[top:bottom, left:right])
    scale = DIGIT_BOX / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    digit = np.asarray(crop.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    frame = np.zeros((28, 28), dtype=np.float64)
    row, column = (28 - size[1]) // 2, (28 - size[0]) // 2
    frame[row : row + size[1], column : column + size[0]] = digit
    # Shift so the centre of mass sits at the centre, as the MNIST authors did.
    mass = frame.sum()
    rows, columns = np.indices(frame.shape)
    shift_row = round(MASS_CENTRE - (rows * frame).sum() / mass)
    shift_column = round(MASS_CENTRE - (columns * frame).sum() / mass)
    frame = np.roll(frame, (shift_row, shift_column), axis=(0, 1))
    return np.clip(frame, 0, 255).round().astype(np.uint8)


def to_model_input(image: Image.Image, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels of `shape` for a model: MNIST-style for 28x28, a plain resize otherwise."""
    if shape == (28, 28):
        return to_mnist(image)
    if len(shape) == 3 and shape[2] == 3:
        rgb = image.convert("RGB").resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8)
    if len(shape) == 2:
        gray = Image.fromarray(_grayscale(image)).resize(
            (shape[1], shape[0]), Image.Resampling.LANCZOS
        )
        return np.asarray(gray, dtype=np.uint8)
    raise ImageInputError(f"models taking images of shape {shape} are not supported")
