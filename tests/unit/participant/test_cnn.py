"""CNN gradients, shapes, spec handling and a quick learning check."""

import json

import numpy as np
import pytest
from gradcheck import central_difference, relative_error

from trapdoor.ml.cnn import CNN
from trapdoor.ml.datasets import load_dataset
from trapdoor.ml.models import Model, model_from_spec
from trapdoor.ml.training import TrainingConfig, evaluate, local_fit


# Max-pool and ReLU have kinks; with random float64 data and eps = 1e-6 the chance
# of straddling one is negligible, and fixed seeds keep the test deterministic.
@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (1, 6, 6), "conv_channels": 2, "kernel": 3, "pool": 2, "num_classes": 3},
        {
            "input_shape": (1, 6, 6),
            "conv_channels": 2,
            "kernel": 3,
            "pool": 2,
            "hidden": 4,
            "num_classes": 3,
        },
        # 2 input channels; a 6x5 conv output that pool 3 has to crop to 6x3.
        {"input_shape": (2, 7, 6), "conv_channels": 3, "kernel": 2, "pool": 3, "num_classes": 4},
        {"input_shape": (1, 5, 5), "conv_channels": 2, "kernel": 1, "pool": 1, "num_classes": 2},
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_central_differences(kwargs: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = CNN(**kwargs)
    params = model.init_parameters(rng) + rng.normal(0, 0.1, model.num_parameters)
    X = rng.normal(size=(3, int(np.prod(kwargs["input_shape"]))))
    y = rng.integers(0, kwargs["num_classes"], size=3)

    loss, grad = model.loss_and_gradient(params, X, y)
    numeric = central_difference(model, params, X, y)

    assert np.isfinite(loss) and loss > 0
    assert grad.shape == params.shape and grad.dtype == np.float64
    assert relative_error(grad, numeric) < 1e-5


def test_parameter_counts() -> None:
    # conv 8*1*3*3 + 8; pooled 13*13*8 = 1352 features; dense 1352*10 + 10.
    assert CNN().num_parameters == 80 + 13_530 == 13_610
    assert CNN((1, 8, 8)).num_parameters == 80 + 3 * 3 * 8 * 10 + 10
    assert CNN((1, 8, 8), hidden=16).num_parameters == 80 + 72 * 16 + 16 + 16 * 10 + 10


def test_init_is_deterministic_and_he_scaled() -> None:
    model = CNN(conv_channels=32, hidden=64)
    a = model.init_parameters(np.random.default_rng(3))
    b = model.init_parameters(np.random.default_rng(3))
    assert a.shape == (model.num_parameters,) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    w = model.unflatten(a)
    assert w["conv_W"].shape == (32, 1, 3, 3)
    assert w["conv_W"].std() == pytest.approx(np.sqrt(2 / 9), rel=0.15)
    assert w["hidden_W"].std() == pytest.approx(np.sqrt(2 / (13 * 13 * 32)), rel=0.05)
    assert np.all(w["conv_b"] == 0) and np.all(w["hidden_b"] == 0) and np.all(w["out_b"] == 0)


def test_unflatten_returns_views() -> None:
    model = CNN((1, 4, 4), conv_channels=2, kernel=3, pool=1, num_classes=2)
    params = np.zeros(model.num_parameters)
    model.unflatten(params)["conv_W"][0, 0, 0, 0] = 5.0
    model.unflatten(params)["out_b"][1] = 7.0
    assert params[0] == 5.0 and params[-1] == 7.0


def test_convolution_matches_a_direct_loop() -> None:
    """The im2col + matmul forward equals the textbook definition of the layer."""
    rng = np.random.default_rng(5)
    model = CNN((2, 5, 4), conv_channels=3, kernel=2, pool=1, num_classes=2)
    params = rng.normal(size=model.num_parameters)
    X = rng.normal(size=(2, 40))
    w = model.unflatten(params)
    images = X.reshape(2, 2, 5, 4)
    expected = np.zeros((2, 4, 3, 3))
    for i in range(4):
        for j in range(3):
            patch = images[:, :, i : i + 2, j : j + 2]
            expected[:, i, j, :] = np.einsum("ncab,kcab->nk", patch, w["conv_W"]) + w["conv_b"]
    features = np.maximum(expected, 0).reshape(2, -1)  # pool 1 is the identity
    logits = features @ w["out_W"] + w["out_b"]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(params, X), proba, rtol=1e-12)


def test_max_pool_routes_gradient_to_the_argmax() -> None:
    """Only the largest cell of each pooling window gets a conv-bias gradient."""
    model = CNN((1, 2, 2), conv_channels=1, kernel=1, pool=2, num_classes=2)
    params = np.zeros(model.num_parameters)
    w = model.unflatten(params)
    w["conv_W"][...] = 1.0
    w["out_W"][...] = [[1.0, -1.0]]
    X = np.array([[0.1, 0.9, 0.3, 0.2]])  # max at cell (0, 1)
    _, grad = model.loss_and_gradient(params, X, np.array([0]))
    g = model.unflatten(grad)
    # dL/dpooled = (p0 - 1) * 1 + p1 * (-1); it reaches conv_W through x = 0.9 only.
    p = model.predict_proba(params, X)[0]
    d_pooled = (p[0] - 1.0) - p[1]
    assert g["conv_W"][0, 0, 0, 0] == pytest.approx(0.9 * d_pooled)
    assert g["conv_b"][0] == pytest.approx(d_pooled)


def test_predict_proba_rows_are_distributions() -> None:
    rng = np.random.default_rng(1)
    model = CNN((1, 8, 8), hidden=16)
    params = model.init_parameters(rng) * 50  # large logits exercise the stable softmax
    proba = model.predict_proba(params, rng.normal(size=(7, 64)))
    assert proba.shape == (7, 10)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("hidden", [None, 12])
def test_spec_round_trip_through_json(hidden: int | None) -> None:
    model = CNN((1, 8, 8), conv_channels=4, kernel=3, pool=2, hidden=hidden, num_classes=10)
    spec = json.loads(json.dumps(model.spec()))
    assert spec == {
        "kind": "cnn",
        "input_shape": [1, 8, 8],
        "conv_channels": 4,
        "kernel": 3,
        "pool": 2,
        "hidden": hidden,
        "num_classes": 10,
    }
    rebuilt = model_from_spec(spec)
    assert isinstance(rebuilt, CNN) and isinstance(rebuilt, Model)
    assert rebuilt.spec() == model.spec()
    params = model.init_parameters(np.random.default_rng(0))
    X = np.random.default_rng(1).random((3, 64))
    np.testing.assert_array_equal(rebuilt.predict_proba(params, X), model.predict_proba(params, X))


def test_spec_defaults_fill_missing_keys() -> None:
    assert model_from_spec({"kind": "cnn"}).spec() == CNN().spec()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "cnn", "layer_sizes": [64, 10]},
        {"kind": "cnn", "input_shape": [8, 8]},
        {"kind": "cnn", "input_shape": "1x8x8"},
        {"kind": "cnn", "input_shape": 64},
        {"kind": "cnn", "input_shape": [1, 8, 8.0]},
        {"kind": "cnn", "input_shape": [1, 8, 0]},
        {"kind": "cnn", "input_shape": [1, 8, 8], "kernel": 9},
        {"kind": "cnn", "input_shape": [1, 8, 8], "pool": 7},
        {"kind": "cnn", "input_shape": [1, 8, 8], "conv_channels": 0},
        {"kind": "cnn", "input_shape": [1, 8, 8], "conv_channels": True},
        {"kind": "cnn", "input_shape": [1, 8, 8], "hidden": 0},
        {"kind": "cnn", "input_shape": [1, 8, 8], "hidden": "16"},
        {"kind": "cnn", "input_shape": [1, 8, 8], "num_classes": 1},
    ],
)
def test_model_from_spec_rejects_bad_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        model_from_spec(spec)


def test_bad_inputs_are_rejected() -> None:
    model = CNN((1, 4, 4), conv_channels=1, pool=1, num_classes=2)
    params = np.zeros(model.num_parameters)
    with pytest.raises(ValueError):
        model.loss_and_gradient(
            np.zeros(model.num_parameters + 1), np.zeros((1, 16)), np.array([0])
        )
    with pytest.raises(ValueError):
        model.predict_proba(params, np.zeros((2, 15)))
    with pytest.raises(ValueError):
        model.loss_and_gradient(params, np.zeros((0, 16)), np.zeros(0, dtype=int))


def test_local_fit_on_digits_learns() -> None:
    data = load_dataset("digits")
    model = CNN((1, 8, 8))
    start = model.init_parameters(np.random.default_rng(0))
    config = TrainingConfig(learning_rate=0.1, local_epochs=5, batch_size=32)
    result = local_fit(model, start, data.X_train, data.y_train, config, np.random.default_rng(100))
    accuracy = evaluate(model, start + result.update, data.X_test, data.y_test)["accuracy"]
    # Seeds 0-4 give 0.875-0.933 here; chance is 0.1.
    assert accuracy > 0.8
