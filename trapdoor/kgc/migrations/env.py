"""Alembic environment of the KGC (its own history and version table)."""

from trapdoor.kgc.models import metadata
from trapdoor.service.db import run_alembic_env

run_alembic_env(metadata, "alembic_version_kgc")
