"""What the e2e tests share: reading a service's SQLite database as its operator can,
enrolling the participants the tests play, and the PS identity a dishonest PS signs with."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from trapdoor.demo.cluster import LocalCluster
from trapdoor.participant.client import ParticipantClient
from trapdoor.ps.identity import ServerIdentity, load_identity
from trapdoor.service.db import make_engine


def read_rows(database: Path, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` in the SQLite file ``database`` (opened and closed per call)."""
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def json_column(value: Any) -> Any:
    """A JSON column's value: SQLite hands back text, PostgreSQL the object."""
    return json.loads(value) if isinstance(value, str) else value


def enrol_clients(
    cluster: LocalCluster, enrolments: list[dict[str, Any]]
) -> list[ParticipantClient]:
    """A client library per enrolment (keys made here; participant ``i`` seeds its test
    randomness with ``i``)."""
    return [
        ParticipantClient.enrol(cluster.kgc_url, e["subject_id"], e["code"], rng=random.Random(i))
        for i, e in enumerate(enrolments)
    ]


def ps_identity(cluster: LocalCluster) -> ServerIdentity:
    """The PS's own identity (its signing key), as its operator unseals it from its
    database: what a dishonest PS signs with."""
    engine = make_engine(f"sqlite:///{cluster.workdir}/ps.db")
    try:
        identity = load_identity(sessionmaker(engine), cluster.ps_passphrase)
    finally:
        engine.dispose()
    assert identity is not None
    return identity
