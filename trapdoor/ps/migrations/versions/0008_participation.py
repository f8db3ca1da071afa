"""Parameter server: what each participant's node said about a job (issue 14).

Revision ID: 0008_participation
Revises: 0007_metric_reports
Create Date: 2026-12-03

``jobs.participation`` holds, by subject id, the latest ``{"status": "joined" or
"declined", "reason", "at"}`` a participant's node sent (``trapdoor.ps.participation``), so
the operator sees who refused a job and why. NULL before any.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_participation"
down_revision: str | None = "0007_metric_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("participation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("participation")
