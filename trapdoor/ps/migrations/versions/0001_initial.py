"""Parameter server: identity, jobs, rounds, uploads, chunked model, releases.

Revision ID: 0001_initial
Revises:
Create Date: 2024-06-11
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ps_identity",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("kgc_url", sa.Text(), nullable=False),
        sa.Column("certificate", sa.JSON(), nullable=False),
        sa.Column("certificate_signature", sa.Text(), nullable=False),
        sa.Column("sealed_signing_key", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ps_identity")),
    )
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("job_key", sa.JSON(), nullable=False),
        sa.Column("job_key_signature", sa.Text(), nullable=False),
        sa.Column("packing", sa.JSON(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("rounds_total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
    )
    op.create_table(
        "rounds",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.Column("released_at", sa.Float(), nullable=True),
        sa.Column("release_after", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_rounds_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "round", name=op.f("pk_rounds")),
    )
    op.create_table(
        "model_chunks",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
            name=op.f("fk_model_chunks_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "version", "chunk_index", name=op.f("pk_model_chunks")),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("receipt", sa.JSON(), nullable=False),
        sa.Column("accepted_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "round"],
            ["rounds.job_id", "rounds.round"],
            name=op.f("fk_uploads_job_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint(
            "job_id", "round", "subject_id", name=op.f("uq_uploads_job_round_subject")
        ),
        sa.UniqueConstraint("job_id", "sha256", name=op.f("uq_uploads_job_sha256")),
    )
    op.create_table(
        "releases",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("blind", sa.LargeBinary(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=True),
        sa.Column("bundle", sa.JSON(), nullable=True),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("released_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id", "round"],
            ["rounds.job_id", "rounds.round"],
            name=op.f("fk_releases_job_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "round", name=op.f("pk_releases")),
    )


def downgrade() -> None:
    op.drop_table("releases")
    op.drop_table("uploads")
    op.drop_table("model_chunks")
    op.drop_table("rounds")
    op.drop_table("jobs")
    op.drop_table("ps_identity")
