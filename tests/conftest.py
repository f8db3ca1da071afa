"""Session-wide fixtures shared by the whole test suite.

Parameter generation is deterministic (fixed seeds) and done once per session: about half a
second at 1024 bits, a few milliseconds at 256. Never generate 2048-bit parameters in a test;
load the shipped demo ones (``trapdoor.crypto.demo_params``) instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from trapdoor.crypto.bcp import MasterKey, PublicParams, generate_params
from trapdoor.participant.testing import FakeNetwork, JobWorld

PARAMS_1024_SEED = 1024_2024
SMALL_PARAMS_SEED = 256_2024
SMALL_PARAMS_BITS = 256
RNG_SEED = 20240611


@pytest.fixture(scope="session")
def params_1024() -> tuple[PublicParams, MasterKey]:
    """1024-bit ``(PublicParams, MasterKey)``, generated once per session."""
    return generate_params(1024, random.Random(PARAMS_1024_SEED))


@pytest.fixture(scope="session")
def small_params() -> tuple[PublicParams, MasterKey]:
    """Small (256-bit) ``(PublicParams, MasterKey)`` for fast property tests. Insecure."""
    return generate_params(SMALL_PARAMS_BITS, random.Random(SMALL_PARAMS_SEED))


@pytest.fixture
def rng() -> random.Random:
    """A fresh deterministic random generator for each test."""
    return random.Random(RNG_SEED)


POSTGRES_ENV = "TRAPDOOR_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a PostgreSQL database whose role may create databases.

    ``TRAPDOOR_TEST_POSTGRES_URL`` if set, else the local server the deployment docs use
    (127.0.0.1:5432, trust auth, database ``test``). Tests that need it skip with a clear
    message when nothing answers there; each test makes its own scratch database.
    """
    import os

    from sqlalchemy import text

    from trapdoor.service.db import make_engine

    url = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES_URL)
    engine = make_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or network error means: no server to test on
        pytest.skip(f"no PostgreSQL at {url} ({type(exc).__name__}); set {POSTGRES_ENV}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A scratch PostgreSQL database for one test, dropped afterwards."""
    import secrets

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from trapdoor.service.db import make_engine

    name = f"trapdoor_test_{secrets.token_hex(4)}"
    admin = make_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def network(world: JobWorld, monkeypatch: pytest.MonkeyPatch) -> FakeNetwork:
    """The client library's HTTP routed to an in-process fake KGC and PS for the test
    module's ``world`` (each module that uses it defines its own ``world`` fixture)."""
    net = FakeNetwork(world)
    monkeypatch.setattr("trapdoor.participant.client.ServiceClient", net.service_client)
    return net
