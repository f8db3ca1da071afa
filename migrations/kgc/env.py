"""Alembic environment of the KGC (its own history and version table)."""

from common.db import run_alembic_env
from kgc.models import metadata

run_alembic_env(metadata, "alembic_version_kgc")
