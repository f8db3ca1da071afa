"""The parameter server's own identity: a KGC-certified Ed25519 key, sealed at rest.

The PS signs upload receipts and release requests with this key; the KGC checks both
against the certificate it issued at enrolment. The key is stored only sealed
(scrypt + AES-GCM, passphrase from ``TRAPDOOR_PS_PASSPHRASE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.sealing import open_with_passphrase, seal_with_passphrase
from trapdoor.crypto.signing import (
    generate_signing_key,
    private_key_from_bytes,
    private_key_to_bytes,
)
from trapdoor.ps.kgc_gateway import complete_enrolment
from trapdoor.ps.models import Identity
from trapdoor.service.db import session_scope
from trapdoor.service.http import ServiceClient

__all__ = ["ServerIdentity", "enrol", "load_identity"]

_IDENTITY_ROW = 1


@dataclass(frozen=True)
class ServerIdentity:
    """Who this PS is to the KGC, and the key it signs with."""

    subject_id: str
    kgc_url: str
    signing_key: Ed25519PrivateKey
    certificate: dict[str, Any]
    certificate_signature: str

    def __repr__(self) -> str:  # never print the key
        return f"ServerIdentity(subject_id={self.subject_id!r}, kgc_url={self.kgc_url!r})"


def load_identity(sessions: sessionmaker[Session], passphrase: str) -> ServerIdentity | None:
    """The stored identity, unsealed; None before enrolment.

    Raises :class:`~trapdoor.crypto.sealing.SealError` for a wrong passphrase.
    """
    with sessions() as session:
        row = session.get(Identity, _IDENTITY_ROW)
        if row is None:
            return None
        raw = open_with_passphrase(row.sealed_signing_key, passphrase)
        return ServerIdentity(
            subject_id=row.subject_id,
            kgc_url=row.kgc_url,
            signing_key=private_key_from_bytes(raw),
            certificate=row.certificate,
            certificate_signature=row.certificate_signature,
        )


def enrol(
    sessions: sessionmaker[Session],
    kgc_url: str,
    *,
    subject_id: str,
    code: str,
    passphrase: str,
    clock: Callable[[], float] = time.time,
    client: ServiceClient | None = None,
) -> ServerIdentity:
    """First start: make a signing key, have the KGC certify it, store it sealed."""
    if not passphrase:
        raise ValueError("a passphrase is needed to seal the signing key")
    key = generate_signing_key()
    certificate, signature = complete_enrolment(
        client or ServiceClient(kgc_url), subject_id, code, key
    )
    sealed = seal_with_passphrase(private_key_to_bytes(key), passphrase)
    with session_scope(sessions) as session:
        session.add(
            Identity(
                id=_IDENTITY_ROW,
                subject_id=subject_id,
                kgc_url=kgc_url,
                certificate=certificate,
                certificate_signature=signature,
                sealed_signing_key=sealed,
                created_at=clock(),
            )
        )
    return ServerIdentity(subject_id, kgc_url, key, certificate, signature)
