"""A user's own ``torch.nn.Module``, loss, optimizer and metrics as a participant app.

:class:`TorchApp` has the ``fit`` / ``evaluate`` shape of
:class:`trapdoor.participant.app.NumPyApp` (structurally: this layer does not import the
participant's), so ``node serve --app`` or a notebook can train an ordinary PyTorch loop
under the protocol. The protocol only sees a flat float64 vector; the app moves it into
the module and back with exactly the layout of :class:`~trapdoor.ml.torch_adapter.TorchModel`
(:func:`~trapdoor.ml.torch_adapter.federated_tensors`: ``state_dict`` order, parameters
first, then the floating-point buffers when the job federates them), so a job whose model
is a registered torch model and a participant that trains the same architecture its own
way agree on every slot.

Why the module runs in float64 (``module.double()``, in place): the client encodes
``new - W_t``; a float32 module would round ``W_t`` on the way in and even a parameter
the loop never touched would upload a rounding error. Floating-point inputs follow.

Why the seeding: a round must train the same way when it is run again (the plaintext
reference run, a retried upload), so the shuffling of ``(X, y)`` and ``Dataset`` inputs
comes from a ``torch.Generator`` and everything that draws from torch's global generator
(dropout, a user's ``DataLoader(shuffle=True)``) from a seed, both derived only from
``config``'s ``seed``, ``participant_index`` and ``round``; the global generator is
restored afterwards (``torch.random.fork_rng``), so the app leaves the caller's torch
randomness as it found it.

Inputs (``train``, ``test``): a pair of arrays ``(X, y)`` (``X`` keeps its shape, so image
tensors work), a ``torch.utils.data.Dataset`` yielding ``(x, y)``, or a ``DataLoader``,
used as the user built it (its batch size, sampler and collate function win over the
job's ``batch_size``). The default step and ``evaluate`` want ``(x, y)`` batches; a
custom ``training_step`` may take any batch its loader yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import zip_longest
from typing import Any

import numpy as np
import numpy.typing as npt

from trapdoor.ml.extras import needs_extra
from trapdoor.ml.metrics import BUILTIN_METRICS, MetricFn, accuracy
from trapdoor.ml.spec import TRAINING_DEFAULTS, torch_buffers
from trapdoor.ml.torch_adapter import (
    Slot,
    check_vector_layout,
    federated_tensors,
    module_mode,
    tensors_to_vector,
    vector_to_tensors,
)
from trapdoor.ml.training import participant_rng

with needs_extra("torch", "TorchApp"):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

__all__ = ["TorchApp", "default_training_step", "probabilities"]

Vector = npt.NDArray[np.float64]
LossFn = Callable[..., torch.Tensor]
OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
#: ``step(module, batch, optimizer, loss_fn) -> loss``: one optimisation step, all of it.
TrainingStep = Callable[[nn.Module, Any, torch.optim.Optimizer, LossFn], "torch.Tensor | float"]
Source = Dataset[Any] | DataLoader[Any]
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def default_training_step(
    module: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, loss_fn: LossFn
) -> torch.Tensor:
    """One plain step on an ``(x, y)`` batch: zero the gradients, ``loss_fn(module(x), y)``,
    backward, ``optimizer.step()``. A custom step does all of that itself."""
    x, y = _pair(batch)
    optimizer.zero_grad()
    loss = loss_fn(module(x), y)
    loss.backward()
    optimizer.step()
    return loss


def probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """The default scores metrics see: softmax over ``(n, classes)`` logits, sigmoid of a
    single logit per row (``(n,)`` or ``(n, 1)``); any other shape unchanged."""
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return torch.softmax(outputs, dim=1)
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return torch.sigmoid(outputs.reshape(-1))
    return outputs


class TorchApp:
    """``fit`` and ``evaluate`` for a user's ``nn.Module`` with their loss and optimizer.

    ``loss_fn`` defaults to ``nn.CrossEntropyLoss()``; ``optimizer`` is a factory
    ``params -> torch.optim.Optimizer`` called afresh every round (each round starts from
    the released ``W_t``), by default SGD at the job's ``learning_rate``. ``epochs`` and
    ``batch_size`` default to the job's ``local_epochs`` and ``batch_size`` (a ``"fedsgd"``
    job: one full-batch epoch). ``buffers`` must be the job's choice (``"local"`` or
    ``"federated"``). ``metrics`` are reported by ``evaluate``: a mapping of names to
    ``fn(y_true, scores) -> float`` or names of :data:`trapdoor.ml.metrics.BUILTIN_METRICS`;
    ``scores`` turns the module's outputs into what they see (:func:`probabilities`).
    ``training_step`` replaces :func:`default_training_step` for users with their own loop.
    """

    def __init__(
        self,
        module: nn.Module,
        train: Any,
        test: Any = None,
        *,
        loss_fn: LossFn | None = None,
        optimizer: OptimizerFactory | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        buffers: str = "local",
        metrics: Mapping[str, MetricFn] | Sequence[str] | None = None,
        training_step: TrainingStep | None = None,
        scores: Callable[[torch.Tensor], torch.Tensor] = probabilities,
    ) -> None:
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        self.buffers = torch_buffers({"buffers": buffers})
        self.train_data = _source(train, "train")
        self.test_data = None if test is None else _source(test, "test")
        self.metrics = _metric_fns(metrics)
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.optimizer = optimizer
        self.epochs, self.batch_size = epochs, batch_size
        self.training_step: TrainingStep = training_step or default_training_step
        self.scores = scores
        # Last, once everything else is accepted: the user's module is converted in place.
        self.module = module.double()
        self._tensors = federated_tensors(self.module, self.buffers)

    # ------------------------------------------------------------------ the vector

    def layout(self) -> list[Slot]:
        """``(name, shape)`` of each tensor in the vector, in order."""
        return [(name, tuple(t.shape)) for name, t in self._tensors]

    @property
    def num_parameters(self) -> int:
        return int(sum(t.numel() for _, t in self._tensors))

    def initial_parameters(self) -> Vector:
        """The module's current vector (a copy): a job's ``W_0`` when this module defines it."""
        return tensors_to_vector(self._tensors)

    def _load(self, parameters: Vector, config: Mapping[str, Any]) -> None:
        """Copy the job's vector into the module; ValueError when it is not this module's."""
        vector = np.asarray(parameters, dtype=np.float64)
        if vector.ndim != 1:
            raise ValueError(f"expected a flat parameter vector, got shape {vector.shape}")
        layout = self.layout()
        try:
            check_vector_layout(layout, vector.size)
        except ValueError as exc:
            raise ValueError(
                f"the job's vector does not fit this module (is it the job's model, with the "
                f"job's buffers={self.buffers!r}?): {exc}; the module's tensors: "
                f"{_describe(layout)}"
            ) from None
        job_layout = getattr(config.get("model"), "layout", None)
        if callable(job_layout):  # the job's own torch model: compare shapes slot by slot
            for i, (ours, theirs) in enumerate(zip_longest(layout, job_layout())):
                if ours is None or theirs is None or tuple(ours[1]) != tuple(theirs[1]):
                    raise ValueError(
                        f"this module is not the job's model: tensor {i} is {_slot(ours)} in "
                        f"the module but {_slot(theirs)} in the job"
                    )
        vector_to_tensors(self._tensors, vector)

    # ------------------------------------------------------------------ the app

    def fit(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[Vector, int, dict[str, float]]:
        """Train from ``parameters``: (new vector, rows per epoch, train loss and steps).

        ``train_loss`` is the row-weighted mean step loss of the last epoch.
        """
        self._load(parameters, config)
        epochs, batch_size = self._schedule(config)
        draw = participant_rng(
            int(config.get("seed", TRAINING_DEFAULTS["seed"])),
            int(config.get("participant_index", 0)),
            int(config.get("round", 0)),
        )
        shuffle_seed, torch_seed = (int(v) for v in draw.integers(0, 2**63 - 1, size=2))
        generator = torch.Generator().manual_seed(shuffle_seed)
        optimizer = self._optimizer(config)
        device = self._device()
        rows, steps, epoch_loss = 0, 0, 0.0
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), module_mode(self.module, training=True):
            torch.manual_seed(torch_seed)
            for _ in range(epochs):
                rows, epoch_loss = 0, 0.0
                for raw in self._batches(self.train_data, batch_size, generator):
                    batch = _cast(raw, device)
                    loss = self.training_step(self.module, batch, optimizer, self.loss_fn)
                    count = _rows(batch)
                    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
                    epoch_loss += value * count
                    rows += count
                    steps += 1
        if rows == 0:
            raise ValueError("the training data yielded no rows")
        metrics = {"train_loss": epoch_loss / rows, "steps": float(steps)}
        return self.initial_parameters(), rows, metrics

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        """Score ``parameters`` on the test data in ``eval()`` mode, without gradients:
        (loss, rows, metrics); ``accuracy`` for integer labels, then the user's metrics."""
        if self.test_data is None:
            raise ValueError(
                "this TorchApp has no test data to evaluate on: give test=(X, y), a torch "
                "Dataset or a DataLoader"
            )
        self._load(parameters, config)
        _, batch_size = self._schedule(config)
        outputs, targets = [], []
        device = self._device()
        with module_mode(self.module, training=False), torch.no_grad():
            for raw in self._batches(self.test_data, batch_size, None):
                x, y = _pair(_cast(raw, device))
                outputs.append(self.module(x))
                targets.append(y)
            if not outputs:
                raise ValueError("the test data yielded no rows")
            output, target = torch.cat(outputs), torch.cat(targets)
            loss = float(self.loss_fn(output, target))
            scores = self.scores(output).cpu().numpy()
        y_true = target.cpu().numpy()
        metrics: dict[str, float] = {}
        if y_true.dtype.kind in "iu":
            metrics["accuracy"] = accuracy(y_true, scores)
        for name, fn in self.metrics.items():
            metrics[name] = float(fn(y_true, scores))
        return loss, len(y_true), metrics

    def predict(self, parameters: Vector, X: npt.ArrayLike) -> np.ndarray:
        """The scores of ``parameters`` on rows ``X`` in ``eval()`` mode (one row is fine)."""
        self._load(parameters, {})
        inputs = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self._device())
        with module_mode(self.module, training=False), torch.no_grad():
            return np.asarray(self.scores(self.module(inputs)).cpu().numpy())

    # ------------------------------------------------------------------ pieces

    def _schedule(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Epochs and batch size: the app's own, else the job's (``fedsgd``: one full batch)."""
        if config.get("mode", TRAINING_DEFAULTS["mode"]) == "fedsgd":
            rows = _length(self.train_data)
            job_epochs, job_batch = 1, rows or TRAINING_DEFAULTS["batch_size"]
        else:
            job_epochs = config.get("local_epochs", TRAINING_DEFAULTS["local_epochs"])
            job_batch = config.get("batch_size", TRAINING_DEFAULTS["batch_size"])
        return int(self.epochs or job_epochs), int(self.batch_size or job_batch)

    def _optimizer(self, config: Mapping[str, Any]) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer(self.module.parameters())
        rate = float(config.get("learning_rate", TRAINING_DEFAULTS["learning_rate"]))
        return torch.optim.SGD(self.module.parameters(), lr=rate)

    def _device(self) -> torch.device:
        first = next(self.module.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    @staticmethod
    def _batches(
        source: Source, batch_size: int, generator: torch.Generator | None
    ) -> Iterable[Any]:
        """A user's DataLoader as it is; otherwise batches of ``batch_size``, shuffled by
        ``generator`` when one is given (an iterable dataset keeps its own order)."""
        if isinstance(source, DataLoader):
            return source
        shuffle = generator is not None and not isinstance(source, IterableDataset)
        return DataLoader(
            source, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None
        )


def _source(data: Any, part: str) -> Source:
    """``data`` as a Dataset or DataLoader; arrays become a float64/int64 TensorDataset."""
    if isinstance(data, DataLoader | Dataset):
        source: Source = data
    elif isinstance(data, tuple) and len(data) == 2:
        X, y = np.asarray(data[0], dtype=np.float64), np.asarray(data[1])
        if len(X) != len(y):
            raise ValueError(f"{part}: X has {len(X)} rows but y has {len(y)} labels")
        labels = y.astype(np.int64) if y.dtype.kind in "biu" else y.astype(np.float64)
        source = TensorDataset(torch.from_numpy(X.copy()), torch.from_numpy(labels.copy()))
    else:
        raise TypeError(
            f"{part} must be an (X, y) pair of arrays, a torch Dataset or a DataLoader, "
            f"not a {type(data).__name__}"
        )
    if _length(source) == 0:
        raise ValueError(f"{part}: no rows")
    return source


def _length(source: Source) -> int | None:
    """The rows of a sized dataset (a DataLoader's dataset), else ``None``."""
    dataset = source.dataset if isinstance(source, DataLoader) else source
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _cast(value: Any, device: torch.device) -> Any:
    """Floating tensors as float64 and integer ones as int64 (what the module and
    ``CrossEntropyLoss`` want), on the module's device; through tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return value.to(device, torch.float64)
        return value.to(device, torch.int64) if value.dtype in _INTEGER_DTYPES else value.to(device)
    if isinstance(value, tuple | list):
        cast = [_cast(v, device) for v in value]
        return tuple(cast) if isinstance(value, tuple) else cast
    if isinstance(value, dict):
        return {k: _cast(v, device) for k, v in value.items()}
    return value


def _pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(
            f"expected (x, y) batches, got a {type(batch).__name__}; a loader with other "
            "batches needs its own training_step (and cannot be evaluated by TorchApp)"
        )
    return batch[0], batch[1]


def _rows(batch: Any) -> int:
    """The row count of a batch: the length of its first tensor."""
    first = batch
    while isinstance(first, tuple | list | dict) and first:
        first = first[0] if not isinstance(first, dict) else next(iter(first.values()))
    return len(first)


def _metric_fns(metrics: Mapping[str, MetricFn] | Sequence[str] | None) -> dict[str, MetricFn]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        fns = dict(metrics)
    else:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [n for n in names if n not in BUILTIN_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; built in: {sorted(BUILTIN_METRICS)}")
        fns = {n: BUILTIN_METRICS[n] for n in names}
    not_callable = [n for n, fn in fns.items() if not callable(fn)]
    if not_callable:
        raise TypeError(f"metrics {not_callable} are not functions fn(y_true, scores) -> float")
    return fns


def _slot(slot: Slot | None) -> str:
    return "absent" if slot is None else f"{slot[0]!r} {tuple(slot[1])}"


def _describe(layout: Sequence[Slot], limit: int = 8) -> str:
    shown = ", ".join(_slot(s) for s in layout[:limit])
    return shown + (f" and {len(layout) - limit} more" if len(layout) > limit else "")
