"""Classification metrics shared by the experiment report and `evaluate` on a saved model."""

import numpy as np


def per_class_recall(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict[int, float]:
    """Recall of each class that has examples (absent classes are left out, not counted as 0)."""
    return {c: float((predictions[labels == c] == c).mean()) for c in range(n_classes) if (labels == c).any()}


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall: what accuracy means when classes are imbalanced."""
    recalls = per_class_recall(labels, predictions, n_classes)
    return float(np.mean(list(recalls.values()))) if recalls else 0.0


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted ones."""
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix.tolist()
