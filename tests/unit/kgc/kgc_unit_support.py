"""Shared by the KGC's unit tests: the world a domain test runs in."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.kgc.domain import KgcService
from trapdoor.kgc.testing import FakeClock


@dataclass
class DomainWorld:
    """A KGC service, its clock and database."""

    service: KgcService
    clock: FakeClock
    engine: Engine
    sessions: sessionmaker[Session]

    def count(self, model: type) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
