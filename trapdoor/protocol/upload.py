"""Upload statements: a contributor's signed word that this payload is its upload.

``bcp``: built by the contributor (:func:`build_upload_statement`) for the payload it
committed to, under the closed set, with a proof that it knows the upload's encryption
randomness; ``masked``: (:func:`build_masked_upload_statement`) for its masked update
``y = encode(w·Δ) + μ`` (:func:`encode_update`) and the seed ciphertext ``Enc(s)``
(:func:`seed_to_obj`) from which the KGC derives its mask (:func:`mask_context`).

Verified by the PS when it accepts the upload, and again by the KGC for every contributor
of a release (:func:`verify_upload_statement`, :func:`verify_masked_upload_statement`)
under the keys it certified: a PS cannot name a contributor that did not upload to *that*
round, relabel an upload as another round, or swap a payload or a seed. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.bcp import Ciphertext
from trapdoor.crypto.blocks import JobKey
from trapdoor.crypto.encoding import ClipReport, EncodingError, clip_values
from trapdoor.crypto.masking import MaskContext, RingVector, encode_ring
from trapdoor.crypto.pok import RandomnessProof
from trapdoor.crypto.wire import from_hex, to_hex
from trapdoor.protocol._statement import ParticipantStatement, verify_participant_signed
from trapdoor.protocol.common import ProtocolError, digest_equal, json_sha256
from trapdoor.protocol.job import JobTerms, MaskedLayout

__all__ = [
    "MASKED_UPLOAD_PURPOSE",
    "UPLOAD_PURPOSE",
    "MaskedUploadStatement",
    "UploadStatement",
    "build_masked_upload_statement",
    "build_upload_statement",
    "encode_update",
    "mask_context",
    "seed_from_obj",
    "seed_sha256",
    "seed_to_obj",
    "verify_masked_upload_statement",
    "verify_upload_statement",
]

UPLOAD_PURPOSE = "trapdoor/upload-statement/v3"
MASKED_UPLOAD_PURPOSE = "trapdoor/masked-upload/v1"


# --------------------------------------------------------------------------- bcp


@dataclass(frozen=True)
class UploadStatement(ParticipantStatement):
    """A ``bcp`` contributor's word: this payload, under this closed set, is its upload."""

    FIELD: ClassVar[str] = "statement"
    PURPOSE: ClassVar[str] = UPLOAD_PURPOSE
    DIGESTS: ClassVar[tuple[str, ...]] = ("payload_sha256", "closed_set_sha256")
    OBJECTS: ClassVar[tuple[str, ...]] = ("randomness_proof",)

    payload_sha256: str
    closed_set_sha256: str
    #: :meth:`trapdoor.crypto.pok.RandomnessProof.to_obj` of the upload's proof
    randomness_proof: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: object) -> Self:
        """As for every statement, and the proof must parse (``bad-statement``)."""
        statement = super().from_json(obj)
        try:
            statement.proof()
        except ValueError as exc:
            raise ProtocolError("bad-statement", f"randomness_proof: {exc}") from None
        return statement

    def proof(self) -> RandomnessProof:
        """The randomness proof, parsed (``ValueError`` when malformed)."""
        return RandomnessProof.from_obj(dict(self.randomness_proof))


def build_upload_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    closed_set_sha256: str,
    randomness_proof: Mapping[str, Any],
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed statement (wire form): this payload is its upload under this
    closed set.

    ``randomness_proof`` (:func:`trapdoor.crypto.pok.prove_randomness` under
    :func:`~trapdoor.protocol.commitment.pok_context`) shows the signer knows the upload's
    encryption randomness, so nobody can pass off a re-randomised copy of someone else's
    (earlier) upload as its own.
    """
    statement = UploadStatement.for_round(
        terms,
        round_number,
        subject_id,
        run,
        payload_sha256=payload_sha256,
        closed_set_sha256=closed_set_sha256,
        randomness_proof=dict(randomness_proof),
    )
    return statement.sign(signing_key).to_json()


def verify_upload_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    payload_sha256: str | None = None,
    closed_set_sha256: str | None = None,
    run: int = 0,
) -> UploadStatement:
    """Check a contributor's upload statement against the job terms; return its body."""
    statement = verify_participant_signed(
        signed,
        UploadStatement,
        terms,
        round_number=round_number,
        subject_id=subject_id,
        run=run,
    )
    if payload_sha256 is not None and not digest_equal(statement.payload_sha256, payload_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another payload")
    if closed_set_sha256 is not None and statement.closed_set_sha256 != closed_set_sha256:
        raise ProtocolError("statement-mismatch", "the statement names another closed set")
    return statement


# --------------------------------------------------------------------------- masked


def encode_update(
    update: npt.ArrayLike, layout: MaskedLayout, weight: float
) -> tuple[RingVector, ClipReport]:
    """``encode(w·clip(Δ))``: what a contributor masks. ``0 < w <= 1``, so one term stays
    within ``±clip_bound``, the headroom the ring was chosen for."""
    if isinstance(weight, bool) or not (math.isfinite(weight) and 0 < weight <= 1):
        raise EncodingError("the weight must be in (0, 1]")
    clipped, report = clip_values(update, layout.clip_bound)
    if clipped.shape != (layout.length,):
        raise EncodingError(f"the update must have {layout.length} values, got {clipped.shape}")
    return encode_ring(clipped * float(weight), layout.ring), report


def seed_to_obj(ciphertext: Ciphertext) -> dict[str, str]:
    """``Enc(s)`` on the wire: only ``A`` and ``B``; the key is always the job key's first
    component, so a ciphertext cannot name another."""
    return {"A": to_hex(int(ciphertext.A)), "B": to_hex(int(ciphertext.B))}


def seed_from_obj(obj: object, job_key: JobKey) -> Ciphertext:
    """Parse a seed ciphertext under the job key; ``A`` and ``B`` must be in ``Z*_{N^2}``
    and spelled canonically (:func:`seed_to_obj`)."""
    if not isinstance(obj, dict) or set(obj) != {"A", "B"}:
        raise ProtocolError("bad-seed", 'a seed ciphertext is {"A", "B"} (hex)')
    try:
        seed = Ciphertext(
            job_key.component(0), from_hex(obj["A"], what="A"), from_hex(obj["B"], what="B")
        )
    except ValueError as exc:
        raise ProtocolError("bad-seed", f"seed ciphertext: {exc}") from None
    if seed_to_obj(seed) != obj:
        # one spelling per ciphertext, so that its digest (what statements sign, and what
        # replay and duplicate checks compare) names exactly one seed
        raise ProtocolError("bad-seed", "A and B must be lowercase hex without 0x or zeros")
    return seed


def seed_sha256(obj: Mapping[str, Any]) -> str:
    """What a statement names: SHA-256 of the canonical JSON of ``{"A", "B"}``."""
    return json_sha256(dict(obj))


def mask_context(
    terms: JobTerms, layout: MaskedLayout, *, round_number: int, run: int, signer: str
) -> MaskContext:
    """The HKDF info of one contributor's mask in one round and run (attempt is 0)."""
    return MaskContext(
        job_id=terms.job_id,
        job_terms_sha256=terms.digest,
        round=round_number,
        run=run,
        attempt=0,
        signer=signer,
        length=layout.length,
        ring_bits=layout.ring.bits,
    )


@dataclass(frozen=True)
class MaskedUploadStatement(ParticipantStatement):
    """A ``masked`` contributor's word: this ``y`` and this seed ciphertext are its upload."""

    FIELD: ClassVar[str] = "statement"
    PURPOSE: ClassVar[str] = MASKED_UPLOAD_PURPOSE
    DIGESTS: ClassVar[tuple[str, ...]] = ("payload_sha256", "seed_sha256")

    payload_sha256: str
    seed_sha256: str


def build_masked_upload_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    seed_sha256: str,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed statement (wire form): this ``y`` and this seed are its upload.

    The KGC decrypts a seed only for a contributor whose statement names it, and the
    contributors sum exactly the ``y`` the statements name (the KGC lists them in the
    release), so the PS can neither swap an upload nor shift the model.
    """
    statement = MaskedUploadStatement.for_round(
        terms, round_number, subject_id, run, payload_sha256=payload_sha256, seed_sha256=seed_sha256
    )
    return statement.sign(signing_key).to_json()


def verify_masked_upload_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str | None = None,
    payload_sha256: str | None = None,
    seed_sha256: str | None = None,
) -> MaskedUploadStatement:
    """Check a masked upload statement against the terms (and the given digests)."""
    statement = verify_participant_signed(
        signed,
        MaskedUploadStatement,
        terms,
        round_number=round_number,
        subject_id=subject_id,
        run=run,
    )
    if payload_sha256 is not None and not digest_equal(statement.payload_sha256, payload_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another payload")
    if seed_sha256 is not None and not digest_equal(statement.seed_sha256, seed_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another seed")
    return statement
