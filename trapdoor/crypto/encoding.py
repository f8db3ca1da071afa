"""Fixed-point encoding and slot packing of float vectors into plaintexts mod N.

The cryptosystem encrypts integers mod N (N a ~2048-bit RSA modulus) and adds
plaintexts homomorphically.  Model updates are float vectors, so we

1. clip every value to a declared bound (and *report* how much was clipped),
2. turn it into a signed fixed-point integer ``round(x * 2**f)``,
3. pack many signed ``s``-bit slots into one plaintext,
   ``sum_j x_j * 2**(s*j) mod N`` (slot 0 in the low bits).

Because packing is linear, the sum of packed vectors mod N is the packing of the
slot-wise sums, as long as no slot outgrows its width.  Each layout declares a
per-slot integer bound ``int_bound < 2**(s-2)``; the extra guard bit means a sum
whose slots stay below ``2**(s-1)`` in magnitude is read back exactly, so any
slot beyond the declared bound is detected and raised as
:class:`EncodingOverflowError` instead of silently wrapping.  Sums that go even
further (past the guard bit) corrupt neighbouring slots; that is detected on a
best-effort basis (magnitude, top-carry and padding checks) but not guaranteed,
which is why callers must size ``slot_bound``/``max_terms`` for the worst case.

Everything is vectorised with numpy: the only Python-level loop runs over
plaintexts (about 70 values each at 2048 bits), never over values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

__all__ = [
    "ClipReport",
    "EncodingError",
    "EncodingOverflowError",
    "PackingLayout",
    "as_finite_floats",
    "check_json_keys",
    "clip_values",
    "decode_fixed",
    "decode_vector",
    "encode_fixed",
    "encode_vector",
    "pack",
    "unpack",
]

_MIN_SLOT_BITS = 8
_MAX_SLOT_BITS = 62  # biased digits must fit in uint64 and signed ones in int64
_HEX_RE = re.compile(r"[0-9a-f]+")
_JSON_KEYS = frozenset({"modulus", "length", "frac_bits", "slot_bits", "slot_bound", "max_terms"})


class EncodingError(ValueError):
    """Invalid input or parameters for encoding/packing."""


def check_json_keys(d: object, keys: frozenset[str], what: str) -> None:
    """A JSON object with exactly ``keys``: encoding parameters come from other parties."""
    if not isinstance(d, Mapping):
        raise EncodingError(f"{what} JSON must be an object")
    found = set(d)
    if found != keys:
        missing, extra = sorted(keys - found), sorted(found - keys)
        raise EncodingError(f"bad {what} JSON keys: missing {missing}, unexpected {extra}")


class EncodingOverflowError(EncodingError):
    """A slot exceeded its declared bound: the aggregate cannot be trusted."""


@dataclass(frozen=True)
class ClipReport:
    """What clipping did, so that it is never silent."""

    clipped: int  # how many values were clipped
    max_abs: float  # largest |x| seen before clipping
    clip_bound: float


def _is_int(v: object) -> bool:
    """True for Python ints and gmpy2.mpz, but not bool (a common JSON/typing slip)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, type(gmpy2.mpz(0)))


@dataclass(frozen=True)
class PackingLayout:
    """How a float vector of `length` values maps onto plaintexts mod N."""

    modulus: int  # N (python int or gmpy2.mpz accepted; stored as int)
    length: int  # number of float values
    frac_bits: int = 20
    slot_bits: int = 29
    # Largest |real value| a decoded slot may hold (the sum of all terms).
    slot_bound: float = 64.0
    # Number of rounded terms that may be summed into one slot (rounding slack).
    max_terms: int = 1024

    def __post_init__(self) -> None:
        """Validate eagerly so a bad layout fails where it is built, not at decode."""
        if not _is_int(self.modulus):
            raise EncodingError(f"modulus must be an int, got {type(self.modulus).__name__}")
        object.__setattr__(self, "modulus", int(self.modulus))
        for name in ("length", "frac_bits", "slot_bits", "max_terms"):
            if not _is_int(getattr(self, name)):
                raise EncodingError(f"{name} must be an int")
            object.__setattr__(self, name, int(getattr(self, name)))
        if isinstance(self.slot_bound, bool) or not isinstance(self.slot_bound, int | float):
            raise EncodingError("slot_bound must be a number")
        object.__setattr__(self, "slot_bound", float(self.slot_bound))

        if self.modulus < 3:
            raise EncodingError("modulus must be >= 3")
        if self.length < 0:
            raise EncodingError("length must be >= 0")
        if not _MIN_SLOT_BITS <= self.slot_bits <= _MAX_SLOT_BITS:
            raise EncodingError(
                f"slot_bits must be in [{_MIN_SLOT_BITS}, {_MAX_SLOT_BITS}], got {self.slot_bits}"
            )
        if self.frac_bits < 0:
            raise EncodingError("frac_bits must be >= 0")
        if not (math.isfinite(self.slot_bound) and self.slot_bound > 0):
            raise EncodingError("slot_bound must be finite and > 0")
        if self.max_terms < 1:
            raise EncodingError("max_terms must be >= 1")
        if self.slots_per_plaintext < 1:
            raise EncodingError(
                f"modulus of {self.modulus.bit_length()} bits cannot hold one "
                f"{self.slot_bits}-bit slot: decrease slot_bits or use a larger modulus"
            )
        limit = 1 << (self.slot_bits - 2)
        if self.int_bound >= limit:
            raise EncodingError(
                f"ceil(slot_bound * 2^frac_bits) + max_terms = {self.int_bound} must be "
                f"< 2^(slot_bits-2) = {limit}: increase slot_bits, or decrease "
                f"slot_bound, frac_bits or max_terms"
            )

    @property
    def slots_per_plaintext(self) -> int:
        """Slots per plaintext; 2 bits of N are kept free so a centered value never wraps."""
        return (self.modulus.bit_length() - 2) // self.slot_bits

    @property
    def num_plaintexts(self) -> int:
        """Plaintexts needed for `length` values (the last one may be partially filled)."""
        return -(-self.length // self.slots_per_plaintext)

    @property
    def int_bound(self) -> int:
        """Largest |integer| a decoded slot may hold; anything larger raises at decode."""
        return math.ceil(math.ldexp(self.slot_bound, self.frac_bits)) + self.max_terms

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; the modulus is lowercase hex without a 0x prefix."""
        return {
            "modulus": format(self.modulus, "x"),
            "length": self.length,
            "frac_bits": self.frac_bits,
            "slot_bits": self.slot_bits,
            "slot_bound": self.slot_bound,
            "max_terms": self.max_terms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PackingLayout:
        """Inverse of :meth:`to_json`; strict, since layouts come from other parties."""
        check_json_keys(d, _JSON_KEYS, "layout")
        mod = d["modulus"]
        if not isinstance(mod, str) or not _HEX_RE.fullmatch(mod):
            raise EncodingError("modulus must be a lowercase hex string without 0x prefix")
        for name in ("length", "frac_bits", "slot_bits", "max_terms"):
            if not _is_int(d[name]):
                raise EncodingError(f"{name} must be a JSON integer")
        return cls(
            modulus=int(mod, 16),
            length=d["length"],
            frac_bits=d["frac_bits"],
            slot_bits=d["slot_bits"],
            slot_bound=d["slot_bound"],
            max_terms=d["max_terms"],
        )


# --------------------------------------------------------------------------- fixed point


def as_finite_floats(x: object, what: str = "x") -> npt.NDArray[np.float64]:
    """1-D finite float64 view of `x`; NaN/inf would encode as garbage, so reject them."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise EncodingError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise EncodingError(f"{what} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise EncodingError(f"{what} contains NaN or infinity")
    return out


def _check_bound(clip_bound: float) -> float:
    b = float(clip_bound)
    if not (math.isfinite(b) and b > 0):
        raise EncodingError("clip_bound must be finite and > 0")
    return b


def _clip(x: npt.NDArray[np.float64], bound: float) -> tuple[npt.NDArray[np.float64], ClipReport]:
    """Clip to ±bound and say how many values were affected."""
    absx = np.abs(x)
    report = ClipReport(
        clipped=int(np.count_nonzero(absx > bound)),
        max_abs=float(absx.max()) if absx.size else 0.0,
        clip_bound=bound,
    )
    return np.clip(x, -bound, bound), report


def clip_values(x: npt.ArrayLike, clip_bound: float) -> tuple[npt.NDArray[np.float64], ClipReport]:
    """``x`` clipped to ±clip_bound, and the report (for encoders other than :func:`pack`)."""
    return _clip(as_finite_floats(x), _check_bound(clip_bound))


def _to_fixed(x: npt.NDArray[np.float64], frac_bits: int) -> npt.NDArray[np.int64]:
    """round(x * 2^f) (ties to even); caller guarantees |x| * 2^f fits comfortably in int64."""
    return np.rint(np.ldexp(x, frac_bits)).astype(np.int64)


def _check_frac_bits(frac_bits: int) -> None:
    if not _is_int(frac_bits) or frac_bits < 0:
        raise EncodingError("frac_bits must be an int >= 0")


def encode_fixed(
    x: npt.ArrayLike, frac_bits: int, clip_bound: float
) -> tuple[npt.NDArray[np.int64], ClipReport]:
    """Clip `x` to ±clip_bound (reported) and convert to signed fixed point round(x * 2^f)."""
    _check_frac_bits(frac_bits)
    bound = _check_bound(clip_bound)
    if math.ldexp(bound, frac_bits) >= 2.0**62:
        raise EncodingError("clip_bound * 2^frac_bits does not fit in int64")
    xc, report = _clip(as_finite_floats(x), bound)
    return _to_fixed(xc, frac_bits), report


def decode_fixed(v: npt.ArrayLike, frac_bits: int) -> npt.NDArray[np.float64]:
    """Inverse of :func:`encode_fixed` (up to rounding): v / 2^f as float64."""
    _check_frac_bits(frac_bits)
    arr = np.asarray(v)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise EncodingError(f"fixed-point values must be integers, got dtype {arr.dtype}")
    return np.ldexp(arr.astype(np.float64), -frac_bits)


# --------------------------------------------------------------------------- packing


def _bias_constant(layout: PackingLayout) -> int:
    """sum_j 2^(s-1) * 2^(s*j): adding it makes every signed slot a non-negative digit."""
    s, k = layout.slot_bits, layout.slots_per_plaintext
    return (1 << (s - 1)) * (((1 << (s * k)) - 1) // ((1 << s) - 1))


def pack(values: npt.ArrayLike, layout: PackingLayout) -> list[Any]:
    """Pack signed fixed-point ints (|v| <= int_bound) into plaintexts in [0, N).

    Returns a list of ``gmpy2.mpz``.  Slots beyond `length` in the last plaintext are 0.
    """
    v = np.asarray(values)
    if v.ndim != 1 or v.shape[0] != layout.length:
        raise EncodingError(f"expected a 1-D array of {layout.length} values, got {v.shape}")
    if v.size and not np.issubdtype(v.dtype, np.integer):
        raise EncodingError(f"pack needs fixed-point integers, got dtype {v.dtype}")
    v = v.astype(np.int64, copy=False)
    if v.size and int(np.abs(v).max()) > layout.int_bound:
        raise EncodingOverflowError(
            f"value of magnitude {int(np.abs(v).max())} exceeds int_bound {layout.int_bound}"
        )
    s, k, p = layout.slot_bits, layout.slots_per_plaintext, layout.num_plaintexts
    if p == 0:
        return []
    half = 1 << (s - 1)
    # Biased digits in [0, 2^s); padding slots hold 0, i.e. the digit `half`.
    digits = np.full(p * k, half, dtype="<u8")
    digits[: layout.length] = v + half  # |v| < 2^(s-2), so no sign issues
    bits = np.unpackbits(digits.view(np.uint8).reshape(p, k, 8), axis=2, bitorder="little")
    row_bits = np.ascontiguousarray(bits[:, :, :s]).reshape(p, k * s)
    rows = np.packbits(row_bits, axis=1, bitorder="little")  # zero-pads the last byte
    nbytes = rows.shape[1]
    data = rows.tobytes()
    n = gmpy2.mpz(layout.modulus)
    bias = gmpy2.mpz(_bias_constant(layout))
    out = []
    for i in range(p):
        u = gmpy2.mpz(int.from_bytes(data[i * nbytes : (i + 1) * nbytes], "little"))
        out.append((u - bias) % n)
    return out


def unpack(plaintexts: Sequence[int], layout: PackingLayout) -> npt.NDArray[np.int64]:
    """Inverse of :func:`pack`, also for sums of packed vectors mod N.

    Raises :class:`EncodingOverflowError` if any slot exceeds ``layout.int_bound`` or
    the plaintext cannot be a valid (sum of) packing(s).
    """
    p = layout.num_plaintexts
    if len(plaintexts) != p:
        raise EncodingError(f"expected {p} plaintexts, got {len(plaintexts)}")
    s, k = layout.slot_bits, layout.slots_per_plaintext
    n = layout.modulus
    half_n = n // 2
    bias = _bias_constant(layout)
    width = s * k
    nbytes = (width + 7) // 8
    chunks = []
    for i, pt in enumerate(plaintexts):
        if not _is_int(pt):
            raise EncodingError(f"plaintext {i} must be an int, got {type(pt).__name__}")
        x = int(pt)
        if not 0 <= x < n:
            raise EncodingError(f"plaintext {i} is outside [0, N)")
        w = (x - n if x > half_n else x) + bias
        if w < 0 or w >> width:
            raise EncodingOverflowError(f"plaintext {i} overflows its {k} slots of {s} bits")
        chunks.append(w.to_bytes(nbytes, "little"))
    if p == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(p, nbytes)
    bits = np.unpackbits(rows, axis=1, bitorder="little")[:, :width].reshape(p * k, s)
    wide = np.zeros((p * k, 64), dtype=np.uint8)
    wide[:, :s] = bits
    digits = np.packbits(wide, axis=1, bitorder="little").view("<u8").reshape(p * k)
    signed = digits.astype(np.int64) - (1 << (s - 1))
    bad = np.flatnonzero(np.abs(signed[: layout.length]) > layout.int_bound)
    if bad.size:
        j = int(bad[0])
        raise EncodingOverflowError(
            f"{bad.size} slot(s) exceed int_bound {layout.int_bound} "
            f"(first: index {j}, value {int(signed[j])}): too many or too large contributions"
        )
    if np.any(signed[layout.length :]):
        raise EncodingOverflowError("padding slots are nonzero: overflow or corrupted plaintext")
    return signed[: layout.length].copy()


# --------------------------------------------------------------------------- float vectors


def encode_vector(
    x: npt.ArrayLike, layout: PackingLayout, *, clip_bound: float, scale: float = 1.0
) -> tuple[list[Any], ClipReport]:
    """Clip x to ±clip_bound (reported), multiply by the public weight `scale`, encode, pack.

    A single term must fit the slot on its own, so ``clip_bound * |scale|`` may not exceed
    ``layout.slot_bound``.
    """
    bound = _check_bound(clip_bound)
    w = float(scale)
    if not math.isfinite(w):
        raise EncodingError("scale must be finite")
    if bound * abs(w) > layout.slot_bound:
        raise EncodingError(
            f"clip_bound * |scale| = {bound * abs(w)} exceeds layout.slot_bound "
            f"{layout.slot_bound}: lower clip_bound or raise slot_bound"
        )
    xf = as_finite_floats(x)
    if xf.shape[0] != layout.length:
        raise EncodingError(f"expected {layout.length} values, got {xf.shape[0]}")
    xc, report = _clip(xf, bound)
    return pack(_to_fixed(xc * w, layout.frac_bits), layout), report


def decode_vector(plaintexts: Sequence[int], layout: PackingLayout) -> npt.NDArray[np.float64]:
    """Unpack (raising on overflow) and convert fixed point back to float64."""
    return decode_fixed(unpack(plaintexts, layout), layout.frac_bits)
