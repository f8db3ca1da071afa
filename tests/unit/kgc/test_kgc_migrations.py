"""The KGC's Alembic history builds exactly the models' schema, on SQLite and PostgreSQL.

The PostgreSQL test runs when ``TRAPDOOR_TEST_POSTGRES_URL`` names a server database
with the right to create databases; it creates a scratch database and drops it.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from common.bcp import MasterKey
from common.blocks import JobKey
from common.db import MIGRATIONS_ROOT, make_engine, migrate
from common.demo_params import load_demo_master_key
from common.signing import generate_signing_key
from common.wire import from_obj
from kgc.domain import KgcService
from kgc.errors import KgcError
from kgc.models import metadata
from kgc.testing import TestSubject, encrypt_plaintexts, release_frame

VERSION_TABLE = "alembic_version_kgc"


def _schema_diff(url: str) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _downgrade(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_ROOT / "kgc"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.downgrade(config, "base")


def _round_trip(url: str) -> None:
    migrate("kgc", url)
    assert _schema_diff(url) == []
    assert {t.name for t in metadata.sorted_tables} | {VERSION_TABLE} == _tables(url)
    assert all(name.startswith("kgc_") for name in metadata.tables)
    _downgrade(url)
    assert _tables(url) == {VERSION_TABLE}
    migrate("kgc", url)
    assert _schema_diff(url) == []


def test_sqlite_history_matches_models_and_downgrades(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path}/kgc.db")


def _service(url: str, master: MasterKey, signing_key: Ed25519PrivateKey) -> KgcService:
    sessions = sessionmaker(make_engine(url), expire_on_commit=False)
    return KgcService(master, signing_key, sessions, rng=random.Random(), demo=True)


@pytest.mark.postgres
def test_postgres_history_and_two_workers_racing(postgres_url: str) -> None:
    _round_trip(postgres_url)
    master, key = load_demo_master_key(1024), generate_signing_key()
    one, two = _service(postgres_url, master, key), _service(postgres_url, master, key)
    rng = random.Random(8)
    subjects = [TestSubject.param_server()] + [
        TestSubject.participant(master.params, rng) for _ in range(2)
    ]
    for i, subject in enumerate(subjects):
        answer = one.enrol(f"org{i}", subject.role)
        subject.subject_id = answer["subject_id"]
        body = subject.completion(answer["code"])
        two.complete_enrolment(
            subject.subject_id, body["code"], body["signing_key"], body.get("bcp_public_key")
        )
    ps, members = subjects[0], [s.subject_id for s in subjects[1:]]
    challenge = ps.challenge(time.time(), "same-nonce-1")
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda s: _outcome(s.issue_token, **challenge), [one, two]))
    assert sorted(outcomes) == ["nonce-replayed", "ok"]

    answer = one.create_job(ps.subject_id, "pg-job", 2, members, 2)
    job_key = from_obj(answer["job_key"])
    assert isinstance(job_key, JobKey)
    vector = encrypt_plaintexts(job_key, [1, 2, 3], rng)
    frame = release_frame(
        ps.signing_key, vector, job_id="pg-job", round_number=0, contributors=members
    )
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: s.release(ps.subject_id, "pg-job", frame), [one, two]))
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0] == results[1][0]


def _outcome(call: Any, **kwargs: Any) -> str:
    try:
        call(**kwargs)
    except KgcError as exc:
        return exc.code
    return "ok"
