"""A tamper-evident audit log: an append-only table whose rows are chained and signed.

Each row names the previous row's digest (``prev_sha256``; the first names 64 zeros) and
is signed by the service's own Ed25519 key over its whole body, in the same transaction
as the action it records. So whoever edits a row, deletes one from the middle or reorders
them breaks the chain or a signature, and cannot mend it without the service's key (which
stays sealed). :func:`verify_entries` checks an exported log offline with the service's
public key. A cut at the end (the newest rows deleted) leaves a valid shorter chain:
compare the head with one exported earlier (``verify --head``) to see it.

``prev_sha256`` is unique in the table, so two concurrent appends cannot fork the chain:
the second one's transaction fails and its action with it.

Each service declares its table with :class:`AuditLogColumns` (``kgc_audit_log``,
``ps_audit_log``); the row's ``detail`` holds identifiers and counts, never a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import JSON, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from trapdoor.crypto.signing import SignatureError, canonical_json, sign_json, verify_json

__all__ = [
    "GENESIS",
    "AuditLogColumns",
    "AuditVerification",
    "append_entry",
    "entry_digest",
    "export_entries",
    "verify_entries",
]

#: What the first row names as its predecessor.
GENESIS = "0" * 64
_BODY = ("seq", "at", "event", "subject", "detail", "prev_sha256")


class AuditLogColumns:
    """The columns of a service's audit log table (a declarative mixin)."""

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)
    event: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)


def entry_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of a row's body (canonical JSON of its :data:`_BODY` fields)."""
    return hashlib.sha256(canonical_json({k: body[k] for k in _BODY})).hexdigest()


def append_entry(
    session: Session,
    model: type[AuditLogColumns],
    signing_key: Ed25519PrivateKey,
    *,
    at: float,
    event: str,
    subject: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Add the next row to ``model``'s chain in the caller's transaction."""
    last = session.scalars(select(model).order_by(model.seq.desc()).limit(1)).first()
    body: dict[str, Any] = {
        "seq": 1 if last is None else last.seq + 1,
        "at": float(at),
        "event": event,
        "subject": subject,
        "detail": dict(detail or {}),
        "prev_sha256": GENESIS if last is None else last.sha256,
    }
    row: Any = model  # a mapped subclass: its constructor takes the columns
    session.add(row(**body, sha256=entry_digest(body), signature=sign_json(signing_key, body)))


def export_entries(session: Session, model: type[AuditLogColumns]) -> list[dict[str, Any]]:
    """Every row, oldest first, as JSON objects (one JSON Lines line each)."""
    rows = session.scalars(select(model).order_by(model.seq)).all()
    return [
        {
            **{k: getattr(row, k) for k in _BODY},
            "sha256": row.sha256,
            "signature": row.signature,
        }
        for row in rows
    ]


@dataclass
class AuditVerification:
    """What :func:`verify_entries` found: the rows checked, the head, every problem."""

    entries: int = 0
    head_seq: int = 0
    head_sha256: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_entries(
    entries: Iterable[Mapping[str, Any]],
    verify_key: Ed25519PublicKey,
    *,
    expected_head: Sequence[Any] | None = None,
) -> AuditVerification:
    """Check the chain: consecutive ``seq`` from 1, each ``prev_sha256`` the previous
    digest, each digest and signature right; ``expected_head`` ``(seq, sha256)`` from an
    earlier export must still be in the chain (a cut at the end is seen then)."""
    result = AuditVerification()
    prev = GENESIS
    seen: dict[int, str] = {}
    for position, entry in enumerate(entries, start=1):
        result.entries += 1
        where = f"line {position}"
        missing = [k for k in (*_BODY, "sha256", "signature") if k not in entry]
        if missing:
            result.problems.append(f"{where}: missing {missing}")
            continue
        if entry["seq"] != position:
            result.problems.append(
                f"{where}: seq {entry['seq']} where {position} was due (a row deleted or moved)"
            )
        if entry["prev_sha256"] != prev:
            result.problems.append(f"{where}: does not follow the row before it (chain broken)")
        body = {k: entry[k] for k in _BODY}
        if entry_digest(body) != entry["sha256"]:
            result.problems.append(f"{where}: its digest does not match its content (edited)")
        try:
            verify_json(verify_key, body, entry["signature"])
        except (SignatureError, ValueError, TypeError):
            result.problems.append(f"{where}: not signed by the service (edited or forged)")
        prev = str(entry["sha256"])
        seen[int(entry["seq"])] = prev
        result.head_seq, result.head_sha256 = int(entry["seq"]), prev
    if expected_head is not None:
        seq, digest = int(expected_head[0]), str(expected_head[1])
        if seen.get(seq) != digest:
            result.problems.append(
                f"the earlier head (seq {seq}) is not in this log: rows were cut or replaced"
            )
    return result
