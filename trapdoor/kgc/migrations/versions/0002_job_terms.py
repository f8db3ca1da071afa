"""KGC: jobs keep their KGC-signed terms; the bare job-key signature is gone.

Revision ID: 0002_job_terms
Revises: 0001_initial
Create Date: 2026-12-14

The KGC now signs a job's terms (participants and their keys, weights, quorum, rounds,
shape, digests of the definition, and the job key: ``trapdoor.protocol.job.sign_job_terms``)
instead of ``{"job_id", "job_key"}``. Jobs made before this revision have no terms (NULL):
the KGC refuses to release them (409 ``legacy-job``). Their old job-key signature is
dropped; nothing reads it, and the KGC could make it again from its key.

Only ``ALTER TABLE ... ADD/DROP COLUMN`` (SQLite 3.35+, PostgreSQL): ``kgc_jobs`` is not
recreated, which on SQLite (foreign keys on) would cascade to ``kgc_releases``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_terms"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("kgc_jobs", sa.Column("terms", sa.JSON(), nullable=True))
    op.add_column("kgc_jobs", sa.Column("terms_signature", sa.Text(), nullable=True))
    op.add_column("kgc_jobs", sa.Column("rounds", sa.Integer(), nullable=True))
    op.drop_column("kgc_jobs", "signature")


def downgrade() -> None:
    # Jobs made since cannot get a job-key-only signature back here (no key): empty.
    op.add_column("kgc_jobs", sa.Column("signature", sa.Text(), nullable=False, server_default=""))
    op.drop_column("kgc_jobs", "rounds")
    op.drop_column("kgc_jobs", "terms_signature")
    op.drop_column("kgc_jobs", "terms")
