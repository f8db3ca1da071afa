"""The release bundle: how a blinded model goes from the KGC to the contributors only.

DESIGN §4. The parameter server sends ``Enc(W + R)``; the KGC opens it with the master
key (it sees only ``M = W + R``, uniformly blinded), seals ``M`` once under a fresh
256-bit data key ``K`` with AES-256-GCM, and wraps ``K`` for each contributor under that
contributor's own BCP public key. A contributor unwraps ``K``, opens ``M`` and subtracts
``R`` (which the parameter server hands to contributors with the bundle).

Both sides live here so the KGC service, the parameter server's tests and the
participant client use one implementation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gmpy2 import mpz

from trapdoor.crypto.bcp import MasterKey, PublicKey, RandomSource, SecretKey
from trapdoor.crypto.blocks import EncryptedVector, decrypt_vector
from trapdoor.crypto.sealing import (
    RandomBytes,
    SealError,
    open_bytes,
    seal_bytes,
    unwrap_data_key,
    wrap_data_key,
)
from trapdoor.crypto.signing import b64decode, b64encode, canonical_json

__all__ = [
    "ReleaseBinding",
    "blind_sha256",
    "bundle_sha256",
    "open_release",
    "plaintexts_from_bytes",
    "plaintexts_to_bytes",
    "seal_release",
]


@dataclass(frozen=True)
class ReleaseBinding:
    """What a sealed model and its wrapped keys are bound to (AES-GCM associated data).

    The KGC fills it from the request it checked (the audited attempt, the base it
    continues, the contributor set and the blind's digest); a contributor rebuilds it from
    the bundle's fields after checking job and round against what it asked for. A PS that
    serves a bundle under other fields, or another ``R``, gets nothing that opens.
    """

    job_id: str
    round: int
    attempt: int
    base_sha256: str
    contributors_sha256: str
    blind_sha256: str
    #: 0, or 1 for the one re-run of a round whose release did not decode
    run: int = 0

    def context(self) -> bytes:
        return "|".join(
            [
                "trapdoor-release/v3",
                self.job_id,
                str(self.round),
                str(self.run),
                str(self.attempt),
                self.base_sha256,
                self.contributors_sha256,
                self.blind_sha256,
            ]
        ).encode()

    def fields(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "run": self.run,
            "attempt": self.attempt,
            "base_sha256": self.base_sha256,
            "contributors_sha256": self.contributors_sha256,
            "blind_sha256": self.blind_sha256,
        }

    @classmethod
    def from_fields(cls, bundle: Mapping[str, Any]) -> ReleaseBinding:
        """The binding a bundle names (raises ``ValueError`` on a malformed field)."""
        try:
            return cls(
                job_id=str(bundle["job_id"]),
                round=int(bundle["round"]),
                run=int(bundle["run"]),
                attempt=int(bundle["attempt"]),
                base_sha256=str(bundle["base_sha256"]),
                contributors_sha256=str(bundle["contributors_sha256"]),
                blind_sha256=str(bundle["blind_sha256"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bundle lacks its binding: {exc}") from None


class _NamesFields(Protocol):
    def fields(self) -> dict[str, Any]: ...


def bundle_sha256(binding: _NamesFields, sealed_model: Any) -> str:
    """The digest that names one release bundle to everyone who holds part of it.

    A contributor sees only its own wrapped key, so the digest covers what every
    contributor and the KGC share: the binding and the sealed model (of either mode: a
    :class:`ReleaseBinding` and ``W + R``, or a masked binding and the mask sum). An
    ``undecodable`` statement names it, so it cannot be replayed against another release.
    """
    named = {
        **binding.fields(),
        "sealed_model_sha256": hashlib.sha256(canonical_json(sealed_model)).hexdigest(),
    }
    return hashlib.sha256(canonical_json(named)).hexdigest()


def blind_sha256(blind: Sequence[int], n: int) -> str:
    """SHA-256 of ``R`` as fixed-width big-endian integers (what audits and bundles name)."""
    return hashlib.sha256(plaintexts_to_bytes(blind, n)).hexdigest()


def plaintexts_to_bytes(values: Sequence[int], n: int) -> bytes:
    width = (int(n).bit_length() + 7) // 8
    return b"".join(int(v).to_bytes(width, "big") for v in values)


def plaintexts_from_bytes(data: bytes, n: int) -> list[mpz]:
    width = (int(n).bit_length() + 7) // 8
    if len(data) % width:
        raise ValueError("plaintext payload has a ragged length")
    values = [mpz(int.from_bytes(data[i : i + width], "big")) for i in range(0, len(data), width)]
    if any(v >= n for v in values):
        raise ValueError("plaintext outside [0, N)")
    return values


def seal_release(
    master_key: MasterKey,
    blinded: EncryptedVector,
    contributors: Mapping[str, PublicKey],
    *,
    binding: ReleaseBinding,
    rng: RandomSource,
    random_bytes: RandomBytes = os.urandom,
    workers: int = 1,
) -> dict[str, Any]:
    """Open ``Enc(W + R)`` with the master key and seal it for ``contributors`` only."""
    if not contributors:
        raise ValueError("a release needs at least one contributor")
    context = binding.context()
    blinded_plaintexts = decrypt_vector(master_key, blinded, workers=workers)
    data_key = random_bytes(32)
    sealed = seal_bytes(
        data_key,
        plaintexts_to_bytes(blinded_plaintexts, master_key.params.n),
        context,
        random_bytes=random_bytes,
    )
    wrapped = {
        subject: wrap_data_key(
            key, data_key, context, rng, random_bytes=random_bytes, encrypt=master_key.encrypt_for
        )
        for subject, key in sorted(contributors.items())
    }
    return {
        **binding.fields(),
        "num_plaintexts": len(blinded_plaintexts),
        "sealed_model": sealed,
        "wrapped_keys": wrapped,
    }


def open_release(
    secret_key: SecretKey,
    *,
    binding: ReleaseBinding,
    sealed_model: Any,
    wrapped_key: Any,
    blind: Sequence[int],
) -> list[mpz]:
    """A contributor's side: unwrap ``K``, open ``M = W + R`` and return ``W`` (mod N).

    Raises :class:`~trapdoor.crypto.sealing.SealError` when this key cannot open the bundle, or
    when ``blind`` is not the ``R`` the binding names.
    """
    n = secret_key.public_key.params.n
    if blind_sha256(blind, n) != binding.blind_sha256:
        raise SealError("the blind is not the one this release was sealed for")
    context = binding.context()
    data_key = unwrap_data_key(secret_key, wrapped_key, context)
    blinded = plaintexts_from_bytes(open_bytes(data_key, sealed_model, context), n)
    if len(blinded) != len(blind):
        raise SealError("blind and sealed model have different lengths")
    return [(m - mpz(r)) % n for m, r in zip(blinded, blind, strict=True)]


def blind_to_text(blind: Sequence[int], n: int) -> str:
    """``R`` as base64url of fixed-width big-endian integers (for JSON responses)."""
    return b64encode(plaintexts_to_bytes(blind, n))


def blind_from_text(text: str, n: int) -> list[mpz]:
    return plaintexts_from_bytes(b64decode(text), n)
