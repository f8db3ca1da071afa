"""The request and answer bodies of the KGC's endpoints (docs/PROTOCOL.md, KGC section).

Typed from what :mod:`trapdoor.kgc.api` reads and :class:`trapdoor.kgc.domain.KgcService`
returns; the views declare them with :func:`trapdoor.service.web.documented`, and the
KGC's ``/openapi.json`` is generated from them. Shapes the parameter server's document
names too (signed terms, statements, release bindings) are in :mod:`trapdoor.service.schemas`.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, TypedDict

from trapdoor.kgc.models import NAME_LENGTH, SUBJECT_ID_LENGTH
from trapdoor.service.openapi import Constraint
from trapdoor.service.schemas import (
    Base64Url,
    BcpJobKey,
    BcpParams,
    BcpPublicKey,
    Ed25519Hex,
    JobId,
    MaskedLayoutJson,
    MaskedReleaseFields,
    Positive,
    ReleaseBindingFields,
    RequestedTerms,
    Role,
    Round,
    Run,
    Sealed,
    SeedObject,
    Signature,
    SignedJobTerms,
    SignedMaskedUploadStatement,
    SignedUndecodable,
    SubjectId,
    WrappedKey,
)

__all__ = [
    "BcpBundle",
    "CompletionRequest",
    "Enrolment",
    "EnrolmentRequest",
    "JobAnswer",
    "JobRequest",
    "KgcInfo",
    "MaskedBundle",
    "MaskedReleaseRequest",
    "TokenAnswer",
    "TokenRequest",
]


class KgcInfo(TypedDict):
    """``GET /v1/info``: public BCP parameters, the KGC's Ed25519 key, the demo flag."""

    params: BcpParams
    verify_key: Ed25519Hex
    demo: bool


class EnrolmentRequest(TypedDict):
    """``POST /v1/enrolments`` (operator): who to enrol, in which role."""

    #: stripped of surrounding spaces, 1 to ``NAME_LENGTH`` characters
    name: Annotated[str, Constraint(min_length=1, max_length=NAME_LENGTH, pattern=r"\S")]
    role: Role


class Enrolment(TypedDict):
    """The new subject's id and its one-time code (shown once, stored hashed)."""

    subject_id: SubjectId
    code: Base64Url


class CompletionRequest(TypedDict):
    """``POST /v1/enrolments/<id>/complete``: the code and the subject's own public keys."""

    code: str
    signing_key: Ed25519Hex
    #: participants only (the release is sealed to it)
    bcp_public_key: NotRequired[BcpPublicKey]


class TokenRequest(TypedDict):
    """``POST /v1/tokens``: a challenge signed with the subject's certified key
    (``trapdoor.protocol.token.TokenChallenge.to_request``)."""

    subject_id: Annotated[str, Constraint(min_length=1, max_length=SUBJECT_ID_LENGTH)]
    timestamp: int
    #: 8 to 128 printable ASCII characters, never used before by this subject
    nonce: Annotated[str, Constraint(pattern="^[!-~]{8,128}$")]
    #: ``"kgc"`` or the subject id of an enrolled parameter server
    audience: Annotated[str, Constraint(min_length=1, max_length=SUBJECT_ID_LENGTH)]
    signature: Signature


class TokenAnswer(TypedDict):
    """A short-lived EdDSA JWT for the audience, and when it expires (UNIX seconds)."""

    token: str
    expires_at: int


class JobRequest(TypedDict):
    """``POST /v1/jobs`` (parameter server): the terms it asks the KGC to sign."""

    job_id: JobId
    terms: RequestedTerms


class JobAnswer(TypedDict):
    """The signed terms of a new job and its fresh job key (the secrets are not kept)."""

    job_id: JobId
    job_key: BcpJobKey
    job_terms: SignedJobTerms
    job_terms_signature: Signature


class MaskedUploadEvidence(TypedDict):
    """One contributor's upload of a masked round: its signed statement and its seed."""

    statement: SignedMaskedUploadStatement
    seed: SeedObject


class MaskedReleaseRequest(TypedDict):
    """A masked job's release request, JSON
    (``trapdoor.protocol.release_request.masked_release_request_header``), signed whole."""

    job_id: JobId
    aggregation: Literal["masked"]
    round: Round
    run: Run
    layout: MaskedLayoutJson
    contributors: list[SubjectId]
    #: one per contributor, sorted by subject id
    uploads: list[MaskedUploadEvidence]
    #: run 1 only: every run-0 contributor's report
    undecodable: list[SignedUndecodable]
    request_signature: Signature


class BcpBundle(ReleaseBindingFields):
    """A bcp release: ``W + R`` sealed under a data key wrapped for each contributor
    (``trapdoor.protocol.bundle.seal_release``), signed by the KGC."""

    num_plaintexts: Positive
    sealed_model: Sealed
    wrapped_keys: dict[str, WrappedKey]
    kgc_signature: Signature


class MaskedBundle(MaskedReleaseFields):
    """A masked release: the contributors' mask sum ``D_t``, sealed the same way
    (``trapdoor.protocol.bundle.seal_mask_sum``)."""

    wrapped_keys: dict[str, WrappedKey]
