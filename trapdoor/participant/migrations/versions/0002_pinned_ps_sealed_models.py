"""Participant node: the PS's subject id per job, and released models sealed at rest.

Revision ID: 0002_pinned_ps_sealed_models
Revises: 0001_initial
Create Date: 2026-12-10

Rows written before this revision keep their plaintext model with ``sealing = "none"``;
the node seals them as soon as it unlocks its identity (``trapdoor.participant.node``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_pinned_ps_sealed_models"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_jobs") as batch:
        batch.add_column(sa.Column("ps_subject_id", sa.String(length=128), nullable=True))
    with op.batch_alter_table("node_models") as batch:
        batch.add_column(
            sa.Column("sealing", sa.String(length=16), server_default="none", nullable=False)
        )


def downgrade() -> None:
    # Sealed models cannot be turned back into plaintext here (no key): drop them.
    op.execute(sa.text("DELETE FROM node_models WHERE sealing != 'none'"))
    with op.batch_alter_table("node_models") as batch:
        batch.drop_column("sealing")
    with op.batch_alter_table("node_jobs") as batch:
        batch.drop_column("ps_subject_id")
