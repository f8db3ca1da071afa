"""The request and answer bodies of the parameter server's endpoints (docs/PROTOCOL.md).

Typed from what :mod:`trapdoor.ps.api` reads and :class:`trapdoor.ps.domain.ParameterServer`
returns (the job definition as :mod:`trapdoor.ps.definition` checks it, the job and round
views of :mod:`trapdoor.ps.jobs`, the answers of the round steps); the views declare them
with :func:`trapdoor.service.web.documented`, and the PS's ``/openapi.json`` is generated
from them. The signed round messages, terms and release bindings it shares with the KGC's
document are in :mod:`trapdoor.service.schemas`.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, TypedDict

from trapdoor.ps.definition import MAX_DEADLINE_SECONDS, MAX_ROUNDS, MAX_WIDTH, POLICIES
from trapdoor.service.openapi import Constraint, open_object
from trapdoor.service.schemas import (
    Aggregation,
    Attempt,
    Base64Url,
    BcpJobKey,
    Count,
    Ed25519Hex,
    Float64Base64,
    JobId,
    MaskedLayoutJson,
    MaskedReleaseFields,
    Positive,
    ReleaseBindingFields,
    Round,
    Run,
    Sealed,
    Sha256Hex,
    Signature,
    SignedClosedSet,
    SignedJobTerms,
    SubjectId,
    WrappedKey,
)

__all__ = [
    "AuditAnswer",
    "AuditPackage",
    "BcpDownload",
    "ClosedSetAnswer",
    "CommitmentAnswer",
    "JobDefinition",
    "JobList",
    "JobSummary",
    "JobView",
    "MaskedDownload",
    "MetricsAnswer",
    "ParticipationAnswer",
    "ParticipationEntry",
    "ParticipationNotice",
    "PsInfo",
    "RoundView",
    "SharedMetrics",
    "UndecodableAnswer",
]

Seconds = float


class PsInfo(TypedDict):
    """``GET /v1/info``: the PS's subject id and the keys its answers are checked with."""

    service: Literal["trapdoor-param-server"]
    subject_id: SubjectId
    #: signs receipts, closed commitment sets and release requests
    verify_key: Ed25519Hex
    kgc_verify_key: Ed25519Hex


# ---------------------------------------------------------------- the job definition


@open_object
class ModelSpec(TypedDict):
    """A model of the registry (``trapdoor.ml.spec``); its other fields depend on its kind
    (``mlp``: ``layer_sizes``; ``torch``: ``name`` and ``kwargs``; ...)."""

    kind: str


class TrainingSpec(TypedDict):
    """How each participant trains a round (``trapdoor.ml.spec.training_spec``)."""

    learning_rate: NotRequired[Annotated[float, Constraint(exclusive_minimum=0)]]
    local_epochs: NotRequired[Positive]
    batch_size: NotRequired[Positive]
    mode: NotRequired[Literal["fedavg", "fedsgd"]]
    seed: NotRequired[Count]


class Member(TypedDict):
    """A participant of the job and its number of samples (its public weight is
    ``num_samples / Σ num_samples``)."""

    subject_id: SubjectId
    num_samples: Positive


class BcpEncoding(TypedDict):
    """Fixed point and packing of a bcp job (defaults filled in when stored)."""

    frac_bits: NotRequired[int]
    slot_bits: NotRequired[int]
    slot_bound: NotRequired[Annotated[float, Constraint(exclusive_minimum=0)]]
    clip_bound: NotRequired[Annotated[float, Constraint(exclusive_minimum=0)]]
    width: NotRequired[Annotated[int, Constraint(minimum=1, maximum=MAX_WIDTH)]]


class MaskedEncoding(TypedDict):
    """Fixed point and bounds of a masked job (it has no packing fields)."""

    frac_bits: NotRequired[int]
    clip_bound: NotRequired[Annotated[float, Constraint(exclusive_minimum=0)]]
    model_bound: NotRequired[Annotated[float, Constraint(exclusive_minimum=0)]]


class JobDefinition(TypedDict):
    """``POST /v1/jobs`` (operator), checked whole by ``trapdoor.ps.definition``; stored
    and served back with every default filled in."""

    job_id: JobId
    model: ModelSpec
    #: ``W_0``: float64 little-endian, as many as the model has parameters
    initial_weights: Float64Base64
    training: TrainingSpec
    participants: Annotated[list[Member], Constraint(min_items=1)]
    #: default: 3, or every participant if fewer
    quorum: NotRequired[Positive]
    rounds: Annotated[int, Constraint(minimum=1, maximum=MAX_ROUNDS)]
    round_deadline_seconds: NotRequired[
        Annotated[float, Constraint(exclusive_minimum=0, maximum=MAX_DEADLINE_SECONDS)]
    ]
    below_quorum_policy: NotRequired[Annotated[str, Constraint(enum=POLICIES)]]
    #: default: ``masked``
    aggregation: NotRequired[Aggregation]
    encoding: NotRequired[BcpEncoding | MaskedEncoding]
    #: default false: contributors send the PS their evaluation of each released model
    #: (``trapdoor.protocol.metrics``), which shows the example-weighted average per round
    share_metrics: NotRequired[bool]


# ---------------------------------------------------------------- jobs and rounds


class JobSummary(TypedDict):
    """A job's status and progress."""

    job_id: JobId
    status: Literal["running", "finished", "failed"]
    current_round: Round
    rounds_total: Positive
    created_at: Seconds


class JobList(TypedDict):
    """``GET /v1/jobs``: every job, oldest first."""

    jobs: list[JobSummary]


class PackingJson(TypedDict):
    """A bcp job's packing layout (``trapdoor.crypto.encoding.PackingLayout.to_json``)."""

    modulus: Annotated[str, Constraint(pattern="^[0-9a-f]+$")]
    length: Positive
    frac_bits: Count
    slot_bits: Positive
    slot_bound: float
    max_terms: Positive


class ParticipationNotice(TypedDict):
    """``PUT /v1/jobs/<id>/participation``: a participant's node joined, or declined why."""

    status: Literal["joined", "declined"]
    #: required when declined, absent or null when joined
    reason: NotRequired[Annotated[str, Constraint(max_length=500)] | None]


class ParticipationEntry(TypedDict):
    """A participant's latest word on a job."""

    status: Literal["joined", "declined"]
    reason: str | None
    at: Seconds


class ParticipationAnswer(ParticipationEntry):
    """The entry stored."""

    job_id: JobId
    subject_id: SubjectId


class JobView(JobSummary):
    """What a participant checks before it encrypts anything
    (``trapdoor.protocol.job.check_job_view``)."""

    definition: JobDefinition
    job_key: BcpJobKey
    job_terms: SignedJobTerms
    job_terms_signature: Signature
    packing: PackingJson | MaskedLayoutJson
    weights: dict[str, float]
    #: the operator only: each participant's latest word, by subject id
    participation: NotRequired[dict[str, ParticipationEntry]]


class SharedMetrics(TypedDict):
    """``trapdoor.protocol.metrics.aggregate_metrics`` over the round's reports."""

    reporters: Count
    #: the reporters' test examples in all
    num_examples: Count
    #: weighted mean loss (null before any report)
    loss: float | None
    #: each metric's weighted mean over the reporters that gave it
    metrics: dict[str, float]
    #: each metric's examples (a metric only some reporters gave has fewer)
    coverage: dict[str, Count]
    #: who reported
    reported: list[SubjectId]


class RoundView(TypedDict):
    """A round's phase, run and attempt, who committed and uploaded, and its times."""

    job_id: JobId
    round: Round
    status: Literal["open", "committed", "closed", "released", "failed"]
    run: Run
    attempt: Attempt
    commitments: Count
    #: the closed set's subjects (none before it closes)
    committed: list[SubjectId]
    #: who uploaded
    contributors: list[SubjectId]
    uploads: Count
    opened_at: Seconds
    #: the current phase's deadline
    deadline: Seconds
    closed_at: Seconds | None
    released_at: Seconds | None
    #: a job with ``share_metrics``: the contributors' reported evaluation of the model
    #: this round released, averaged weighted by their test examples
    shared_metrics: NotRequired[SharedMetrics]


# ---------------------------------------------------------------- round steps


class CommitmentAnswer(TypedDict):
    """A commitment stored (201) or the same one again (200)."""

    job_id: JobId
    round: Round
    run: Run
    subject_id: SubjectId
    payload_sha256: Sha256Hex


class ClosedSetAnswer(TypedDict):
    """``GET .../commitments``: the PS-signed closed commitment set."""

    closed_set: SignedClosedSet


class AuditPackage(TypedDict):
    """What a contributor audits: the attempt, its contributors, ``R`` and the digests."""

    job_id: JobId
    round: Round
    run: Run
    attempt: Attempt
    contributors: list[SubjectId]
    closed_set: SignedClosedSet
    #: ``R``, fixed-width big-endian integers, base64url
    blind: Base64Url
    base_sha256: Sha256Hex
    aggregate_sha256: Sha256Hex
    release_sha256: Sha256Hex
    blind_sha256: Sha256Hex


class AuditAnswer(TypedDict):
    """An audit stored (201) or the same one again (200)."""

    job_id: JobId
    round: Round
    run: Run
    attempt: Attempt
    subject_id: SubjectId


class UndecodableAnswer(TypedDict):
    """An undecodable report stored (201) or the same one again (200)."""

    job_id: JobId
    round: Round
    run: Run
    subject_id: SubjectId


class MetricsAnswer(TypedDict):
    """A metrics report stored (201) or the same one again (200)."""

    job_id: JobId
    round: Round
    run: Run
    subject_id: SubjectId


class BcpDownload(ReleaseBindingFields):
    """A contributor's part of a bcp release: the sealed model, its own wrapped key, ``R``."""

    num_plaintexts: Positive
    sealed_model: Sealed
    kgc_signature: Signature
    wrapped_key: WrappedKey
    blind: Base64Url


class MaskedDownload(MaskedReleaseFields):
    """A contributor's part of a masked release: the sealed mask sum, its own wrapped key."""

    wrapped_key: WrappedKey
