"""Database models of the parameter server (SQLAlchemy 2.0, typed).

The PS stores only public or encrypted material: job definitions (``W_0`` is public),
the job key, ciphertext uploads, the encrypted global model ``Enc(W_t)`` as chunked
rows of fixed-width group elements, release bundles (sealed for contributors) and the
blinds ``R``. Its one secret, the Ed25519 signing key, is sealed under a passphrase.

Invariants the schema enforces (so two gunicorn workers cannot break them):

- one upload per (job, round, participant): ``uq_uploads_job_round_subject``;
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

from common.db import make_metadata

__all__ = [
    "Base",
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


class Round(Base):
    """One round ``t`` of a job: it takes ``W_t`` and produces ``W_{t+1}``.

    ``status``: open -> closed (aggregated, release pending) -> released, or open -> failed.
    ``release_after`` is a lease/back-off: no release attempt before that time, so two
    workers never release the same round at once and a failed attempt is retried later.
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


class Upload(Base):
    """An accepted encrypted update ``Enc(w_i Δ_i)``: the contributor's signed statement
    (what the KGC checks at the release) and the receipt the PS signed."""

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("job_id", "round", "subject_id", name="uq_uploads_job_round_subject"),
        UniqueConstraint("job_id", "sha256", name="uq_uploads_job_sha256"),
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
    accepted_at: Mapped[float] = mapped_column(Float)


class ModelChunk(Base):
    """A fixed number of fixed-width group elements of ``Enc(W_version)``.

    Version ``t`` is the model *before* round ``t``. Versions are written once, whole,
    in the transaction that closes the previous round, and never rewritten.
    """

    __tablename__ = "model_chunks"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.job_id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Release(Base):
    """The release of round ``t``: the blind ``R``, the signed request, then the bundle.

    The row is written while the round is still open, with ``R`` and ``Enc(R)``
    (``blind_ciphertext``) computed ahead, so that closing the round does not wait for an
    encryption. A row with ``request`` set and ``bundle`` NULL is a release in flight: the
    exact request frame is kept so that a retry sends the same bytes (the KGC is
    idempotent only for the same payload).
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
    blind_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    request: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    requested_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
