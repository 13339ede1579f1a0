"""Turning a user's image file into the raw pixels a model of this project takes.

For 28x28 grayscale models the conversion follows how MNIST itself was made: grayscale, white
ink on black (inverted when the background is light), the ink's bounding box scaled to fit
20x20 and placed in a 28x28 frame with its centre of mass at the centre. Colour models get the
image resized to their size.

Deeper images are scaled to 8 bits over their range, never clipped at 255 (which would turn
a 16-bit digit into a blank page):

- 16-bit (PNG and TIFF, mode I;16): scaled from the largest value the file says its samples
  take (PNG's `sBIT` chunk: 12 significant bits make 4095 white; TIFF's `MaxSampleValue`), else
  from 65535. A file that says nothing and whose values use so few of the 16 bits that it would
  read as black is refused naming the bits its values use, never called blank.
- 32-bit integers (TIFF, mode I, read as unsigned since Pillow loads unsigned TIFFs into it):
  divided by 257 when every value fits in 16 bits, else scaled from 0..2**32-1.
- 32-bit floats (TIFF, mode F): values within [0, 1] are multiplied by 255; any other range
  is stretched from its minimum to its maximum. NaN or infinite pixels are refused.

Transparent areas are the paper and the opaque pixels the ink: light ink is put on black
paper, dark ink on white, so white ink on a transparent background is still read as ink.

A file is checked before anything is decoded: only regular files are opened (a FIFO would
block, a device might never end), and decompression bombs are refused from the header.
`check_image` also finds a truncated or corrupt file without keeping its pixels, so a caller
can check every file first and then decode them one at a time.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Far beyond any photo of a digit; Pillow's own limit is ~89 MP, with a warning only.
MAX_PIXELS = 40_000_000
INK_THRESHOLD = 40  # of 255, after inversion: what counts as ink when cropping
DIGIT_BOX = 20
# MNIST digits have their centre of mass at pixel (14, 14), counting from 0.
MASS_CENTRE = 14.0
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Where open_image keeps the largest sample value the file declares (PNG sBIT, TIFF tags).
DECLARED_MAX = "mlpipe.declared_max"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_MAX_SAMPLE_VALUE = 281
# Pillow's errors for a file that stops early or holds garbage where pixels should be.
DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError)


class ImageInputError(ValueError):
    """The file cannot be used as an image for this model."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words a user knows."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open_file(path: Path) -> BinaryIO:
    """Open `path` for reading only once stat says it is a regular file.

    Opening a FIFO blocks until a writer comes and a device may never end, so neither is opened;
    O_NONBLOCK keeps a FIFO swapped in after the stat from blocking.
    """
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = file_kind(mode)
            raise ImageInputError(f"{path}: is {kind}, not an image file")
        return open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except FileNotFoundError as exc:
        raise ImageInputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageInputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _identify(path: Path, handle: BinaryIO) -> Image.Image:
    """The image's header only (Image.open is lazy), refusing a decompression bomb by its size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(
            f"{path}: far too large for a digit ({exc}); refusing a possible decompression bomb"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from exc
    except DECODE_ERRORS as exc:
        raise ImageInputError(f"{path}: truncated or corrupt image ({exc})") from exc
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{path}: {width}x{height} pixels is far too large for a digit "
            f"(limit {MAX_PIXELS:,} pixels); refusing a possible decompression bomb"
        )
    return image


def check_image(path: Path) -> None:
    """Refuse a file that cannot be used as an image, keeping none of its pixels.

    PNG checksums are verified without decompressing; a JPEG is decoded at 1/8 scale; other
    formats are decoded once and dropped. A bad file among many is found before a model loads.
    """
    with _open_file(path) as handle:
        image = _identify(path, handle)
        try:
            if image.format == "PNG":
                image.verify()
            else:
                image.draft(None, (1, 1))
                image.load()
        except DECODE_ERRORS as exc:
            raise ImageInputError(f"{path}: truncated or corrupt image ({exc})") from exc
        finally:
            image.close()


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file, refusing what is not a sane image."""
    with _open_file(path) as handle:
        image = _identify(path, handle)
        try:
            image.load()
        except DECODE_ERRORS as exc:
            raise ImageInputError(f"{path}: truncated or corrupt image ({exc})") from exc
        declared = _declared_max(image, handle)
    image = ImageOps.exif_transpose(image)
    if declared:
        image.info[DECLARED_MAX] = declared
    return image


def _declared_max(image: Image.Image, handle: BinaryIO) -> int | None:
    """The largest sample value a 16-bit file says it holds: PNG's sBIT significant bits
    (Pillow reads no sBIT), TIFF's MaxSampleValue; None when it says nothing."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return None
    if image.format == "TIFF":
        value = image.tag_v2.get(TIFF_MAX_SAMPLE_VALUE)
        value = value[0] if isinstance(value, tuple) else value
        return int(value) if value else None
    if image.format != "PNG":
        return None
    handle.seek(len(PNG_SIGNATURE))
    while True:  # the chunks before the pixels, 8 bytes of header each
        header = handle.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT":
            bits = handle.read(1)  # a grey image's one value
            return (1 << bits[0]) - 1 if bits and 0 < bits[0] <= 16 else None
        handle.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def _float_to_eight_bit(values: np.ndarray) -> np.ndarray:
    """0..255 from float pixels: [0, 1] scaled by 255, any other range stretched."""
    if not np.isfinite(values).all():
        raise ImageInputError("its pixels hold NaN or infinite values")
    if values.size == 0:
        return values
    low, high = values.min(), values.max()
    if low >= 0 and high <= 1:
        return values * 255
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255 / (high - low))


def to_eight_bit(image: Image.Image) -> Image.Image:
    """An 8-bit image from a 16- or 32-bit one, scaled over its range (see the module docstring).

    Pillow's own convert("L") clips such images at 255, which makes a 16-bit digit blank.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        scaled = values * (255 / _sixteen_bit_white(values, image.info.get(DECLARED_MAX)))
    elif image.mode == "I":
        values = np.ascontiguousarray(np.asarray(image), dtype=np.int32).view(np.uint32)
        fits_16_bits = values.max(initial=0) <= 0xFFFF
        scaled = values / (257 if fits_16_bits else (2**32 - 1) / 255)
    elif image.mode == "F":
        scaled = _float_to_eight_bit(np.asarray(image, dtype=np.float64))
    else:
        return image
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _sixteen_bit_white(values: np.ndarray, declared: int | None) -> float:
    """The value that is white: the file's declared maximum, else 16 bits' 65535; refused when
    the file says nothing and its values would all read as near black (12-bit data stored in
    16 bits, say) though they have contrast."""
    top = values.max(initial=0)
    if declared and top <= declared:
        return float(declared)
    lowest = values.min() if values.size else 0
    if top * 255 / 0xFFFF < INK_THRESHOLD and top > lowest:
        bits = int(top).bit_length()
        raise ImageInputError(
            f"a 16-bit image whose values reach only {int(top)} ({bits} bits), and the file "
            f"does not say its bit depth (no PNG sBIT, no TIFF MaxSampleValue): read as 16 "
            f"bits it is all but black; save it with its significant bits, or as 8-bit"
        )
    return float(0xFFFF)


def _grayscale(image: Image.Image) -> np.ndarray:
    """Grayscale pixels; transparent areas become paper in the colour opposite to the ink."""
    image = to_eight_bit(image)
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    gray_alpha = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float64)
    gray, alpha = gray_alpha[..., 0], gray_alpha[..., 1] / 255
    ink = gray[alpha > 0.5]
    # The opaque pixels are the ink: light ink needs dark paper to stay visible, and vice versa.
    paper = 0.0 if ink.size and np.median(ink) > 127 else 255.0
    return np.rint(gray * alpha + paper * (1 - alpha)).astype(np.uint8)


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
        rgb = to_eight_bit(image).convert("RGB")
        rgb = rgb.resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8)
    if len(shape) == 2:
        gray = Image.fromarray(_grayscale(image)).resize(
            (shape[1], shape[0]), Image.Resampling.LANCZOS
        )
        return np.asarray(gray, dtype=np.uint8)
    raise ImageInputError(f"models taking images of shape {shape} are not supported")
