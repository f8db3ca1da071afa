"""Parameter server: contributors' signed evaluations of a released round (issue 14).

Revision ID: 0007_metric_reports
Revises: 0006_upload_seeds
Create Date: 2026-12-03

``rounds.metric_reports`` holds, for a job whose definition has ``share_metrics``, each
contributor's signed report of how the model the round released scores on its own test
rows (:mod:`trapdoor.protocol.metrics`), by subject id. NULL otherwise.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_metric_reports"
down_revision: str | None = "0006_upload_seeds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("metric_reports", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("metric_reports")
