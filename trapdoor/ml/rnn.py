"""A GRU sequence classifier in plain numpy, behind the same flat-vector interface as the MLP.

An image is read as a sequence: input rows arrive flat, ``(N, T*F)``, and are
reshaped to ``(N, T, F)``, one row of pixels per time step (sequential MNIST:
T=28 rows of F=28 pixels; sklearn digits: T=8, F=8). The GRU (Cho et al., 2014)
runs from ``h_0 = 0``; a dense softmax layer reads the last hidden state, and the
loss is cross-entropy. Gradients come from backpropagation through time.

One step, with ``*`` elementwise and ``σ`` the logistic sigmoid::

    z = σ(x Wx_z + h Wh_z + b_z)            update gate: how much of h to keep
    r = σ(x Wx_r + h Wh_r + b_r)            reset gate: how much of h the candidate sees
    n = tanh(x Wx_n + (r * h) Wh_n + b_n)   candidate state
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trapdoor.ml.layers import check_batch, cross_entropy, named_views, positive_int, softmax


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function written through tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class GRU:
    """Single-layer GRU over ``T`` steps of ``F`` features, softmax on the last hidden state.

    The flat parameter vector stores, in order: input weights ``Wx (F, 3H)``,
    recurrent weights ``Wh (H, 3H)``, gate biases ``b (3H,)`` (the column blocks
    of all three are the gates ``[z | r | n]``), then the output layer
    ``out_W (H, num_classes)`` and ``out_b (num_classes,)``.

    ``clip_value``: if set, every entry of the gradient that ``loss_and_gradient``
    returns is clipped to ``[-clip_value, clip_value]``, a guard against the
    occasional exploding gradient of backprop through time. The loss is not
    changed, so with clipping on the gradient is no longer the exact derivative;
    leave it ``None`` to check gradients.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (28, 28),
        hidden: int = 64,
        num_classes: int = 10,
        clip_value: float | None = None,
    ) -> None:
        if len(input_shape) != 2:
            raise ValueError(f"input_shape must be (steps, features), got {input_shape!r}")
        T, F = (positive_int("input_shape entry", s) for s in input_shape)
        H = positive_int("hidden", hidden)
        num_classes = positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError("softmax output needs at least 2 classes")
        if clip_value is not None:
            if isinstance(clip_value, bool) or not isinstance(clip_value, int | float):
                raise ValueError(f"clip_value must be a number or None, got {clip_value!r}")
            if not (np.isfinite(clip_value) and clip_value > 0):
                raise ValueError(f"clip_value must be positive and finite, got {clip_value!r}")
            clip_value = float(clip_value)

        self.input_shape: tuple[int, int] = (T, F)
        self.hidden = H
        self.num_classes = num_classes
        self.clip_value = clip_value
        self._shapes: dict[str, tuple[int, ...]] = {
            "Wx": (F, 3 * H),
            "Wh": (H, 3 * H),
            "b": (3 * H,),
            "out_W": (H, num_classes),
            "out_b": (num_classes,),
        }
        self._num_parameters = sum(int(np.prod(s)) for s in self._shapes.values())

    @property
    def num_parameters(self) -> int:
        return self._num_parameters

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Named views into ``params`` (layout in the class docstring); writes go to ``params``."""
        return named_views(params, self._shapes)

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Input and output weights normal with std sqrt(1 / fan_in), which keeps sigmoid
        and tanh pre-activations in their sensitive range; each gate's recurrent block
        is a random orthogonal matrix, so repeated multiplication by it over T steps
        neither shrinks nor amplifies the hidden state. Biases start at zero."""
        params = np.zeros(self._num_parameters, dtype=np.float64)
        w = self.unflatten(params)
        F, H = self._shapes["Wx"][0], self.hidden
        w["Wx"][...] = rng.normal(0.0, np.sqrt(1.0 / F), size=w["Wx"].shape)
        for gate in range(3):
            q, r = np.linalg.qr(rng.normal(size=(H, H)))
            # Fixing the signs by diag(r) makes q uniformly (Haar) distributed.
            w["Wh"][:, gate * H : (gate + 1) * H] = q * np.sign(np.diag(r))
        w["out_W"][...] = rng.normal(0.0, np.sqrt(1.0 / H), size=w["out_W"].shape)
        return params

    # -- forward -----------------------------------------------------------------

    def _forward(self, params: np.ndarray, X: np.ndarray) -> dict[str, Any]:
        """Run the sequence; return per-step gate values for BPTT and the output ``logits``."""
        T, F = self.input_shape
        H = self.hidden
        X = check_batch(X, T * F)
        n = X.shape[0]
        w = self.unflatten(params)
        seq = X.reshape(n, T, F)
        # Input contributions to all gates at all steps in one matmul: (N, T, 3H).
        x_part = seq @ w["Wx"] + w["b"]
        Wh_zr, Wh_n = w["Wh"][:, : 2 * H], w["Wh"][:, 2 * H :]

        h = np.zeros((n, H))
        steps = []
        for t in range(T):
            zr = _sigmoid(x_part[:, t, : 2 * H] + h @ Wh_zr)
            z, r = zr[:, :H], zr[:, H:]
            cand = np.tanh(x_part[:, t, 2 * H :] + (r * h) @ Wh_n)
            steps.append((h, z, r, cand))
            h = (1.0 - z) * cand + z * h
        logits = h @ w["out_W"] + w["out_b"]
        return {"seq": seq, "steps": steps, "h_last": h, "logits": logits}

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return softmax(self._forward(params, X)["logits"])

    # -- backward ----------------------------------------------------------------

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy and its gradient by backprop through time (then clipped
        to ``±clip_value`` elementwise if ``clip_value`` is set)."""
        cache = self._forward(params, X)
        loss, delta = cross_entropy(cache["logits"], y)
        H = self.hidden
        w = self.unflatten(params)
        Wh_zr, Wh_n = w["Wh"][:, : 2 * H], w["Wh"][:, 2 * H :]
        grad = np.zeros_like(params, dtype=np.float64)
        g = self.unflatten(grad)
        seq = cache["seq"]

        g["out_W"][...] = cache["h_last"].T @ delta
        g["out_b"][...] = delta.sum(axis=0)
        dh = delta @ w["out_W"].T  # dL/dh_T

        for t in reversed(range(len(cache["steps"]))):
            h_prev, z, r, cand = cache["steps"][t]
            # h' = (1 - z) * n + z * h_prev
            d_cand = dh * (1.0 - z)
            d_z = dh * (h_prev - cand)
            dh_prev = dh * z
            # n = tanh(a_n), a_n = x Wx_n + (r * h_prev) Wh_n + b_n
            d_an = d_cand * (1.0 - cand**2)
            d_rh = d_an @ Wh_n.T
            d_r = d_rh * h_prev
            dh_prev += d_rh * r
            # z = σ(a_z), r = σ(a_r); σ' = σ (1 - σ)
            d_azr = np.concatenate([d_z * z * (1.0 - z), d_r * r * (1.0 - r)], axis=1)
            dh_prev += d_azr @ Wh_zr.T

            d_a = np.concatenate([d_azr, d_an], axis=1)  # (N, 3H), gate order [z | r | n]
            g["Wx"] += seq[:, t, :].T @ d_a
            g["b"] += d_a.sum(axis=0)
            g["Wh"][:, : 2 * H] += h_prev.T @ d_azr
            g["Wh"][:, 2 * H :] += (r * h_prev).T @ d_an
            dh = dh_prev

        if self.clip_value is not None:
            np.clip(grad, -self.clip_value, self.clip_value, out=grad)
        return loss, grad

    # -- description ---------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "gru",
            "input_shape": list(self.input_shape),
            "hidden": self.hidden,
            "num_classes": self.num_classes,
            "clip_value": self.clip_value,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GRU:
        """Inverse of ``spec()``; missing keys take the constructor defaults, unknown keys
        and bad values raise ValueError."""
        args = {key: value for key, value in spec.items() if key != "kind"}
        unknown = set(args) - {"input_shape", "hidden", "num_classes", "clip_value"}
        if unknown:
            raise ValueError(f"unknown gru spec keys {sorted(unknown)}")
        shape = args.get("input_shape", (28, 28))
        if not isinstance(shape, list | tuple):
            raise ValueError(f"input_shape must be a list of 2 ints, got {shape!r}")
        return cls(**args)  # the constructor checks every value

    def __repr__(self) -> str:
        return (
            f"GRU(input_shape={self.input_shape}, hidden={self.hidden}, "
            f"num_classes={self.num_classes}, clip_value={self.clip_value})"
        )
