"""Alembic environment of the parameter server (its own history and version table)."""

from common.db import run_alembic_env
from param_server.models import metadata

run_alembic_env(metadata, "alembic_version_param_server")
