"""Enrolment: the certificate the KGC signs for a subject's own keys.

A subject makes its keys itself and sends only the public halves with its one-time code;
the KGC certifies them (:func:`sign_certificate`): the subject's id, name and role, its
Ed25519 key (which signs its token challenges and, for a participant, every round
message) and, for a participant, its BCP public key (the release is sealed to it). The
subject checks the answer (:func:`verify_certificate`) under the KGC key it is about to
pin: a KGC, or a man in the middle, that certified other keys or signed with another key
is not trusted. The KGC's records and the one-time code stay with the KGC. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, sign_json, verify_json
from trapdoor.protocol.common import ProtocolError, is_json_int

__all__ = ["Certificate", "sign_certificate", "verify_certificate"]

_FIELDS = ("subject_id", "name", "role", "signing_key", "issued_at")


@dataclass(frozen=True)
class Certificate:
    """What the KGC certifies about one subject (``bcp_public_key`` for participants only)."""

    subject_id: str
    name: str
    role: str
    #: Ed25519 public key, 64 lowercase hex characters
    signing_key: str
    #: UNIX seconds
    issued_at: int
    #: :func:`trapdoor.crypto.wire.to_obj` of the participant's BCP public key
    bcp_public_key: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The signed object (a subject without a BCP key has no such field)."""
        obj: dict[str, Any] = {
            "subject_id": self.subject_id,
            "name": self.name,
            "role": self.role,
            "signing_key": self.signing_key,
            "issued_at": self.issued_at,
        }
        if self.bcp_public_key is not None:
            obj["bcp_public_key"] = dict(self.bcp_public_key)
        return obj

    @classmethod
    def from_json(cls, obj: object) -> Certificate:
        """Inverse of :meth:`to_json`; strict (exact keys and types), ``bad-certificate``."""
        if not isinstance(obj, dict) or not {*_FIELDS} <= set(obj) <= {*_FIELDS, "bcp_public_key"}:
            raise ProtocolError("bad-certificate", "a certificate has exactly its fields")
        if not all(isinstance(obj[k], str) for k in _FIELDS if k != "issued_at"):
            raise ProtocolError("bad-certificate", "a certificate's ids and keys are strings")
        if not is_json_int(obj["issued_at"]):
            raise ProtocolError("bad-certificate", "issued_at must be an integer")
        bcp = obj.get("bcp_public_key")
        if bcp is not None and not isinstance(bcp, dict):
            raise ProtocolError("bad-certificate", "bcp_public_key must be an object")
        return cls(
            subject_id=obj["subject_id"],
            name=obj["name"],
            role=obj["role"],
            signing_key=obj["signing_key"],
            issued_at=obj["issued_at"],
            bcp_public_key=bcp,
        )


def sign_certificate(kgc_key: Ed25519PrivateKey, certificate: Certificate) -> dict[str, Any]:
    """The KGC's answer to a completed enrolment: ``{"certificate", "signature"}``."""
    body = certificate.to_json()
    return {"certificate": body, "signature": sign_json(kgc_key, body)}


def verify_certificate(
    verify_key: Ed25519PublicKey | str,
    certificate: object,
    signature: object,
    *,
    subject_id: str,
    role: str,
    signing_key: str,
    bcp_public_key: Mapping[str, Any] | None = None,
) -> Certificate:
    """Check a certificate under the KGC's ``verify_key`` (or its hex) and that it certifies *our*
    keys: ``subject_id``, ``role``, ``signing_key`` and, when given, ``bcp_public_key``.

    ``bad-certificate`` when there is none, ``bad-certificate-signature`` when another key
    signed it, ``certificate-mismatch`` (naming the fields) when it certifies other keys.
    """
    if not isinstance(certificate, dict):
        raise ProtocolError("bad-certificate", "the KGC returned no certificate")
    try:
        key = public_key_from_hex(verify_key) if isinstance(verify_key, str) else verify_key
        verify_json(key, certificate, signature)
    except (SignatureError, ValueError):
        raise ProtocolError(
            "bad-certificate-signature", "the certificate is not signed by the KGC's verify_key"
        ) from None
    expected: dict[str, Any] = {"subject_id": subject_id, "role": role, "signing_key": signing_key}
    if bcp_public_key is not None:
        expected["bcp_public_key"] = dict(bcp_public_key)
    wrong = sorted(k for k, v in expected.items() if certificate.get(k) != v)
    if wrong:
        raise ProtocolError(
            "certificate-mismatch",
            f"the certificate does not certify this {role}'s keys: " + ", ".join(wrong),
        )
    return Certificate.from_json(certificate)
