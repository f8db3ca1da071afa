"""Finite-difference gradient checking shared by the model tests (numpy and torch)."""

from __future__ import annotations

import numpy as np

from trapdoor.ml.models import Model


def central_difference(
    model: Model, params: np.ndarray, X: np.ndarray, y: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """The loss gradient by central differences, one parameter at a time (float64)."""
    grad = np.zeros_like(params)
    for k in range(len(params)):
        plus, minus = params.copy(), params.copy()
        plus[k] += eps
        minus[k] -= eps
        grad[k] = (
            model.loss_and_gradient(plus, X, y)[0] - model.loss_and_gradient(minus, X, y)[0]
        ) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``|a - b| / (|a| + |b|)``, safe at zero."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))
