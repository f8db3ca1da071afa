"""A job whose model is only a list of named arrays: trained by the participants' own code.

Frameworks that keep their own training loop (Flower's ``ClientApp``, say) hand the
protocol a model as named arrays, not as a ``trapdoor.ml`` model. The job definition then
says only their layout, ``{"kind": "arrays", "arrays": [{"name", "shape", "dtype"}, ...]}``,
which the KGC signs with the rest of the definition, so every participant cuts the
released vector into the same named arrays. There is nothing to train or evaluate here:
each participant's app does both.

The flat vector is the arrays' values in the listed order, each flattened row-major, as
float64 (what the protocol encodes). Integer arrays (a BatchNorm's counter, say) travel
as float64 too and are rounded back to their dtype.

Numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ARRAY_DTYPES", "MAX_ARRAYS", "ArrayLayout", "ArraySlot"]

#: The element types an array of the layout may have.
ARRAY_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
)
#: At most this many arrays, and this many values in all.
MAX_ARRAYS = 10_000
MAX_VALUES = 2**31 - 1
_NAME = re.compile(r"^[^\x00-\x1f]{1,256}$")


@dataclass(frozen=True)
class ArraySlot:
    """One named array of the layout."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class ArrayLayout:
    """The ``arrays`` model kind: a layout of named arrays and no model of its own."""

    def __init__(self, slots: Sequence[ArraySlot]) -> None:
        if not slots:
            raise ValueError("an arrays model needs at least one array")
        if len(slots) > MAX_ARRAYS:
            raise ValueError(f"at most {MAX_ARRAYS} arrays, got {len(slots)}")
        names = [s.name for s in slots]
        if len(set(names)) != len(names):
            raise ValueError("array names must be distinct")
        self.slots = tuple(slots)
        total = sum(s.size for s in self.slots)
        if total < 1 or total > MAX_VALUES:
            raise ValueError(f"the arrays must hold 1..{MAX_VALUES} values, got {total}")
        self._total = total

    # -- spec

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ArrayLayout:
        """The layout of ``{"kind": "arrays", "arrays": [...]}``; ValueError naming the
        array at fault."""
        unknown = set(spec) - {"kind", "arrays"}
        if unknown:
            raise ValueError(f"unknown arrays spec keys {sorted(unknown)}")
        entries = spec.get("arrays")
        if not isinstance(entries, list):
            raise ValueError("an arrays spec lists its arrays: 'arrays': [{name, shape, dtype}]")
        slots = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != {"name", "shape", "dtype"}:
                raise ValueError(f"array {i} must be {{'name', 'shape', 'dtype'}}")
            name, shape, dtype = entry["name"], entry["shape"], entry["dtype"]
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"array {i}: name must be 1-256 printable characters")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_VALUES
                for d in shape
            ):
                raise ValueError(f"array {name!r}: shape must be a list of sizes >= 0")
            if dtype not in ARRAY_DTYPES:
                raise ValueError(f"array {name!r}: dtype must be one of {list(ARRAY_DTYPES)}")
            slots.append(ArraySlot(name, tuple(shape), dtype))
        return cls(slots)

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ArrayLayout:
        """The layout of these named arrays, in their order."""
        return cls(
            [
                ArraySlot(name, tuple(np.shape(a)), str(np.asarray(a).dtype))
                for name, a in arrays.items()
            ]
        )

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "arrays",
            "arrays": [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.slots
            ],
        }

    # -- vectors

    @property
    def num_parameters(self) -> int:
        return self._total

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The arrays as one float64 vector, in the layout's order; ValueError for a
        missing, extra or misshapen array."""
        if list(arrays) != [s.name for s in self.slots]:
            raise ValueError(
                f"the arrays are {list(arrays)[:8]}..., the job's are "
                f"{[s.name for s in self.slots][:8]}... (same names, same order)"
            )
        parts = []
        for slot in self.slots:
            value = np.asarray(arrays[slot.name])
            if value.shape != slot.shape:
                raise ValueError(
                    f"array {slot.name!r} has shape {value.shape}; the job's is {slot.shape}"
                )
            parts.append(value.astype(np.float64).ravel())
        return np.concatenate(parts)

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """``vector`` cut into the named arrays, each in its own dtype (integers rounded)."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self._total,):
            raise ValueError(f"a vector of {vector.size} values; the layout holds {self._total}")
        out: dict[str, np.ndarray] = {}
        start = 0
        for slot in self.slots:
            part = vector[start : start + slot.size].reshape(slot.shape)
            if np.issubdtype(np.dtype(slot.dtype), np.integer):
                part = np.rint(part)
            out[slot.name] = part.astype(slot.dtype)
            start += slot.size
        return out

    # -- the Model protocol: nothing to train here

    def init_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Zeros: an arrays job's initial weights come with its definition."""
        del rng
        return np.zeros(self._total)

    def loss_and_gradient(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        raise NotImplementedError(
            "an arrays job is trained by each participant's own app (e.g. a Flower ClientApp)"
        )

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "an arrays job is evaluated by each participant's own app (e.g. a Flower ClientApp)"
        )
