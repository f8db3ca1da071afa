"""KGC: sealed secrets, subjects, token nonces, jobs, releases.

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
        "kgc_sealed_secrets",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_kgc_sealed_secrets")),
    )
    op.create_table(
        "kgc_subjects",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("signing_key", sa.String(length=64), nullable=True),
        sa.Column("bcp_public_key", sa.Text(), nullable=True),
        sa.Column("certificate", sa.JSON(), nullable=True),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kgc_subjects")),
    )
    op.create_table(
        "kgc_token_nonces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["kgc_subjects.id"],
            name=op.f("fk_kgc_token_nonces_subject_id_kgc_subjects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kgc_token_nonces")),
        sa.UniqueConstraint("subject_id", "nonce", name="uq_kgc_token_nonces_subject_nonce"),
    )
    op.create_index(
        op.f("ix_kgc_token_nonces_timestamp"), "kgc_token_nonces", ["timestamp"], unique=False
    )
    op.create_table(
        "kgc_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("job_key", sa.JSON(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["kgc_subjects.id"], name=op.f("fk_kgc_jobs_owner_id_kgc_subjects")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_kgc_jobs")),
    )
    op.create_table(
        "kgc_releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("contributors", sa.JSON(), nullable=False),
        sa.Column("bundle", sa.JSON(), nullable=False),
        sa.Column("released_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["kgc_jobs.job_id"],
            name=op.f("fk_kgc_releases_job_id_kgc_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kgc_releases")),
        sa.UniqueConstraint("job_id", "round", name="uq_kgc_releases_job_round"),
    )


def downgrade() -> None:
    op.drop_table("kgc_releases")
    op.drop_table("kgc_jobs")
    op.drop_index(op.f("ix_kgc_token_nonces_timestamp"), table_name="kgc_token_nonces")
    op.drop_table("kgc_token_nonces")
    op.drop_table("kgc_subjects")
    op.drop_table("kgc_sealed_secrets")
