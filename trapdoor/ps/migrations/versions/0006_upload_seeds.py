"""Parameter server: a masked upload's seed digest, unique per job (issue 12).

Revision ID: 0006_upload_seeds
Revises: 0005_round_runs
Create Date: 2026-12-03

``uploads.seed_sha256`` is the digest of a masked upload's seed ciphertext (as its
statement signs it; NULL for bcp uploads). Unique per job, so a replayed seed is refused
by one indexed lookup, and by the database under a race, instead of by a scan of every
statement the job has stored.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_upload_seeds"
down_revision: str | None = "0005_round_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("seed_sha256", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_uploads_job_seed", ["job_id", "seed_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint("uq_uploads_job_seed", type_="unique")
        batch.drop_column("seed_sha256")
