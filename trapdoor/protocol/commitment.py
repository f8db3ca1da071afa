"""Commitments and the closed commitment set: who may upload in a round, and what.

Before any upload of a round is visible, each contributor signs a commitment to the
payload digest it will upload (:func:`build_commitment`); the PS checks each one
(:func:`verify_commitment`, a typed :class:`Commitment`; :class:`Signed` is the envelope of
every participant-signed message, re-exported here for the services) and signs the final,
sorted set (:func:`build_closed_set`).
Contributors and the KGC verify that set (:func:`verify_closed_set`) under the PS key the
terms name: once it is closed, nobody can pick a ciphertext after seeing another's, so
none can craft one that cancels an honest upload. The set's digest also fixes the
context of the round's randomness proofs (:func:`pok_context`). Both modes run one round
per run; only ``bcp`` jobs commit (a ``masked`` upload is its own commitment). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, sign_json, verify_json
from trapdoor.protocol._statement import ParticipantStatement, Signed, verify_participant_signed
from trapdoor.protocol.common import ProtocolError, is_json_int, json_sha256
from trapdoor.protocol.job import JobTerms

__all__ = [
    "CLOSED_SET_PURPOSE",
    "COMMITMENT_PURPOSE",
    "ClosedSet",
    "Commitment",
    "Signed",
    "build_closed_set",
    "build_commitment",
    "pok_context",
    "verify_closed_set",
    "verify_commitment",
]

COMMITMENT_PURPOSE = "trapdoor/commitment/v2"
CLOSED_SET_PURPOSE = "trapdoor/closed-set/v2"


def pok_context(terms: JobTerms, round_number: int, closed_set_sha256: str) -> bytes:
    """What binds the round's randomness proofs (:mod:`trapdoor.crypto.pok`): the job terms, the
    round and the closed commitment set, fixed only after every upload was committed."""
    return f"trapdoor/pok/v1|{terms.digest}|{int(round_number)}|{closed_set_sha256}".encode()


@dataclass(frozen=True)
class Commitment(ParticipantStatement):
    """A contributor's promise of the payload digest it will upload in one round and run."""

    FIELD: ClassVar[str] = "commitment"
    PURPOSE: ClassVar[str] = COMMITMENT_PURPOSE
    DIGESTS: ClassVar[tuple[str, ...]] = ("payload_sha256",)

    payload_sha256: str


def build_commitment(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed promise of the ciphertext it will upload this round (wire form).

    Sent before any upload of the round is visible to anyone: once the PS closes the set
    of commitments, no contributor can choose its ciphertext after seeing another's, so
    none can craft one that cancels an honest upload out of the aggregate.
    """
    commitment = Commitment.for_round(
        terms, round_number, subject_id, run, payload_sha256=payload_sha256
    )
    return commitment.sign(signing_key).to_json()


def verify_commitment(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    run: int = 0,
) -> Commitment:
    """Check a signed commitment for ``round_number`` (``run``) of the job; its body."""
    return verify_participant_signed(
        signed, Commitment, terms, round_number=round_number, subject_id=subject_id, run=run
    )


@dataclass(frozen=True)
class ClosedSet:
    """A round's closed commitment set, verified: who may upload, and which payload."""

    round: int
    run: int
    #: subject id -> the payload SHA-256 it committed to
    payloads: Mapping[str, str]
    #: SHA-256 of the signed set body: what upload and audit statements name.
    digest: str
    raw: Mapping[str, Any]


def build_closed_set(
    ps_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    commitments: Sequence[Mapping[str, Any]],
    closed_at: int,
    run: int = 0,
) -> dict[str, Any]:
    """The PS's signed, final list of a round's commitments (sorted by subject id)."""
    ordered = sorted(
        (dict(c) for c in commitments), key=lambda c: str(c["commitment"]["subject_id"])
    )
    body = {
        "purpose": CLOSED_SET_PURPOSE,
        "kgc_key_id": str(terms.raw["kgc_key_id"]),
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": int(round_number),
        "run": int(run),
        "param_server": terms.param_server,
        "commitments": ordered,
        "closed_at": int(closed_at),
    }
    return {"closed_set": body, "signature": sign_json(ps_key, body)}


def verify_closed_set(
    signed: object, terms: JobTerms, *, round_number: int, run: int = 0
) -> ClosedSet:
    """Check a closed set: the PS's key from the terms, every commitment, the quorum.

    One set per round is all a PS can sign that a contributor and the KGC both accept:
    upload and audit statements name its digest, and the KGC requires them all to agree.
    """
    if not isinstance(signed, dict) or not isinstance(signed.get("closed_set"), dict):
        raise ProtocolError("bad-closed-set", 'a closed set is {"closed_set", "signature"}')
    body: dict[str, Any] = signed["closed_set"]
    try:
        verify_json(public_key_from_hex(terms.param_server_key), body, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            "bad-closed-set-signature", "the closed set is not signed by the job's server"
        ) from None
    expected = {
        "purpose": CLOSED_SET_PURPOSE,
        "kgc_key_id": terms.raw["kgc_key_id"],
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": round_number,
        "run": run,
        "param_server": terms.param_server,
    }
    if (
        set(body) != {*expected, "commitments", "closed_at"}
        or any(body.get(k) != v for k, v in expected.items())
        or not is_json_int(body.get("round"))
        or not is_json_int(body.get("run"))
        or not is_json_int(body.get("closed_at"))
        or not isinstance(body.get("commitments"), list)
    ):
        raise ProtocolError(
            "closed-set-mismatch", "the closed set is for another job, round or run"
        )
    payloads: dict[str, str] = {}
    for commitment in body["commitments"]:
        checked = verify_commitment(commitment, terms, round_number=round_number, run=run)
        subject = checked.subject_id
        if subject in payloads:
            raise ProtocolError("duplicate-commitment", f"{subject} committed twice")
        payloads[subject] = checked.payload_sha256
    if list(payloads) != sorted(payloads):
        raise ProtocolError("bad-closed-set", "commitments must be sorted by subject id")
    if len(payloads) < terms.quorum:
        raise ProtocolError(
            "below-quorum", f"{len(payloads)} commitments, the quorum is {terms.quorum}"
        )
    return ClosedSet(round_number, run, payloads, json_sha256(body), signed)
