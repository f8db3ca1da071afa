"""SQLAlchemy models of the participant node: identity, joined jobs, rounds, models.

The identity row holds only the passphrase-sealed keys (and the pinned KGC key). Per-round
rows keep what the operator wants to see (loss, clip report, timings, bytes, test
accuracy); the latest released model is one sealed float64 blob per job (small models:
rewritten whole each round), see :class:`trapdoor.participant.node.ModelSealer`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from trapdoor.service.db import make_metadata

__all__ = ["Base", "NodeIdentity", "NodeJob", "NodeModel", "NodeRound", "metadata"]

metadata = make_metadata()


class Base(DeclarativeBase):
    metadata = metadata


class NodeIdentity(Base):
    """The one identity of this node (id is always 1); secrets sealed at rest."""

    __tablename__ = "node_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    subject_id: Mapped[str] = mapped_column(String(128), nullable=False)
    kgc_url: Mapped[str] = mapped_column(Text, nullable=False)
    sealed: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    certificate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


class NodeJob(Base):
    """A job this node joined and where its worker stands."""

    __tablename__ = "node_jobs"

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    ps_url: Mapped[str] = mapped_column(Text, nullable=False)
    #: The PS's subject id: its tokens' audience, and the server the signed terms name.
    ps_subject_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    skip_rounds: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    # joined | running | finished | excluded | failed | refused
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    next_round: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    holds_model: Mapped[bool] = mapped_column(nullable=False, default=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    joined_at: Mapped[float] = mapped_column(Float, nullable=False)
    #: The definition's ``model`` (checked against the signed terms when joined): what
    #: shapes a downloaded model into named tensors. NULL for a refused job.
    model_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: The definition's ``share_metrics``: our evaluation of each released model goes to
    #: the PS (:mod:`trapdoor.protocol.metrics`).
    share_metrics: Mapped[bool] = mapped_column(nullable=False, default=False)


class NodeRound(Base):
    """What happened in one round for this node."""

    __tablename__ = "node_rounds"

    job_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("node_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # uploaded | skipped | no-model | released
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    contributed: Mapped[bool] = mapped_column(nullable=False, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class NodeModel(Base):
    """The latest released model this node holds for a job: ``W_{round+1}``."""

    __tablename__ = "node_models"

    job_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("node_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    #: AES-256-GCM ``nonce || ciphertext`` of the float64 weights (``sealing``
    #: ``"a256gcm-v1"``); rows written before models were sealed hold them in the clear
    #: (``"none"``) until the node unlocks its identity and seals them.
    weights: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    sealing: Mapped[str] = mapped_column(String(16), nullable=False, server_default="none")
