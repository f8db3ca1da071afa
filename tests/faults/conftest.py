"""One deployment shared by the fault tests: KGC and PS under gunicorn on PostgreSQL.

It is started the way docs/RELIABILITY.md ("Deployment") says: ``kgc init`` then
``gunicorn trapdoor.kgc.wsgi:app`` (2 workers), ``python -m trapdoor.ps enrol`` then
``gunicorn trapdoor.ps.wsgi:app`` (3 workers), both on one PostgreSQL database. Each
test uses its own job, so the tests do not depend on each other; some kill and restart a
service, which is what they are for. Skips when no PostgreSQL answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fault_support import enrol_clients
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trapdoor.demo.cluster import LocalCluster
from trapdoor.participant.client import ParticipantClient
from trapdoor.service.db import make_engine

PS_WORKERS = 3
KGC_WORKERS = 2
PARTICIPANTS = 50


@dataclass
class Deployment:
    cluster: LocalCluster
    clients: list[ParticipantClient]
    database_url: str


@pytest.fixture(scope="session")
def deployment(
    postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    name = f"trapdoor_faults_{secrets.token_hex(4)}"
    admin = make_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    try:
        with LocalCluster(tmp_path_factory.mktemp("faults")) as cluster:
            cluster.start_kgc(1024, demo=True, database_url=url, gunicorn_workers=KGC_WORKERS)
            cluster.start_param_server(database_url=url, gunicorn_workers=PS_WORKERS)
            clients = enrol_clients(cluster, PARTICIPANTS)
            try:
                yield Deployment(cluster, clients, url)
            finally:
                for client in clients:
                    client.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
