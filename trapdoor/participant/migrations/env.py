"""Alembic environment of the participant node (its own history and version table)."""

from trapdoor.participant.node_models import metadata
from trapdoor.service.db import run_alembic_env

run_alembic_env(metadata, "alembic_version_participant")
