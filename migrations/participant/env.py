"""Alembic environment of the participant node (its own history and version table)."""

from common.db import run_alembic_env
from participant.node_models import metadata

run_alembic_env(metadata, "alembic_version_participant")
