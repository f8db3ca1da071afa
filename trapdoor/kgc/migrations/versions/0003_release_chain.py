"""KGC: a release keeps the audited attempt and aggregate it opened (issue 11 step 2).

Revision ID: 0003_release_chain
Revises: 0002_job_terms
Create Date: 2026-12-03

Releases are now granted only for an audited attempt at a round, and each round's audits
must name, as their base, the aggregate ``Agg`` of the job's previous release. The KGC
stores that ``aggregate_sha256`` and the ``attempt`` with each release. Releases made
before this revision have neither (NULL); their jobs' terms predate the round protocol
v2, so the KGC refuses to release them further (409 ``legacy-job``).

Only ``ALTER TABLE ... ADD/DROP COLUMN`` (SQLite 3.35+, PostgreSQL): ``kgc_releases`` is
not recreated.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_release_chain"
down_revision: str | None = "0002_job_terms"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("kgc_releases", sa.Column("attempt", sa.Integer(), nullable=True))
    op.add_column("kgc_releases", sa.Column("aggregate_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("kgc_releases", "aggregate_sha256")
    op.drop_column("kgc_releases", "attempt")
