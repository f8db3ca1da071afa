"""Participant node: each joined job's model spec and whether it shares metrics (issue 14).

Revision ID: 0003_job_model_spec
Revises: 0002_pinned_ps_sealed_models
Create Date: 2026-12-03

``node_jobs.model_spec`` is the job definition's ``model`` as the KGC-signed terms bind it,
so ``trapdoor node download-model`` can shape the released weights into named tensors
without the operator handing it the definition; ``share_metrics`` records whether the job
asked contributors to report their evaluation of each released model to the PS. Rows of
jobs joined before this revision have neither (NULL and false).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_job_model_spec"
down_revision: str | None = "0002_pinned_ps_sealed_models"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_jobs") as batch:
        batch.add_column(sa.Column("model_spec", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("share_metrics", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("node_jobs") as batch:
        batch.drop_column("share_metrics")
        batch.drop_column("model_spec")
