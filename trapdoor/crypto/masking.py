"""The crypto core of the ``masked`` aggregation mode (DESIGN §2.2): seeds, masks, a ring.

Each round a contributor draws a fresh 256-bit seed ``s``, encrypts it under the job key
with BCP (:func:`encrypt_seed`), and uploads ``y = encode(w·Δ) + μ mod 2^k`` where the
mask ``μ = PRG(HKDF(s, context))`` (:func:`mask_key`, :func:`expand_mask`). The PS adds
the ``y`` with wrap-around arithmetic; the KGC decrypts the seeds of a checked contributor
set (:func:`open_seed`), derives the same masks from the decrypted values and seals their
sum; a contributor subtracts it (:func:`unmask`) and decodes (:func:`decode_ring`).

Ring. Values live in ``Z_{2^k}``, ``k`` = 32 or 64, as numpy ``uint32``/``uint64`` so that
numpy's wrap-around *is* the ring arithmetic, exactly. :func:`choose_ring` picks ``k`` from
the job's bounds and refuses a job that would not fit even in 64 bits: a sum that wraps
past ``2^(k-1)`` would decode to a wrong model without any error, so it must be ruled out
by the parameters, never discovered afterwards.

Mask keys are not a decryption oracle. BCP is malleable: a colluder can submit
``c·(1+δN)``, which decrypts to ``s + δ mod N`` for an honest seed ``s``. If anything the
KGC did with the decrypted value failed for some ``δ`` and not for others (a range check,
a conversion to 32 bytes), the colluder could retry with chosen ``δ`` and binary-search
``s``. So :func:`mask_key` hashes the *full-width* value with HKDF and never branches on
it: a tampered ciphertext only yields an unrelated mask (the round decodes to garbage,
which the contributors detect) and says nothing about ``s``.

Pure: numpy, gmpy2 (through :mod:`trapdoor.crypto.bcp`) and ``cryptography`` only; no Flask, no
database.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey, RandomSource
from trapdoor.crypto.encoding import (
    EncodingError,
    EncodingOverflowError,
    as_finite_floats,
    check_json_keys,
)
from trapdoor.crypto.signing import canonical_json

__all__ = [
    "MASK_KEY_BYTES",
    "MASK_PURPOSE",
    "RING_BITS",
    "SEED_BYTES",
    "MaskContext",
    "RingSpec",
    "RingVector",
    "add_into",
    "choose_ring",
    "decode_ring",
    "derive_mask",
    "draw_seed",
    "encode_ring",
    "encrypt_seed",
    "expand_mask",
    "mask_key",
    "mask_vector",
    "open_seed",
    "open_seeds",
    "ring_sum",
    "seed_to_int",
    "unmask",
    "vector_from_bytes",
    "vector_to_bytes",
]

RING_BITS = (32, 64)
SEED_BYTES = 32  # 256-bit seeds: a fresh one per contributor, round and attempt
MASK_KEY_BYTES = 32  # one ChaCha20 key
MASK_PURPOSE = "trapdoor/mask/v1"
# ChaCha20's block counter is 32 bits: 2^32 blocks of 64 bytes. Far above any model, but
# a keystream that wrapped its counter would repeat, so refuse rather than rely on it.
_MAX_KEYSTREAM_BYTES = 64 * 2**32
_MAX_CONTEXT_INT = 2**63 - 1  # the protocol enforces tighter limits; this keeps JSON sane
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RING_JSON_KEYS = frozenset({"bits", "frac_bits"})

RingVector = npt.NDArray[np.unsignedinteger[Any]]
"""A 1-D ``uint32`` or ``uint64`` array: elements of ``Z_{2^k}^d``."""


def _is_int(v: object) -> bool:
    """True for ints but not bool (``True`` is a JSON/typing slip, never a count)."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


# --------------------------------------------------------------------------- ring choice


@dataclass(frozen=True)
class RingSpec:
    """The ring ``Z_{2^bits}`` and the fixed-point scale ``2^frac_bits`` of a masked job.

    ``frac_bits <= bits - 2`` so that at least ``(-2, 2)`` is representable (model weights
    of magnitude 1 must always fit); :func:`choose_ring` decides whether a job's actual
    bounds fit.
    """

    bits: int
    frac_bits: int

    def __post_init__(self) -> None:
        """Validate eagerly: a spec comes from job terms that other parties wrote."""
        if not _is_int(self.bits) or int(self.bits) not in RING_BITS:
            raise EncodingError(f"ring bits must be one of {RING_BITS}, got {self.bits!r}")
        object.__setattr__(self, "bits", int(self.bits))
        if not _is_int(self.frac_bits) or not 0 <= int(self.frac_bits) <= self.bits - 2:
            raise EncodingError(
                f"frac_bits must be an integer in [0, {self.bits - 2}], got {self.frac_bits!r}"
            )
        object.__setattr__(self, "frac_bits", int(self.frac_bits))

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.bits

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """The numpy type whose native wrap-around is addition modulo ``2^bits``."""
        return np.uint32 if self.bits == 32 else np.uint64

    @property
    def byte_width(self) -> int:
        """Bytes per element on the wire."""
        return self.bits // 8

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        """Little-endian element type of the wire format (independent of the host)."""
        return np.dtype(f"<u{self.byte_width}")

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "frac_bits": self.frac_bits}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RingSpec:
        """Inverse of :meth:`to_json`; strict (exact keys, JSON integers, no booleans)."""
        check_json_keys(d, _RING_JSON_KEYS, "ring spec")
        for name in ("bits", "frac_bits"):
            if not isinstance(d[name], int) or isinstance(d[name], bool):
                raise EncodingError(f"{name} must be a JSON integer")
        return cls(bits=d["bits"], frac_bits=d["frac_bits"])


def _positive_finite(value: float, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EncodingError(f"{name} must be a number")
    if not (math.isfinite(value) and value > 0):
        raise EncodingError(f"{name} must be finite and > 0")
    return Fraction(value)


def choose_ring(
    *, model_bound: float, clip_bound: float, frac_bits: int, participants: int, rounds: int
) -> RingSpec:
    """The smallest ring in which the job's aggregate can never wrap.

    ``k = 32`` if ``(model_bound + clip_bound)·2^f + participants·rounds < 2^31``, else
    ``k = 64`` if that is ``< 2^63``, else :class:`EncodingError`. The decoded model is a
    sum of rounded terms: its real value stays within ``model_bound`` (every contributor
    checks that each round) plus one round's clipped update in flight, and each term's
    rounding adds at most one unit per contributor per round, hence ``K·T``. The test is
    done in exact rational arithmetic, so a job exactly at a threshold gets the larger ring.
    """
    bound = _positive_finite(model_bound, "model_bound") + _positive_finite(
        clip_bound, "clip_bound"
    )
    if not _is_int(frac_bits) or not 0 <= frac_bits <= 62:
        raise EncodingError(f"frac_bits must be an integer in [0, 62], got {frac_bits!r}")
    for name, count in (("participants", participants), ("rounds", rounds)):
        if not _is_int(count) or count < 1:
            raise EncodingError(f"{name} must be an integer >= 1, got {count!r}")
    need = bound * (1 << int(frac_bits)) + int(participants) * int(rounds)
    for bits in RING_BITS:
        if frac_bits <= bits - 2 and need < 1 << (bits - 1):
            return RingSpec(bits=bits, frac_bits=int(frac_bits))
    raise EncodingError(
        f"(model_bound + clip_bound)·2^frac_bits + participants·rounds = {float(need):.6g} "
        f"does not fit below 2^63: lower frac_bits or the bounds"
    )


# --------------------------------------------------------------------------- fixed point


def encode_ring(values: npt.ArrayLike, spec: RingSpec) -> RingVector:
    """``round(x·2^f)`` (ties to even) as two's complement in ``Z_{2^k}``.

    Refuses NaN and infinity, and any value whose rounded magnitude needs more than
    ``k-1`` bits (it would decode with the wrong sign). The rounding is done in float64,
    where ``ldexp`` and ``rint`` are exact; the result is an integer below ``2^63`` in
    magnitude, so the conversion through int64 is exact too.
    """
    x = as_finite_floats(values, "values")
    with np.errstate(over="ignore"):  # an overflow to inf is caught by the bound below
        scaled = np.rint(np.ldexp(x, spec.frac_bits))
    limit = float(1 << (spec.bits - 1))  # a power of two: exact in float64
    bad = np.flatnonzero(~(np.abs(scaled) < limit))
    if bad.size:
        j = int(bad[0])
        raise EncodingOverflowError(
            f"{bad.size} value(s) do not fit in {spec.bits - 1} bits at frac_bits="
            f"{spec.frac_bits} (first: index {j}, value {float(x[j])!r})"
        )
    as_uint64 = scaled.astype(np.int64).view(np.uint64)  # two's complement mod 2^64
    return as_uint64.astype(spec.dtype)  # unsigned narrowing keeps the low k bits


def _check_ring_vector(v: object, spec: RingSpec, what: str, d: int | None = None) -> RingVector:
    if not isinstance(v, np.ndarray) or v.ndim != 1:
        raise EncodingError(f"{what} must be a 1-D numpy array")
    if v.dtype != np.dtype(spec.dtype):
        raise EncodingError(f"{what} must have dtype {np.dtype(spec.dtype)}, got {v.dtype}")
    if d is not None and v.shape[0] != d:
        raise EncodingError(f"{what} must have {d} elements, got {v.shape[0]}")
    return v


def decode_ring(encoded: RingVector, spec: RingSpec) -> npt.NDArray[np.float64]:
    """Inverse of :func:`encode_ring`: read each element as signed, divide by ``2^f``.

    Exact while ``|v| < 2^53`` (``|x|·2^f < 2^53``; with ``f <= 40`` that is any
    ``|x| < 8192``), so the round trip is within ``2^-(f+1)``. Beyond ``2^53`` the int→float
    conversion adds a relative error of at most ``2^-53``.
    """
    v = _check_ring_vector(encoded, spec, "encoded vector")
    signed = v.view(np.int32 if spec.bits == 32 else np.int64)
    return np.ldexp(signed.astype(np.float64), -spec.frac_bits)


# --------------------------------------------------------------------------- seeds


def draw_seed(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 256-bit seed. Production passes nothing (``os.urandom``); tests pass a stub."""
    seed = rng(SEED_BYTES)
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"the random source must return {SEED_BYTES} bytes")
    return seed


def seed_to_int(seed: bytes) -> int:
    """The seed as the integer BCP encrypts (big-endian), in ``[0, 2^256)``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a seed is exactly {SEED_BYTES} bytes")
    return int.from_bytes(seed, "big")


def encrypt_seed(
    job_key_public: PublicKey, seed: bytes, rng: RandomSource | None = None
) -> Ciphertext:
    """One BCP ciphertext of the seed under (one component of) the job key.

    ``N`` must exceed ``2^256`` so that every seed is its own residue: the KGC's decryption
    then returns exactly ``seed_to_int(seed)`` and both sides derive the same mask key.
    """
    if job_key_public.params.bits <= 8 * SEED_BYTES:
        raise ValueError(f"N must have more than {8 * SEED_BYTES} bits to carry a seed")
    return job_key_public.encrypt(seed_to_int(seed), rng)


def open_seed(master: MasterKey, job_key_public: PublicKey, ciphertext: Ciphertext) -> int:
    """Decrypt a seed ciphertext *as if* it were under the job key, whatever key it names.

    A ciphertext names its own key, and the master key opens any key under ``(N, g)``; a
    colluder could otherwise make the KGC decrypt something encrypted for another purpose.
    The components are re-checked as elements of ``Z*_{N^2}`` (that does not depend on the
    plaintext). The result is in ``[0, N)``: pass it to :func:`mask_key` as it is.
    """
    return open_seeds(master, job_key_public, [ciphertext])[0]


def open_seeds(
    master: MasterKey, job_key_public: PublicKey, ciphertexts: Sequence[Ciphertext]
) -> list[int]:
    """:func:`open_seed` for a round's seeds: the job key's secret exponent is recovered
    once, and the components' classes in one batch (GMP without the GIL)."""
    if job_key_public.params != master.params:
        raise ValueError("the job key is under different parameters than the master key")
    checked = [Ciphertext(job_key_public, c.A, c.B) for c in ciphertexts]
    a_mod_n = master.secret_exponent(job_key_public)
    classes = master.classes_of([x for c in checked for x in (c.A, c.B)])
    n = master.params.n
    return [int((classes[2 * i + 1] - a_mod_n * classes[2 * i]) % n) for i in range(len(checked))]


# --------------------------------------------------------------------------- mask keys


def _context_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer in [0, 2^63)")
    if not 0 <= int(value) <= _MAX_CONTEXT_INT:
        raise ValueError(f"{name} must be an integer in [0, 2^63)")
    return int(value)


@dataclass(frozen=True)
class MaskContext:
    """Everything a mask key is bound to, so that no two uploads ever share a key.

    Binding the job terms digest, round, run, attempt and signer makes each key single-use
    even if a seed were reused; binding ``length`` and ``ring_bits`` means a mask expanded
    for one shape is never reinterpreted as another. ``run`` is 0, or 1 for a round's
    re-run after an undecodable release; ``attempt`` is always 0 in the masked mode (it has
    no audit and so no re-aggregation) and is kept so that the info names every counter.
    """

    job_id: str
    job_terms_sha256: str  # lowercase hex
    round: int
    run: int
    attempt: int
    signer: str  # the contributor's subject id
    length: int  # d: number of model parameters
    ring_bits: int  # k

    def __post_init__(self) -> None:
        for name in ("job_id", "signer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        if not isinstance(self.job_terms_sha256, str) or not _SHA256_HEX.fullmatch(
            self.job_terms_sha256
        ):
            raise ValueError("job_terms_sha256 must be 64 lowercase hex digits")
        for name in ("round", "run", "attempt", "length"):
            object.__setattr__(self, name, _context_int(getattr(self, name), name))
        if not _is_int(self.ring_bits) or int(self.ring_bits) not in RING_BITS:
            raise ValueError(f"ring_bits must be one of {RING_BITS}")
        object.__setattr__(self, "ring_bits", int(self.ring_bits))

    def info(self) -> bytes:
        """The HKDF ``info``: canonical JSON (sorted keys, compact) with a purpose tag."""
        return canonical_json(
            {
                "purpose": MASK_PURPOSE,
                "job_id": self.job_id,
                "job_terms_sha256": self.job_terms_sha256,
                "round": self.round,
                "run": self.run,
                "attempt": self.attempt,
                "signer": self.signer,
                "length": self.length,
                "ring_bits": self.ring_bits,
            }
        )


def mask_key(decrypted_value: int, modulus_n: int, context: MaskContext) -> bytes:
    """``HKDF-SHA256(ikm = value as ceil(|N|/8) big-endian bytes, salt = None, info)``.

    The caller guarantees ``0 <= value < N``: the KGC passes :func:`open_seed`'s result,
    the contributor ``seed_to_int(seed)``. There is deliberately no other check and no
    branch on the value (see the module docstring): for a tampered ciphertext
    ``c·(1+δN)`` the value is ``s + δ mod N``, any residue at all, and it must go
    through exactly as an honest one does. Python integers are not constant-time, but the
    work here does not depend on the value beyond its fixed width.
    """
    width = (int(modulus_n).bit_length() + 7) // 8
    ikm = int(decrypted_value).to_bytes(width, "big")
    return HKDF(
        algorithm=hashes.SHA256(), length=MASK_KEY_BYTES, salt=None, info=context.info()
    ).derive(ikm)


def expand_mask(key: bytes, spec: RingSpec, d: int) -> RingVector:
    """The mask ``μ ∈ Z_{2^k}^d``: ChaCha20 keystream, read as little-endian k-bit words.

    ChaCha20 (RFC 7539 as in ``cryptography``: 16-byte nonce = 32-bit counter + 96-bit
    nonce) with an all-zero nonce: every key comes out of :func:`mask_key` bound to one
    (job, round, attempt, signer) and is used for exactly one keystream, so a fixed nonce
    never repeats a (key, nonce) pair. ChaCha20 rather than AES-CTR: a 256-bit key, and
    constant-time and fast without AES instructions.
    """
    if not isinstance(key, bytes) or len(key) != MASK_KEY_BYTES:
        raise ValueError(f"a mask key is exactly {MASK_KEY_BYTES} bytes")
    if not _is_int(d) or d < 0:
        raise ValueError("d must be an integer >= 0")
    nbytes = int(d) * spec.byte_width
    if nbytes > _MAX_KEYSTREAM_BYTES:
        raise ValueError(f"a mask of {nbytes} bytes exceeds one ChaCha20 keystream")
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(nbytes)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=spec.wire_dtype).astype(spec.dtype)


def derive_mask(
    decrypted_value: int, modulus_n: int, context: MaskContext, spec: RingSpec
) -> RingVector:
    """:func:`mask_key` then :func:`expand_mask`, with ``d`` and ``k`` taken from the context."""
    if context.ring_bits != spec.bits:
        raise ValueError(
            f"the context is for a {context.ring_bits}-bit ring, the spec for {spec.bits}"
        )
    return expand_mask(mask_key(decrypted_value, modulus_n, context), spec, context.length)


# --------------------------------------------------------------------------- ring arithmetic


def _ring_operand(v: object, what: str) -> RingVector:
    if not isinstance(v, np.ndarray) or v.ndim != 1:
        raise ValueError(f"{what} must be a 1-D numpy array")
    if v.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError(f"{what} must be uint32 or uint64, got {v.dtype}")
    return v


def _same_ring(a: object, b: object, what_a: str, what_b: str) -> tuple[RingVector, RingVector]:
    """Both operands 1-D, of one ring dtype and one length: numpy then wraps exactly."""
    x, y = _ring_operand(a, what_a), _ring_operand(b, what_b)
    if x.dtype != y.dtype:
        raise ValueError(f"{what_a} is {x.dtype} but {what_b} is {y.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"{what_a} has {x.shape[0]} elements but {what_b} has {y.shape[0]}")
    return x, y


def mask_vector(encoded: RingVector, mask: RingVector) -> RingVector:
    """``y = encoded + mask mod 2^k`` (what a contributor uploads)."""
    a, b = _same_ring(encoded, mask, "encoded vector", "mask")
    return np.add(a, b, dtype=a.dtype)


def add_into(total: RingVector, y: RingVector) -> RingVector:
    """``total += y mod 2^k`` in place (the PS's aggregation); returns ``total``."""
    a, b = _same_ring(total, y, "total", "upload")
    np.add(a, b, out=a)
    return a


def ring_sum(vectors: Sequence[RingVector], spec: RingSpec, d: int) -> RingVector:
    """``Σ vectors mod 2^k``; the empty sum is zero, so ``spec`` and ``d`` are explicit."""
    if not _is_int(d) or d < 0:
        raise ValueError("d must be an integer >= 0")
    total = np.zeros(int(d), dtype=spec.dtype)
    for i, v in enumerate(vectors):
        _check_ring_vector(v, spec, f"vector {i}", int(d))
        np.add(total, v, out=total)
    return total


def unmask(total: RingVector, mask_sum: RingVector) -> RingVector:
    """``total - mask_sum mod 2^k``: the sum of the encodings, ready for :func:`decode_ring`."""
    a, b = _same_ring(total, mask_sum, "masked total", "mask sum")
    return np.subtract(a, b, dtype=a.dtype)


# --------------------------------------------------------------------------- wire


def vector_to_bytes(vector: RingVector, spec: RingSpec) -> bytes:
    """Fixed-width little-endian elements: ``d·k/8`` bytes, the same on every host."""
    v = _check_ring_vector(vector, spec, "vector")
    return v.astype(spec.wire_dtype, copy=False).tobytes()


def vector_from_bytes(data: bytes | memoryview, spec: RingSpec, d: int) -> RingVector:
    """Inverse of :func:`vector_to_bytes`; the length must be exactly ``d·k/8`` bytes."""
    if not _is_int(d) or d < 0:
        raise ValueError("d must be an integer >= 0")
    expected = int(d) * spec.byte_width
    if len(data) != expected:
        raise ValueError(
            f"expected {expected} bytes ({d} elements of {spec.bits} bits), got {len(data)}"
        )
    return np.frombuffer(data, dtype=spec.wire_dtype).astype(spec.dtype)
