"""The metrics a participant reports: checked against their definitions, not just examples.

The AUC is compared with a brute-force count over every (positive, negative) pair, ties
counting one half, on random labels and heavily tied scores; with scikit-learn installed,
also with ``roc_auc_score``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapdoor.ml.metrics import (
    BUILTIN_METRICS,
    accuracy,
    roc_auc,
    sensitivity,
    specificity,
)


def _brute_force_auc(y: np.ndarray, s: np.ndarray) -> float:
    positives, negatives = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


# Small integer scores so that ties are common; both classes always present.
labelled_scores = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < n),
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(labelled_scores)
def test_roc_auc_is_the_pair_count_with_ties_as_half(case: tuple[list[int], list[int]]) -> None:
    y, s = np.array(case[0]), np.array(case[1], dtype=np.float64) / 4
    assert roc_auc(y, s) == pytest.approx(_brute_force_auc(y, s), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(labelled_scores)
def test_roc_auc_reads_column_1_of_a_probability_matrix_and_ignores_scale(
    case: tuple[list[int], list[int]],
) -> None:
    y, s = np.array(case[0]), np.array(case[1], dtype=np.float64)
    p = 1 / (1 + np.exp(-s))  # a monotone map keeps the ranks
    matrix = np.column_stack([1 - p, p])
    assert roc_auc(y, matrix) == pytest.approx(roc_auc(y, s), abs=1e-12)
    assert roc_auc(y, -s) == pytest.approx(1 - roc_auc(y, s), abs=1e-12)


def test_roc_auc_agrees_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=60) + y, 1)  # rounded: ties
        assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_extremes() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.full(4, 0.5)) == 0.5


@pytest.mark.parametrize(
    ("y", "scores", "message"),
    [
        (np.zeros(4, int), np.arange(4.0), "one class only"),
        (np.array([0, 1, 2]), np.arange(3.0), "labels must be 0 and 1"),
        (np.array([0, 1, 1]), np.ones((3, 3)) / 3, "3 columns"),
        (np.array([0, 1]), np.arange(3.0), "2 labels but 3 rows"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "NaN or inf"),
        (np.zeros((2, 1), int), np.arange(2.0), "one label per row"),
    ],
)
def test_roc_auc_refuses_what_it_cannot_score(
    y: np.ndarray, scores: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(y, scores)


def test_accuracy_from_a_matrix_or_from_scores() -> None:
    y = np.array([0, 2, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert accuracy(y, proba) == 0.75
    assert accuracy(np.array([1, 0, 1]), np.array([0.7, 0.2, 0.4])) == pytest.approx(2 / 3)
    assert accuracy(np.array([1, 0]), np.array([[0.5], [0.1]])) == 1.0  # (n, 1): one score


def test_sensitivity_and_specificity() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 2])
    predicted_one = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.2, 0.1, 0.3])
    # 3 of 4 positives caught; of the 4 others (label 0 or 2) 3 are not predicted 1.
    assert sensitivity(y, predicted_one) == 0.75
    assert specificity(y, predicted_one) == 0.75
    matrix = np.column_stack([1 - predicted_one, predicted_one])
    assert sensitivity(y, matrix) == 0.75 and specificity(y, matrix) == 0.75
    with pytest.raises(ValueError, match="none of the 2 rows is positive"):
        sensitivity(np.array([0, 0]), np.array([0.1, 0.9]))
    with pytest.raises(ValueError, match="none of the 2 rows is negative"):
        specificity(np.array([1, 1]), np.array([0.1, 0.9]))


@settings(max_examples=100, deadline=None)
@given(labelled_scores)
def test_sensitivity_and_specificity_are_the_confusion_counts(
    case: tuple[list[int], list[int]],
) -> None:
    y, s = np.array(case[0]), np.array(case[1], dtype=np.float64) / 4 + 0.5
    predicted = s >= 0.5
    tp, fn = np.sum(predicted & (y == 1)), np.sum(~predicted & (y == 1))
    tn, fp = np.sum(~predicted & (y == 0)), np.sum(predicted & (y == 0))
    assert sensitivity(y, s) == pytest.approx(tp / (tp + fn))
    assert specificity(y, s) == pytest.approx(tn / (tn + fp))
    assert accuracy(y, s) == pytest.approx((tp + tn) / len(y))


def test_builtin_metrics_by_name() -> None:
    assert {
        "accuracy": accuracy,
        "roc_auc": roc_auc,
        "sensitivity": sensitivity,
        "specificity": specificity,
    } == BUILTIN_METRICS
