"""Local training for one participant, plus a plaintext FedAvg reference run.

A participant never sends its weights, only the update ``W_local - W_global``;
the server (on ciphertexts) forms ``W_global + sum_i w_i * update_i`` with public
weights ``w_i = n_i / n``. ``run_plaintext_fedavg`` does the same arithmetic in
the clear, so an encrypted run of the same job can be checked against it.
All randomness comes from ``participant_rng``, which makes the two runs train
identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trapdoor.ml.data import DataError
from trapdoor.ml.datasets import Dataset
from trapdoor.ml.models import Model

TRAINING_MODES = ("fedavg", "fedsgd")


@dataclass(frozen=True)
class TrainingConfig:
    """How a participant trains in one round.

    ``"fedavg"``: ``local_epochs`` passes of minibatch SGD over the local data.
    ``"fedsgd"``: a single full-batch gradient step (``local_epochs`` and
    ``batch_size`` are ignored).
    """

    learning_rate: float = 0.1
    local_epochs: int = 1
    batch_size: int = 32
    mode: str = "fedavg"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not isinstance(self.local_epochs, int) or self.local_epochs < 1:
            raise ValueError(f"local_epochs must be an int >= 1, got {self.local_epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {TRAINING_MODES}, got {self.mode!r}")


@dataclass
class FitResult:
    """What one participant produces in a round: its update and how much data it used."""

    update: np.ndarray
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def _rows(X: np.ndarray, y: np.ndarray) -> int:
    """The row count of ``(X, y)``; :class:`DataError` when they differ, since sampling
    batches from ``len(y)`` alone would silently train on the first rows of ``X`` only."""
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} rows but y has {len(y)} labels")
    return len(y)


def local_fit(
    model: Model,
    global_params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    rng: np.random.Generator,
) -> FitResult:
    """Train from ``global_params`` on local data and return ``W_local - W_global``.

    ``global_params`` is copied, never modified. Minibatch order comes only from
    ``rng``, so the same seed gives bit-identical updates.
    """
    n = _rows(X, y)
    if n == 0:
        raise ValueError("local_fit needs at least one example")
    params = np.array(global_params, dtype=np.float64, copy=True)
    # Models whose forward pass updates state outside the gradient (a torch module's
    # federated BatchNorm statistics) copy it into the vector after each step.
    sync_state = getattr(model, "sync_buffers", None)

    if config.mode == "fedsgd":
        loss, grad = model.loss_and_gradient(params, X, y)
        params -= config.learning_rate * grad
        if sync_state is not None:
            sync_state(params)
        return FitResult(params - global_params, n, {"train_loss": loss, "steps": 1.0})

    steps = 0
    epoch_loss = 0.0
    for _ in range(config.local_epochs):
        order = rng.permutation(n)
        epoch_loss = 0.0
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss, grad = model.loss_and_gradient(params, X[batch], y[batch])
            params -= config.learning_rate * grad
            if sync_state is not None:
                sync_state(params)
            epoch_loss += loss * len(batch)
            steps += 1
    # Mean minibatch loss over the last epoch: a cheap running estimate of train loss.
    metrics = {"train_loss": epoch_loss / n, "steps": float(steps)}
    return FitResult(params - global_params, n, metrics)


def evaluate(model: Model, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``params`` on ``(X, y)``."""
    if _rows(X, y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    proba = model.predict_proba(params, X)
    y = np.asarray(y, dtype=np.int64)
    # Clip so a confidently wrong prediction gives a large but finite loss.
    p_true = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
    return {
        "loss": float(-np.log(p_true).mean()),
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
    }


def fedavg_aggregate(
    global_params: np.ndarray, updates: Sequence[np.ndarray], weights: Sequence[float]
) -> np.ndarray:
    """New global parameters ``global + sum_i w_i * update_i`` (inputs are not modified).

    Weights are fixed in advance from public example counts, so they need not sum
    to one: a participant that drops out just contributes nothing.
    """
    if len(updates) != len(weights):
        raise ValueError(f"got {len(updates)} updates but {len(weights)} weights")
    new = np.array(global_params, dtype=np.float64, copy=True)
    for update, w in zip(updates, weights, strict=True):
        if update.shape != new.shape:
            raise ValueError(f"update shape {update.shape} != parameter shape {new.shape}")
        new += w * update
    return new


def participant_rng(seed: int, participant_index: int, round_number: int) -> np.random.Generator:
    """Generator for one participant in one round, derived only from the three numbers.

    Whoever runs the job (encrypted or plaintext) gets the same stream.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, participant_index, round_number]))


ParticipantSelector = Callable[[int], Sequence[int]] | Sequence[Sequence[int]]


def _contributors(selector: ParticipantSelector | None, round_number: int, k: int) -> set[int]:
    """Participant indices that send an update in ``round_number`` (all if no selector)."""
    if selector is None:
        return set(range(k))
    chosen = selector(round_number) if callable(selector) else selector[round_number]
    chosen_set = {int(i) for i in chosen}
    if not chosen_set <= set(range(k)):
        raise ValueError(f"round {round_number}: participant index out of range in {chosen_set}")
    return chosen_set


def run_plaintext_fedavg(
    model: Model,
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    config: TrainingConfig,
    rounds: int,
    seed: int,
    *,
    participants_per_round: ParticipantSelector | None = None,
) -> list[dict[str, Any]]:
    """Reference FedAvg in the clear; returns one dict per round with test metrics.

    ``parts[i]`` indexes participant ``i``'s rows of the training set.
    ``participants_per_round`` (a callable ``round -> indices`` or a list indexed
    by round) limits who contributes; the rest count as zero updates while the
    weights stay ``n_i / sum_j n_j``, exactly as in the encrypted protocol.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if not parts:
        raise ValueError("need at least one participant")
    params = model.init_parameters(np.random.default_rng(seed))
    sizes = [len(p) for p in parts]
    total = sum(sizes)
    weights = [s / total for s in sizes]

    history: list[dict[str, Any]] = []
    for t in range(rounds):
        active = _contributors(participants_per_round, t, len(parts))
        updates = []
        train_losses = []
        for i, idx in enumerate(parts):
            if i not in active:
                updates.append(np.zeros_like(params))
                continue
            result = local_fit(
                model,
                params,
                dataset.X_train[idx],
                dataset.y_train[idx],
                config,
                participant_rng(seed, i, t),
            )
            updates.append(result.update)
            train_losses.append(result.metrics["train_loss"])
        params = fedavg_aggregate(params, updates, weights)
        test = evaluate(model, params, dataset.X_test, dataset.y_test)
        history.append(
            {
                "round": t,
                "test_accuracy": test["accuracy"],
                "test_loss": test["loss"],
                "train_loss": float(np.mean(train_losses)) if train_losses else float("nan"),
                "num_contributors": len(active),
            }
        )
    return history
