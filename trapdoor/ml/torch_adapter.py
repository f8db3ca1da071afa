"""Train a user's own ``torch.nn.Module`` under the protocol, unchanged.

The protocol only ever sees a flat float64 vector and its gradient, so the adapter's
job is to move that vector in and out of the module and to compute the mean
cross-entropy and its gradient with autograd. The vector is laid out by the module's
``state_dict`` (:meth:`TorchModel.layout`: names and shapes, parameters first, in
``parameters()`` order, so a model without buffers has exactly the vector of
``parameters_to_vector``), and :meth:`TorchModel.load_released` turns a released
vector back into a ``state_dict`` that ``module.load_state_dict`` accepts (strict).
The module runs in float64 so that the finite-difference gradient checks and the
plaintext-vs-encrypted comparison see the same numbers as the numpy models.

Buffers (BatchNorm running statistics) are a per-job choice, the spec's ``"buffers"``
(:data:`trapdoor.ml.spec.TORCH_BUFFER_MODES`): ``"local"`` (default) keeps them on each
participant, out of the vector; ``"federated"`` appends the floating-point ones to the
vector after the parameters, so they are averaged like parameters (their gradient is
zero; integer counters such as ``num_batches_tracked`` stay local). The module is in
``train()`` mode while a loss and gradient are computed and in ``eval()`` mode while it
predicts (dropout off, BatchNorm on its running statistics), and its previous mode is
restored afterwards.

A job names its architecture in the job definition, which every party must rebuild
identically, so modules come from a *registry* of named factories
(:func:`register_torch_model`), never from an import path in a message: a job
definition must not be able to make a participant import and run arbitrary code.
Two small ones are built in: ``torch-mlp`` and ``torch-cnn``.

PyTorch is an optional extra: ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import pairwise
from math import prod
from typing import Any

import numpy as np

from trapdoor.ml.extras import needs_extra
from trapdoor.ml.spec import TORCH_BUFFER_MODES, torch_buffers, torch_spec_fields

with needs_extra("torch", "the PyTorch adapter"):
    import torch
    from torch import nn

__all__ = [
    "TorchModel",
    "check_vector_layout",
    "federated_tensors",
    "module_layout",
    "module_mode",
    "register_torch_model",
    "registered_torch_models",
    "tensors_to_vector",
    "torch_model_from_spec",
    "vector_to_tensors",
]

ModuleFactory = Callable[..., nn.Module]
#: One federated tensor: its ``state_dict`` name and shape.
Slot = tuple[str, tuple[int, ...]]
_REGISTRY: dict[str, ModuleFactory] = {}


def register_torch_model(name: str, factory: ModuleFactory) -> None:
    """Make ``factory(**kwargs)`` available to jobs as ``{"kind": "torch", "name": name}``."""
    if not name or name in _REGISTRY:
        raise ValueError(f"torch model name {name!r} is empty or already registered")
    _REGISTRY[name] = factory


def registered_torch_models() -> list[str]:
    return sorted(_REGISTRY)


def federated_tensors(module: nn.Module, buffers: str = "local") -> list[tuple[str, torch.Tensor]]:
    """The named tensors of ``module`` that make up the job's vector, in vector order.

    Parameters first, in ``state_dict`` order (which is ``parameters()`` order), a tied
    parameter once under its first name; then, with ``buffers="federated"``, the
    floating-point persistent buffers. The tensors are the module's own, not copies.
    """
    if buffers not in TORCH_BUFFER_MODES:
        raise ValueError(f"unknown buffer mode {buffers!r}; use one of {list(TORCH_BUFFER_MODES)}")
    state = module.state_dict(keep_vars=True)
    seen: set[int] = set()
    params: list[tuple[str, torch.Tensor]] = []
    extra: list[tuple[str, torch.Tensor]] = []
    for name, tensor in state.items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter):
            params.append((name, tensor))
        elif buffers == "federated" and tensor.is_floating_point():
            extra.append((name, tensor))
    return params + extra


def module_layout(module: nn.Module, buffers: str = "local") -> list[Slot]:
    """``(name, shape)`` of each tensor of ``module`` in the job's vector, in order."""
    return [(name, tuple(t.shape)) for name, t in federated_tensors(module, buffers)]


def check_vector_layout(layout: Sequence[Slot], expected: int | Sequence[Slot]) -> None:
    """ValueError unless ``expected`` (the job's vector length, or its names and shapes)
    fits ``layout``; the message names the first tensor that does not."""
    if not isinstance(expected, int):
        for i, (ours, theirs) in enumerate(zip(layout, expected, strict=False)):
            if (ours[0], ours[1]) != (theirs[0], tuple(theirs[1])):
                raise ValueError(
                    f"tensor {i} differs: the job has {theirs[0]!r} {tuple(theirs[1])}, "
                    f"the module {ours[0]!r} {ours[1]}"
                )
        if len(layout) != len(expected):
            longer, which = (layout, "job") if len(layout) > len(expected) else (expected, "module")
            raise ValueError(
                f"the {which} lacks tensor {longer[min(len(layout), len(expected))][0]!r}"
                f" ({len(expected)} tensors in the job, {len(layout)} in the module)"
            )
        return
    total = sum(prod(shape) for _, shape in layout)
    if expected == total:
        return
    where = f"{expected - total} values after the last tensor {layout[-1][0]!r}"
    offset = 0
    for name, shape in layout:
        if offset + prod(shape) > expected:
            where = f"it ends inside tensor {name!r} {shape}, which starts at {offset}"
            break
        offset += prod(shape)
    raise ValueError(f"expected {total} parameters, got {expected}: {where}")


def tensors_to_vector(tensors: Sequence[tuple[str, torch.Tensor]]) -> np.ndarray:
    """The tensors (as :func:`federated_tensors` lists them) as one float64 vector (a copy)."""
    return _flatten(list(tensors))


def vector_to_tensors(tensors: Sequence[tuple[str, torch.Tensor]], vector: np.ndarray) -> None:
    """Copy a flat vector into ``tensors`` in place (its length must already be checked)."""
    values = np.array(vector, dtype=np.float64)  # a writable copy, as torch wants
    offset = 0
    with torch.no_grad():
        for _, tensor in tensors:
            chunk = values[offset : offset + tensor.numel()]
            tensor.copy_(torch.from_numpy(chunk.reshape(tensor.shape)))
            offset += tensor.numel()


@contextmanager
def module_mode(module: nn.Module, *, training: bool) -> Iterator[None]:
    """Switch ``module`` to train or eval mode, and back to its previous modes (per
    submodule, as a user may have frozen one) afterwards."""
    previous = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, mode in previous:
            m.training = mode


class TorchModel:
    """Adapts an ``nn.Module`` that maps ``(N, features)`` inputs to class logits.

    ``buffers`` is keyword-only and not passed to the factory: ``"local"`` or
    ``"federated"`` (see the module docstring).
    """

    def __init__(self, name: str, *, buffers: str = "local", **kwargs: Any) -> None:
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown torch model {name!r}; registered: {registered_torch_models()}"
            )
        self.name = name
        self.buffers = torch_buffers({"buffers": buffers})
        self.kwargs = dict(kwargs)
        self.module = _REGISTRY[name](**kwargs).double()
        self._tensors = federated_tensors(self.module, self.buffers)
        self._loss = nn.CrossEntropyLoss()

    def layout(self) -> list[Slot]:
        """``(name, shape)`` of each tensor in the vector, in order."""
        return [(name, tuple(t.shape)) for name, t in self._tensors]

    @property
    def num_parameters(self) -> int:
        """The job's vector length (parameters, plus float buffers when federated)."""
        return int(sum(t.numel() for _, t in self._tensors))

    def check_layout(self, expected: int | Sequence[Slot]) -> None:
        """ValueError unless ``expected`` (the job's vector length, or its names and
        shapes) fits this module; the message names the first tensor that does not."""
        check_vector_layout(self.layout(), expected)

    def to_vector(self) -> np.ndarray:
        """The module's federated tensors as one float64 vector (a copy)."""
        return _flatten(self._tensors)

    def from_vector(self, params: np.ndarray) -> None:
        """Copy ``params`` into the module's federated tensors (in place)."""
        vector = np.asarray(params, dtype=np.float64)
        if vector.ndim != 1:
            raise ValueError(f"expected a flat vector, got shape {vector.shape}")
        self.check_layout(vector.size)
        vector_to_tensors(self._tensors, vector)

    def load_released(self, params: np.ndarray) -> dict[str, torch.Tensor]:
        """A released vector as a full ``state_dict`` (copies) for
        ``module.load_state_dict(..., strict=True)``; buffers kept local come from this
        adapter's module (the factory's defaults until it has trained)."""
        self.from_vector(params)
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Torch's own initialisation, seeded from ``rng`` so a job seed fixes ``W_0``."""
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        fresh = _REGISTRY[self.name](**self.kwargs).double()
        return _flatten(federated_tensors(fresh, self.buffers))

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy and its gradient, in ``train()`` mode (buffers: gradient 0)."""
        if len(X) == 0:
            raise ValueError("cannot compute a loss on an empty batch")
        self.from_vector(params)
        with self._mode(training=True):
            self.module.zero_grad(set_to_none=False)
            logits = self.module(torch.as_tensor(np.asarray(X, dtype=np.float64)))
            loss = self._loss(logits, torch.as_tensor(np.asarray(y, dtype=np.int64)))
            loss.backward()
        grad = torch.cat(
            [
                t.grad.reshape(-1)
                if isinstance(t, nn.Parameter) and t.grad is not None
                else torch.zeros(t.numel(), dtype=torch.float64)
                for _, t in self._tensors
            ]
        )
        return float(loss.item()), grad.detach().numpy().copy()

    def sync_buffers(self, params: np.ndarray) -> None:
        """After a training step, write the federated buffers' new values into ``params``.

        A forward pass in ``train()`` mode moves BatchNorm's running statistics; their
        gradient is 0, so without this the step would leave their slots at ``W_t`` and
        the update would never carry them (:func:`trapdoor.ml.training.local_fit` calls
        it after every step). A no-op for ``"local"`` buffers.
        """
        if self.buffers != "federated":
            return
        offset = 0
        for _, tensor in self._tensors:
            size = tensor.numel()
            if not isinstance(tensor, nn.Parameter):
                params[offset : offset + size] = tensor.detach().reshape(-1).numpy()
            offset += size

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class probabilities in ``eval()`` mode: deterministic, one row is fine."""
        self.from_vector(params)
        with self._mode(training=False), torch.no_grad():
            logits = self.module(torch.as_tensor(np.asarray(X, dtype=np.float64)))
            return torch.softmax(logits, dim=1).numpy().copy()

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "torch", "name": self.name, "kwargs": dict(self.kwargs)}
        if self.buffers != TORCH_BUFFER_MODES[0]:  # a default job's definition is unchanged
            spec["buffers"] = self.buffers
        return spec

    def _mode(self, *, training: bool) -> AbstractContextManager[None]:
        """:func:`module_mode` on this adapter's module."""
        return module_mode(self.module, training=training)


def _flatten(tensors: list[tuple[str, torch.Tensor]]) -> np.ndarray:
    flat = torch.cat([t.detach().reshape(-1) for _, t in tensors])
    return flat.cpu().numpy().astype(np.float64)


def torch_model_from_spec(spec: dict[str, Any]) -> TorchModel:
    name, kwargs = torch_spec_fields(spec)  # the shape the parameter server checks too
    try:
        return TorchModel(name, buffers=torch_buffers(spec), **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad kwargs for torch model {name!r}: {exc}") from None


def _mlp(layer_sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(layer_sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(layer_sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _cnn(side: int = 28, channels: int = 8, num_classes: int = 10) -> nn.Module:
    pooled = (side - 2) // 2
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * pooled * pooled, num_classes),
    )


register_torch_model("torch-mlp", _mlp)
register_torch_model("torch-cnn", _cnn)
