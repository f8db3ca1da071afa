"""Shared by the fuzz tests: the three apps with test configuration, and response checks.

The KGC and parameter-server apps are built with the API tests' own helpers
(``tests/api/*/…_support.py``), imported from their folders.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, inspect, select, table

API_TESTS = Path(__file__).resolve().parents[1] / "api"
for _folder in ("kgc", "param_server"):
    if str(API_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(API_TESTS / _folder))

import kgc_api_support  # noqa: E402
import ps_api_support  # noqa: E402

from trapdoor.crypto.demo_params import load_demo_master_key  # noqa: E402
from trapdoor.kgc.testing import TestSubject  # noqa: E402
from trapdoor.participant.node_api import create_app as create_node_app  # noqa: E402
from trapdoor.participant.testing import node_test_config  # noqa: E402
from trapdoor.ps.testing import make_definition, make_participants  # noqa: E402

NODE_ADMIN_TOKEN = "node-admin-for-fuzz"
JOB_ID = "job-fuzz"

# Statuses an app may answer with; 502/503 only where a peer is unreachable (the node's
# enrol and join call the KGC or the PS; the parameter server calls the KGC).
UPSTREAM_STATUSES = {502, 503}


@dataclass
class Target:
    """One app under fuzz: its client, the auth header sets to try, its databases."""

    name: str
    app: Flask
    client: FlaskClient
    auths: dict[str, dict[str, str]]
    engines: list[Engine]
    path_values: dict[str, list[Any]] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Row counts of every table (rejected requests must not change them)."""
        out: dict[str, int] = {}
        for i, engine in enumerate(self.engines):
            names = inspect(engine).get_table_names()
            with engine.connect() as conn:
                for name in names:
                    if name == "alembic_version":
                        continue
                    count = conn.scalar(select(func.count()).select_from(table(name)))
                    out[f"{i}:{name}"] = int(count or 0)
        return out

    def close(self) -> None:
        for closer in self.closers:
            closer()
        for engine in self.engines:
            engine.dispose()


def build_kgc(tmp: Path) -> Target:
    """The KGC over 1024-bit demo keys, with an enrolled PS and participant."""
    template = kgc_api_support.init_demo_template(tmp / "template.db")
    world = kgc_api_support.build_api_world(template, tmp)
    params = load_demo_master_key(1024).params
    participant = world.enrol(TestSubject.participant(params, random.Random(5)), "p")
    ps = world.enrol(TestSubject.param_server(), "ps")
    # A pending enrolment too, so "complete" has a real subject to be refused on.
    pending = world.client.post(
        "/v1/enrolments", json={"name": "pending", "role": "participant"}, headers=world.admin
    ).get_json()["subject_id"]
    return Target(
        name="kgc",
        app=world.app,
        client=world.client,
        auths={
            "none": {},
            "admin": world.admin,
            "param_server": world.token(ps),
            "participant": world.token(participant),
            "garbage": {"Authorization": "Bearer not-a-token"},
        },
        engines=[world.engine],
        path_values={
            "subject_id": [participant.subject_id, ps.subject_id, pending],
            "job_id": [JOB_ID],
        },
        closers=[world.close],
    )


def build_param_server(tmp: Path) -> Target:
    """The parameter server (fake KGC, 1024-bit demo key) with one job and its round 0."""
    master = load_demo_master_key(1024)
    participants = make_participants(master)
    world = ps_api_support.build_api_world(master, participants, f"sqlite:///{tmp}/ps.db")
    weights = np.random.default_rng(1).normal(0.0, 0.5, 8)
    created = world.client.post(
        "/v1/jobs", json=make_definition(JOB_ID, participants, weights), headers=world.admin
    )
    assert created.status_code == 201, created.get_json()
    return Target(
        name="param_server",
        app=world.app,
        client=world.client,
        auths={
            "none": {},
            "admin": world.admin,
            "participant": world.auth(participants[0]),
            "stranger": world.auth(world.stranger),
            "wrong_role": world.auth(participants[1], role="param_server"),
            "garbage": {"Authorization": "Bearer not-a-token"},
        },
        engines=[world.engine],
        path_values={"job_id": [JOB_ID], "t": [0, 1, 2**63, 10**30]},
        closers=[world.close],
    )


def build_node(tmp: Path) -> Target:
    """A participant node (not enrolled, no background worker) over a temp SQLite file."""
    url = f"sqlite:///{tmp}/node.db"
    app = create_node_app({**node_test_config(url, NODE_ADMIN_TOKEN), "TESTING": True})
    from trapdoor.service.db import make_engine

    return Target(
        name="node",
        app=app,
        client=app.test_client(),
        auths={
            "none": {},
            "admin": {"Authorization": f"Bearer {NODE_ADMIN_TOKEN}"},
            "garbage": {"Authorization": "Basic Zm9vOmJhcg=="},
        },
        engines=[make_engine(url)],
        path_values={"job_id": ["j"]},
        closers=[app.extensions["participant_node"].close],
    )


@contextmanager
def target(builder: Any, tmp: Path) -> Iterator[Target]:
    built: Target = builder(tmp)
    try:
        yield built
    finally:
        built.close()


def check_response(
    status: int, content_type: str | None, body: bytes, *, upstream_ok: bool = False
) -> None:
    """No 5xx (except an unreachable peer), JSON always, errors exactly {error, message}."""
    where = f"{status} {content_type} {body[:300]!r}"
    assert status < 500 or (upstream_ok and status in UPSTREAM_STATUSES), where
    if status == 200 and (content_type or "").startswith("text/plain"):
        # The one answer that is not JSON: /metrics, Prometheus's text format.
        assert body.startswith(b"# HELP "), where
        return
    assert (content_type or "").split(";")[0].strip() == "application/json", where
    parsed = json.loads(body)
    if status >= 400:
        assert isinstance(parsed, dict) and set(parsed) == {"error", "message"}, where
        assert isinstance(parsed["error"], str) and parsed["error"], where
        assert isinstance(parsed["message"], str), where
        assert parsed["error"] != "internal", where
