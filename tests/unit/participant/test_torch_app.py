"""TorchApp: a user's own module, loss, optimizer and metrics as a participant app.

What must hold: the vector has TorchModel's layout (and a module that is not the job's is
refused by name); a round trains the same way every time it runs (seeded by seed,
participant and round) and leaves torch's global generator alone; evaluation is in eval
mode (BatchNorm and Dropout deterministic, one row fine); arrays, Datasets and DataLoaders
train alike; the app passes the client's checks; and training actually learns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch extra is not installed")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from trapdoor.ml.metrics import roc_auc  # noqa: E402
from trapdoor.ml.torch_adapter import TorchModel  # noqa: E402
from trapdoor.ml.torch_app import TorchApp, default_training_step  # noqa: E402
from trapdoor.participant.app import NumPyApp, checked_fit  # noqa: E402

FEATURES, CLASSES = 4, 3


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "job_id": "job-1",
        "round": 2,
        "seed": 7,
        "participant_index": 1,
        "learning_rate": 0.1,
        "local_epochs": 2,
        "batch_size": 8,
        "mode": "fedavg",
    }
    return {**config, **changes}


def _mlp(hidden: int = 8, classes: int = CLASSES) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _bn_dropout() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(6, CLASSES),
    )


def _arrays(rows: int = 30, classes: int = CLASSES, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, FEATURES)), rng.integers(0, classes, rows)


def _blobs(rows: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated clouds, labels 0 and 1."""
    rng = np.random.default_rng(11)
    y = np.arange(rows) % 2
    X = rng.normal(scale=0.5, size=(rows, FEATURES)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return X, y


class RowDataset(Dataset):  # type: ignore[type-arg]
    """A map-style Dataset as users write them: one (x, label) per index."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.X[i]), int(self.y[i])


# --------------------------------------------------------------------------- the vector


def test_the_vector_has_torch_model_s_layout() -> None:
    model = TorchModel("torch-mlp", layer_sizes=[FEATURES, 8, CLASSES])
    app = TorchApp(model.module, _arrays())
    assert app.layout() == model.layout()
    assert app.num_parameters == model.num_parameters
    np.testing.assert_array_equal(app.initial_parameters(), model.to_vector())
    # Federated buffers are appended after the parameters, as the adapter does.
    bn = TorchApp(_bn_dropout(), _arrays(), buffers="federated")
    assert [name for name, _ in bn.layout()][-2:] == ["1.running_mean", "1.running_var"]


def test_a_float32_module_runs_in_float64() -> None:
    module = nn.Linear(FEATURES, CLASSES)
    app = TorchApp(module, _arrays())
    assert module.weight.dtype == torch.float64
    new, _, _ = app.fit(app.initial_parameters(), _config())
    assert new.dtype == np.float64


def test_a_vector_of_another_length_names_the_tensors() -> None:
    app = TorchApp(_mlp(), _arrays())
    w = app.initial_parameters()
    with pytest.raises(ValueError, match=r"does not fit this module.*inside tensor '2\.weight'"):
        app.fit(w[:-5], _config())
    with pytest.raises(ValueError, match=r"the module's tensors: '0\.weight' \(8, 4\), '0\.bias'"):
        app.predict(np.zeros(len(w) + 1), np.zeros((1, FEATURES)))


def test_a_module_that_is_not_the_job_s_model_is_refused_even_at_equal_length() -> None:
    job_model = TorchModel("torch-mlp", layer_sizes=[6, 4, 3])  # 43 values, as ours
    app = TorchApp(_mlp(hidden=5), _arrays())
    assert app.num_parameters == job_model.num_parameters == 43
    with pytest.raises(
        ValueError,
        match=r"not the job's model: tensor 0 is '0\.weight' \(5, 4\) in the module "
        r"but '0\.weight' \(4, 6\) in the job",
    ):
        app.fit(app.initial_parameters(), _config(model=job_model))


def test_local_buffers_do_not_take_a_federated_vector() -> None:
    federated = TorchApp(_bn_dropout(), _arrays(), buffers="federated")
    local = TorchApp(_bn_dropout(), _arrays())
    with pytest.raises(ValueError, match="buffers='local'"):
        local.fit(federated.initial_parameters(), _config())


# --------------------------------------------------------------------------- fit


def test_fit_is_deterministic_per_seed_participant_and_round() -> None:
    app = TorchApp(_bn_dropout(), _arrays(), buffers="federated")
    w = app.initial_parameters()
    state = torch.get_rng_state()
    first, n, metrics = app.fit(w, _config())
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    again, _, _ = app.fit(w, _config())
    np.testing.assert_array_equal(first, again)
    assert n == 30 and metrics["steps"] == 2 * 4 and metrics["train_loss"] > 0
    for other in (_config(round=3), _config(participant_index=0), _config(seed=8)):
        assert not np.array_equal(app.fit(w, other)[0], first)
    assert not np.array_equal(first, w)


def test_it_passes_the_client_s_checks() -> None:
    X, y = _arrays()
    app = TorchApp(_mlp(), (X, y))
    assert isinstance(app, NumPyApp)
    w = app.initial_parameters()
    result = checked_fit(app, w, _config())
    new, n, _ = app.fit(w, _config())
    np.testing.assert_array_equal(result.update, new - w)
    assert result.num_examples == n == 30
    assert set(result.metrics) == {"train_loss", "steps"}


def test_a_dataset_trains_exactly_as_the_arrays_do() -> None:
    X, y = _arrays()
    w = TorchApp(_mlp(), (X, y)).initial_parameters()
    from_arrays = TorchApp(_mlp(), (X, y)).fit(w, _config())
    tensors = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    for dataset in (tensors, RowDataset(X, y)):
        from_dataset = TorchApp(_mlp(), dataset).fit(w, _config())
        np.testing.assert_array_equal(from_dataset[0], from_arrays[0])
        assert from_dataset[1:] == from_arrays[1:]


def test_a_data_loader_is_used_as_built() -> None:
    X, y = _arrays()
    full_batch = _config(local_epochs=1, batch_size=len(y))
    w = TorchApp(_mlp(), (X, y)).initial_parameters()
    from_arrays, n, _ = TorchApp(_mlp(), (X, y)).fit(w, full_batch)
    loader = DataLoader(RowDataset(X.astype(np.float32), y), batch_size=len(y))
    from_loader, m, _ = TorchApp(_mlp(), loader).fit(w, full_batch)
    assert n == m == 30
    # One full-batch step either way; only the row order (and float32 storage) differ.
    np.testing.assert_allclose(from_loader, from_arrays, rtol=1e-6, atol=1e-7)
    # A shuffling loader is seeded by the round too, and its batch size wins.
    shuffled = TorchApp(_mlp(), DataLoader(RowDataset(X, y), batch_size=7, shuffle=True))
    first, _, metrics = shuffled.fit(w, _config())
    np.testing.assert_array_equal(first, shuffled.fit(w, _config())[0])
    assert metrics["steps"] == 2 * 5


def test_fedsgd_is_one_full_batch_gradient_step() -> None:
    model = TorchModel("torch-mlp", layer_sizes=[FEATURES, 8, CLASSES])
    X, y = _arrays()
    w = model.init_parameters(np.random.default_rng(0))
    _, grad = model.loss_and_gradient(w, X, y)
    app = TorchApp(model.module, (X, y))
    new, n, metrics = app.fit(w, _config(mode="fedsgd", learning_rate=0.5, model=model))
    assert (n, metrics["steps"]) == (30, 1.0)
    np.testing.assert_allclose(new, w - 0.5 * grad, rtol=1e-12, atol=1e-14)


def test_the_user_s_optimizer_loss_and_step_are_used() -> None:
    X, y = _blobs()
    w = TorchApp(_mlp(), (X, y)).initial_parameters()
    sgd, _, _ = TorchApp(_mlp(), (X, y)).fit(w, _config())
    adam = TorchApp(_mlp(), (X, y), optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    assert not np.allclose(adam.fit(w, _config())[0], sgd)

    seen: list[int] = []

    def step(module: nn.Module, batch: Any, optimizer: Any, loss_fn: Any) -> torch.Tensor:
        seen.append(len(batch[0]))
        return default_training_step(module, batch, optimizer, loss_fn)

    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64))
    custom = TorchApp(_mlp(), (X, y), loss_fn=weighted, training_step=step, epochs=1)
    new, n, metrics = custom.fit(w, _config(batch_size=25))
    assert seen == [25, 25, 10] and n == 60 and metrics["steps"] == 3
    assert not np.allclose(new, sgd)


def test_training_learns_a_separable_problem() -> None:
    X, y = _blobs()
    app = TorchApp(_mlp(classes=2), (X, y), (X, y), metrics=["roc_auc"])
    w = app.initial_parameters()
    before, _, start = app.evaluate(w, _config())
    for round_number in range(5):
        w, _, metrics = app.fit(w, _config(round=round_number))
    after, n, end = app.evaluate(w, _config())
    assert n == 60
    assert after < 0.2 * before and metrics["train_loss"] < 0.2 * before
    assert end["accuracy"] == 1.0 and end["roc_auc"] == 1.0
    assert start["accuracy"] < 1.0


# --------------------------------------------------------------------------- evaluate


def test_evaluation_is_in_eval_mode_deterministic_and_one_row_works() -> None:
    X, y = _arrays()
    module = _bn_dropout()
    app = TorchApp(module, (X, y), (X[:10], y[:10]), buffers="federated")
    w, _, _ = app.fit(app.initial_parameters(), _config())
    module.train()
    first = app.evaluate(w, _config())
    assert app.evaluate(w, _config()) == first
    assert module.training  # the module's own mode is given back
    assert first[1] == 10 and 0.0 <= first[2]["accuracy"] <= 1.0
    all_rows = app.predict(w, X[:10])
    one_row = app.predict(w, X[3:4])
    assert one_row.shape == (1, CLASSES)
    np.testing.assert_allclose(one_row[0], all_rows[3], rtol=1e-12)
    np.testing.assert_allclose(all_rows.sum(axis=1), 1.0)


def test_user_metrics_appear_in_evaluate() -> None:
    X, y = _arrays(40, classes=2)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def mean_score(y_true: np.ndarray, scores: np.ndarray) -> float:
        seen.append((y_true, scores))
        return float(scores[:, 1].mean())

    app = TorchApp(
        nn.Linear(FEATURES, 2),
        (X[:30], y[:30]),
        (X[30:], y[30:]),
        metrics={"auc": roc_auc, "mean_score": mean_score},
    )
    w = app.initial_parameters()
    loss, n, metrics = app.evaluate(w, _config())
    scores = app.predict(w, X[30:])
    assert n == 10 and loss > 0
    assert set(metrics) == {"accuracy", "auc", "mean_score"}
    assert metrics["auc"] == roc_auc(y[30:], scores)
    assert metrics["mean_score"] == pytest.approx(scores[:, 1].mean())
    np.testing.assert_array_equal(seen[0][0], y[30:])


def test_a_single_logit_model_with_its_own_loss() -> None:
    """BCE wants float targets: no built-in accuracy then, the metrics see sigmoid scores."""
    X, y = _blobs()
    targets = y.astype(np.float64)
    app = TorchApp(
        nn.Sequential(nn.Linear(FEATURES, 1), nn.Flatten(0)),
        (X, targets),
        (X, targets),
        loss_fn=nn.BCEWithLogitsLoss(),
        metrics=["sensitivity", "specificity"],
    )
    w, _, _ = app.fit(app.initial_parameters(), _config())
    loss, _, metrics = app.evaluate(w, _config())
    assert loss < 0.3 and metrics == {"sensitivity": 1.0, "specificity": 1.0}
    assert np.all((app.predict(w, X) > 0.5) == (y == 1))
    assert app.predict(w, X[:1]).shape == (1,)


def test_what_cannot_work_is_refused_early() -> None:
    app = TorchApp(_mlp(), _arrays())
    with pytest.raises(ValueError, match="no test data"):
        app.evaluate(app.initial_parameters(), _config())
    with pytest.raises(ValueError, match=r"unknown metrics \['auc'\]"):
        TorchApp(_mlp(), _arrays(), metrics=["auc"])
    with pytest.raises(TypeError, match="must be an \\(X, y\\) pair"):
        TorchApp(_mlp(), [1, 2, 3])
    X, y = _arrays()
    with pytest.raises(ValueError, match="train: X has 30 rows but y has 20 labels"):
        TorchApp(_mlp(), (X, y[:20]))
    with pytest.raises(ValueError, match="test: no rows"):
        TorchApp(_mlp(), (X, y), (X[:0], y[:0]))
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        TorchApp(_mlp(), (X, y), epochs=0)
    with pytest.raises(ValueError, match="unknown buffer mode"):
        TorchApp(_mlp(), (X, y), buffers="shared")
