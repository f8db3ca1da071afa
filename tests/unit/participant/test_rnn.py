"""GRU gradients (backprop through time), clipping, spec handling and a quick learning check."""

import json

import numpy as np
import pytest
from gradcheck import central_difference, relative_error

from trapdoor.ml.datasets import load_dataset
from trapdoor.ml.models import Model, model_from_spec
from trapdoor.ml.rnn import GRU
from trapdoor.ml.training import TrainingConfig, evaluate, local_fit


@pytest.mark.parametrize(
    ("steps", "features", "hidden", "classes"), [(4, 3, 5, 3), (1, 2, 3, 2), (6, 1, 2, 4)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_central_differences(
    steps: int, features: int, hidden: int, classes: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    model = GRU((steps, features), hidden=hidden, num_classes=classes)
    # Perturb so biases are non-zero and the gates are not all at 0.5.
    params = model.init_parameters(rng) + rng.normal(0, 0.3, model.num_parameters)
    X = rng.normal(size=(3, steps * features))
    y = rng.integers(0, classes, size=3)

    loss, grad = model.loss_and_gradient(params, X, y)
    numeric = central_difference(model, params, X, y)

    assert np.isfinite(loss) and loss > 0
    assert grad.shape == params.shape and grad.dtype == np.float64
    assert relative_error(grad, numeric) < 1e-5


def test_parameter_counts() -> None:
    # 3 gates * (28*64 + 64*64 + 64) + 64*10 + 10.
    assert GRU().num_parameters == 3 * (28 * 64 + 64 * 64 + 64) + 650 == 18_506
    assert GRU((8, 8), hidden=32).num_parameters == 3 * (8 * 32 + 32 * 32 + 32) + 330


def test_init_is_deterministic_with_orthogonal_recurrent_blocks() -> None:
    model = GRU((8, 8), hidden=16)
    a = model.init_parameters(np.random.default_rng(3))
    np.testing.assert_array_equal(a, model.init_parameters(np.random.default_rng(3)))
    assert a.shape == (model.num_parameters,) and a.dtype == np.float64
    w = model.unflatten(a)
    for gate in range(3):
        block = w["Wh"][:, gate * 16 : (gate + 1) * 16]
        np.testing.assert_allclose(block.T @ block, np.eye(16), atol=1e-12)
    assert np.all(w["b"] == 0) and np.all(w["out_b"] == 0)


def test_reads_rows_in_order() -> None:
    """Reversing the time steps changes the output: the model is not a bag of rows."""
    rng = np.random.default_rng(2)
    model = GRU((5, 3), hidden=4, num_classes=3)
    params = model.init_parameters(rng)
    X = rng.normal(size=(2, 15))
    reversed_rows = X.reshape(2, 5, 3)[:, ::-1, :].reshape(2, 15)
    assert not np.allclose(
        model.predict_proba(params, X), model.predict_proba(params, reversed_rows)
    )


def test_predict_proba_rows_are_distributions() -> None:
    rng = np.random.default_rng(1)
    model = GRU((8, 8), hidden=8)
    params = model.init_parameters(rng) * 50  # large weights: saturated gates, big logits
    proba = model.predict_proba(params, rng.normal(size=(7, 64)))
    assert proba.shape == (7, 10)
    assert np.all(np.isfinite(proba)) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_clip_value_clips_the_gradient_only() -> None:
    rng = np.random.default_rng(4)
    exact = GRU((4, 3), hidden=5, num_classes=3)
    clipped = GRU((4, 3), hidden=5, num_classes=3, clip_value=0.01)
    params = exact.init_parameters(rng) * 3
    X = rng.normal(size=(5, 12)) * 3
    y = rng.integers(0, 3, size=5)
    loss, grad = exact.loss_and_gradient(params, X, y)
    loss_c, grad_c = clipped.loss_and_gradient(params, X, y)
    assert np.abs(grad).max() > 0.01  # so the clip actually bites
    assert loss_c == loss
    assert np.abs(grad_c).max() <= 0.01
    np.testing.assert_array_equal(grad_c, np.clip(grad, -0.01, 0.01))


def test_spec_round_trip_through_json() -> None:
    model = GRU((8, 8), hidden=12, num_classes=10, clip_value=5.0)
    spec = json.loads(json.dumps(model.spec()))
    assert spec == {
        "kind": "gru",
        "input_shape": [8, 8],
        "hidden": 12,
        "num_classes": 10,
        "clip_value": 5.0,
    }
    rebuilt = model_from_spec(spec)
    assert isinstance(rebuilt, GRU) and isinstance(rebuilt, Model)
    assert rebuilt.spec() == model.spec()
    assert model_from_spec({"kind": "gru"}).spec() == GRU().spec()
    assert GRU().spec()["clip_value"] is None


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "gru", "layer_sizes": [64, 10]},
        {"kind": "gru", "input_shape": [64]},
        {"kind": "gru", "input_shape": [8, 8, 1]},
        {"kind": "gru", "input_shape": "8x8"},
        {"kind": "gru", "input_shape": [8, 0]},
        {"kind": "gru", "hidden": 0},
        {"kind": "gru", "hidden": 2.0},
        {"kind": "gru", "num_classes": 1},
        {"kind": "gru", "clip_value": 0},
        {"kind": "gru", "clip_value": -1.0},
        {"kind": "gru", "clip_value": float("inf")},
        {"kind": "gru", "clip_value": "1"},
        {"kind": "gru", "clip_value": True},
        {"kind": "rnn"},
    ],
)
def test_model_from_spec_rejects_bad_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        model_from_spec(spec)


def test_bad_inputs_are_rejected() -> None:
    model = GRU((4, 3), hidden=2, num_classes=2)
    params = np.zeros(model.num_parameters)
    with pytest.raises(ValueError):
        model.loss_and_gradient(
            np.zeros(model.num_parameters - 1), np.zeros((1, 12)), np.array([0])
        )
    with pytest.raises(ValueError):
        model.predict_proba(params, np.zeros((2, 13)))
    with pytest.raises(ValueError):
        model.loss_and_gradient(params, np.zeros((2, 12)), np.array([0]))


def test_local_fit_on_digits_learns() -> None:
    data = load_dataset("digits")
    model = GRU((8, 8), hidden=32, clip_value=1.0)
    start = model.init_parameters(np.random.default_rng(0))
    config = TrainingConfig(learning_rate=0.3, local_epochs=5, batch_size=32)
    result = local_fit(model, start, data.X_train, data.y_train, config, np.random.default_rng(100))
    accuracy = evaluate(model, start + result.update, data.X_test, data.y_test)["accuracy"]
    # Seeds 0-4 give 0.90-0.92 here; chance is 0.1.
    assert accuracy > 0.7
