"""Each figure builder on tiny arrays; each PNG valid and of sensible size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlpipe.data.specs import SPECS
from mlpipe.report import figures

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(12) % 10
PREDICTED = (LABELS + (np.arange(12) % 3 == 0)) % 10
PROBABILITY = np.linspace(0.5, 0.99, 12)
HISTORY = pd.DataFrame(
    {
        "epoch": [1, 2, 3],
        "loss": [1.0, 0.6, 0.4],
        "val_loss": [1.1, 0.7, 0.5],
        "accuracy": [0.6, 0.8, 0.9],
        "val_accuracy": [0.55, 0.75, 0.85],
    }
)


def saved(figure, tmp_path: Path, name: str = "figure.png") -> Image.Image:
    path = tmp_path / name
    figures.save_png(figure, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind
    image = Image.open(path)
    image.verify()
    return Image.open(path)


@pytest.mark.parametrize("images", [GRAY, COLOUR], ids=["gray", "colour"])
def test_sample_grid(tmp_path: Path, images: np.ndarray) -> None:
    figure = figures.sample_grid(images, LABELS, SPECS["cifar10"].class_names, side=3)
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels == [SPECS["cifar10"].class_names[i] for i in LABELS[:9]]
    assert figure.axes[0].get_title() == "9 sample training images"
    image = saved(figure, tmp_path)
    assert 200 <= image.width <= 2000 and 200 <= image.height <= 2000


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_curves_have_labels_and_legend(tmp_path: Path, metric: str) -> None:
    figure = figures.curves(HISTORY, metric)
    axis = figure.axes[0]
    assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == metric
    assert [t.get_text() for t in axis.get_legend().get_texts()] == [
        f"training {metric}",
        f"validation {metric}",
    ]
    assert axis.lines[1].get_ydata().tolist() == HISTORY[f"val_{metric}"].tolist()
    assert saved(figure, tmp_path).width >= 400
    # Epochs are whole: no tick between two of them.
    ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)


def test_prediction_grid_titles(tmp_path: Path) -> None:
    names = SPECS["fashion_mnist"].class_names
    figure = figures.prediction_grid(GRAY[:9], LABELS[:9], PREDICTED[:9], names, side=3)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[1] == "Predicted: Trouser  Label: Trouser"
    assert titles[0] == "Predicted: Trouser  Label: T-shirt/top"
    saved(figure, tmp_path)


def test_confusion_heatmap(tmp_path: Path) -> None:
    matrix = np.array([[5, 1], [0, 4]])
    figure = figures.confusion_heatmap(matrix, ("cat", "dog"))
    axis = figure.axes[0]
    assert axis.get_xlabel() == "predicted" and axis.get_ylabel() == "label"
    assert sorted(t.get_text() for t in axis.texts) == ["1", "4", "5"]
    saved(figure, tmp_path)


def test_confident_mistakes_most_confident_first(tmp_path: Path) -> None:
    names = SPECS["mnist"].class_names
    figure = figures.confident_mistakes(GRAY, LABELS, PREDICTED, PROBABILITY, names, count=2)
    wrong = np.flatnonzero(PREDICTED != LABELS)
    top = wrong[np.argsort(-PROBABILITY[wrong])][:2]
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == [
        f"Predicted: {PREDICTED[i]} ({PROBABILITY[i]:.0%})\nLabel: {LABELS[i]}" for i in top
    ]
    saved(figure, tmp_path)


def test_no_mistakes_still_makes_a_figure(tmp_path: Path) -> None:
    figure = figures.confident_mistakes(
        GRAY, LABELS, LABELS, PROBABILITY, SPECS["mnist"].class_names, 4
    )
    assert "The 0 most" in figure._suptitle.get_text()
    saved(figure, tmp_path)


def test_mosaic_places_each_tile_below_its_label_gap() -> None:
    tiles = np.stack([np.full((2, 3), value, np.uint8) for value in (10, 20, 30, 40)])
    tiled = figures.mosaic(tiles, side=2, row_gap=1, column_gap=1)
    assert tiled.shape == (6, 8)
    assert tiled[0].tolist() == [255] * 8  # the label gap above the first row
    assert tiled[1, :3].tolist() == [10] * 3 and tiled[1, 4:7].tolist() == [20] * 3
    assert tiled[4, :3].tolist() == [30] * 3 and tiled[4, 4:7].tolist() == [40] * 3
