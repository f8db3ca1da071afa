"""The PyTorch adapter: a torch.nn.Module trains under the protocol with no other change."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch extra is not installed")

from gradcheck import central_difference  # noqa: E402

from trapdoor.ml.datasets import load_dataset  # noqa: E402
from trapdoor.ml.models import model_from_spec  # noqa: E402
from trapdoor.ml.torch_adapter import (  # noqa: E402
    TorchModel,
    register_torch_model,
    registered_torch_models,
)
from trapdoor.ml.training import TrainingConfig, evaluate, local_fit  # noqa: E402


@pytest.mark.parametrize(
    ("name", "kwargs", "features"),
    [
        ("torch-mlp", {"layer_sizes": [5, 4, 3]}, 5),
        ("torch-cnn", {"side": 6, "channels": 2, "num_classes": 3}, 36),
    ],
)
def test_gradient_matches_finite_differences(name: str, kwargs: dict, features: int) -> None:
    model = TorchModel(name, **kwargs)
    rng = np.random.default_rng(0)
    params = model.init_parameters(rng)
    X = rng.normal(size=(7, features))
    y = rng.integers(0, 3, size=7)
    loss, grad = model.loss_and_gradient(params, X, y)
    numeric = central_difference(model, params, X, y)
    assert loss > 0
    rel = np.linalg.norm(grad - numeric) / max(
        np.linalg.norm(grad) + np.linalg.norm(numeric), 1e-12
    )
    assert rel < 1e-6


def test_parameters_round_trip_and_init_is_seeded() -> None:
    model = TorchModel("torch-mlp", layer_sizes=[4, 3, 2])
    assert model.num_parameters == 4 * 3 + 3 + 3 * 2 + 2
    a = model.init_parameters(np.random.default_rng(1))
    b = model.init_parameters(np.random.default_rng(1))
    c = model.init_parameters(np.random.default_rng(2))
    assert a.dtype == np.float64 and np.array_equal(a, b) and not np.array_equal(a, c)
    X = np.random.default_rng(3).normal(size=(5, 4))
    probs = model.predict_proba(a, X)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="expected"):
        model.predict_proba(a[:-1], X)


def test_spec_round_trip_through_model_from_spec() -> None:
    model = TorchModel("torch-cnn", side=8, channels=3, num_classes=10)
    rebuilt = model_from_spec(json.loads(json.dumps(model.spec())))
    params = model.init_parameters(np.random.default_rng(0))
    X = np.random.default_rng(1).random((4, 64))
    assert rebuilt.spec() == model.spec()
    assert np.allclose(rebuilt.predict_proba(params, X), model.predict_proba(params, X))


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "torch", "name": "os.system"},
        {"kind": "torch", "name": "torch-mlp", "kwargs": {"nope": 1}},
        {"kind": "torch", "name": "torch-mlp", "kwargs": [1]},
        {"kind": "torch", "name": "torch-mlp", "module": "evil:factory"},
    ],
)
def test_bad_specs_are_refused(spec: dict) -> None:
    with pytest.raises(ValueError):
        model_from_spec(spec)


def test_registry_refuses_duplicates() -> None:
    assert {"torch-cnn", "torch-mlp"} <= set(registered_torch_models())
    with pytest.raises(ValueError):
        register_torch_model("torch-mlp", lambda: torch.nn.Linear(1, 1))


def test_a_torch_cnn_learns_digits_through_local_fit() -> None:
    data = load_dataset("digits")
    model = TorchModel("torch-cnn", side=8, channels=8, num_classes=10)
    params = model.init_parameters(np.random.default_rng(0))
    before = evaluate(model, params, data.X_test, data.y_test)["accuracy"]
    config = TrainingConfig(learning_rate=0.1, local_epochs=3, batch_size=32)
    fit = local_fit(model, params, data.X_train, data.y_train, config, np.random.default_rng(1))
    after = evaluate(model, params + fit.update, data.X_test, data.y_test)["accuracy"]
    assert fit.num_examples == len(data.y_train)
    assert before < 0.3 < 0.8 < after
