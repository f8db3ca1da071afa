"""The pieces the MLP, the CNN and the GRU are all built from, in one place.

Every model ends in a softmax output trained with cross-entropy, keeps its parameters in
one flat vector split into named views, and checks its inputs and constructor arguments
the same way. They live here, below the models, so that the model modules import this one
and never each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_batch", "cross_entropy", "named_views", "positive_int", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row max avoids overflow in exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of integer labels ``y`` under softmax(``logits``), and its
    gradient w.r.t. the logits, ``(softmax - one_hot) / n``, where backprop starts."""
    n = logits.shape[0]
    if n == 0:
        raise ValueError("cannot compute a loss on an empty batch")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {y.shape}")
    # Stable log-softmax: log p = z - max - log(sum(exp(z - max))).
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(n), y].mean())
    delta = np.exp(log_probs)
    delta[np.arange(n), y] -= 1.0
    return loss, delta / n


def check_batch(X: np.ndarray, num_features: int) -> np.ndarray:
    """``X`` as a float64 ``(N, num_features)`` array; ValueError for any other shape."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != num_features:
        raise ValueError(f"expected inputs of shape (N, {num_features}), got {X.shape}")
    return X


def named_views(params: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Split a flat vector into named, reshaped *views* (writes go to ``params``).

    The layout is the order of ``shapes``; models that name their tensors share this.
    """
    total = sum(int(np.prod(s)) for s in shapes.values())
    if params.shape != (total,):
        raise ValueError(f"expected a flat vector of {total} parameters, got shape {params.shape}")
    views = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        views[name] = params[offset : offset + size].reshape(shape)
        offset += size
    return views


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or ValueError if it is not a positive integer (bools refused,
    so a JSON ``true`` cannot sneak in as 1)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
