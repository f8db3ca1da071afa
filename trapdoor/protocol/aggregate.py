"""A round's aggregate and blind, computed the same way by the PS and by every auditor.

The PS adds the committed uploads to ``Enc(W_t)`` and blinds the sum with a trivial
encryption of ``R``: ``Agg = Enc(W_t) · Π U_k`` and ``F = Agg · (1 + R N)``. Every
contributor recomputes both from the same inputs (the PS-signed closed commitment set,
the uploads, ``Enc(W_t)`` and ``R``) and signs the digests (:func:`trapdoor.protocol.messages.
build_audit_statement`). The KGC opens ``F`` only when every contributor signed the same
digests, so a PS that swaps in an individual upload, a crafted ciphertext or another
``R`` is caught before anything is decrypted.

One function for both sides, so the PS, the client and every test fake cannot disagree
on what an aggregate is. Pure: no HTTP, no database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trapdoor.crypto.blocks import EncryptedVector, add_plaintexts
from trapdoor.protocol.bundle import blind_sha256
from trapdoor.protocol.messages import (
    AuditDigests,
    ClosedSet,
    JobTerms,
    ProtocolError,
    contributors_sha256,
    vector_sha256,
)

__all__ = ["AuditedRound", "audit_round"]


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
