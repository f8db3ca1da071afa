"""KGC: a release keeps the ``A`` components of the vector it opened (issue 11 step 3).

Revision ID: 0004_release_a_components
Revises: 0003_release_chain
Create Date: 2026-12-03

The next release of the job must hold exactly these ``A`` components times the proven
uploads of its round (``trapdoor.crypto.pok.verify_release_chain``). Releases made before this
revision have none (NULL); the KGC refuses to release their jobs further (409
``legacy-job``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_release_a_components"
down_revision: str | None = "0003_release_chain"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("kgc_releases", sa.Column("a_components", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("kgc_releases", "a_components")
