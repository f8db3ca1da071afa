"""Parameter server: round protocol v2 (commitments, closed sets, audits; issue 11 step 2).

A round commits, closes its set of commitments, takes the committed uploads, aggregates an
attempt with a trivial blind, collects every contributor's audit and only then asks for
the release (docs/PROTOCOL.md). The PS no longer encrypts anything, so the
prepared ``Enc(R)`` of the releases goes.

Revision ID: 0004_round_protocol
Revises: 0003_signed_terms
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_round_protocol"
down_revision: str | None = "0003_signed_terms"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("closed_set", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("contributors", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("blind", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("digests", sa.JSON(), nullable=True))
    op.create_table(
        "commitments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("signed", sa.JSON(), nullable=False),
        sa.Column("committed_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "round"],
            ["rounds.job_id", "rounds.round"],
            name=op.f("fk_commitments_job_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commitments")),
        sa.UniqueConstraint(
            "job_id", "round", "subject_id", name=op.f("uq_commitments_job_round_subject")
        ),
    )
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("signed", sa.JSON(), nullable=False),
        sa.Column("audited_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "round"],
            ["rounds.job_id", "rounds.round"],
            name=op.f("fk_audits_job_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
        sa.UniqueConstraint(
            "job_id",
            "round",
            "attempt",
            "subject_id",
            name=op.f("uq_audits_job_round_attempt_subject"),
        ),
    )
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("blind_ciphertext")


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("blind_ciphertext", sa.LargeBinary(), nullable=True))
    op.drop_table("audits")
    op.drop_table("commitments")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("digests")
        batch.drop_column("blind")
        batch.drop_column("contributors")
        batch.drop_column("attempt")
        batch.drop_column("closed_set")
