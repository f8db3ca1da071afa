"""Upload receipts: the PS's signed word that it accepted one upload.

Built by the PS when it stores an upload (:func:`build_receipt`, both modes): the job,
the round, the uploader, the SHA-256 of the payload it stored and when, signed with the
PS's certified Ed25519 key. Checked by whoever holds one (:func:`verify_receipt`) under
that key, which the KGC-signed job terms name (``param_server_key``): a PS that later
claims it never received an upload, or received another payload, is contradicted by its
own signature. Pure: no Flask, no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, sign_json, verify_json
from trapdoor.protocol.common import ProtocolError, digest_equal, is_digest, is_json_int

__all__ = ["Receipt", "build_receipt", "verify_receipt"]

_FIELDS = frozenset({"job_id", "round", "subject_id", "sha256", "accepted_at"})


@dataclass(frozen=True)
class Receipt:
    """One accepted upload, as the PS signs it."""

    job_id: str
    round: int
    subject_id: str
    #: SHA-256 of the stored payload (the frame header's ``sha256``)
    sha256: str
    #: UNIX seconds, whole
    accepted_at: int

    def to_json(self) -> dict[str, Any]:
        """The signed object."""
        return {
            "job_id": self.job_id,
            "round": self.round,
            "subject_id": self.subject_id,
            "sha256": self.sha256,
            "accepted_at": self.accepted_at,
        }

    @classmethod
    def from_json(cls, obj: object) -> Receipt:
        """Inverse of :meth:`to_json`; strict (exact keys and types), ``bad-receipt``."""
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise ProtocolError("bad-receipt", f"a receipt has the fields {sorted(_FIELDS)}")
        if not all(isinstance(obj[k], str) for k in ("job_id", "subject_id")):
            raise ProtocolError("bad-receipt", "job_id and subject_id must be strings")
        if not (is_json_int(obj["round"]) and is_json_int(obj["accepted_at"])):
            raise ProtocolError("bad-receipt", "round and accepted_at must be integers")
        if not is_digest(obj["sha256"]):
            raise ProtocolError("bad-receipt", "sha256 must be 64 lowercase hex characters")
        return cls(
            obj["job_id"], obj["round"], obj["subject_id"], obj["sha256"], obj["accepted_at"]
        )


def build_receipt(
    ps_key: Ed25519PrivateKey,
    *,
    job_id: str,
    round_number: int,
    subject_id: str,
    sha256: str,
    accepted_at: float,
) -> dict[str, Any]:
    """The PS's signed receipt for an upload it stored: ``{"receipt", "signature"}``."""
    receipt = Receipt(job_id, round_number, subject_id, sha256, int(accepted_at)).to_json()
    return {"receipt": receipt, "signature": sign_json(ps_key, receipt)}


def verify_receipt(
    ps_key: Ed25519PublicKey | str,
    signed: object,
    *,
    job_id: str | None = None,
    round_number: int | None = None,
    subject_id: str | None = None,
    sha256: str | None = None,
) -> Receipt:
    """Check a receipt under the PS's key (or its hex, as the job terms name it) and, when given,
    that it is for this job, round, uploader and payload.

    ``bad-receipt`` when malformed, ``bad-receipt-signature`` when another key signed it,
    ``receipt-mismatch`` (naming the fields) when it is for another upload.
    """
    if not isinstance(signed, dict) or not isinstance(signed.get("receipt"), dict):
        raise ProtocolError("bad-receipt", 'a signed receipt is {"receipt", "signature"}')
    body = signed["receipt"]
    try:
        key = public_key_from_hex(ps_key) if isinstance(ps_key, str) else ps_key
        verify_json(key, body, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            "bad-receipt-signature", "the receipt is not signed by the job's server"
        ) from None
    receipt = Receipt.from_json(body)
    expected = {"job_id": job_id, "round": round_number, "subject_id": subject_id}
    wrong = sorted(k for k, v in expected.items() if v is not None and body[k] != v)
    if sha256 is not None and not digest_equal(receipt.sha256, sha256):
        wrong.append("sha256")
    if wrong:
        raise ProtocolError("receipt-mismatch", "the receipt is for another " + ", ".join(wrong))
    return receipt
