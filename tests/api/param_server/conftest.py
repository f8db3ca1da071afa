"""Fixtures for the parameter server's API tests (see ps_api_support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ps_api_support import ApiWorld, build_api_world

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.ps.testing import TestParticipant, make_participants


@pytest.fixture(scope="session")
def participants(params_1024: tuple[PublicParams, MasterKey]) -> list[TestParticipant]:
    return make_participants(params_1024[1])


@pytest.fixture
def api(
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
    tmp_path: Path,
) -> Iterator[ApiWorld]:
    world = build_api_world(params_1024[1], participants, f"sqlite:///{tmp_path}/ps.db")
    yield world
    world.close()
