import numpy as np

from transferlab.training.metrics import balanced_accuracy, confusion_matrix, per_class_recall


def test_balanced_accuracy_is_not_fooled_by_the_majority_class():
    labels = np.array([0] * 9 + [1])
    always_zero = np.zeros(10, dtype=int)
    assert (always_zero == labels).mean() == 0.9
    assert balanced_accuracy(labels, always_zero, 2) == 0.5
    assert per_class_recall(labels, always_zero, 3) == {0: 1.0, 1: 0.0}  # class 2 has no examples


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
