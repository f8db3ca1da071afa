"""Audits: every contributor recomputes a round's aggregate and signs what it found.

``bcp`` only. The PS adds the committed uploads to ``Enc(W_t)`` and blinds the sum with a
trivial encryption of ``R``: ``Agg = Enc(W_t) · Π U_k`` and ``F = Agg · (1 + R N)``.
Every contributor recomputes both from the same inputs with the one function the PS uses
(:func:`audit_round`), and signs their digests (:func:`build_audit_statement`); the KGC
(:func:`trapdoor.protocol.release_request.check_release_request`, through
:func:`verify_audit_statement`) opens ``F`` only when every contributor signed the same
digests, so a PS that swaps in an individual upload, a crafted ciphertext or another
``R`` is caught before anything is decrypted.

An ``undecodable`` report (:func:`build_undecodable_statement`, both modes) is a
contributor's signed word that the release it opened does not decode; the KGC allows a
round's one re-run only with such a report from every contributor
(:func:`verify_undecodable_statement`). Pure: no HTTP, no database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.blocks import EncryptedVector, add_plaintexts
from trapdoor.protocol._statement import ParticipantStatement, verify_participant_signed
from trapdoor.protocol.bundle import blind_sha256
from trapdoor.protocol.commitment import ClosedSet
from trapdoor.protocol.common import ProtocolError, digest_equal, json_sha256, vector_sha256
from trapdoor.protocol.job import JobTerms

__all__ = [
    "AUDIT_PURPOSE",
    "UNDECODABLE_PURPOSE",
    "AuditDigests",
    "AuditStatement",
    "AuditedRound",
    "UndecodableStatement",
    "audit_round",
    "build_audit_statement",
    "build_undecodable_statement",
    "contributors_sha256",
    "verify_audit_statement",
    "verify_undecodable_statement",
]

AUDIT_PURPOSE = "trapdoor/audit/v2"
UNDECODABLE_PURPOSE = "trapdoor/undecodable/v1"


def contributors_sha256(contributors: Sequence[str]) -> str:
    """The digest of a contributor set (order does not matter)."""
    return json_sha256(sorted(contributors))


@dataclass(frozen=True)
class AuditDigests:
    """What a contributor checked and signs about one attempt at a round's aggregate.

    ``base`` is ``Enc(W_t)``, ``aggregate`` is ``Agg = Enc(W_t) · Π U_k`` over exactly the
    ``contributors``, ``release`` is ``F = Agg · (1 + R N)`` (what the KGC opens) and
    ``blind`` is ``R``; all are SHA-256 of their payload bytes.
    """

    attempt: int
    closed_set_sha256: str
    contributors_sha256: str
    base_sha256: str
    aggregate_sha256: str
    release_sha256: str
    blind_sha256: str

    def fields(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "closed_set_sha256": self.closed_set_sha256,
            "contributors_sha256": self.contributors_sha256,
            "base_sha256": self.base_sha256,
            "aggregate_sha256": self.aggregate_sha256,
            "release_sha256": self.release_sha256,
            "blind_sha256": self.blind_sha256,
        }


_AUDIT_DIGESTS = (
    "closed_set_sha256",
    "contributors_sha256",
    "base_sha256",
    "aggregate_sha256",
    "release_sha256",
    "blind_sha256",
)


# --------------------------------------------------------------------------- the computation


@dataclass(frozen=True)
class AuditedRound:
    """An attempt at a round, recomputed: the aggregate, the blinded release and digests."""

    contributors: tuple[str, ...]
    aggregate: EncryptedVector
    release: EncryptedVector
    digests: AuditDigests
    #: the run the closed set is for (what the audit statement must name)
    run: int = 0


def audit_round(
    terms: JobTerms,
    closed: ClosedSet,
    *,
    attempt: int,
    base: EncryptedVector,
    uploads: Mapping[str, EncryptedVector],
    blind: Sequence[int],
    subject_id: str | None = None,
) -> AuditedRound:
    """Recompute ``Agg`` and ``F`` from committed uploads; refuse anything else.

    ``uploads`` maps each contributor of this attempt to its ciphertext; every one must
    match its commitment in ``closed`` and there must be at least the quorum. With
    ``subject_id`` (an auditing contributor) it must be among them. In round 0 the base
    must be the trivial ``Enc(W_0)`` the terms name; later bases are chained by the KGC,
    which requires each base to be the aggregate of its latest release.
    """
    contributors = tuple(sorted(uploads))
    if subject_id is not None and subject_id not in uploads:
        raise ProtocolError("not-included", f"{subject_id} is not a contributor of this attempt")
    if len(contributors) < terms.quorum:
        raise ProtocolError(
            "below-quorum", f"{len(contributors)} contributors, the quorum is {terms.quorum}"
        )
    for subject in contributors:
        committed = closed.payloads.get(subject)
        if committed is None:
            raise ProtocolError("not-committed", f"{subject} has no commitment in the closed set")
        if vector_sha256(uploads[subject]) != committed:
            raise ProtocolError("upload-mismatch", f"{subject}'s upload is not what it committed")
    base_digest = vector_sha256(base)
    if closed.round == 0 and base_digest != terms.initial_ciphertext_sha256:
        raise ProtocolError("base-mismatch", "round 0 must start from the signed Enc(W_0)")
    n = int(terms.job_key.params.n)
    if len(blind) != base.layout.num_plaintexts or any(not 0 <= int(r) < n for r in blind):
        raise ProtocolError("bad-blind", "R must be one value in [0, N) per plaintext")
    aggregate = EncryptedVector.sum([base, *(uploads[s] for s in contributors)])
    release = add_plaintexts(aggregate, blind)
    digests = AuditDigests(
        attempt=attempt,
        closed_set_sha256=closed.digest,
        contributors_sha256=contributors_sha256(contributors),
        base_sha256=base_digest,
        aggregate_sha256=vector_sha256(aggregate),
        release_sha256=vector_sha256(release),
        blind_sha256=blind_sha256(blind, n),
    )
    return AuditedRound(contributors, aggregate, release, digests, closed.run)


# --------------------------------------------------------------------------- audit statements


@dataclass(frozen=True)
class AuditStatement(ParticipantStatement):
    """A contributor's signed audit: the digests of one attempt it recomputed."""

    FIELD: ClassVar[str] = "audit"
    PURPOSE: ClassVar[str] = AUDIT_PURPOSE
    DIGESTS: ClassVar[tuple[str, ...]] = _AUDIT_DIGESTS
    INTEGERS: ClassVar[tuple[str, ...]] = ("attempt",)

    attempt: int
    closed_set_sha256: str
    contributors_sha256: str
    base_sha256: str
    aggregate_sha256: str
    release_sha256: str
    blind_sha256: str

    @property
    def digests(self) -> AuditDigests:
        """What the audit vouches for (compared with the attempt's, field by field)."""
        return AuditDigests(**{k: getattr(self, k) for k in ("attempt", *_AUDIT_DIGESTS)})


def build_audit_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    digests: AuditDigests,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signature (wire form) that it recomputed this attempt's aggregate
    and blind."""
    audit = AuditStatement.for_round(terms, round_number, subject_id, run, **digests.fields())
    return audit.sign(signing_key).to_json()


def verify_audit_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    run: int = 0,
) -> AuditStatement:
    """Check a signed audit statement; its body (``.digests``: what it vouches for)."""
    return verify_participant_signed(
        signed, AuditStatement, terms, round_number=round_number, subject_id=subject_id, run=run
    )


# --------------------------------------------------------------------------- undecodable reports


@dataclass(frozen=True)
class UndecodableStatement(ParticipantStatement):
    """A contributor's signed report that the release bundle it names does not decode."""

    FIELD: ClassVar[str] = "undecodable"
    PURPOSE: ClassVar[str] = UNDECODABLE_PURPOSE
    DIGESTS: ClassVar[tuple[str, ...]] = ("bundle_sha256",)

    bundle_sha256: str


def build_undecodable_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str,
    bundle_sha256: str,
) -> dict[str, Any]:
    """A contributor's signed report (wire form) that the release it opened does not decode.

    It names the bundle (:func:`trapdoor.protocol.bundle.bundle_sha256`): the KGC allows round
    ``t``'s one re-run only with such a report from every contributor of that bundle.
    """
    report = UndecodableStatement.for_round(
        terms, round_number, subject_id, run, bundle_sha256=bundle_sha256
    )
    return report.sign(signing_key).to_json()


def verify_undecodable_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str | None = None,
    bundle_sha256: str | None = None,
) -> UndecodableStatement:
    """Check an ``undecodable`` report (for ``bundle_sha256`` when given); its body."""
    report = verify_participant_signed(
        signed,
        UndecodableStatement,
        terms,
        round_number=round_number,
        subject_id=subject_id,
        run=run,
    )
    if bundle_sha256 is not None and not digest_equal(report.bundle_sha256, bundle_sha256):
        raise ProtocolError("undecodable-mismatch", "the report names another release")
    return report
