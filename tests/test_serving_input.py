"""What the served model accepts: raw 0-255 pixels; [0, 1] floats are refused, not zeroed."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mlpipe.tracking.served_model import check_pixels


def test_raw_pixels_pass_as_uint8() -> None:
    pixels = np.array([[[0.0, 128.0], [255.0, 7.0]]])
    checked = check_pixels(pixels)
    assert checked.dtype == np.uint8
    assert checked.tolist() == [[[0, 128], [255, 7]]]
    assert check_pixels(np.zeros((1, 2, 2))).max() == 0  # a blank image is a valid image


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.array([[[0.0, 0.5], [1.0, 0.2]]]), "got values from 0 to 1; multiply"),
        (np.array([[[0.0, 1.0], [1.0, 0.0]]]), "looks like a [0, 1] image"),
        (np.array([[[0.0, 256.0], [1.0, 0.0]]]), "got values from 0 to 256"),
        (np.array([[[-1.0, 3.0], [1.0, 0.0]]]), "got values from -1 to 3"),
        (np.array([[[np.nan, 3.0], [1.0, 0.0]]]), "got NaN or infinity"),
        (np.array([[["a", "b"]]]), "pixels must be numbers"),
    ],
)
def test_anything_but_0_to_255_integers_is_refused_with_400(
    pixels: np.ndarray, message: str
) -> None:
    with pytest.raises(MlflowException) as caught:
        check_pixels(pixels)
    assert message in caught.value.message
    assert caught.value.get_http_status_code() == 400


def test_a_scaled_image_among_real_ones_is_refused_and_named() -> None:
    real = np.full((1, 2, 2), 200.0)
    scaled = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    with pytest.raises(MlflowException, match=r"every pixel of image 1 is 0 or 1"):
        check_pixels(np.concatenate([real, scaled]))
