"""Evaluation metrics a participant reports on its local test rows, numpy only.

Every metric has the one signature :class:`~trapdoor.ml.torch_app.TorchApp` calls a user's
own metric with, ``metric(y_true, scores) -> float``: ``y_true`` holds integer labels and
``scores`` is either the ``(n, classes)`` probability matrix of a classifier or ``(n,)``
scores of the positive class (a sigmoid output, or any score where larger means "more
likely positive"). Binary metrics take class ``1`` as the positive class and every other
label as negative. A metric that is undefined on the rows given (an AUC without both
classes, a sensitivity without a positive row) raises :class:`ValueError` rather than
reporting a number that means nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUILTIN_METRICS",
    "MetricFn",
    "accuracy",
    "roc_auc",
    "sensitivity",
    "specificity",
]

#: ``metric(y_true, scores) -> float``.
MetricFn = Callable[[npt.ArrayLike, npt.ArrayLike], float]

#: A 1-D score at or above this counts as a prediction of class 1.
THRESHOLD = 0.5


def _inputs(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a 1-D array and scores as ``(n,)`` or ``(n, k)``, with matching rows."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be one label per row, got shape {y.shape}")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be (n,) or (n, classes), got shape {s.shape}")
    if len(s) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s)} rows of scores")
    if len(y) == 0:
        raise ValueError("no rows to score")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold NaN or inf in {int((~np.isfinite(s)).sum())} places")
    return y, s


def _predicted(s: np.ndarray) -> np.ndarray:
    """The predicted class of each row: the arg-max of a matrix, a threshold on 1-D scores."""
    return s.argmax(axis=1) if s.ndim == 2 else (s >= THRESHOLD).astype(np.int64)


def accuracy(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """The fraction of rows whose predicted class is the label."""
    y, s = _inputs(y_true, scores)
    return float(np.mean(_predicted(s) == y))


def _recall(y: np.ndarray, s: np.ndarray, positive: bool) -> float:
    actual = y == 1
    rows = actual if positive else ~actual
    if not rows.any():
        which = "positive (label 1)" if positive else "negative (label other than 1)"
        raise ValueError(f"undefined: none of the {len(y)} rows is {which}")
    hits = (_predicted(s) == 1) == positive
    return float(np.mean(hits[rows]))


def sensitivity(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Recall of class 1 (true positive rate): of the rows labelled 1, how many are predicted 1."""
    y, s = _inputs(y_true, scores)
    return _recall(y, s, positive=True)


def specificity(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """True negative rate: of the rows not labelled 1, how many are not predicted 1."""
    y, s = _inputs(y_true, scores)
    return _recall(y, s, positive=False)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the rank of the last member of each group of ties
    mean_rank = ends - (counts - 1) / 2.0
    return np.asarray(mean_rank[inverse], dtype=np.float64)


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of a binary classifier (labels 0 and 1).

    The probability that a random positive row scores above a random negative one, a
    tie counting one half: the Mann-Whitney U statistic over ``n_pos * n_neg``, from
    the rank sum of the positive rows with tied scores given their average rank.
    ``scores`` is ``(n,)`` positive-class scores or the ``(n, 2)`` probability matrix
    (its column 1 is used).
    """
    y, s = _inputs(y_true, scores)
    if s.ndim == 2:
        if s.shape[1] != 2:
            raise ValueError(
                f"roc_auc is binary: scores have {s.shape[1]} columns; give (n,) or (n, 2)"
            )
        s = s[:, 1]
    labels = set(np.unique(y).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"roc_auc is binary: labels must be 0 and 1, got {sorted(labels)}")
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc is undefined with one class only ({n_pos} positive, {n_neg} negative rows)"
        )
    rank_sum = float(_average_ranks(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


#: The built-in metrics by name, e.g. ``TorchApp(..., metrics=["roc_auc"])``.
BUILTIN_METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "roc_auc": roc_auc,
    "sensitivity": sensitivity,
    "specificity": specificity,
}
