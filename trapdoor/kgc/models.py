"""Database models of the KGC (SQLAlchemy 2.0, typed).

Tables are prefixed ``kgc_`` so the KGC can share one PostgreSQL database with the
parameter server (each service has its own Alembic version table).

Secrets are stored only sealed (``trapdoor.crypto.sealing.seal_with_passphrase``): the master key
and the Ed25519 signing key. Enrolment codes are stored as SHA-256 digests. Job keys are
stored without their secrets ``a_j``: the master key opens anything under them.

Invariants the schema enforces, so concurrent gunicorn workers cannot break them:

- one use of a token-challenge nonce per subject: ``uq_kgc_token_nonces_subject_nonce``;
- one release per (job, round, run): ``uq_kgc_releases_job_round_run`` (with the KGC's
  schedule, rounds are released in order, and run 1 only right after the same round's
  run 0, so the latest (round, run) says what may come next).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from trapdoor.service.audit_log import AuditLogColumns
from trapdoor.service.db import make_metadata

__all__ = [
    "AuditEntry",
    "Base",
    "Job",
    "Release",
    "SealedSecret",
    "Subject",
    "TokenNonce",
    "metadata",
]

SUBJECT_ID_LENGTH = 128
JOB_ID_LENGTH = 64
NAME_LENGTH = 200
NONCE_LENGTH = 128


class Base(DeclarativeBase):
    metadata = make_metadata()


metadata = Base.metadata


class SealedSecret(Base):
    """One secret sealed under the KGC passphrase (``master_key``, ``signing_key``)."""

    __tablename__ = "kgc_sealed_secrets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)  # JSON text of seal_with_passphrase output
    created_at: Mapped[float] = mapped_column(Float)


class Subject(Base):
    """A participant or the parameter server: enrolled by the operator, then certified.

    Before completion only ``code_hash`` is set; completion stores the certified keys and
    the signed certificate, and sets ``completed`` (exactly once).
    """

    __tablename__ = "kgc_subjects"

    id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    role: Mapped[str] = mapped_column(String(16))  # participant | param_server
    code_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the one-time code
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    signing_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # Ed25519 hex
    bcp_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # h, hex
    certificate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class TokenNonce(Base):
    """A nonce used in a token challenge; a second use is a replay.

    ``timestamp`` is the challenge's own (signed) time: rows older than twice the allowed
    skew can be pruned, because a replay of such a challenge is already stale.
    """

    __tablename__ = "kgc_token_nonces"
    __table_args__ = (
        UniqueConstraint("subject_id", "nonce", name="uq_kgc_token_nonces_subject_nonce"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(
        String(SUBJECT_ID_LENGTH), ForeignKey("kgc_subjects.id", ondelete="CASCADE")
    )
    nonce: Mapped[str] = mapped_column(String(NONCE_LENGTH))
    timestamp: Mapped[int] = mapped_column(BigInteger, index=True)


class Job(Base):
    """A job the KGC signed terms for, on request of the parameter server ``owner_id``.

    ``terms`` is exactly what the KGC signed (:func:`trapdoor.protocol.job.sign_job_terms`:
    the requested terms plus the PS, the participants' signing keys and the job key) and
    ``terms_signature`` its signature; ``participants``, ``quorum``, ``rounds`` and
    ``width`` repeat what the terms fix, for queries. Jobs made before signed terms
    (revision ``0002_job_terms``) have no terms and cannot be released.
    """

    __tablename__ = "kgc_jobs"

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(SUBJECT_ID_LENGTH), ForeignKey("kgc_subjects.id"))
    job_key: Mapped[dict[str, Any]] = mapped_column(JSON)  # bcp-job-key object
    terms: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # signed terms
    terms_signature: Mapped[str | None] = mapped_column(Text, nullable=True)  # KGC over terms
    participants: Mapped[list[str]] = mapped_column(JSON)
    quorum: Mapped[int] = mapped_column(Integer)
    rounds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Release(Base):
    """The sealed bundle of one (job, round, run), kept so a retried request gets the same one.

    ``aggregate_sha256`` is the audited ``Agg`` of the released attempt ``attempt``: the
    base the next round's audits must name, which chains the job's releases. Both are
    NULL for releases made before revision ``0003_release_chain``.
    """

    __tablename__ = "kgc_releases"
    __table_args__ = (
        UniqueConstraint("job_id", "round", "run", name="uq_kgc_releases_job_round_run"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(JOB_ID_LENGTH), ForeignKey("kgc_jobs.job_id", ondelete="CASCADE")
    )
    round: Mapped[int] = mapped_column(Integer)
    #: 0, or 1 for the one re-run of a round whose run-0 release did not decode
    run: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    aggregate_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The opened vector's ``A`` components (fixed-width elements): the next release must
    #: be these times its round's proven uploads. NULL before ``0004_release_a_components``.
    a_components: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    contributors: Mapped[list[str]] = mapped_column(JSON)
    bundle: Mapped[dict[str, Any]] = mapped_column(JSON)  # with kgc_signature
    #: run 1 only: every run-0 contributor's signed report that run 0 did not decode
    undecodable: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    released_at: Mapped[float] = mapped_column(Float)


class AuditEntry(AuditLogColumns, Base):
    """One row of the KGC's tamper-evident audit log (:mod:`trapdoor.service.audit_log`):
    enrolments, certificates, signed jobs, sealed releases."""

    __tablename__ = "kgc_audit_log"
