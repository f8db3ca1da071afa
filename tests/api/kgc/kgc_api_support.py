"""Shared by the KGC's API tests: an app over a copy of an initialised database."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select

from trapdoor.kgc.app import create_app
from trapdoor.kgc.keystore import init_kgc
from trapdoor.kgc.testing import FakeClock, TestSubject
from trapdoor.service.db import make_engine

ADMIN_TOKEN = "admin-token-for-tests"
PASSPHRASE = "kgc test passphrase"
LOW_COST = 2**10  # scrypt N for tests only


@dataclass
class ApiWorld:
    """The KGC app, its test client, clock and database."""

    app: Flask
    client: FlaskClient
    clock: FakeClock
    engine: Engine
    url: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def count(self, model: type) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model)) or 0)

    def enrol(self, subject: TestSubject, name: str = "org") -> TestSubject:
        """Enrol (operator) and complete (subject) over HTTP; the subject with its id."""
        answer = self.client.post(
            "/v1/enrolments", json={"name": name, "role": subject.role}, headers=self.admin
        )
        assert answer.status_code == 201, answer.get_json()
        done = replace(subject, subject_id=answer.get_json()["subject_id"])
        complete = self.client.post(
            f"/v1/enrolments/{done.subject_id}/complete",
            json=done.completion(answer.get_json()["code"]),
        )
        assert complete.status_code == 200, complete.get_json()
        return done

    def token(self, subject: TestSubject) -> dict[str, str]:
        """Authorization headers with a fresh token for ``subject``."""
        nonce = f"nonce-{random.getrandbits(64):016x}"
        answer = self.client.post("/v1/tokens", json=subject.challenge(self.clock(), nonce))
        assert answer.status_code == 200, answer.get_json()
        return {"Authorization": f"Bearer {answer.get_json()['token']}"}

    def close(self) -> None:
        self.engine.dispose()


def error(response: Any, status: int, code: str) -> None:
    """A JSON error with exactly ``error`` and ``message``, the status and the code."""
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body


def init_demo_template(path: Path) -> Path:
    """A migrated KGC database at ``path`` with sealed 1024-bit demo keys (cheap scrypt),
    to be copied for each app by :func:`build_api_world`."""
    init_kgc(f"sqlite:///{path}", PASSPHRASE, bits=1024, demo=True, cost=LOW_COST)
    return path


def build_api_world(template: Path, tmp_path: Path, **config: Any) -> ApiWorld:
    """An app over a copy of the initialised ``template`` database (no migration, no init)."""
    db = tmp_path / "kgc.db"
    shutil.copyfile(template, db)
    url = f"sqlite:///{db}"
    clock = FakeClock()
    settings: dict[str, Any] = {
        "DATABASE_URL": url,
        "PASSPHRASE": PASSPHRASE,
        "DEMO": True,
        "AUTO_MIGRATE": False,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "CLOCK": clock,
        "RNG": random.Random(7),
        "RANDOM_BYTES": random.Random(8).randbytes,
        "TESTING": True,
    }
    settings.update(config)
    app = create_app(settings)
    return ApiWorld(app, app.test_client(), clock, make_engine(url), url)
