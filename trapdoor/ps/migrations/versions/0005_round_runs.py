"""Parameter server: a round whose release does not decode runs once more (issue 11 item 7).

Revision ID: 0005_round_runs
Revises: 0004_round_protocol
Create Date: 2026-12-03

``rounds.run`` (0, or 1 for the re-run), ``rounds.undecodable`` (the contributors' signed
reports on the released run) and ``rounds.previous_run`` (run 0's evidence, kept when its
commitments, uploads, audits and release rows are cleared for run 1).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_round_runs"
down_revision: str | None = "0004_round_protocol"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("undecodable", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("previous_run", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("previous_run")
        batch.drop_column("undecodable")
        batch.drop_column("run")
