"""Models a participant trains locally, written out in plain numpy.

Every model keeps its parameters as one flat float64 vector. That is the shape
the rest of the system works with: an update ``W_local - W_global`` is a vector
that gets quantised and encrypted element by element, and aggregation is a
weighted sum of such vectors. Models only reshape the vector into layers
internally, using views, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np

from trapdoor.ml.cnn import CNN
from trapdoor.ml.layers import cross_entropy, softmax
from trapdoor.ml.rnn import GRU


@runtime_checkable
class Model(Protocol):
    """What local training, evaluation and the job spec need from a model."""

    @property
    def num_parameters(self) -> int:
        """Length of the flat parameter vector (and so of every update)."""
        ...

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Fresh flat float64 parameter vector, drawn from ``rng`` only."""
        ...

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its flat gradient w.r.t. ``params``."""
        ...

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per example."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; ``model_from_spec`` inverts it."""
        ...


class MLP:
    """Fully connected network: ReLU hidden layers, softmax + cross-entropy output.

    ``layer_sizes`` lists the width of every layer including input and output,
    e.g. ``[784, 128, 64, 10]``. The flat vector stores, layer by layer, the
    weight matrix ``W`` (shape ``(n_in, n_out)``, row-major) followed by the
    bias ``b`` (shape ``(n_out,)``).
    """

    def __init__(self, layer_sizes: Sequence[int]) -> None:
        sizes = [int(s) for s in layer_sizes]
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least an input and an output layer")
        if any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        if sizes[-1] < 2:
            raise ValueError("softmax output needs at least 2 classes")
        self.layer_sizes: list[int] = sizes
        # Where each layer's W and b live inside the flat vector.
        self._slices: list[tuple[slice, slice]] = []
        offset = 0
        for n_in, n_out in pairwise(sizes):
            w = slice(offset, offset + n_in * n_out)
            offset += n_in * n_out
            b = slice(offset, offset + n_out)
            offset += n_out
            self._slices.append((w, b))
        self._num_parameters = offset

    @property
    def num_parameters(self) -> int:
        return self._num_parameters

    def unflatten(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer ``(W, b)`` views into ``params``; writing to them writes ``params``."""
        if params.shape != (self._num_parameters,):
            raise ValueError(
                f"expected a flat vector of {self._num_parameters} parameters, "
                f"got shape {params.shape}"
            )
        layers = []
        for (w, b), (n_in, n_out) in zip(self._slices, pairwise(self.layer_sizes), strict=True):
            layers.append((params[w].reshape(n_in, n_out), params[b]))
        return layers

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """He-normal weights (std sqrt(2 / fan_in)) keep ReLU activations from
        shrinking or blowing up with depth; biases start at zero."""
        params = np.zeros(self._num_parameters, dtype=np.float64)
        for W, _b in self.unflatten(params):
            fan_in = W.shape[0]
            W[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=W.shape)
        return params

    def _forward(self, params: np.ndarray, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Return the input of every layer (needed by backprop) and the output logits."""
        layers = self.unflatten(params)
        inputs = []
        a = np.asarray(X, dtype=np.float64)
        for i, (W, b) in enumerate(layers):
            inputs.append(a)
            z = a @ W + b
            a = np.maximum(z, 0.0) if i < len(layers) - 1 else z
        return inputs, a

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        _, logits = self._forward(params, X)
        return softmax(logits)

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over the batch and its gradient, by backpropagation."""
        inputs, logits = self._forward(params, X)
        loss, delta = cross_entropy(logits, y)  # delta = dL/dlogits

        grad = np.zeros_like(params, dtype=np.float64)
        grad_layers = self.unflatten(grad)
        param_layers = self.unflatten(params)
        for i in reversed(range(len(param_layers))):
            W, _b = param_layers[i]
            dW, db = grad_layers[i]
            a_in = inputs[i]
            dW[...] = a_in.T @ delta
            db[...] = delta.sum(axis=0)
            if i > 0:
                # Back through W, then through the ReLU that produced a_in
                # (its derivative is 1 where the output was positive, else 0).
                delta = (delta @ W.T) * (a_in > 0)
        return loss, grad

    def spec(self) -> dict[str, Any]:
        return {"kind": "mlp", "layer_sizes": list(self.layer_sizes)}

    def __repr__(self) -> str:
        return f"MLP({self.layer_sizes})"


def model_from_spec(spec: dict[str, Any]) -> Model:
    """Rebuild a model from its ``spec()`` so every party trains the same architecture.

    Kinds: ``"mlp"`` (``MLP``), ``"cnn"`` (``trapdoor.ml.cnn.CNN``) and ``"gru"``
    (``trapdoor.ml.rnn.GRU``), ``"torch"`` (``trapdoor.ml.torch_adapter``, needs the
    optional PyTorch extra), and ``"arrays"`` (``trapdoor.ml.arrays``: a layout of named
    arrays that the participants' own code trains). Unknown kinds, unknown keys and bad values raise
    ValueError.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"model spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind == "mlp":
        unknown = set(spec) - {"kind", "layer_sizes"}
        if unknown:
            raise ValueError(f"unknown mlp spec keys {sorted(unknown)}")
        sizes = spec.get("layer_sizes")
        if not isinstance(sizes, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in sizes
        ):
            raise ValueError(f"layer_sizes must be a list of ints, got {sizes!r}")
        return MLP(sizes)
    if kind == "cnn":
        return CNN.from_spec(spec)
    if kind == "gru":
        return GRU.from_spec(spec)
    if kind == "torch":
        from trapdoor.ml.torch_adapter import torch_model_from_spec  # optional extra

        return torch_model_from_spec(spec)
    if kind == "arrays":
        from trapdoor.ml.arrays import ArrayLayout

        return ArrayLayout.from_spec(spec)
    raise ValueError(f"unknown model kind {kind!r}")
