"""MLP gradients, shapes and spec handling."""

import json

import numpy as np
import pytest
from gradcheck import central_difference
from hypothesis import given, settings
from hypothesis import strategies as st

from trapdoor.ml.models import MLP, Model, model_from_spec

layer_sizes = st.lists(st.integers(min_value=1, max_value=6), min_size=0, max_size=2).flatmap(
    lambda hidden: st.tuples(
        st.integers(min_value=1, max_value=5),
        st.just(hidden),
        st.integers(min_value=2, max_value=4),
    ).map(lambda t: [t[0], *t[1], t[2]])
)


@settings(max_examples=30, deadline=None)
@given(
    sizes=layer_sizes, batch=st.integers(min_value=1, max_value=6), seed=st.integers(0, 2**32 - 1)
)
def test_gradient_matches_central_differences(sizes: list[int], batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = MLP(sizes)
    params = model.init_parameters(rng) + rng.normal(0, 0.1, model.num_parameters)
    X = rng.normal(size=(batch, sizes[0]))
    y = rng.integers(0, sizes[-1], size=batch)

    loss, grad = model.loss_and_gradient(params, X, y)
    numeric = central_difference(model, params, X, y)

    assert np.isfinite(loss) and loss > 0
    assert grad.shape == params.shape
    rel_err = np.linalg.norm(grad - numeric) / max(
        np.linalg.norm(grad) + np.linalg.norm(numeric), 1e-12
    )
    assert rel_err < 1e-5


def test_mnist_mlp_parameter_count() -> None:
    assert MLP([784, 128, 64, 10]).num_parameters == 109_386


def test_init_is_flat_float64_deterministic_and_he_scaled() -> None:
    model = MLP([784, 128, 64, 10])
    a = model.init_parameters(np.random.default_rng(7))
    b = model.init_parameters(np.random.default_rng(7))
    assert a.shape == (109_386,) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    (W0, b0), *_ = model.unflatten(a)
    assert W0.shape == (784, 128)
    assert np.all(b0 == 0)
    assert W0.std() == pytest.approx(np.sqrt(2 / 784), rel=0.05)


def test_unflatten_returns_views() -> None:
    model = MLP([3, 2])
    params = np.zeros(model.num_parameters)
    W, b = model.unflatten(params)[0]
    W[0, 1] = 5.0
    b[1] = 7.0
    assert params[1] == 5.0
    assert params[-1] == 7.0


@settings(max_examples=20, deadline=None)
@given(sizes=layer_sizes, seed=st.integers(0, 2**32 - 1))
def test_predict_proba_rows_are_distributions(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = MLP(sizes)
    params = model.init_parameters(rng) * 50  # large logits exercise the stable softmax
    proba = model.predict_proba(params, rng.normal(size=(8, sizes[0])))
    assert proba.shape == (8, sizes[-1])
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_spec_round_trip_through_json() -> None:
    model = MLP([64, 32, 10])
    spec = json.loads(json.dumps(model.spec()))
    assert spec == {"kind": "mlp", "layer_sizes": [64, 32, 10]}
    rebuilt = model_from_spec(spec)
    assert isinstance(rebuilt, Model)
    assert rebuilt.spec() == model.spec()
    assert rebuilt.num_parameters == model.num_parameters


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "cnn", "layer_sizes": [64, 10]},
        {"layer_sizes": [64, 10]},
        {"kind": "mlp"},
        {"kind": "mlp", "layer_sizes": [64]},
        {"kind": "mlp", "layer_sizes": [64, 0, 10]},
        {"kind": "mlp", "layer_sizes": [64, 1]},
        {"kind": "mlp", "layer_sizes": [64, "10"]},
        {"kind": "mlp", "layer_sizes": [64, 2.5]},
    ],
)
def test_model_from_spec_rejects_bad_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        model_from_spec(spec)


def test_wrong_parameter_length_is_rejected() -> None:
    model = MLP([4, 3])
    with pytest.raises(ValueError):
        model.loss_and_gradient(np.zeros(model.num_parameters + 1), np.zeros((1, 4)), np.array([0]))
