"""The release bundle: how a released model goes from the KGC to the contributors only.

Built by the KGC after it checked the release request
(:mod:`trapdoor.protocol.release_request`); stored and served by the PS, which cannot open
it; opened and checked by each contributor.

``bcp`` (DESIGN §4): the PS sends ``Enc(W + R)``; the KGC opens it with the master key (it
sees only ``M = W + R``, uniformly blinded), seals ``M`` once under a fresh 256-bit data
key ``K`` with AES-256-GCM, and wraps ``K`` for each contributor under its own BCP public
key (:func:`seal_release`). A contributor unwraps ``K``, opens ``M`` and subtracts ``R``,
which the PS hands it with the bundle (:func:`open_release`).

``masked`` (DESIGN §2.2): the KGC seals the round's mask sum ``D_t`` the same way
(:func:`seal_mask_sum`), names every contributor's ``y`` in the binding
(:class:`MaskedReleaseBinding`) and signs the release statement (:func:`release_statement`).
A contributor checks that signature (:func:`verify_release_statement`), opens ``D_t``
(:func:`open_mask_sum`), fetches the listed uploads (:func:`listed_uploads`) and computes
``W_{t+1}`` (:func:`next_model`), refusing a model beyond the job's bound ``B_W``.

:func:`bundle_sha256` names a bundle of either mode to everyone who holds part of it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from gmpy2 import mpz

from trapdoor.crypto.bcp import MasterKey, PublicKey, RandomSource, SecretKey
from trapdoor.crypto.blocks import EncryptedVector, decrypt_vector
from trapdoor.crypto.encoding import EncodingError
from trapdoor.crypto.masking import (
    RingVector,
    decode_ring,
    encode_ring,
    ring_sum,
    unmask,
    vector_from_bytes,
    vector_to_bytes,
)
from trapdoor.crypto.sealing import (
    RandomBytes,
    SealError,
    open_bytes,
    seal_bytes,
    unwrap_data_key,
    wrap_data_key,
)
from trapdoor.crypto.signing import (
    SignatureError,
    b64decode,
    b64encode,
    canonical_json,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame
from trapdoor.protocol.common import (
    ProtocolError,
    digest_equal,
    is_json_int,
    json_sha256,
    kgc_key_id,
)
from trapdoor.protocol.job import MaskedLayout

__all__ = [
    "MASKED_RELEASE_PURPOSE",
    "MaskedReleaseBinding",
    "ReleaseBinding",
    "blind_from_text",
    "blind_sha256",
    "blind_to_text",
    "bundle_sha256",
    "listed_uploads",
    "next_model",
    "open_mask_sum",
    "open_release",
    "plaintexts_from_bytes",
    "plaintexts_to_bytes",
    "release_statement",
    "seal_mask_sum",
    "seal_release",
    "verify_release_statement",
]

MASKED_RELEASE_PURPOSE = "trapdoor/masked-release/v1"


# --------------------------------------------------------------------------- bcp


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


# ------------------------------------------------------------------ masked: the KGC's part


@dataclass(frozen=True)
class MaskedReleaseBinding:
    """What a sealed mask sum is bound to (AES-GCM associated data), and what it lists.

    ``uploads`` maps each contributor to the SHA-256 of the ``y`` its statement signed:
    the contributors sum exactly those, so the PS cannot add or swap anything in ``Z``.
    """

    job_id: str
    job_terms_sha256: str
    round: int
    run: int
    uploads: Mapping[str, str]

    def fields(self) -> dict[str, Any]:
        return {
            "aggregation": "masked",
            "job_id": self.job_id,
            "job_terms_sha256": self.job_terms_sha256,
            "round": self.round,
            "run": self.run,
            "uploads": dict(sorted(self.uploads.items())),
        }

    def context(self) -> bytes:
        return b"trapdoor-masked-release/v1|" + canonical_json(self.fields())

    @property
    def contributors(self) -> list[str]:
        return sorted(self.uploads)

    @classmethod
    def from_fields(cls, bundle: Mapping[str, Any]) -> MaskedReleaseBinding:
        """The binding a bundle names (``ValueError`` on a malformed field)."""
        uploads = bundle.get("uploads")
        if (
            bundle.get("aggregation") != "masked"
            or not isinstance(uploads, dict)
            or not uploads
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in uploads.items())
            or not is_json_int(bundle.get("round"))
            or not is_json_int(bundle.get("run"))
            or not isinstance(bundle.get("job_id"), str)
            or not isinstance(bundle.get("job_terms_sha256"), str)
        ):
            raise ValueError("the bundle lacks its masked-release binding")
        return cls(
            job_id=str(bundle["job_id"]),
            job_terms_sha256=str(bundle["job_terms_sha256"]),
            round=int(bundle["round"]),
            run=int(bundle["run"]),
            uploads=dict(uploads),
        )


def release_statement(
    binding: MaskedReleaseBinding, sealed_mask: Any, wrapped_keys: Mapping[str, Any], kgc_id: str
) -> dict[str, Any]:
    """What the KGC signs about a masked release: binding, sealed sum, each wrapped key.

    Wrapped keys are named by digest, so a contributor that receives only its own can
    still check the KGC's signature: a PS cannot forge a bundle (its own data key wrapped
    to a contributor) and so cannot choose anyone's model.
    """
    return {
        "purpose": MASKED_RELEASE_PURPOSE,
        "kgc_key_id": kgc_id,
        **binding.fields(),
        "sealed_mask_sha256": json_sha256(sealed_mask),
        "wrapped_keys_sha256": {s: json_sha256(w) for s, w in sorted(wrapped_keys.items())},
    }


def seal_mask_sum(
    kgc_key: Ed25519PrivateKey,
    master: MasterKey,
    mask_sum: RingVector,
    layout: MaskedLayout,
    contributors: Mapping[str, PublicKey],
    *,
    binding: MaskedReleaseBinding,
    rng: RandomSource,
    random_bytes: RandomBytes,
) -> dict[str, Any]:
    """The bundle: ``D_t`` under a fresh AES-256-GCM key wrapped for each contributor.

    ``release_signature`` signs :func:`release_statement`; the bundle carries the
    digests of every wrapped key so that each contributor can check it.
    """
    if sorted(contributors) != binding.contributors:
        raise ValueError("the wrapped keys must be exactly the listed contributors")
    context = binding.context()
    data_key = random_bytes(32)
    sealed = seal_bytes(
        data_key, vector_to_bytes(mask_sum, layout.ring), context, random_bytes=random_bytes
    )
    wrapped = {
        subject: wrap_data_key(
            key, data_key, context, rng, random_bytes=random_bytes, encrypt=master.encrypt_for
        )
        for subject, key in sorted(contributors.items())
    }
    statement = release_statement(binding, sealed, wrapped, kgc_key_id(kgc_key))
    return {
        **binding.fields(),
        "sealed_mask": sealed,
        "wrapped_keys": wrapped,
        "wrapped_keys_sha256": statement["wrapped_keys_sha256"],
        "release_signature": sign_json(kgc_key, statement),
    }


# ------------------------------------------------------------ masked: a contributor's part


def verify_release_statement(
    kgc_verify_key: Ed25519PublicKey,
    bundle: Mapping[str, Any],
    *,
    subject_id: str,
) -> MaskedReleaseBinding:
    """Check a contributor's view of a masked bundle against the KGC's signature.

    The view carries the binding fields, ``sealed_mask``, this contributor's
    ``wrapped_key`` and every wrapped key's digest; the digest of ours must be the one
    the KGC signed. Raises :class:`ProtocolError` ``bad-release``.
    """
    try:
        binding = MaskedReleaseBinding.from_fields(bundle)
    except ValueError as exc:
        raise ProtocolError("bad-release", str(exc)) from None
    digests = bundle.get("wrapped_keys_sha256")
    if not isinstance(digests, dict) or sorted(digests) != binding.contributors:
        raise ProtocolError("bad-release", "the bundle must name every contributor's wrapped key")
    if not digest_equal(digests.get(subject_id), json_sha256(bundle.get("wrapped_key"))):
        raise ProtocolError("bad-release", "our wrapped key is not the one the KGC signed")
    statement = {
        "purpose": MASKED_RELEASE_PURPOSE,
        "kgc_key_id": kgc_key_id(kgc_verify_key),
        **binding.fields(),
        "sealed_mask_sha256": json_sha256(bundle.get("sealed_mask")),
        "wrapped_keys_sha256": dict(sorted(digests.items())),
    }
    try:
        verify_json(kgc_verify_key, statement, bundle.get("release_signature"))
    except SignatureError:
        raise ProtocolError("bad-release", "the release is not signed by the pinned KGC") from None
    return binding


def open_mask_sum(
    secret_key: SecretKey,
    binding: MaskedReleaseBinding,
    sealed_mask: Any,
    wrapped_key: Any,
    layout: MaskedLayout,
) -> RingVector:
    """Unwrap the data key with our own key and open ``D_t`` (``SealError`` otherwise)."""
    context = binding.context()
    data_key = unwrap_data_key(secret_key, wrapped_key, context)
    return vector_from_bytes(open_bytes(data_key, sealed_mask, context), layout.ring, layout.length)


def listed_uploads(
    binding: MaskedReleaseBinding,
    layout: MaskedLayout,
    fetch_upload: Callable[[str], bytes],
) -> list[RingVector]:
    """Every upload the release lists, fetched (``fetch_upload(subject)`` gives the frame
    the PS serves) and checked against the digest the KGC signed; ProtocolError
    ``upload-mismatch`` otherwise. What a contributor sums instead of trusting ``Z``."""
    vectors = []
    for subject, digest in sorted(binding.uploads.items()):
        try:
            frame = decode_frame(fetch_upload(subject), kind=RING_FRAME_KIND)
            if not digest_equal(frame.header.get("sha256"), digest):
                raise ValueError("not the upload the release lists")
            vectors.append(vector_from_bytes(frame.payload, layout.ring, layout.length))
        except ValueError as exc:
            raise ProtocolError("upload-mismatch", f"upload of {subject}: {exc}") from None
    return vectors


def next_model(
    layout: MaskedLayout,
    current: npt.ArrayLike,
    uploads: Sequence[RingVector],
    mask_sum: RingVector,
) -> npt.NDArray[np.float64]:
    """``W_{t+1} = decode(encode(W_t) + Σ y_i - D_t)``, refused beyond ``±B_W``.

    ``current`` is the contributor's own ``W_t`` (float64, exactly representable by the
    layout's check). Raises :class:`EncodingError` when the result leaves the bound: a
    garbage upload or a tampered seed makes the round's sum meaningless, and a model
    beyond ``B_W`` could already have wrapped the ring.
    """
    encoded = encode_ring(np.asarray(current, dtype=np.float64), layout.ring)
    total = ring_sum([encoded, *uploads], layout.ring, layout.length)
    model = decode_ring(unmask(total, mask_sum), layout.ring)
    largest = float(np.abs(model).max(initial=0.0))
    if not largest <= layout.model_bound:
        raise EncodingError(
            f"the released model reaches {largest:.6g}, beyond the job's bound "
            f"±{layout.model_bound}: a contribution was not a valid masked update"
        )
    return model
