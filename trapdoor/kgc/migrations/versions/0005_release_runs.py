"""KGC: a round may be released twice, run 0 and one re-run after an undecodable release.

Revision ID: 0005_release_runs
Revises: 0004_release_a_components
Create Date: 2026-12-03

A release is unique per (job, round, run) instead of (job, round). Run 1 keeps the
``undecodable`` reports of every run-0 contributor that allowed it. Existing releases are
run 0.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_release_runs"
down_revision: str | None = "0004_release_a_components"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("kgc_releases") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("undecodable", sa.JSON(), nullable=True))
        batch.drop_constraint("uq_kgc_releases_job_round", type_="unique")
        batch.create_unique_constraint("uq_kgc_releases_job_round_run", ["job_id", "round", "run"])


def downgrade() -> None:
    op.execute("DELETE FROM kgc_releases WHERE run > 0")
    with op.batch_alter_table("kgc_releases") as batch:
        batch.drop_constraint("uq_kgc_releases_job_round_run", type_="unique")
        batch.create_unique_constraint("uq_kgc_releases_job_round", ["job_id", "round"])
        batch.drop_column("undecodable")
        batch.drop_column("run")
