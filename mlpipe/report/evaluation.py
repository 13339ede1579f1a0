"""Test-set metrics from predicted probabilities: pure NumPy and pandas, no model needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlpipe.errors import ModelError

# Keras clips probabilities by the same epsilon when it computes cross-entropy.
EPSILON = 1e-7


def check_model_outputs(probabilities: np.ndarray, num_classes: int, source: str) -> None:
    """Refuse outputs no answer or metric may be built on, naming `source` (the model).

    A wrong class count means the model belongs to another dataset; NaN or infinite values
    come from broken weights, and argmax would silently turn them into class 0.
    """
    if probabilities.ndim != 2:
        raise ModelError(
            f"{source}: gives outputs of shape {probabilities.shape}, not one row of "
            f"{num_classes} class probabilities per image"
        )
    if probabilities.shape[1] != num_classes:
        raise ModelError(
            f"{source}: gives {probabilities.shape[1]} outputs per image, but the dataset has "
            f"{num_classes} classes; is it a model of another dataset?"
        )
    broken = int((~np.isfinite(probabilities)).any(axis=1).sum())
    if broken:
        raise ModelError(
            f"{source}: gives NaN or infinite outputs for {broken} of {len(probabilities)} "
            "images; its weights are broken"
        )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true labels as rows and predictions as columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def per_class_table(matrix: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class; 0 where a ratio has no denominator."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return pd.DataFrame(
        {
            "class": np.arange(len(class_names)),
            "name": list(class_names),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    )


def summary_metrics(
    labels: np.ndarray, probabilities: np.ndarray, per_class: pd.DataFrame
) -> dict[str, float]:
    """Test accuracy, cross-entropy loss and macro F1, rounded for a stable metrics file."""
    predicted = probabilities.argmax(axis=1)
    chosen = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    loss = float(-np.log(np.clip(chosen, EPSILON, 1.0)).mean())
    return {
        "test_accuracy": round(float((predicted == labels).mean()), 6),
        "test_loss": round(loss, 6),
        "test_macro_f1": round(float(per_class["f1"].mean()), 6),
        "test_samples": len(labels),
    }


@dataclass(frozen=True)
class Evaluation:
    """Everything the evaluate stage reports about one model on the test set."""

    metrics: dict[str, float]
    predictions: pd.DataFrame  # one row per test image
    per_class: pd.DataFrame  # precision, recall, F1, support
    confusion: pd.DataFrame  # the matrix, with a label column first


def evaluate(
    labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> Evaluation:
    """The test-set report from predicted probabilities; the confusion matrix is built once."""
    predictions = predictions_table(labels, probabilities)
    matrix = confusion_matrix(labels, predictions["predicted"].to_numpy(), len(class_names))
    per_class = per_class_table(matrix, class_names)
    confusion = pd.DataFrame(matrix, columns=list(class_names))
    confusion.insert(0, "label", list(class_names))
    return Evaluation(
        summary_metrics(labels, probabilities, per_class), predictions, per_class, confusion
    )


def predictions_table(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per test image: its index, label, predicted class and that class's probability."""
    predicted = probabilities.argmax(axis=1)
    return pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": labels.astype(np.int64),
            "predicted": predicted,
            "probability": probabilities.max(axis=1).round(6),
        }
    )


def predicted(model: Any, images: np.ndarray, batch_size: int, num_classes: int, source: str):
    """The model's class probabilities for `images`, refused when they cannot be trusted."""
    probabilities = np.asarray(model.predict(images, batch_size=batch_size, verbose=0))
    # Broken weights give NaN, which argmax would quietly read as class 0: never promote that.
    check_model_outputs(probabilities, num_classes, source)
    return probabilities


def validation_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The final model's accuracy and loss on the validation split: what promotion and a
    sweep rank on, under the names train logs them per epoch."""
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    chosen = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    loss = float(-np.log(np.clip(chosen, EPSILON, 1.0)).mean())
    return {"val_accuracy": round(accuracy, 6), "val_loss": round(loss, 6)}


def summary_line(metrics: dict[str, float]) -> str:
    return (
        f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} on "
        f"{metrics['test_samples']} images; validation accuracy {metrics['val_accuracy']:.4f}, "
        f"loss {metrics['val_loss']:.4f}"
    )
