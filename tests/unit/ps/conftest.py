"""Fixtures for the parameter server's domain tests: a PS over SQLite and a fake KGC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.ps.testing import PsWorld, TestParticipant, make_participants, make_world


@pytest.fixture(scope="session")
def participants(params_1024: tuple[PublicParams, MasterKey]) -> list[TestParticipant]:
    """Four data owners with their own BCP key pairs (weights 0.1, 0.2, 0.3, 0.4)."""
    return make_participants(params_1024[1])


@pytest.fixture
def world(
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
    tmp_path: Path,
) -> Iterator[PsWorld]:
    world = make_world(params_1024[1], participants, f"sqlite:///{tmp_path}/ps.db")
    yield world
    world.close()
