"""Test-set metrics on hand-made predictions with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlpipe.atomic import json_text
from mlpipe.report.evaluation import confusion_matrix, evaluate, per_class_table, predictions_table

# Three classes. Labels and predictions chosen so every number below can be checked by hand.
LABELS = np.array([0, 0, 0, 1, 1, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2])


NAMES = ("a", "b", "c")  # three classes, as LABELS


def one_hot_probabilities(predicted: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    probabilities = np.full((len(predicted), 3), (1 - confidence) / 2)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_confusion_rows_are_labels() -> None:
    matrix = confusion_matrix(LABELS, PREDICTED, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_precision_recall_f1_by_hand() -> None:
    table = per_class_table(confusion_matrix(LABELS, PREDICTED, 3), ("a", "b", "c"))
    # Class a: 2 of 2 predicted a are right; 2 of 3 true a found.
    assert table["precision"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert table["recall"].tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert table["f1"].tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert table["support"].tolist() == [3, 2, 1]
    assert table["name"].tolist() == ["a", "b", "c"]


def test_class_never_predicted_has_zero_precision_not_nan() -> None:
    table = per_class_table(confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2), ("a", "b"))
    assert table["precision"].tolist() == [0.5, 0.0]
    assert table["f1"].tolist() == pytest.approx([2 / 3, 0.0])


def test_metrics_accuracy_and_loss() -> None:
    metrics = evaluate(LABELS, one_hot_probabilities(PREDICTED), NAMES).metrics
    assert metrics["test_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # Right answers get 0.8, wrong ones 0.1: loss = -(4 ln 0.8 + 2 ln 0.1) / 6.
    assert metrics["test_loss"] == pytest.approx(
        -(4 * math.log(0.8) + 2 * math.log(0.1)) / 6, abs=1e-6
    )
    assert metrics["test_macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert metrics["test_samples"] == 6


def test_metrics_json_is_stable() -> None:
    metrics = evaluate(LABELS, one_hot_probabilities(PREDICTED), NAMES).metrics
    text = json_text(metrics)
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(metrics)
    assert json_text(dict(reversed(list(metrics.items())))) == text
    assert {"test_accuracy", "test_loss"} <= set(json.loads(text))


def test_predictions_table_rows() -> None:
    table = predictions_table(LABELS, one_hot_probabilities(PREDICTED, 0.9))
    assert table.columns.tolist() == ["index", "label", "predicted", "probability"]
    assert table["predicted"].tolist() == PREDICTED.tolist()
    assert table["probability"].tolist() == pytest.approx([0.9] * 6)
