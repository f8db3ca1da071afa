"""Parameter server: KGC-signed job terms and contributors' upload statements.

The job key's own signature gives way to the KGC-signed job terms (which contain the job
key); each upload keeps the statement its contributor signed (docs/PROTOCOL.md).

Revision ID: 0003_signed_terms
Revises: 0002_prepared_blinds
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_signed_terms"
down_revision: str | None = "0002_prepared_blinds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("job_terms", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("job_terms_signature", sa.Text(), nullable=True))
        batch.drop_column("job_key_signature")
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("statement", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("statement")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("job_key_signature", sa.Text(), nullable=False, server_default="")
        )
        batch.drop_column("job_terms_signature")
        batch.drop_column("job_terms")
