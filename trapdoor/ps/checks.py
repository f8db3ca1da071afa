"""What the checks of both aggregation modes share: the refusal a failed check becomes.

A participant's message that does not verify, a message retried with other content and a
KGC that refuses or cannot be reached each become one kind of
:class:`~trapdoor.service.errors.TrapdoorError`, decided here once for every step
(commitments, uploads, audits, undecodable reports, job creation).

Pure: no Flask, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trapdoor.crypto.wire import MAX_HEADER_BYTES
from trapdoor.protocol.commitment import Signed
from trapdoor.protocol.common import ProtocolError
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.service.errors import (
    BadGatewayError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    TrapdoorError,
    UnavailableError,
)

__all__ = ["already_stored", "from_kgc", "max_frame_bytes", "refusal"]

_FRAME_PREFIX_BYTES = 9  # magic, version, header length (trapdoor.crypto.wire)
#: Refusals of a participant-signed message that say "not this participant's signature"
#: (403); the other codes (bad-*, *-mismatch) are a malformed or mislabelled message (422).
_FORBIDDEN_CODES = frozenset(
    {
        "not-a-participant",
        "bad-statement-signature",
        "bad-commitment-signature",
        "bad-audit-signature",
        "bad-undecodable-signature",
        "bad-metrics_report-signature",
    }
)


def max_frame_bytes(payload_bytes: int) -> int:
    """The largest well-formed upload frame: a full header and exactly ``payload_bytes``.

    The API refuses a longer body before reading it, so the bound is the job's own.
    """
    return _FRAME_PREFIX_BYTES + MAX_HEADER_BYTES + payload_bytes


def refusal(exc: ProtocolError) -> TrapdoorError:
    """A participant-signed message that does not verify: forbidden for a signature that is
    not its participant's, invalid otherwise."""
    kind = ForbiddenError if exc.code in _FORBIDDEN_CODES else InvalidError
    return kind(exc.code, exc.message)


def already_stored(stored: object, canonical: Mapping[str, Any], code: str, message: str) -> bool:
    """A retried message: True if exactly it is stored, a conflict ``code`` if another is."""
    if stored is None:
        return False
    if stored != canonical:
        raise ConflictError(code, message)
    return True


def with_report(
    stored: Mapping[str, Any] | None, subject_id: str, report: Signed[Any], code: str
) -> dict[str, Any] | None:
    """A round's reports by subject with ``subject_id``'s checked ``report`` added (its
    canonical envelope); None when exactly it is stored already (a retry), a conflict
    ``code`` when another one is."""
    canonical = report.to_json()
    reports = dict(stored or {})
    if already_stored(reports.get(subject_id), canonical, code, "reported already"):
        return None
    reports[subject_id] = canonical
    return reports


def from_kgc(exc: KgcError, *, conflict: str) -> TrapdoorError:
    """A KGC refusal as the PS's own caller should see it (``conflict``: the code of a 409)."""
    if exc.code == "bad-kgc-answer":  # the KGC answered something the PS must not use
        return BadGatewayError("bad-kgc-answer", exc.message)
    if exc.retryable:
        return UnavailableError("kgc-unavailable", "the KGC cannot be reached; try again later")
    if exc.status == 409:
        return ConflictError(conflict, exc.message)
    if exc.status in (400, 404, 422):
        return InvalidError("kgc-rejected", exc.message)
    return BadGatewayError("kgc-error", exc.message)
