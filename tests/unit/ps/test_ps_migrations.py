"""The Alembic history builds exactly the models' schema, on SQLite and PostgreSQL.

The PostgreSQL test runs against the server of the ``postgres_server`` fixture
(tests/conftest.py: ``TRAPDOOR_TEST_POSTGRES_URL`` or the local 127.0.0.1:5432);
it creates a scratch database, runs the history and a whole round on it, and drops it.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.models import metadata
from trapdoor.ps.testing import TestParticipant, make_world
from trapdoor.service.db import make_engine, migrate, migrations_dir


def _schema_diff(url: str) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": "alembic_version_param_server"}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_history_matches_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ps.db"
    migrate("param_server", url)
    assert _schema_diff(url) == []
    assert {t.name for t in metadata.sorted_tables} <= _tables(url)
    migrate_down(url)
    assert _tables(url) == {"alembic_version_param_server"}
    migrate("param_server", url)
    assert _schema_diff(url) == []


def migrate_down(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir("param_server")))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "base")


@pytest.mark.postgres
def test_postgres_history_and_a_whole_round(
    postgres_url: str,
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
) -> None:
    from trapdoor.crypto.blocks import VectorEncryptor
    from trapdoor.ps.testing import (
        PS_SUBJECT_ID,
        job_key_of,
        job_terms_of,
        make_definition,
        open_model,
    )

    migrate("param_server", postgres_url)
    assert _schema_diff(postgres_url) == []
    world = make_world(params_1024[1], participants, postgres_url, create_schema=False)
    # A second server on the same database: two gunicorn workers racing.
    engine = make_engine(postgres_url)
    other = ParameterServer(
        sessionmaker(engine, expire_on_commit=False),
        world.kgc,
        world.ps_key,
        clock=world.clock,
        rng=random.Random(6),
        subject_id=PS_SUBJECT_ID,
    )
    try:
        w0 = np.linspace(-1, 1, 100)
        job = world.ps.create_job(make_definition("pg-job", participants, w0, rounds=1))
        terms = job_terms_of(job, world.kgc.info())
        encryptor = VectorEncryptor(job_key_of(job), window=4)
        delta = np.full(100, 0.25)
        rng = random.Random(5)
        vectors = [p.encrypt(job, delta, encryptor, rng) for p in participants]
        servers = [world.ps, other, world.ps, other]

        def each(step: str) -> None:
            """Every participant's ``step`` at once, through both servers."""
            list(
                pool.map(
                    lambda i: getattr(participants[i], step)(servers[i], terms, 0, vectors[i]),
                    range(4),
                )
            )

        with ThreadPoolExecutor(4) as pool:
            each("commit")
            each("upload")
            list(pool.map(lambda i: participants[i].audit(servers[i], terms, 0), range(4)))
            ticks = list(pool.map(lambda ps: ps.tick(), [world.ps, other]))
        assert sorted(r for tick in ticks for r in tick.released) == [("pg-job", 0)]
        assert world.kgc.release_calls == 1
        got = open_model(job, participants[0], other.download("pg-job", 0, "p1"))
        assert np.max(np.abs(got - (w0 + delta))) < 2.0**-18
    finally:
        other.close()
        engine.dispose()
        world.close()
