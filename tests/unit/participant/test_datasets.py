"""Bundled data sets and participant partitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapdoor.ml.datasets import load_dataset, partition


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_and_ranges(digits) -> None:
    assert digits.name == "digits"
    assert digits.num_features == 64 and digits.num_classes == 10
    assert digits.X_train.shape[1] == digits.X_test.shape[1] == 64
    assert len(digits.X_train) + len(digits.X_test) == 1797
    assert len(digits.X_test) == pytest.approx(0.2 * 1797, abs=1)
    assert digits.X_train.dtype == np.float64
    assert digits.X_train.min() >= 0 and digits.X_train.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_mnist_shapes_and_ranges() -> None:
    mnist = load_dataset("mnist")
    assert mnist.num_features == 784 and mnist.num_classes == 10
    assert mnist.X_train.shape == (4000, 784) and mnist.X_test.shape == (1000, 784)
    assert mnist.X_train.min() >= 0 and mnist.X_train.max() == 1.0
    # stratified: 500 images per class -> exactly 100 per class in the test set
    np.testing.assert_array_equal(np.bincount(mnist.y_test), np.full(10, 100))


def test_split_is_deterministic_and_seed_dependent(digits) -> None:
    again = load_dataset("digits")
    np.testing.assert_array_equal(digits.X_train, again.X_train)
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(digits.y_train, other.y_train)


def test_unknown_dataset_and_bad_fraction() -> None:
    with pytest.raises(ValueError):
        load_dataset("cifar10")
    with pytest.raises(ValueError):
        load_dataset("digits", test_fraction=1.0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    num_classes=st.integers(1, 10),
    num_parts=st.integers(1, 20),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_covers_every_index_once_with_no_empty_part(
    n: int, num_classes: int, num_parts: int, scheme: str, alpha: float, seed: int
) -> None:
    num_parts = min(num_parts, n)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    parts = partition(y, num_parts, rng, scheme=scheme, alpha=alpha)
    assert len(parts) == num_parts
    assert all(len(p) > 0 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def test_iid_parts_have_near_equal_sizes() -> None:
    parts = partition(np.zeros(103, dtype=int), 10, np.random.default_rng(0))
    assert {len(p) for p in parts} == {10, 11}


def _mean_label_distance(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label mix and the global one."""
    k = y.max() + 1
    overall = np.bincount(y, minlength=k) / len(y)
    return float(
        np.mean(
            [0.5 * np.abs(np.bincount(y[p], minlength=k) / len(p) - overall).sum() for p in parts]
        )
    )


def test_dirichlet_is_non_iid(digits) -> None:
    y = digits.y_train
    iid = partition(y, 5, np.random.default_rng(0), scheme="iid")
    skewed = partition(y, 5, np.random.default_rng(0), scheme="dirichlet", alpha=0.1)
    assert _mean_label_distance(y, iid) < 0.1
    assert _mean_label_distance(y, skewed) > 0.4


def test_partition_is_deterministic(digits) -> None:
    for scheme in ("iid", "dirichlet"):
        a = partition(digits.y_train, 7, np.random.default_rng(3), scheme=scheme)
        b = partition(digits.y_train, 7, np.random.default_rng(3), scheme=scheme)
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("num_parts", "kwargs"),
    [
        (0, {}),
        (-1, {}),
        (11, {}),
        (2, {"scheme": "pathological"}),
        (2, {"scheme": "dirichlet", "alpha": 0.0}),
        (2, {"scheme": "dirichlet", "alpha": -1.0}),
    ],
)
def test_partition_rejects_bad_arguments(num_parts: int, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        partition(np.arange(10) % 3, num_parts, np.random.default_rng(0), **kwargs)
