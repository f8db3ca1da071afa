"""What every protocol step shares: the error, the digests messages name, the bounds.

Every signed message is canonical JSON (:func:`trapdoor.crypto.signing.canonical_json`)
with a ``purpose`` tag and the KGC key id, so a signature made for one step is never valid
for another; its digest fields are the SHA-256 helpers below. A check that fails raises
:class:`ProtocolError` with a stable ``code``, which each service maps to its own status.
Pure: no Flask, no database.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.blocks import EncryptedVector
from trapdoor.crypto.signing import canonical_json, public_key_hex

__all__ = [
    "MAX_ATTEMPT",
    "MAX_ROUND",
    "MAX_RUN",
    "ProtocolError",
    "digest_equal",
    "in_range",
    "is_digest",
    "is_json_int",
    "json_sha256",
    "kgc_key_id",
    "sha256_hex",
    "vector_sha256",
]

#: Round numbers are bounded everywhere (URLs, statements, the KGC's schedule).
MAX_ROUND = 2**31 - 1
#: Attempts of one round (a re-aggregation after a contributor failed to audit) are bounded.
MAX_ATTEMPT = 1000
#: A round runs once, and at most once more after a release that did not decode (run 1).
MAX_RUN = 1


class ProtocolError(ValueError):
    """A message is malformed or does not verify; ``code`` is a stable machine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex characters: how every message spells a digest."""
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (what a digest field in a message means)."""
    return sha256_hex(canonical_json(obj))


def digest_equal(a: object, b: object) -> bool:
    """Constant-time comparison of two hex digests (False for anything not a string)."""
    return isinstance(a, str) and isinstance(b, str) and hmac.compare_digest(a, b)


def kgc_key_id(verify_key: Ed25519PublicKey | Ed25519PrivateKey | str) -> str:
    """A short, stable name for a KGC signing key: SHA-256 of its raw bytes, 32 hex chars."""
    raw = verify_key if isinstance(verify_key, str) else public_key_hex(verify_key)
    return sha256_hex(bytes.fromhex(raw))[:32]


def is_json_int(value: object) -> bool:
    """A JSON integer: an ``int`` but not a ``bool`` (``true`` is never a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def in_range(value: object, low: int, high: int) -> bool:
    """``value`` is an integer (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_digest(value: object) -> bool:
    """``value`` is spelled as a digest field must be: 64 lowercase hex characters."""
    return isinstance(value, str) and len(value) == 64 and not value.strip("0123456789abcdef")


def vector_sha256(vector: EncryptedVector) -> str:
    """SHA-256 of a ciphertext vector's payload bytes (what every vector digest names)."""
    return sha256_hex(vector.to_bytes())
