"""Alembic environment of the parameter server (its own history and version table)."""

from trapdoor.ps.models import metadata
from trapdoor.service.db import run_alembic_env

run_alembic_env(metadata, "alembic_version_param_server")
