"""Support for the parameter server's API tests: the app over a migrated SQLite file.

A module with a unique name (not ``conftest``) so the tests can import its types.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.signing import generate_signing_key, public_key_hex
from trapdoor.ps.app import create_app
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.testing import PS_SUBJECT_ID, FakeClock, FakeKgc, HttpPs, TestParticipant
from trapdoor.service.db import make_engine

ADMIN_TOKEN = "admin-secret-for-tests"


@dataclass
class ApiWorld:
    app: Flask
    client: FlaskClient
    ps: ParameterServer
    kgc: FakeKgc
    clock: FakeClock
    ps_key: Ed25519PrivateKey
    engine: Engine  # a second engine on the same database, for assertions
    participants: list[TestParticipant]
    stranger: TestParticipant

    def close(self) -> None:
        self.ps.close()
        self.engine.dispose()

    def auth(
        self, p: TestParticipant, *, role: str = "participant", audience: str = PS_SUBJECT_ID
    ) -> dict[str, str]:
        """A participant's token from the KGC, for this PS (or ``audience``)."""
        token = p.token(self.kgc, self.clock.now, role=role, audience=audience)
        return {"Authorization": f"Bearer {token}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def participant(self, subject_id: str) -> TestParticipant:
        return next(p for p in [*self.participants, self.stranger] if p.subject_id == subject_id)

    @property
    def port(self) -> HttpPs:
        """The PS over HTTP for the participants' round helpers (None: the operator)."""
        return HttpPs(
            self.client,
            lambda subject: self.admin if subject is None else self.auth(self.participant(subject)),
        )


def expect_error(response: Any, status: int, code: str | None = None) -> None:
    """``response`` is the one JSON error shape with ``status`` (and ``code``)."""
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "message"}
    if code is not None:
        assert body["error"] == code, body


def build_api_world(master: MasterKey, participants: list[TestParticipant], url: str) -> ApiWorld:
    """The app with a fake KGC, a fake clock and small tables, over a migrated database."""
    ps_key = generate_signing_key()
    registered = {p.subject_id: p.public_key for p in participants}
    stranger = TestParticipant.make("stranger", 1, master, random.Random(8))
    registered["stranger"] = stranger.public_key  # enrolled with the KGC, in no job
    signing_keys = {p.subject_id: public_key_hex(p.signing_key) for p in [*participants, stranger]}
    kgc = FakeKgc(
        master,
        rng=random.Random(2),
        participants=registered,
        signing_keys=signing_keys,
        ps_verify_key=ps_key.public_key(),
        ps_subject_id=PS_SUBJECT_ID,
    )
    clock = FakeClock()
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": url,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY": kgc,
            "SIGNING_KEY": ps_key,
            "SUBJECT_ID": PS_SUBJECT_ID,
            "CLOCK": clock,
            "RNG": random.Random(3),
            "CHUNK_ELEMENTS": 3,
        }
    )
    ps: ParameterServer = app.extensions["param_server"]
    return ApiWorld(
        app, app.test_client(), ps, kgc, clock, ps_key, make_engine(url), participants, stranger
    )
