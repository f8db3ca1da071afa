"""Release requests: what the PS asks the KGC to open, and the KGC's checks before it does.

Built and signed whole by the PS: for a ``bcp`` job the header of a vector frame
(:func:`release_request_header`: the closed set, each contributor's upload statement and
audit), for a ``masked`` job a JSON object (:func:`masked_release_request_header`: each
contributor's upload statement and seed ciphertext). Checked by the KGC (and by every
test fake, with the same functions): the PS's signature (:func:`verify_release_signature`),
the schedule (:func:`release_schedule`, :func:`release_round`: each round once, in order,
below ``rounds``; one re-run of a release that did not decode, :func:`request_run`), the
contributors (:func:`release_contributors`: distinct participants, at least the quorum),
and per mode every signed statement (:func:`check_release_request`,
:func:`check_masked_release_request`). A retry of a released request is recognised by
:func:`repeats_release`. For a masked release the KGC then sums the contributors' masks
from their seeds (:func:`kgc_mask_sum`) for :mod:`trapdoor.protocol.bundle` to seal. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey
from trapdoor.crypto.encoding import EncodingError
from trapdoor.crypto.masking import RingVector, derive_mask, open_seeds, ring_sum
from trapdoor.crypto.pok import verify_randomness, verify_release_chain
from trapdoor.crypto.signing import SignatureError, verify_json
from trapdoor.crypto.wire import MAX_HEADER_BYTES
from trapdoor.protocol._statement import ParticipantStatement
from trapdoor.protocol.audit import (
    AuditDigests,
    contributors_sha256,
    verify_audit_statement,
    verify_undecodable_statement,
)
from trapdoor.protocol.commitment import pok_context, verify_closed_set
from trapdoor.protocol.common import (
    MAX_ATTEMPT,
    MAX_ROUND,
    MAX_RUN,
    ProtocolError,
    in_range,
    is_json_int,
    json_sha256,
)
from trapdoor.protocol.job import JobTerms, MaskedLayout
from trapdoor.protocol.upload import (
    MaskedUploadStatement,
    UploadStatement,
    mask_context,
    seed_from_obj,
    seed_sha256,
    verify_masked_upload_statement,
    verify_upload_statement,
)

__all__ = [
    "RELEASE_HEADER_BYTES_PER_PARTICIPANT",
    "MaskedReleaseCheck",
    "ReleaseCheck",
    "ReleaseSchedule",
    "ReleasedRound",
    "UndecodedRelease",
    "check_masked_release_request",
    "check_release_request",
    "kgc_mask_sum",
    "masked_release_request_header",
    "release_contributors",
    "release_header_limit",
    "release_request_header",
    "release_round",
    "release_schedule",
    "repeats_release",
    "request_run",
    "verify_release_signature",
]

#: A release request's header carries, per participant, a signed commitment (in the closed
#: set), upload statement with its randomness proof, and audit: about 5.5 KiB at a 2048-bit
#: N with long ids, 9 KiB at 4096 bits; this much is allowed.
RELEASE_HEADER_BYTES_PER_PARTICIPANT = 12 * 1024

_S = TypeVar("_S", bound=ParticipantStatement)


# ------------------------------------------------------------ the request and its signature


def release_header_limit(participants: int) -> int:
    """The header cap of a release request for a job of ``participants`` (sized to it)."""
    return MAX_HEADER_BYTES + RELEASE_HEADER_BYTES_PER_PARTICIPANT * max(participants, 0)


def release_request_header(
    *,
    job_id: str,
    round_number: int,
    attempt: int,
    closed_set: Mapping[str, Any],
    statements: Sequence[Mapping[str, Any]],
    audits: Sequence[Mapping[str, Any]],
    run: int = 0,
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What a PS puts in the header of a release request frame (it signs it whole).

    ``undecodable`` is empty for run 0; for run 1 it is every run-0 contributor's report
    that run 0's release did not decode.
    """
    contributors = [str(s["statement"]["subject_id"]) for s in statements]
    return {
        "job_id": job_id,
        "round": int(round_number),
        "run": int(run),
        "undecodable": [dict(u) for u in undecodable],
        "attempt": int(attempt),
        "contributors": contributors,
        "closed_set": dict(closed_set),
        "statements": [dict(s) for s in statements],
        "audits": [dict(a) for a in audits],
    }


def verify_release_signature(header: Mapping[str, Any], ps_key: Ed25519PublicKey) -> int:
    """The PS's signature over a release request header; returns the round it names."""
    body = {k: v for k, v in header.items() if k != "request_signature"}
    try:
        verify_json(ps_key, body, header.get("request_signature"))
    except SignatureError:
        raise ProtocolError(
            "bad-request-signature", "the request is not signed by this job's server"
        ) from None
    round_number = header.get("round")
    if not isinstance(round_number, int) or isinstance(round_number, bool):
        raise ProtocolError("bad-field", "round must be a non-negative integer")
    if not 0 <= round_number <= MAX_ROUND:
        raise ProtocolError("bad-field", "round must be a non-negative integer")
    return round_number


# --------------------------------------------------------------------------- the KGC's schedule


@dataclass(frozen=True)
class ReleaseCheck:
    """A release request that passed every check: what the KGC may open, and for whom."""

    round: int
    run: int
    contributors: tuple[str, ...]
    digests: AuditDigests


@dataclass(frozen=True)
class UndecodedRelease:
    """The KGC's record of the run-0 release a run-1 request would re-run."""

    round: int
    contributors: tuple[str, ...]
    bundle_sha256: str


@dataclass(frozen=True)
class ReleasedRound:
    """What the KGC keeps of one release to schedule the next (newest decides)."""

    round: int
    run: int
    contributors: tuple[str, ...]
    #: the audited ``Agg`` (before the blind): the next round's base
    aggregate_sha256: str
    #: the opened vector's ``A`` components: the next release grows from them
    a_components: Sequence[int]
    #: :func:`trapdoor.protocol.bundle.bundle_sha256` of its bundle (what reports name)
    bundle_sha256: str


@dataclass(frozen=True)
class ReleaseSchedule:
    """Where a release request must continue the job's chain (see :func:`release_schedule`)."""

    next_round: int
    base_sha256: str
    #: None: ``Enc(W_0)``'s, all 1
    previous_a: Sequence[int] | None
    undecoded: UndecodedRelease | None = None


def release_schedule(terms: JobTerms, newest: Sequence[ReleasedRound], run: int) -> ReleaseSchedule:
    """What a request for ``run`` may release, given the job's releases newest first
    (the newest two are enough; the KGC and its test fake both call this).

    Round ``t``'s base is the aggregate (before its blind) that round ``t - 1``'s release
    was audited for; round 0's is the signed ``Enc(W_0)``. Run 0 continues the newest
    release. Run 1 re-runs the newest release, if that is a run 0, from the base that
    run 0 started from and for exactly its contributors (:func:`check_release_request`).
    """

    def after(previous: ReleasedRound | None, next_round: int) -> ReleaseSchedule:
        if previous is None:
            return ReleaseSchedule(next_round, terms.initial_ciphertext_sha256, None)
        return ReleaseSchedule(next_round, previous.aggregate_sha256, previous.a_components)

    latest = newest[0] if newest else None
    if run == 0 or latest is None:
        return after(latest, latest.round + 1 if latest else 0)
    before = newest[1] if len(newest) > 1 and newest[1].round < latest.round else None
    schedule = after(before, latest.round)
    if latest.run != 0:
        return schedule  # re-run already: check_release_request refuses another
    undecoded = UndecodedRelease(latest.round, latest.contributors, latest.bundle_sha256)
    return replace(schedule, undecoded=undecoded)


def repeats_release(
    header: Mapping[str, Any],
    payload_sha256: str,
    *,
    released_payload_sha256: str,
    released_contributors: Sequence[str],
    released_attempt: int | None,
) -> bool:
    """Whether a request for an already released (round, run) is that release's request
    again (a retry): the same frame ``F``, contributor set and attempt. The bundle is bound
    to them, so answering any other request with it would mislabel it."""
    contributors = header.get("contributors")
    return (
        isinstance(contributors, list)
        and all(isinstance(c, str) for c in contributors)
        and payload_sha256 == released_payload_sha256
        and sorted(contributors) == sorted(released_contributors)
        and is_json_int(header.get("attempt"))
        and header.get("attempt") == released_attempt
    )


# --------------------------------------------------------------------------- the KGC's checks


def request_run(header: Mapping[str, Any]) -> int:
    """The run a release request names (0, or 1 for a re-run); ``bad-field`` otherwise."""
    run = header.get("run")
    if not isinstance(run, int) or not in_range(run, 0, MAX_RUN):
        raise ProtocolError("bad-field", f"run must be an integer in [0, {MAX_RUN}]")
    return run


def release_round(header: Mapping[str, Any], terms: JobTerms, *, next_round: int) -> int:
    """The round a release request (of either mode) is for, if the KGC's schedule allows it:
    this job, ``0 <= t < rounds`` (409 ``round-out-of-range``), exactly the next unreleased
    round (409 ``out-of-schedule``)."""
    if header.get("job_id") != terms.job_id:
        raise ProtocolError("job-mismatch", "the request is for another job")
    round_number = header.get("round")
    if (
        not isinstance(round_number, int)
        or isinstance(round_number, bool)
        or not 0 <= round_number < terms.rounds
    ):
        raise ProtocolError(
            "round-out-of-range", f"round must be in [0, {terms.rounds}) for this job"
        )
    if round_number != next_round:
        raise ProtocolError(
            "out-of-schedule",
            f"round {round_number} cannot be released now: the next round is {next_round}",
        )
    return round_number


def release_contributors(header: Mapping[str, Any], terms: JobTerms) -> list[str]:
    """The contributors a release request (of either mode) names: distinct participants
    of the job, at least the quorum."""
    contributors = header.get("contributors")
    if not isinstance(contributors, list) or not all(isinstance(c, str) for c in contributors):
        raise ProtocolError("bad-field", "contributors must be a list of subject ids")
    if len(set(contributors)) != len(contributors):
        raise ProtocolError("duplicate-contributor", "contributors must be distinct")
    outsiders = sorted(set(contributors) - set(terms.participants))
    if outsiders:
        raise ProtocolError(
            "not-a-participant", "not participants of this job: " + ", ".join(outsiders[:10])
        )
    if len(contributors) < terms.quorum:
        raise ProtocolError(
            "below-quorum", f"{len(contributors)} contributors, the quorum is {terms.quorum}"
        )
    return contributors


def check_release_request(
    header: Mapping[str, Any],
    terms: JobTerms,
    *,
    next_round: int,
    base_sha256: str,
    payload_sha256: str,
    previous_a: Sequence[int],
    current_a: Sequence[int],
    undecoded: UndecodedRelease | None = None,
) -> ReleaseCheck:
    """The KGC's checks of a release request before it opens anything.

    Schedule: round ``t`` only for ``0 <= t < rounds``, in order, once (``next_round`` is
    the number of rounds already released; the caller answers a repeat of a released
    round before calling this). Contributors: distinct participants, at least the quorum,
    all in the one PS-signed closed commitment set. Per contributor: an upload statement
    for its committed payload under that set, and an audit statement; every audit names
    the same attempt, set, contributors, ``base_sha256`` (the KGC's latest release's
    aggregate, or ``Enc(W_0)`` from the terms) and ``payload_sha256`` (the frame it is
    asked to open) as ``F``.

    Re-run (``run`` 1): allowed only when ``undecoded`` is the job's latest release,
    of this round and run 0, and then only for exactly its contributor set, with its
    ``undecodable`` report from each of them; the caller gives the base and ``A`` that
    run 0 started from. So one base gives at most two releases, both over one set.
    """
    round_number = release_round(header, terms, next_round=next_round)
    run = request_run(header)
    attempt = header.get("attempt")
    if not isinstance(attempt, int) or not in_range(attempt, 0, MAX_ATTEMPT):
        raise ProtocolError("bad-field", f"attempt must be an integer in [0, {MAX_ATTEMPT}]")
    contributors = release_contributors(header, terms)
    _check_rerun(header, terms, round_number, run, contributors, undecoded)
    closed = verify_closed_set(header.get("closed_set"), terms, round_number=round_number, run=run)
    uncommitted = sorted(set(contributors) - set(closed.payloads))
    if uncommitted:
        raise ProtocolError(
            "not-committed", "contributors without a commitment: " + ", ".join(uncommitted[:10])
        )
    statements = _one_per_contributor(
        header.get("statements"),
        contributors,
        "statement",
        lambda signed: verify_upload_statement(
            signed,
            terms,
            round_number=round_number,
            payload_sha256=closed.payloads.get(_signer(signed, "statement"), ""),
            closed_set_sha256=closed.digest,
            run=run,
        ),
    )
    audits = _one_per_contributor(
        header.get("audits"),
        contributors,
        "audit",
        lambda signed: verify_audit_statement(signed, terms, round_number=round_number, run=run),
    )
    expected = AuditDigests(
        attempt=attempt,
        closed_set_sha256=closed.digest,
        contributors_sha256=contributors_sha256(contributors),
        base_sha256=base_sha256,
        aggregate_sha256=next(iter(audits.values())).aggregate_sha256,
        release_sha256=payload_sha256,
        blind_sha256=next(iter(audits.values())).blind_sha256,
    )
    for subject, audit in sorted(audits.items()):
        digests = audit.digests
        if digests != expected:
            differing = sorted(k for k, v in digests.fields().items() if expected.fields()[k] != v)
            raise ProtocolError(
                "audit-mismatch",
                f"{subject}'s audit differs from the request in: " + ", ".join(differing),
            )
    _check_a_chain(
        terms,
        round_number,
        closed.digest,
        [statements[s] for s in sorted(statements)],
        previous_a,
        current_a,
    )
    return ReleaseCheck(round_number, run, tuple(contributors), expected)


def _one_per_contributor(
    signed_list: object,
    contributors: Sequence[str],
    what: str,
    verify: Callable[[Any], _S],
) -> dict[str, _S]:
    """Verify one message per contributor (any order); return them by subject id."""
    if not isinstance(signed_list, list) or len(signed_list) != len(contributors):
        raise ProtocolError(f"{what}-mismatch", f"one {what} per contributor is needed")
    by_subject: dict[str, _S] = {}
    for signed in signed_list:
        checked = verify(signed)
        subject = checked.subject_id
        if subject not in contributors or subject in by_subject:
            raise ProtocolError(
                f"{what}-mismatch", f"{what}s and contributors do not match one to one"
            )
        by_subject[subject] = checked
    return by_subject


def _check_rerun(
    header: Mapping[str, Any],
    terms: JobTerms,
    round_number: int,
    run: int,
    contributors: Sequence[str],
    undecoded: UndecodedRelease | None,
) -> None:
    """Run 0 carries no reports; run 1 re-runs exactly the undecoded release's set."""
    reports = header.get("undecodable")
    if not isinstance(reports, list):
        raise ProtocolError("bad-field", "undecodable must be a list")
    if run == 0:
        if reports:
            raise ProtocolError("undecodable-mismatch", "run 0 carries no undecodable reports")
        return
    if undecoded is None or undecoded.round != round_number:
        raise ProtocolError(
            "out-of-schedule", f"round {round_number} has no undecoded release to re-run"
        )
    if sorted(contributors) != sorted(undecoded.contributors):
        raise ProtocolError(
            "rerun-set-mismatch",
            "a re-run must have exactly the contributors of the release it replaces",
        )
    _one_per_contributor(
        reports,
        undecoded.contributors,
        "undecodable",
        lambda signed: verify_undecodable_statement(
            signed,
            terms,
            round_number=round_number,
            run=0,
            bundle_sha256=undecoded.bundle_sha256,
        ),
    )


def _check_a_chain(
    terms: JobTerms,
    round_number: int,
    closed_set_sha256: str,
    statements: Sequence[UploadStatement],
    previous_a: Sequence[int],
    current_a: Sequence[int],
) -> None:
    """Every contributor's randomness proof, and ``A(F_t) = A(F_{t-1}) · Π_k A_k``.

    The KGC has only each upload's batched ``A*``: the proofs show their senders know the
    randomness, and the chain shows that the vector it opens holds those uploads and no
    other ciphertext (the trivial blind keeps ``A``; ``Enc(W_0)`` has ``A = 1``).
    """
    params = terms.job_key.params
    context = pok_context(terms, round_number, closed_set_sha256)
    a_stars = []
    for statement in statements:
        proof = statement.proof()
        try:
            verify_randomness(params, proof, context, statement.subject_id, blocks=len(current_a))
        except ValueError as exc:
            raise ProtocolError("bad-randomness-proof", f"{statement.subject_id}: {exc}") from None
        a_stars.append(proof.a_star)
    try:
        verify_release_chain(params, previous_a, current_a, a_stars, context)
    except ValueError as exc:
        raise ProtocolError("broken-a-chain", str(exc)) from None


def _signer(signed: object, field: str) -> str:
    """The subject id a signed message claims (checked by its verify function)."""
    if isinstance(signed, dict) and isinstance(signed.get(field), dict):
        return str(signed[field].get("subject_id"))
    return ""


# --------------------------------------------------------------------------- masked


def masked_release_request_header(
    *,
    job_id: str,
    round_number: int,
    run: int,
    layout: MaskedLayout,
    uploads: Sequence[Mapping[str, Any]],
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What a PS sends the KGC (as JSON, signed whole as ``request_signature``).

    ``uploads`` are ``{"statement": signed statement, "seed": seed object}``, one per
    contributor, sorted by subject id; ``undecodable`` as for the bcp mode. ``layout``
    tells the KGC the ring and length (the terms sign its digest as ``packing_sha256``).
    """
    ordered = sorted(
        ({"statement": dict(u["statement"]), "seed": dict(u["seed"])} for u in uploads),
        key=lambda u: str(u["statement"]["statement"]["subject_id"]),
    )
    return {
        "job_id": job_id,
        "aggregation": "masked",
        "round": int(round_number),
        "run": int(run),
        "layout": layout.to_json(),
        "contributors": [str(u["statement"]["statement"]["subject_id"]) for u in ordered],
        "uploads": ordered,
        "undecodable": [dict(u) for u in undecodable],
    }


@dataclass(frozen=True)
class MaskedReleaseCheck:
    """A masked release request that passed every check."""

    round: int
    run: int
    layout: MaskedLayout
    contributors: tuple[str, ...]
    #: subject id -> SHA-256 of its ``y``, as its statement signs it
    payloads: Mapping[str, str]
    #: subject id -> its seed ciphertext under the job key
    seeds: Mapping[str, Ciphertext]


def check_masked_release_request(
    header: Mapping[str, Any],
    terms: JobTerms,
    *,
    next_round: int,
    undecoded: UndecodedRelease | None = None,
) -> MaskedReleaseCheck:
    """The KGC's checks before it decrypts any seed (the PS signature is checked first).

    Schedule (round ``t`` only for ``0 <= t < rounds``, exactly the next one), run (0, or
    1 only to re-run the newest release's set with every contributor's report, as in the
    bcp mode), contributors (distinct participants, at least the quorum), and per
    contributor one statement for this round and run naming exactly the seed ciphertext
    sent with it. Seeds must be distinct: one ciphertext cannot count twice.
    """
    if header.get("aggregation") != "masked":
        raise ProtocolError("bad-field", "this job's releases are masked")
    round_number = release_round(header, terms, next_round=next_round)
    run = request_run(header)
    layout_obj = header.get("layout")
    if terms.aggregation != "masked" or json_sha256(layout_obj) != terms.packing_sha256:
        raise ProtocolError("job-mismatch", "the layout is not the one the terms sign")
    try:
        layout = MaskedLayout.from_json(layout_obj)
    except EncodingError as exc:
        raise ProtocolError("job-mismatch", f"layout: {exc}") from None
    contributors = release_contributors(header, terms)
    _check_rerun(header, terms, round_number, run, contributors, undecoded)
    uploads = header.get("uploads")
    if not isinstance(uploads, list) or not all(isinstance(u, dict) for u in uploads):
        raise ProtocolError("bad-field", "uploads must be a list of objects")

    def verify(upload: dict[str, Any]) -> MaskedUploadStatement:
        seed_obj = upload.get("seed")
        if not isinstance(seed_obj, dict):
            raise ProtocolError("bad-seed", "every upload carries its seed ciphertext")
        return verify_masked_upload_statement(
            upload.get("statement"),
            terms,
            round_number=round_number,
            run=run,
            seed_sha256=seed_sha256(seed_obj),
        )

    statements = _one_per_contributor(uploads, contributors, "statement", verify)
    seeds: dict[str, Ciphertext] = {}
    for upload in uploads:
        subject = str(upload["statement"]["statement"]["subject_id"])
        seeds[subject] = seed_from_obj(upload["seed"], terms.job_key)
    if len({(int(c.A), int(c.B)) for c in seeds.values()}) != len(seeds):
        raise ProtocolError("duplicate-seed", "two contributors sent the same seed ciphertext")
    payloads = {s: statements[s].payload_sha256 for s in sorted(statements)}
    return MaskedReleaseCheck(
        round_number, run, layout, tuple(sorted(contributors)), payloads, seeds
    )


def kgc_mask_sum(master: MasterKey, terms: JobTerms, check: MaskedReleaseCheck) -> RingVector:
    """``D_t = Σ μ_i``: every seed decrypted under the job key, never branched on.

    :func:`trapdoor.crypto.masking.open_seed` ignores whatever key a ciphertext names, and the
    full-width value goes straight into HKDF (:func:`trapdoor.crypto.masking.mask_key`), so a
    tampered seed gives an unrelated mask and no signal about the honest one.
    """
    job_key_0: PublicKey = terms.job_key.component(0)
    n = int(terms.job_key.params.n)
    layout = check.layout
    values = open_seeds(master, job_key_0, [check.seeds[s] for s in check.contributors])
    masks = []
    for subject, value in zip(check.contributors, values, strict=True):
        context = mask_context(
            terms, layout, round_number=check.round, run=check.run, signer=subject
        )
        masks.append(derive_mask(value, n, context, layout.ring))
    return ring_sum(masks, layout.ring, layout.length)
