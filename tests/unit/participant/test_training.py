"""Local training, aggregation and the plaintext FedAvg reference."""

import numpy as np
import pytest

from trapdoor.ml.datasets import load_dataset, partition
from trapdoor.ml.models import MLP
from trapdoor.ml.training import (
    FitResult,
    TrainingConfig,
    evaluate,
    fedavg_aggregate,
    local_fit,
    participant_rng,
    run_plaintext_fedavg,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small_problem():
    rng = np.random.default_rng(0)
    model = MLP([6, 5, 3])
    X = rng.normal(size=(40, 6))
    y = rng.integers(0, 3, size=40)
    return model, model.init_parameters(rng), X, y


def test_plaintext_fedavg_on_digits_learns(digits) -> None:
    model = MLP([64, 32, 10])
    parts = partition(digits.y_train, 5, np.random.default_rng(0))
    config = TrainingConfig(learning_rate=0.1, local_epochs=5, batch_size=32)
    history = run_plaintext_fedavg(model, digits, parts, config, rounds=5, seed=0)
    assert [h["round"] for h in history] == list(range(5))
    assert history[-1]["test_accuracy"] > 0.85
    assert history[-1]["test_loss"] < history[0]["test_loss"]


def test_local_fit_is_deterministic_and_leaves_global_untouched(small_problem) -> None:
    model, params, X, y = small_problem
    before = params.copy()
    config = TrainingConfig(batch_size=8, local_epochs=2)
    a = local_fit(model, params, X, y, config, participant_rng(1, 2, 3))
    b = local_fit(model, params, X, y, config, participant_rng(1, 2, 3))
    c = local_fit(model, params, X, y, config, participant_rng(1, 2, 4))
    np.testing.assert_array_equal(params, before)
    np.testing.assert_array_equal(a.update, b.update)
    assert not np.array_equal(a.update, c.update)  # different batch order
    assert isinstance(a, FitResult) and a.num_examples == 40
    assert a.metrics["steps"] == 10  # 2 epochs x ceil(40 / 8)
    assert np.any(a.update != 0)


def test_local_fit_reduces_local_loss(small_problem) -> None:
    model, params, X, y = small_problem
    result = local_fit(
        model, params, X, y, TrainingConfig(local_epochs=20), np.random.default_rng(0)
    )
    before = evaluate(model, params, X, y)["loss"]
    after = evaluate(model, params + result.update, X, y)["loss"]
    assert after < before


def test_fedsgd_is_one_full_batch_gradient_step(small_problem) -> None:
    model, params, X, y = small_problem
    config = TrainingConfig(learning_rate=0.3, mode="fedsgd")
    result = local_fit(model, params, X, y, config, np.random.default_rng(0))
    loss, grad = model.loss_and_gradient(params, X, y)
    np.testing.assert_allclose(params + result.update, params - 0.3 * grad, rtol=0, atol=1e-15)
    assert result.metrics["train_loss"] == pytest.approx(loss)


def test_fedavg_aggregate_weighted_sum_and_zero_weight_ignored() -> None:
    g = np.array([1.0, 2.0, 3.0])
    u1 = np.array([1.0, 0.0, -1.0])
    u2 = np.array([1e6, -1e6, np.pi])
    new = fedavg_aggregate(g, [u1, u2], [0.25, 0.0])
    np.testing.assert_allclose(new, g + 0.25 * u1)
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])  # pure: inputs unchanged
    with pytest.raises(ValueError):
        fedavg_aggregate(g, [u1], [0.5, 0.5])


def test_absent_participants_contribute_nothing(digits) -> None:
    """Dropping participant 1 in round 0 equals aggregating with its update zeroed."""
    model = MLP([64, 10])
    parts = partition(digits.y_train, 3, np.random.default_rng(0))
    config = TrainingConfig()
    history = run_plaintext_fedavg(
        model, digits, parts, config, rounds=1, seed=5, participants_per_round=[[0, 2]]
    )
    w0 = model.init_parameters(np.random.default_rng(5))
    n = sum(len(p) for p in parts)
    expected = w0.copy()
    for i in (0, 2):
        X, y = digits.X_train[parts[i]], digits.y_train[parts[i]]
        update = local_fit(model, w0, X, y, config, participant_rng(5, i, 0)).update
        expected += len(parts[i]) / n * update
    want = evaluate(model, expected, digits.X_test, digits.y_test)
    assert history[0]["num_contributors"] == 2
    assert history[0]["test_accuracy"] == want["accuracy"]
    assert history[0]["test_loss"] == pytest.approx(want["loss"], rel=1e-12)


def test_participant_rng_depends_on_all_three_numbers() -> None:
    draw = lambda *k: participant_rng(*k).integers(0, 2**62, size=4).tolist()  # noqa: E731
    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert len({tuple(draw(*k)) for k in [(1, 2, 3), (2, 2, 3), (1, 3, 3), (1, 2, 4)]}) == 4


def test_evaluate_reports_loss_and_accuracy() -> None:
    model = MLP([2, 2])
    params = np.array([10.0, 0.0, 0.0, 10.0, 0.0, 0.0])  # W = 10*I: predicts the larger feature
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    metrics = evaluate(model, params, X, np.array([0, 1, 1, 1]))
    assert metrics["accuracy"] == 0.75
    assert metrics["loss"] == pytest.approx(
        np.mean([np.log1p(np.exp(-10))] * 3 + [np.log1p(np.exp(10))])
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.0},
        {"learning_rate": float("nan")},
        {"local_epochs": 0},
        {"local_epochs": 1.5},
        {"batch_size": 0},
        {"mode": "fedprox"},
    ],
)
def test_training_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainingConfig(**kwargs)
