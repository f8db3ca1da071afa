"""KGC: the tamper-evident audit log (issue 16).

Revision ID: 0006_audit_log
Revises: 0005_release_runs
Create Date: 2026-12-03

``kgc_audit_log``: one row per enrolment, certificate, signed job and sealed release,
each naming the previous row's digest (unique, so the chain cannot fork) and signed by the
KGC (``trapdoor.service.audit_log``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_audit_log"
down_revision: str | None = "0005_release_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kgc_audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_sha256", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_kgc_audit_log")),
        sa.UniqueConstraint("prev_sha256", name=op.f("uq_kgc_audit_log_prev_sha256")),
    )


def downgrade() -> None:
    op.drop_table("kgc_audit_log")
