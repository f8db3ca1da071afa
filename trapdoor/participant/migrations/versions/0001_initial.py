"""Participant node: identity, joined jobs, rounds, latest models.

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
        "node_identity",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("kgc_url", sa.Text(), nullable=False),
        sa.Column("sealed", sa.JSON(), nullable=False),
        sa.Column("certificate", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_identity")),
    )
    op.create_table(
        "node_jobs",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("ps_url", sa.Text(), nullable=False),
        sa.Column("skip_rounds", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_round", sa.Integer(), nullable=False),
        sa.Column("holds_model", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("joined_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_node_jobs")),
    )
    op.create_table(
        "node_rounds",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contributed", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("receipt", sa.JSON(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("test_loss", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["node_jobs.job_id"],
            name=op.f("fk_node_rounds_job_id_node_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "round", name=op.f("pk_node_rounds")),
    )
    op.create_table(
        "node_models",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["node_jobs.job_id"],
            name=op.f("fk_node_models_job_id_node_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_node_models")),
    )


def downgrade() -> None:
    op.drop_table("node_models")
    op.drop_table("node_rounds")
    op.drop_table("node_jobs")
    op.drop_table("node_identity")
