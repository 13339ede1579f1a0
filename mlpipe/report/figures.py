"""The tutorial's figures, and the ones a reader wants next, as matplotlib figures.

Builders take arrays and return a Figure; `save_png` writes one atomically. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlpipe.atomic import atomic_path

if TYPE_CHECKING:
    from mlpipe.config import PlotParams
    from mlpipe.report.tables import Reports


def _show_image(axis: plt.Axes, image: np.ndarray) -> None:
    """Grayscale as the tutorial shows it (white digit on black); colour images as they are."""
    if image.ndim == 2:
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])


def _grid(count: int, size: float) -> tuple[Figure, np.ndarray]:
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    return figure, axes


def mosaic(images: np.ndarray, side: int, row_gap: int, column_gap: int) -> np.ndarray:
    """Tile up to side x side images into one array on white, each below a gap for its label."""
    height, width = images.shape[1:3]
    shape = (side * (height + row_gap), side * (width + column_gap), *images.shape[3:])
    tiled = np.full(shape, 255, dtype=np.uint8)
    for index, image in enumerate(images[: side * side]):
        row, column = divmod(index, side)
        top, left = row * (height + row_gap) + row_gap, column * (width + column_gap)
        tiled[top : top + height, left : left + width] = image
    return tiled


def sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], side: int
) -> Figure:
    """A side x side grid of training images, each labelled with its class.

    Drawn as one mosaic image rather than side**2 subplots: the same picture, ten times faster.
    """
    count = min(side * side, len(images))
    height, width = images.shape[1:3]
    row_gap, column_gap = height // 3, 2
    figure, axis = plt.subplots(figsize=(side * 1.1, side * 1.25))
    tiled = mosaic(images[:count], side, row_gap, column_gap)
    if tiled.ndim == 2:
        axis.imshow(tiled, cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(tiled)
    for index in range(count):
        row, column = divmod(index, side)
        axis.text(
            column * (width + column_gap) + width / 2,
            row * (height + row_gap) + row_gap - 1,
            class_names[int(labels[index])],
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_frame_on(False)
    axis.set_title(f"{count} sample training images")
    figure.tight_layout()
    return figure


def curves(history: pd.DataFrame, metric: str) -> Figure:
    """Training vs validation `metric` against epoch."""
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(
        history["epoch"], history[metric], marker="o", markersize=3, label=f"training {metric}"
    )
    axis.plot(
        history["epoch"],
        history[f"val_{metric}"],
        marker="o",
        markersize=3,
        label=f"validation {metric}",
    )
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
    axis.set_ylabel(metric)
    axis.set_title(f"Model {metric}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: tuple[str, ...],
    side: int,
) -> Figure:
    """A side x side grid of test images titled `Predicted: p  Label: l`, wrong ones in red."""
    figure, axes = plt.subplots(side, side, figsize=(side * 2.6, side * 2.6), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(images):
            continue
        _show_image(axis, images[index])
        right = predicted[index] == labels[index]
        guess, truth = class_names[int(predicted[index])], class_names[int(labels[index])]
        axis.set_title(
            f"Predicted: {guess}  Label: {truth}",
            fontsize=8,
            color="black" if right else "red",
        )
    figure.tight_layout()
    return figure


def confusion_heatmap(matrix: np.ndarray, class_names: tuple[str, ...]) -> Figure:
    """The confusion matrix with counts in each cell; rows are true labels."""
    size = max(5.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size * 0.9))
    shown = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="test images")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, labels=class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("label")
    axis.set_title("Confusion matrix (test set)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            value = int(matrix[row, column])
            if value:
                axis.text(
                    column,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > threshold else "black",
                )
    figure.tight_layout()
    return figure


def confident_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    probability: np.ndarray,
    class_names: tuple[str, ...],
    count: int,
) -> Figure:
    """The wrong predictions the model was surest of, most confident first."""
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probability[wrong], kind="stable")][:count]
    shown = max(len(order), 1)
    figure, axes = _grid(shown, 2.2)
    for axis, index in zip(axes.flat, order, strict=False):
        axis.axis("on")
        _show_image(axis, images[index])
        axis.set_title(
            f"Predicted: {class_names[int(predicted[index])]} ({probability[index]:.0%})\n"
            f"Label: {class_names[int(labels[index])]}",
            fontsize=8,
        )
    if not len(order):
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
    figure.suptitle(f"The {len(order)} most confidently wrong test predictions")
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: Path, dpi: int = 100) -> None:
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=dpi, format="png")
    plt.close(figure)


def plot_stage_figures(
    reports: Reports,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: tuple[str, ...],
    params: PlotParams,
    seed: int,
) -> dict[str, Figure]:
    """Every figure of the plot stage, by file name: samples, curves, predictions, mistakes.

    The sampled images are drawn with `seed`, so the same params show the same images.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    rng = np.random.default_rng(seed)
    samples = np.sort(
        rng.choice(len(x_train), min(params.sample_grid**2, len(x_train)), replace=False)
    )
    shown = np.sort(
        rng.choice(len(x_test), min(params.prediction_grid**2, len(x_test)), replace=False)
    )
    predicted = reports.predictions["predicted"].to_numpy()
    return {
        "samples.png": sample_grid(
            x_train[samples], y_train[samples], class_names, params.sample_grid
        ),
        "accuracy.png": curves(reports.history, "accuracy"),
        "loss.png": curves(reports.history, "loss"),
        "predictions.png": prediction_grid(
            x_test[shown], y_test[shown], predicted[shown], class_names, params.prediction_grid
        ),
        "confusion_matrix.png": confusion_heatmap(
            reports.confusion.drop(columns="label").to_numpy(), class_names
        ),
        "confident_mistakes.png": confident_mistakes(
            x_test,
            y_test,
            predicted,
            reports.predictions["probability"].to_numpy(),
            class_names,
            params.wrong_count,
        ),
    }
