"""A small convolutional network in plain numpy, behind the same flat-vector interface as the MLP.

Layers: convolution (valid padding, stride 1) -> ReLU -> non-overlapping max-pool
-> [dense ReLU] -> dense softmax, trained with cross-entropy.

The convolution is an im2col matrix product: ``sliding_window_view`` exposes every
``k x k`` patch of the input as a view, one reshape lays the patches out as rows,
and a single ``@`` applies all filters to all patches. Activations inside the
network are kept channels-last, ``(N, H, W, K)``, so the filter axis is the last
axis of that matrix product and needs no transposing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trapdoor.ml.layers import check_batch, cross_entropy, named_views, positive_int, softmax


class CNN:
    """conv(k x k, ``conv_channels`` filters) -> ReLU -> maxpool -> [dense ReLU] -> softmax.

    Inputs arrive flat, ``(N, C*H*W)`` in C-order like the MLP's, and are reshaped
    to ``(N, C, H, W)``. If the conv output side is not a multiple of ``pool`` the
    last rows/columns are dropped by the pooling (as with floor division).

    The flat parameter vector stores, in order: conv filters ``(K, C, k, k)``,
    conv bias ``(K,)``, then, if ``hidden`` is set, the hidden dense layer
    ``W (P, hidden)``, ``b (hidden,)``, and finally the output layer
    ``W (P or hidden, num_classes)``, ``b (num_classes,)``; ``P`` is the pooled
    feature count ``Hp * Wp * K`` (flattened channels-last).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        conv_channels: int = 8,
        kernel: int = 3,
        pool: int = 2,
        hidden: int | None = None,
        num_classes: int = 10,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
        C, H, W = (positive_int("input_shape entry", s) for s in input_shape)
        K = positive_int("conv_channels", conv_channels)
        k = positive_int("kernel", kernel)
        p = positive_int("pool", pool)
        if hidden is not None:
            hidden = positive_int("hidden", hidden)
        num_classes = positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError("softmax output needs at least 2 classes")
        if k > H or k > W:
            raise ValueError(f"kernel {k} does not fit inside a {H}x{W} input")
        Ho, Wo = H - k + 1, W - k + 1
        if Ho < p or Wo < p:
            raise ValueError(f"pool {p} is larger than the {Ho}x{Wo} convolution output")

        self.input_shape: tuple[int, int, int] = (C, H, W)
        self.conv_channels = K
        self.kernel = k
        self.pool = p
        self.hidden = hidden
        self.num_classes = num_classes
        self.conv_out_shape = (Ho, Wo)
        self.pooled_shape = (Ho // p, Wo // p)
        self.num_pooled_features = (Ho // p) * (Wo // p) * K

        # Name -> shape of every parameter block, in storage order.
        shapes: dict[str, tuple[int, ...]] = {"conv_W": (K, C, k, k), "conv_b": (K,)}
        dense_in = self.num_pooled_features
        if hidden is not None:
            shapes["hidden_W"] = (dense_in, hidden)
            shapes["hidden_b"] = (hidden,)
            dense_in = hidden
        shapes["out_W"] = (dense_in, num_classes)
        shapes["out_b"] = (num_classes,)
        self._shapes = shapes
        self._num_parameters = sum(int(np.prod(s)) for s in shapes.values())

    @property
    def num_parameters(self) -> int:
        return self._num_parameters

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Named views into ``params`` (layout in the class docstring); writes go to ``params``."""
        return named_views(params, self._shapes)

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """He-normal weights, std sqrt(2 / fan_in), since every hidden layer feeds a ReLU;
        biases start at zero. A filter's fan-in is ``C * k * k``."""
        params = np.zeros(self._num_parameters, dtype=np.float64)
        for name, view in self.unflatten(params).items():
            if name.endswith("_W"):
                fan_in = int(np.prod(view.shape[1:])) if name == "conv_W" else view.shape[0]
                view[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=view.shape)
        return params

    # -- forward -----------------------------------------------------------------

    def _im2col(self, X: np.ndarray) -> np.ndarray:
        """Every k x k patch of every image as a row: ``(N*Ho*Wo, C*k*k)``.

        ``sliding_window_view`` gives ``(N, C, Ho, Wo, k, k)`` without copying; moving
        C next to the window axes and reshaping makes the one copy the matmul needs.
        """
        n = X.shape[0]
        images = X.reshape(n, *self.input_shape)
        k = self.kernel
        windows = sliding_window_view(images, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, k, k)
        return windows.transpose(0, 2, 3, 1, 4, 5).reshape(
            n * int(np.prod(self.conv_out_shape)), -1
        )

    def _pool_windows(self, a: np.ndarray) -> np.ndarray:
        """Non-overlapping ``pool x pool`` windows of ``a (N, Ho, Wo, K)`` as
        ``(N, Hp, Wp, K, pool*pool)``, dropping rows/columns that do not fill a window."""
        n, K, p = a.shape[0], self.conv_channels, self.pool
        Hp, Wp = self.pooled_shape
        cropped = a[:, : Hp * p, : Wp * p, :]
        blocks = cropped.reshape(n, Hp, p, Wp, p, K)
        return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, Hp, Wp, K, p * p)

    def _forward(self, params: np.ndarray, X: np.ndarray) -> dict[str, np.ndarray]:
        """All intermediate values backprop needs, plus the output ``logits``."""
        X = check_batch(X, int(np.prod(self.input_shape)))
        w = self.unflatten(params)
        n = X.shape[0]
        K = self.conv_channels
        Ho, Wo = self.conv_out_shape

        cols = self._im2col(X)  # (N*Ho*Wo, C*k*k)
        z = (cols @ w["conv_W"].reshape(K, -1).T + w["conv_b"]).reshape(n, Ho, Wo, K)
        a = np.maximum(z, 0.0)

        windows = self._pool_windows(a)  # (N, Hp, Wp, K, p*p)
        argmax = windows.argmax(axis=-1)  # which cell of each window won
        pooled = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
        features = pooled.reshape(n, -1)  # (N, P)

        cache = {"cols": cols, "z": z, "argmax": argmax, "features": features}
        h = features
        if self.hidden is not None:
            h = np.maximum(features @ w["hidden_W"] + w["hidden_b"], 0.0)
            cache["hidden"] = h
        cache["logits"] = h @ w["out_W"] + w["out_b"]
        return cache

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return softmax(self._forward(params, X)["logits"])

    # -- backward ----------------------------------------------------------------

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over the batch and its gradient, by backpropagation."""
        cache = self._forward(params, X)
        loss, delta = cross_entropy(cache["logits"], y)  # delta = dL/dlogits, (N, classes)
        w = self.unflatten(params)
        grad = np.zeros_like(params, dtype=np.float64)
        g = self.unflatten(grad)
        n = delta.shape[0]

        # Dense output layer (and the optional hidden ReLU layer before it).
        if self.hidden is not None:
            h = cache["hidden"]
            g["out_W"][...] = h.T @ delta
            g["out_b"][...] = delta.sum(axis=0)
            delta = (delta @ w["out_W"].T) * (h > 0)
            g["hidden_W"][...] = cache["features"].T @ delta
            g["hidden_b"][...] = delta.sum(axis=0)
            d_features = delta @ w["hidden_W"].T
        else:
            g["out_W"][...] = cache["features"].T @ delta
            g["out_b"][...] = delta.sum(axis=0)
            d_features = delta @ w["out_W"].T

        # Max-pool: only the winning cell of each window saw the output, so it alone
        # gets the gradient; cells cropped away by the pooling get zero.
        Hp, Wp = self.pooled_shape
        K, p = self.conv_channels, self.pool
        Ho, Wo = self.conv_out_shape
        d_windows = np.zeros((n, Hp, Wp, K, p * p))
        np.put_along_axis(
            d_windows, cache["argmax"][..., None], d_features.reshape(n, Hp, Wp, K, 1), axis=-1
        )
        d_a = np.zeros((n, Ho, Wo, K))
        d_a[:, : Hp * p, : Wp * p, :] = (
            d_windows.reshape(n, Hp, Wp, K, p, p)
            .transpose(0, 1, 4, 2, 5, 3)
            .reshape(n, Hp * p, Wp * p, K)
        )

        # ReLU, then the convolution: with im2col it is just a dense layer over patches.
        d_z = (d_a * (cache["z"] > 0)).reshape(-1, K)  # (N*Ho*Wo, K)
        g["conv_W"][...] = (d_z.T @ cache["cols"]).reshape(g["conv_W"].shape)
        g["conv_b"][...] = d_z.sum(axis=0)
        return loss, grad

    # -- description ---------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "cnn",
            "input_shape": list(self.input_shape),
            "conv_channels": self.conv_channels,
            "kernel": self.kernel,
            "pool": self.pool,
            "hidden": self.hidden,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CNN:
        """Inverse of ``spec()``; missing keys take the constructor defaults, unknown keys
        and wrongly typed values raise ValueError."""
        args = {key: value for key, value in spec.items() if key != "kind"}
        allowed = {"input_shape", "conv_channels", "kernel", "pool", "hidden", "num_classes"}
        unknown = set(args) - allowed
        if unknown:
            raise ValueError(f"unknown cnn spec keys {sorted(unknown)}")
        shape = args.get("input_shape", (1, 28, 28))
        if not isinstance(shape, list | tuple):
            raise ValueError(f"input_shape must be a list of 3 ints, got {shape!r}")
        return cls(**args)  # the constructor checks every value

    def __repr__(self) -> str:
        return (
            f"CNN(input_shape={self.input_shape}, conv_channels={self.conv_channels}, "
            f"kernel={self.kernel}, pool={self.pool}, hidden={self.hidden}, "
            f"num_classes={self.num_classes})"
        )
