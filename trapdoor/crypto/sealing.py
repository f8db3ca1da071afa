"""Symmetric sealing: secrets at rest under a passphrase, and data keys wrapped with BCP.

- :func:`seal_with_passphrase` / :func:`open_with_passphrase`: scrypt + AES-256-GCM, for
  the KGC's master key and a participant node's keys at rest.
- :func:`wrap_data_key` / :func:`unwrap_data_key`: a key-encapsulation with BCP. A
  random ``s`` in ``Z_N`` is encrypted under the recipient's BCP public key, and the
  key-encryption key is ``HKDF-SHA256(s)`` bound to that ciphertext; it wraps a 256-bit
  data key with AES-GCM. Only the holder of the secret key (or the master key) gets ``s``.
- :func:`seal_bytes` / :func:`open_bytes`: AES-256-GCM of a payload under a data key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from trapdoor.crypto.bcp import Ciphertext, PublicKey, RandomSource, SecretKey
from trapdoor.crypto.signing import b64decode, b64encode
from trapdoor.crypto.wire import from_obj, to_obj

__all__ = [
    "SealError",
    "open_bytes",
    "open_with_passphrase",
    "seal_bytes",
    "seal_with_passphrase",
    "unwrap_data_key",
    "wrap_data_key",
]

RandomBytes = Callable[[int], bytes]
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class SealError(ValueError):
    """Sealed data is malformed, or the key or passphrase is wrong."""


def seal_bytes(
    key: bytes, plaintext: bytes, aad: bytes = b"", *, random_bytes: RandomBytes = os.urandom
) -> dict[str, str]:
    """AES-256-GCM with a random 96-bit nonce; ``aad`` binds context (job, round, ...)."""
    nonce = random_bytes(12)
    return {
        "alg": "A256GCM",
        "nonce": b64encode(nonce),
        "ct": b64encode(AESGCM(key).encrypt(nonce, plaintext, aad)),
    }


def open_bytes(key: bytes, sealed: Any, aad: bytes = b"") -> bytes:
    if not isinstance(sealed, dict) or sealed.get("alg") != "A256GCM":
        raise SealError("not an A256GCM sealed object")
    try:
        return AESGCM(key).decrypt(b64decode(sealed["nonce"]), b64decode(sealed["ct"]), aad)
    except (InvalidTag, KeyError, ValueError):
        raise SealError("cannot open: wrong key or tampered data") from None


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal_with_passphrase(
    plaintext: bytes,
    passphrase: str | bytes,
    *,
    random_bytes: RandomBytes = os.urandom,
    cost: int = SCRYPT_N,
) -> dict[str, Any]:
    """Seal a secret at rest: scrypt derives the key; the KDF settings travel with it."""
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not secret:
        raise SealError("an empty passphrase seals nothing")
    salt = random_bytes(16)
    key = _scrypt(secret, salt, cost, SCRYPT_R, SCRYPT_P)
    sealed = seal_bytes(key, plaintext, b"trapdoor-at-rest", random_bytes=random_bytes)
    return {
        "kdf": "scrypt",
        "n": cost,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": b64encode(salt),
        **sealed,
    }


def open_with_passphrase(sealed: Any, passphrase: str | bytes) -> bytes:
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not isinstance(sealed, dict) or sealed.get("kdf") != "scrypt":
        raise SealError("not a passphrase-sealed object")
    try:
        key = _scrypt(
            secret, b64decode(sealed["salt"]), int(sealed["n"]), int(sealed["r"]), int(sealed["p"])
        )
    except (KeyError, ValueError, TypeError):
        raise SealError("malformed key-derivation settings") from None
    return open_bytes(key, sealed, b"trapdoor-at-rest")


def _kek(shared: int, kem: Ciphertext, context: bytes) -> bytes:
    info = b"trapdoor-kem-v1|" + format(int(kem.A), "x").encode() + b"|" + context
    width = (int(kem.public_key.params.n.bit_length()) + 7) // 8
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        shared.to_bytes(width, "big")
    )


def wrap_data_key(
    recipient: PublicKey,
    data_key: bytes,
    context: bytes,
    rng: RandomSource,
    *,
    random_bytes: RandomBytes = os.urandom,
    encrypt: Callable[[PublicKey, int, RandomSource], Ciphertext] | None = None,
) -> dict[str, Any]:
    """Wrap ``data_key`` so that only ``recipient``'s secret key can unwrap it.

    ``encrypt`` replaces ``recipient.encrypt`` by an equivalent that is faster for its
    caller (the KGC passes :meth:`~trapdoor.crypto.bcp.MasterKey.encrypt_for`).
    """
    shared = rng.randrange(0, int(recipient.params.n))
    kem = encrypt(recipient, shared, rng) if encrypt is not None else recipient.encrypt(shared, rng)
    wrapped = seal_bytes(_kek(shared, kem, context), data_key, context, random_bytes=random_bytes)
    return {"kem": to_obj(kem), **wrapped}


def unwrap_data_key(secret_key: SecretKey, wrapped: Any, context: bytes) -> bytes:
    """Recover the data key; :class:`SealError` if this key cannot open it."""
    if not isinstance(wrapped, dict):
        raise SealError("wrapped key must be an object")
    try:
        kem = from_obj(wrapped.get("kem"))
    except ValueError:
        raise SealError("malformed key encapsulation") from None
    if not isinstance(kem, Ciphertext) or kem.public_key != secret_key.public_key:
        raise SealError("this data key is not wrapped for this participant")
    try:
        shared = secret_key.decrypt(kem)
    except ValueError:
        raise SealError("key encapsulation does not open") from None
    return open_bytes(_kek(shared, kem, context), wrapped, context)
