"""The real KGC over HTTP with the parameter server's own KGC client: the contract holds.

The KGC app runs in a thread on loopback; the parameter server enrols with
``trapdoor.ps.kgc_gateway.complete_enrolment``, creates a job (the KGC signs its terms)
and plays two rounds of the round protocol v2 (docs/PROTOCOL.md): the
participants commit, upload under the PS-signed closed set and audit the aggregate, and
the PS releases through ``HttpKgcGateway`` (tokens for the KGC's audience by signed
challenge, release frames carrying the closed set and the participants' statements and
audits, signed as the PS signs them). The KGC chains round 1 to round 0's audited
aggregate; every contributor opens each released model.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from kgc_api_support import ApiWorld
from sqlalchemy.orm import sessionmaker
from werkzeug.serving import make_server

from trapdoor.crypto.blocks import VectorEncryptor
from trapdoor.crypto.signing import generate_signing_key
from trapdoor.kgc.models import Release
from trapdoor.kgc.testing import FakeClock, TestSubject
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.kgc_gateway import HttpKgcGateway, complete_enrolment
from trapdoor.ps.models import metadata as ps_metadata
from trapdoor.ps.testing import (
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    open_model,
    play_round,
)
from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceClient


@dataclass
class Served:
    api: ApiWorld
    base_url: str


@pytest.fixture
def served(api: ApiWorld) -> Iterator[Served]:
    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(api, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_parameter_server_round_trip_through_the_kgc(
    served: Served, owners: list[TestSubject], tmp_path: Path
) -> None:
    api = served.api
    ps_key = generate_signing_key()
    answer = api.client.post(
        "/v1/enrolments", json={"name": "PS", "role": "param_server"}, headers=api.admin
    ).get_json()
    certificate, _ = complete_enrolment(
        ServiceClient(served.base_url), answer["subject_id"], answer["code"], ps_key
    )
    assert certificate["role"] == "param_server"
    subjects = [api.enrol(o, f"org{i}") for i, o in enumerate(owners[:3])]
    participants = [
        TestParticipant(
            s.subject_id,
            100 * (i + 1),
            s.public_key,  # type: ignore[arg-type]
            s.secret_key,  # type: ignore[arg-type]
            signing_key=s.signing_key,  # the key the KGC certified: it signs statements
        )
        for i, s in enumerate(subjects)
    ]

    gateway = HttpKgcGateway(served.base_url, answer["subject_id"], ps_key, clock=api.clock)
    engine = make_engine(f"sqlite:///{tmp_path}/ps.db")
    ps_metadata.create_all(engine)
    ps = ParameterServer(
        sessionmaker(engine, expire_on_commit=False),
        gateway,
        ps_key,
        clock=FakeClock(),
        rng=random.Random(3),
        subject_id=answer["subject_id"],
    )
    try:
        w0 = np.linspace(-1.0, 1.0, 40)
        job = ps.create_job(make_definition("interop", participants, w0, rounds=2))
        # Each participant checks the KGC-signed terms the PS serves before uploading.
        terms = job_terms_of(job, gateway.info(), param_server=answer["subject_id"])
        assert terms.rounds == 2 and terms.param_server == answer["subject_id"]
        encryptor = VectorEncryptor(job_key_of(job), window=4)
        rng = random.Random(4)
        expected = w0
        for t, delta in enumerate((np.full(40, 0.125), np.full(40, -0.25))):
            play_round(
                ps, terms, t, [(p, p.encrypt(job, delta, encryptor, rng)) for p in participants]
            )
            assert ps.tick().released == [("interop", t)]
            assert api.count(Release) == t + 1
            expected = expected + delta  # the weights sum to 1
            for p in participants:
                got = open_model(job, p, ps.download("interop", t, p.subject_id))
                assert np.max(np.abs(got - expected)) < 2.0**-18
    finally:
        ps.close()
        engine.dispose()
