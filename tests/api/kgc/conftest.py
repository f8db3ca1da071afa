"""Fixtures for the KGC's API tests: one initialised database, copied for each test."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from kgc_api_support import ApiWorld, build_api_world, init_demo_template

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.kgc.testing import TestSubject


@pytest.fixture(scope="session")
def kgc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database holding sealed 1024-bit demo keys (made once per session)."""
    return init_demo_template(tmp_path_factory.mktemp("kgc-template") / "kgc.db")


@pytest.fixture(scope="session")
def demo_1024() -> MasterKey:
    return load_demo_master_key(1024)


@pytest.fixture(scope="session")
def owners(demo_1024: MasterKey) -> list[TestSubject]:
    """Four participants with their own BCP key pairs (ids are set at enrolment)."""
    rng = random.Random(21)
    return [TestSubject.participant(demo_1024.params, rng) for _ in range(4)]


@pytest.fixture
def api(kgc_template: Path, tmp_path: Path) -> Iterator[ApiWorld]:
    world = build_api_world(kgc_template, tmp_path)
    yield world
    world.close()
