"""Database models of the parameter server (SQLAlchemy 2.0, typed).

The PS stores only public or encrypted material: job definitions (``W_0`` is public),
the job key, participants' signed commitments, audits and ciphertext uploads, the
encrypted global model ``Enc(W_t)`` as chunked rows of fixed-width group elements,
release bundles (sealed for contributors) and the blinds ``R`` (public to the round's
contributors, who audit them). Its one secret, the Ed25519 signing key, is sealed under a
passphrase.

Invariants the schema enforces (so two gunicorn workers cannot break them):

- one commitment and one upload per (job, round, participant);
- one audit per (job, round, attempt, participant);
- one payload digest per job: a byte-identical ciphertext can only be a replay;
- one chunk per (job, version, index), one release per (job, round).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from trapdoor.service.db import make_metadata

__all__ = [
    "Audit",
    "Base",
    "Commitment",
    "Identity",
    "Job",
    "ModelChunk",
    "Release",
    "Round",
    "Upload",
    "metadata",
]

JOB_ID_LENGTH = 64
SUBJECT_ID_LENGTH = 128


class Base(DeclarativeBase):
    metadata = make_metadata()


metadata = Base.metadata


class Identity(Base):
    """The PS's enrolment with the KGC: certificate and sealed Ed25519 signing key.

    One row (``id = 1``); the key never leaves this table unsealed.
    """

    __tablename__ = "ps_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH))
    kgc_url: Mapped[str] = mapped_column(Text)
    certificate: Mapped[dict[str, Any]] = mapped_column(JSON)
    certificate_signature: Mapped[str] = mapped_column(Text)
    sealed_signing_key: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    """A training job: definition, KGC-signed terms and job key, packing, public weights."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_key: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The KGC-signed job terms and their signature (docs/PROTOCOL.md); NULL
    #: only for jobs created before the terms existed (they cannot be released).
    job_terms: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    job_terms_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    packing: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[dict[str, float]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # running | finished | failed
    current_round: Mapped[int] = mapped_column(Integer)
    rounds_total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    #: Each participant's latest word on the job, by subject id: ``{"status": "joined" or
    #: "declined", "reason", "at"}`` (:mod:`trapdoor.ps.participation`); NULL before any.
    participation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Round(Base):
    """One round ``t`` of a job: it takes ``W_t`` and produces ``W_{t+1}``.

    ``status`` (docs/PROTOCOL.md): open (commit phase) -> committed (the
    PS-signed ``closed_set`` is fixed; upload phase) -> closed (aggregated; audit phase of
    ``attempt``) -> released; any phase may end in failed. ``deadline`` is the current
    phase's. While closed, ``contributors``, ``blind`` (``R``) and ``digests`` (the
    :class:`trapdoor.protocol.audit.AuditDigests` fields) describe the current attempt, whose
    ``Agg`` is model version ``t + 1``. A released round whose every contributor reports
    that it does not decode runs once more (``run`` 1) from ``W_t`` over the same set;
    ``previous_run`` keeps run 0's evidence. ``release_after`` is a lease/back-off: no release
    attempt before that time, so two workers never release the same round at once and a
    failed attempt is retried later.
    """

    __tablename__ = "rounds"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.job_id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    release_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: ``{"closed_set", "signature"}`` as the PS signed it (NULL while open).
    closed_set: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    contributors: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    blind: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    digests: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: 0, or 1 for the round's one re-run after a release that did not decode.
    run: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Once released: the contributors' signed reports that the release does not decode,
    #: by subject id.
    undecodable: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Run 1 only: what run 0 was (contributors, bundle digest, digests, closed set, and
    #: the reports the KGC needs to allow the re-run); run 0's rows are gone.
    previous_run: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Once released, in a job with ``share_metrics``: the contributors' signed
    #: evaluations of the released model, by subject id (:mod:`trapdoor.protocol.metrics`).
    metric_reports: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Commitment(Base):
    """A participant's signed commitment to the payload it will upload in a round."""

    __tablename__ = "commitments"
    __table_args__ = (
        UniqueConstraint("job_id", "round", "subject_id", name="uq_commitments_job_round_subject"),
        ForeignKeyConstraint(
            ["job_id", "round"], ["rounds.job_id", "rounds.round"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH))
    round: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH))
    payload_sha256: Mapped[str] = mapped_column(String(64))
    signed: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"commitment": {...}, "signature"}
    committed_at: Mapped[float] = mapped_column(Float)


class Audit(Base):
    """A contributor's signed audit of one attempt at a round's aggregate and blind."""

    __tablename__ = "audits"
    __table_args__ = (
        UniqueConstraint(
            "job_id", "round", "attempt", "subject_id", name="uq_audits_job_round_attempt_subject"
        ),
        ForeignKeyConstraint(
            ["job_id", "round"], ["rounds.job_id", "rounds.round"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH))
    round: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH))
    signed: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"audit": {...}, "signature"}
    audited_at: Mapped[float] = mapped_column(Float)


class Upload(Base):
    """An accepted encrypted update ``Enc(w_i Δ_i)``: the contributor's signed statement
    (what the KGC checks at the release) and the receipt the PS signed.

    Masked jobs: ``payload`` is the whole uploaded frame (header with the seed ciphertext,
    and ``y``), served back unchanged; ``sha256`` is ``y``'s digest."""

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("job_id", "round", "subject_id", name="uq_uploads_job_round_subject"),
        UniqueConstraint("job_id", "sha256", name="uq_uploads_job_sha256"),
        UniqueConstraint("job_id", "seed_sha256", name="uq_uploads_job_seed"),
        ForeignKeyConstraint(
            ["job_id", "round"], ["rounds.job_id", "rounds.round"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH))
    round: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH))
    sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    receipt: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"receipt": {...}, "signature"}
    #: ``{"statement": {...}, "signature"}`` as the contributor signed it (NULL only for
    #: uploads accepted before statements existed).
    statement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: a masked upload's seed digest (unique per job: a seed is never accepted twice);
    #: NULL for bcp uploads
    seed_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    accepted_at: Mapped[float] = mapped_column(Float)


class ModelChunk(Base):
    """A fixed number of fixed-width group elements of ``Enc(W_version)``.

    Version ``t`` is the model *before* round ``t``: the audited aggregate of round
    ``t - 1``'s released attempt (version 0 is the trivial ``Enc(W_0)``). A masked job
    stores ``Z_t`` here instead: raw little-endian ring words, ``Z_0 = encode(W_0)``. Each
    attempt at round ``t - 1`` writes it whole in one transaction, replacing an earlier
    attempt's.
    """

    __tablename__ = "model_chunks"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.job_id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Release(Base):
    """The release of round ``t``: the released attempt's blind ``R``, the signed request,
    then the bundle.

    The row is written when every contributor of the attempt has audited. A row with
    ``request`` set and ``bundle`` NULL is a release in flight: the exact request frame is
    kept so that a retry sends the same bytes (the KGC is idempotent only for the same
    request).
    """

    __tablename__ = "releases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "round"], ["rounds.job_id", "rounds.round"], ondelete="CASCADE"
        ),
    )

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    blind: Mapped[bytes] = mapped_column(LargeBinary)
    request: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    requested_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
