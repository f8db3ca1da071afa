"""Train a user's own ``torch.nn.Module`` under the protocol, unchanged.

The protocol only ever sees a flat float64 parameter vector and its gradient, so the
adapter's whole job is to move that vector in and out of the module
(``parameters_to_vector`` / ``vector_to_parameters``) and to compute the mean
cross-entropy and its gradient with autograd. The module runs in float64 so that the
finite-difference gradient checks and the plaintext-vs-encrypted comparison see the
same numbers as the numpy models.

A job names its architecture in the job definition, which every party must rebuild
identically, so modules come from a *registry* of named factories
(:func:`register_torch_model`), never from an import path in a message: a job
definition must not be able to make a participant import and run arbitrary code.
Two small ones are built in: ``torch-mlp`` and ``torch-cnn``.

PyTorch is an optional extra: ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from trapdoor.ml.extras import needs_extra
from trapdoor.ml.spec import torch_spec_fields

with needs_extra("torch", "the PyTorch adapter"):
    import torch
    from torch import nn

__all__ = ["TorchModel", "register_torch_model", "registered_torch_models", "torch_model_from_spec"]

ModuleFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModuleFactory] = {}


def register_torch_model(name: str, factory: ModuleFactory) -> None:
    """Make ``factory(**kwargs)`` available to jobs as ``{"kind": "torch", "name": name}``."""
    if not name or name in _REGISTRY:
        raise ValueError(f"torch model name {name!r} is empty or already registered")
    _REGISTRY[name] = factory


def registered_torch_models() -> list[str]:
    return sorted(_REGISTRY)


class TorchModel:
    """Adapts an ``nn.Module`` that maps ``(N, features)`` inputs to class logits."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown torch model {name!r}; registered: {registered_torch_models()}"
            )
        self.name = name
        self.kwargs = dict(kwargs)
        self.module = _REGISTRY[name](**kwargs).double()
        self._loss = nn.CrossEntropyLoss()

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    def _load(self, params: np.ndarray) -> None:
        vector = torch.as_tensor(np.asarray(params, dtype=np.float64))
        if vector.shape != (self.num_parameters,):
            raise ValueError(
                f"expected {self.num_parameters} parameters, got {tuple(vector.shape)}"
            )
        nn.utils.vector_to_parameters(vector, self.module.parameters())

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Torch's own initialisation, seeded from ``rng`` so a job seed fixes ``W_0``."""
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        fresh = _REGISTRY[self.name](**self.kwargs).double()
        return nn.utils.parameters_to_vector(fresh.parameters()).detach().numpy().copy()

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        if len(X) == 0:
            raise ValueError("cannot compute a loss on an empty batch")
        self._load(params)
        self.module.zero_grad(set_to_none=False)
        logits = self.module(torch.as_tensor(np.asarray(X, dtype=np.float64)))
        loss = self._loss(logits, torch.as_tensor(np.asarray(y, dtype=np.int64)))
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in self.module.parameters()])  # type: ignore[union-attr]
        return float(loss.item()), grad.detach().numpy().copy()

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        self._load(params)
        with torch.no_grad():
            logits = self.module(torch.as_tensor(np.asarray(X, dtype=np.float64)))
            return torch.softmax(logits, dim=1).numpy().copy()

    def spec(self) -> dict[str, Any]:
        return {"kind": "torch", "name": self.name, "kwargs": dict(self.kwargs)}


def torch_model_from_spec(spec: dict[str, Any]) -> TorchModel:
    name, kwargs = torch_spec_fields(spec)  # the shape the parameter server checks too
    try:
        return TorchModel(name, **kwargs)
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
