"""Fixtures for the KGC's domain tests: a KgcService over a fresh SQLite file."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from kgc_unit_support import DomainWorld
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.signing import generate_signing_key
from trapdoor.kgc.domain import KgcService
from trapdoor.kgc.models import metadata
from trapdoor.kgc.testing import FakeClock, TestSubject
from trapdoor.service.db import make_engine


@pytest.fixture(scope="session")
def demo_master() -> MasterKey:
    """The shipped 1024-bit demo parameters: instant, public factors, tests only."""
    return load_demo_master_key(1024)


@pytest.fixture(scope="session")
def people(demo_master: MasterKey) -> list[TestSubject]:
    """Four participants with their own BCP key pairs (ids are set at enrolment)."""
    rng = random.Random(11)
    return [TestSubject.participant(demo_master.params, rng) for _ in range(4)]


@pytest.fixture
def world(tmp_path: Path, demo_master: MasterKey) -> Iterator[DomainWorld]:
    engine = make_engine(f"sqlite:///{tmp_path}/kgc.db")
    metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    clock = FakeClock()
    service = KgcService(
        demo_master,
        generate_signing_key(),
        sessions,
        clock=clock,
        rng=random.Random(1),
        random_bytes=random.Random(2).randbytes,
        demo=True,
    )
    yield DomainWorld(service, clock, engine, sessions)
    engine.dispose()
