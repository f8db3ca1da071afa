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

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.signing import generate_signing_key
from trapdoor.kgc.domain import KgcService
from trapdoor.kgc.models import metadata
from trapdoor.kgc.testing import TestSubject, job_request, play_round
from trapdoor.protocol.job import verify_job_terms
from trapdoor.service.db import make_engine, migrate, migrations_dir
from trapdoor.service.errors import TrapdoorError

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
    config.set_main_option("script_location", str(migrations_dir("kgc")))
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

    request = job_request(
        "pg-job", members, params=master.params, quorum=2, rounds=1, width=2, num_plaintexts=3
    )
    answer = one.create_job(ps.subject_id, "pg-job", request["terms"])
    terms = verify_job_terms(
        one.verify_key, answer["job_terms"], answer["job_terms_signature"], master.params
    )
    frame = play_round(terms, ps.signing_key, subjects[1:], rng).frame()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: s.release(ps.subject_id, "pg-job", frame), [one, two]))
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0] == results[1][0]


def _outcome(call: Any, **kwargs: Any) -> str:
    try:
        call(**kwargs)
    except TrapdoorError as exc:
        return exc.code
    return "ok"


def test_upgrade_from_0001_keeps_legacy_jobs_and_their_releases(tmp_path: Path) -> None:
    """0002 and 0003 only add and drop columns: SQLite never recreates kgc_jobs or
    kgc_releases (no cascade); old releases have no attempt or aggregate digest."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/kgc.db"
    migrate("kgc", url, "0001_initial")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO kgc_subjects (id, name, role, code_hash, completed, created_at)"
                    " VALUES ('sub-ps', 'PS', 'param_server', :h, 1, 0)"
                ),
                {"h": "0" * 64},
            )
            conn.execute(
                text(
                    "INSERT INTO kgc_jobs (job_id, owner_id, job_key, signature, participants,"
                    " quorum, width, created_at)"
                    " VALUES ('old', 'sub-ps', '{}', 'sig', '[]', 1, 1, 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO kgc_releases (job_id, round, payload_sha256, contributors,"
                    " bundle, released_at) VALUES ('old', 0, :h, '[]', '{}', 0)"
                ),
                {"h": "0" * 64},
            )
        migrate("kgc", url)
        with engine.connect() as conn:
            job = conn.execute(text("SELECT * FROM kgc_jobs")).mappings().one()
            assert (job["job_id"], job["terms"], job["terms_signature"], job["rounds"]) == (
                "old",
                None,
                None,
                None,
            )
            assert "signature" not in job
            release = conn.execute(text("SELECT * FROM kgc_releases")).mappings().one()
            assert (release["job_id"], release["attempt"], release["aggregate_sha256"]) == (
                "old",
                None,
                None,
            )
    finally:
        engine.dispose()
    assert _schema_diff(url) == []
