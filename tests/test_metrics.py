"""core/metrics.py: the confusion matrix and the plain-text report training and scoring print."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics import class_report, confusion_matrix, format_report


def test_confusion_matrix_counts_true_against_predicted() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        confusion_matrix(np.zeros(2), np.zeros(3))


def test_report_of_classes_never_predicted_shows_no_nan() -> None:
    # As after a dry run: the net predicts only class 0, and class 2 never occurs.
    cm = confusion_matrix(np.array([0, 0, 0, 1, 1]), np.zeros(5, dtype=int), 3)
    report = class_report(cm)
    assert np.isnan(report.precision[1]) and np.isnan(report.recall[2])
    text = format_report(cm, ["0", "1", "2"])
    assert "nan" not in text.lower()
    lines = text.splitlines()
    assert lines[0] == "accuracy: 60.0000% (3/5)"
    assert lines[3].split() == ["0", "0.6000", "1.0000", "3"]
    assert lines[4].split() == ["1", "-", "0.0000", "2"]
    assert lines[5].split() == ["2", "-", "-", "0"]
    assert "no image was predicted as 1, 2" in text
