"""The services' OpenAPI documents are valid, typed, and true of what the services answer.

Issue 13: the documents are generated from the views' typed bodies
(``trapdoor.service.openapi``). For the KGC, the parameter server and the participant
node: each ``/openapi.json`` is an OpenAPI 3.1 document (schemathesis' copy of the OAS 3.1
meta-schema, and every component a JSON Schema 2020-12 schema) that schemathesis loads;
every operation declares a typed answer and, where it takes a body, a typed request; and a
happy path per service (a KGC and a PS wired together playing a bcp and a masked round; a
node enrolling and joining a job of the fakes) records every answer the apps give and
validates each against the schema its operation documents for that status and media
type, so a body that drifts from its type fails here. Every operation's success is seen.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
import schemathesis
from flask import Flask, Response, request
from flask.testing import FlaskClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from werkzeug.serving import make_server

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import VectorEncryptor
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.kgc.testing import TestSubject
from trapdoor.participant.node_api import create_app as create_node_app
from trapdoor.participant.testing import (
    KGC_URL,
    PS_SUBJECT,
    PS_URL,
    FakeNetwork,
    JobWorld,
    node_test_config,
)
from trapdoor.protocol.audit import build_undecodable_statement
from trapdoor.protocol.bundle import ReleaseBinding, bundle_sha256
from trapdoor.protocol.job import MaskedLayout
from trapdoor.protocol.metrics import build_metrics_report
from trapdoor.ps.app import create_app as create_ps_app
from trapdoor.ps.kgc_gateway import HttpKgcGateway
from trapdoor.ps.testing import (
    HttpPs,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    masked_upload_frame,
    play_round,
)
from trapdoor.service.db import session_scope

for _folder in ("kgc",):
    _path = str(Path(__file__).resolve().parent / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)

import kgc_api_support  # noqa: E402

PS_ADMIN = {"Authorization": "Bearer ps-admin-for-schemas"}
NODE_ADMIN = {"Authorization": "Bearer node-admin-for-schemas"}
LENGTH = 8
#: Operations that take no body although their method could carry one.
BODILESS = {("POST", "/v1/jobs/{job_id}/rounds/{t}/close")}


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Answer:
    """One answer an app gave: its route (OpenAPI form), method, status, media type, body."""

    path: str
    method: str
    status: int
    mimetype: str
    body: bytes


@dataclass
class Recorder:
    """Every answer of one app (attached before its first request)."""

    answers: list[Answer] = field(default_factory=list)

    def attach(self, app: Flask) -> Flask:
        app.after_request(self._record)
        return app

    def _record(self, response: Response) -> Response:
        if request.url_rule is not None:  # an unrouted path has no operation to check
            path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", request.url_rule.rule)
            self.answers.append(
                Answer(
                    path,
                    request.method,
                    response.status_code,
                    response.mimetype or "",
                    response.get_data(),
                )
            )
        return response


def _document(client: FlaskClient) -> dict[str, Any]:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.get_json()
    return document


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator of ``schema`` whose ``$ref``s resolve in the document's components."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def check_answers(document: dict[str, Any], answers: list[Answer]) -> set[tuple[str, str]]:
    """Validate every answer against its operation's documented status, media type and
    schema; the operations (method, path) seen succeeding."""
    succeeded: set[tuple[str, str]] = set()
    for answer in answers:
        where = f"{answer.method} {answer.path} -> {answer.status} {answer.body[:300]!r}"
        operation = document["paths"][answer.path][answer.method.lower()]
        response = operation["responses"].get(str(answer.status))
        assert response is not None, f"undocumented status: {where}"
        assert answer.mimetype in response["content"], f"undocumented media type: {where}"
        if answer.mimetype == "application/json":
            schema = response["content"]["application/json"]["schema"]
            errors = [
                str(e) for e in _validator(document, schema).iter_errors(json.loads(answer.body))
            ]
            assert not errors, f"{where}\n" + "\n".join(errors[:5])
        if answer.status < 400:
            succeeded.add((answer.method, answer.path))
    return succeeded


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}


# --------------------------------------------------------------------------- the KGC and a PS


@dataclass
class Cluster:
    """A KGC app served on loopback and a PS app that reaches it over HTTP, both recorded."""

    kgc: kgc_api_support.ApiWorld
    kgc_answers: Recorder
    ps_app: Flask
    ps_answers: Recorder
    ps_subject: str
    gateway: HttpKgcGateway
    participants: list[TestParticipant]
    subjects: dict[str, TestSubject]

    @property
    def ps(self) -> FlaskClient:
        return self.ps_app.test_client()

    def auth(self, subject: str | None) -> dict[str, str]:
        """The operator's headers (None), or a participant's KGC token for this PS."""
        if subject is None:
            return PS_ADMIN
        nonce = f"nonce-{random.getrandbits(64):016x}"
        challenge = self.subjects[subject].challenge(self.kgc.clock(), nonce, self.ps_subject)
        answer = self.kgc.client.post("/v1/tokens", json=challenge)
        assert answer.status_code == 200, answer.get_json()
        return {"Authorization": f"Bearer {answer.get_json()['token']}"}

    @property
    def port(self) -> HttpPs:
        return HttpPs(self.ps, self.auth)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("kgc-ps")
    template = kgc_api_support.init_demo_template(tmp / "template.db")
    kgc = kgc_api_support.build_api_world(template, tmp)
    kgc_answers = Recorder()
    kgc_answers.attach(kgc.app)
    server = make_server("127.0.0.1", 0, kgc.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        params = load_demo_master_key(1024).params
        rng = random.Random(11)
        ps_subject = kgc.enrol(TestSubject.param_server(), "ps")
        owners = [kgc.enrol(TestSubject.participant(params, rng), f"org{i}") for i in range(1, 4)]
        gateway = HttpKgcGateway(
            f"http://127.0.0.1:{server.server_port}",
            ps_subject.subject_id,
            ps_subject.signing_key,
            clock=kgc.clock,
        )
        ps_answers = Recorder()
        ps_app = ps_answers.attach(
            create_ps_app(
                {
                    "TESTING": True,
                    "DATABASE_URL": f"sqlite:///{tmp}/ps.db",
                    "ADMIN_TOKEN": PS_ADMIN["Authorization"].split()[1],
                    "GATEWAY": gateway,
                    "SIGNING_KEY": ps_subject.signing_key,
                    "SUBJECT_ID": ps_subject.subject_id,
                    "CLOCK": kgc.clock,
                    "RNG": random.Random(3),
                    "CHUNK_ELEMENTS": 3,
                }
            )
        )
        participants = [
            TestParticipant(
                s.subject_id,
                100 * i,
                s.public_key,  # type: ignore[arg-type]
                s.secret_key,  # type: ignore[arg-type]
                signing_key=s.signing_key,
            )
            for i, s in enumerate(owners, start=1)
        ]
        yield Cluster(
            kgc,
            kgc_answers,
            ps_app,
            ps_answers,
            ps_subject.subject_id,
            gateway,
            participants,
            {s.subject_id: s for s in owners},
        )
        ps_app.extensions["param_server"].close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        kgc.close()


def _bcp_round(cluster: Cluster) -> None:
    """A bcp job's round 0 over HTTP: commit, upload, audit, release, download, a report."""
    ps, members = cluster.ps, cluster.participants
    w0 = np.linspace(-1.0, 1.0, LENGTH)
    created = ps.post("/v1/jobs", json=make_definition("bcp-job", members, w0), headers=PS_ADMIN)
    assert created.status_code == 201, created.get_json()
    first = members[0].subject_id
    notice = {"status": "joined"}
    assert (
        ps.put(
            "/v1/jobs/bcp-job/participation", json=notice, headers=cluster.auth(first)
        ).status_code
        == 200
    )
    assert "participation" in ps.get("/v1/jobs/bcp-job", headers=PS_ADMIN).get_json()
    view = ps.get("/v1/jobs/bcp-job", headers=cluster.auth(first)).get_json()
    terms = job_terms_of(view, cluster.gateway.info(), param_server=cluster.ps_subject)
    encryptor = VectorEncryptor(job_key_of(view), window=4)
    rng = random.Random(4)
    contributions = [(p, p.encrypt(view, np.full(LENGTH, 0.1), encryptor, rng)) for p in members]
    play_round(cluster.port, terms, 0, contributions)
    assert ps.get("/v1/jobs/bcp-job/rounds/0", headers=PS_ADMIN).status_code == 200
    assert cluster.ps_app.extensions["param_server"].tick().released == [("bcp-job", 0)]
    bundle = ps.get("/v1/jobs/bcp-job/rounds/0/model", headers=cluster.auth(first)).get_json()
    report = build_undecodable_statement(
        members[0].signing_key,
        terms,
        round_number=0,
        run=0,
        subject_id=first,
        bundle_sha256=bundle_sha256(ReleaseBinding.from_fields(bundle), bundle["sealed_model"]),
    )
    path = "/v1/jobs/bcp-job/rounds/0/undecodable"
    assert ps.post(path, json=report, headers=cluster.auth(first)).status_code == 201


def _masked_round(cluster: Cluster) -> None:
    """A masked job's round 0: two of three upload, the operator closes, release, download."""
    ps, members = cluster.ps, cluster.participants
    w0 = np.linspace(-1.0, 1.0, LENGTH)
    definition = make_definition(
        "masked-job",
        members,
        w0,
        aggregation="masked",
        encoding={"frac_bits": 20, "clip_bound": 16.0, "model_bound": 32.0},
        share_metrics=True,
    )
    assert ps.post("/v1/jobs", json=definition, headers=PS_ADMIN).status_code == 201
    first, second = members[0].subject_id, members[1].subject_id
    view = ps.get("/v1/jobs/masked-job", headers=PS_ADMIN).get_json()
    terms = job_terms_of(view, cluster.gateway.info(), param_server=cluster.ps_subject)
    layout = MaskedLayout.from_json(view["packing"])
    rng = random.Random(5)
    for p in members[:2]:
        frame = masked_upload_frame(terms, layout, p, 0, np.full(LENGTH, 0.2), rng=rng)
        answer = ps.post(
            "/v1/jobs/masked-job/rounds/0/uploads",
            data=frame,
            headers=cluster.auth(p.subject_id),
            content_type="application/octet-stream",
        )
        assert answer.status_code == 201, answer.get_json()
    closed = ps.post("/v1/jobs/masked-job/rounds/0/close", headers=PS_ADMIN)
    assert closed.status_code == 200, closed.get_json()
    assert cluster.ps_app.extensions["param_server"].tick().released == [("masked-job", 0)]
    for path in ("model", f"uploads/{second}"):
        answer = ps.get(f"/v1/jobs/masked-job/rounds/0/{path}", headers=cluster.auth(first))
        assert answer.status_code == 200, path
    report = build_metrics_report(
        members[0].signing_key,
        terms,
        round_number=0,
        subject_id=first,
        loss=0.25,
        num_examples=12,
        metrics={"accuracy": 0.75},
    )
    path = "/v1/jobs/masked-job/rounds/0/metrics"
    assert ps.post(path, json=report, headers=cluster.auth(first)).status_code == 201
    view = ps.get("/v1/jobs/masked-job/rounds/0", headers=PS_ADMIN).get_json()
    assert view["shared_metrics"]["reporters"] == 1


def test_the_kgc_and_the_ps_answer_what_their_documents_say(cluster: Cluster) -> None:
    kgc, ps = cluster.kgc.client, cluster.ps
    _bcp_round(cluster)
    _masked_round(cluster)
    subject = cluster.participants[0].subject_id
    for client, paths in [
        (kgc, ["/v1/info", f"/v1/subjects/{subject}", "/healthz", "/openapi.json"]),
        (ps, ["/v1/info", "/healthz", "/openapi.json", "/v1/jobs/nope"]),
    ]:
        for path in paths:
            client.get(path, headers=PS_ADMIN if client is ps else {})
    ps.get("/v1/jobs", headers=PS_ADMIN)
    assert ps.get("/metrics", headers=PS_ADMIN).status_code == 200
    assert kgc.get("/metrics", headers=cluster.kgc.admin).status_code == 200
    assert kgc.get("/v1/audit-log", headers=cluster.kgc.admin).status_code == 200
    kgc.post("/v1/enrolments", json={"name": "", "role": "participant"}, headers=cluster.kgc.admin)

    for client, recorder in [(kgc, cluster.kgc_answers), (ps, cluster.ps_answers)]:
        document = _document(client)
        succeeded = check_answers(document, recorder.answers)
        assert succeeded == _operations(document), _operations(document) - succeeded
    assert any(a.status >= 400 for a in cluster.ps_answers.answers)  # refusals checked too


# --------------------------------------------------------------------------- the node


@pytest.fixture
def node_world(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> tuple[JobWorld, FakeNetwork]:
    world = JobWorld(params_1024[0], rng, ["p0", "node", "p2"], layers=(64, 4, 10))
    network = FakeNetwork(world)
    monkeypatch.setattr("trapdoor.participant.client.ServiceClient", network.service_client)
    return world, network


@pytest.fixture
def node_app(tmp_path: Path) -> Iterator[Flask]:
    app = create_node_app(
        node_test_config(f"sqlite:///{tmp_path}/node.db", NODE_ADMIN["Authorization"].split()[1])
    )
    yield app
    app.extensions["participant_node"].close()


def _eventually(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_node_answers_what_its_document_says(
    node_world: tuple[JobWorld, FakeNetwork], node_app: Flask
) -> None:
    world, network = node_world
    recorder = Recorder()
    client = recorder.attach(node_app).test_client()
    assert client.get("/v1/status", headers=NODE_ADMIN).status_code == 200
    network.kgc.codes["node"] = "code-node"
    enrol = {"kgc_url": KGC_URL, "subject_id": "node", "code": "code-node"}
    assert client.post("/v1/enrol", json=enrol, headers=NODE_ADMIN).status_code == 201
    node = node_app.extensions["participant_node"]
    world.identities["node"] = node.client().identity
    world.resign()
    join = {"ps_url": PS_URL, "job_id": world.job_id, "ps_subject_id": PS_SUBJECT}
    assert client.post("/v1/jobs", json=join, headers=NODE_ADMIN).status_code == 201
    _eventually(lambda: bool(network.ps.uploads))
    _eventually(
        lambda: bool(client.get(f"/v1/jobs/{world.job_id}", headers=NODE_ADMIN).json["rounds"])
    )
    assert client.get(f"/v1/jobs/{world.job_id}/model", headers=NODE_ADMIN).status_code == 404
    # The fakes release nothing: hold a model as a released round would leave it.
    with session_scope(node.sessions) as session:
        node._store_model(session, world.job_id, 0, world.initial_weights)
    assert client.get(f"/v1/jobs/{world.job_id}/model", headers=NODE_ADMIN).status_code == 200
    for path in ("/v1/status", "/healthz", "/openapi.json", "/metrics"):
        client.get(path, headers=NODE_ADMIN)

    document = _document(client)
    succeeded = check_answers(document, recorder.answers)
    assert succeeded == _operations(document), _operations(document) - succeeded


# --------------------------------------------------------------------------- the documents


@pytest.fixture(scope="module")
def documents(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Flask, dict[str, Any]]]]:
    node = create_node_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('node')}/node.db",
            "PASSPHRASE": "node-pass",
            "BACKGROUND": False,
        }
    )
    apps = {"kgc": cluster.kgc.app, "param_server": cluster.ps_app, "node": node}
    yield {name: (app, _document(app.test_client())) for name, app in apps.items()}
    node.extensions["participant_node"].close()


SERVICES = ["kgc", "param_server", "node"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_document_is_openapi_3_1(
    documents: dict[str, tuple[Flask, dict[str, Any]]], service: str
) -> None:
    app, document = documents[service]
    assert document["openapi"] == "3.1.0"
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert not errors, errors[:5]
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    assert all(result.ok() for result in loaded.get_all_operations())


def _typed(document: dict[str, Any], schema: dict[str, Any]) -> bool:
    """Whether ``schema`` says more than "some object": named fields, items or values."""
    if "$ref" in schema:
        return _typed(document, document["components"]["schemas"][schema["$ref"].split("/")[-1]])
    if "anyOf" in schema:
        return all(_typed(document, option) for option in schema["anyOf"])
    return bool(schema.get("properties") or schema.get("items") or schema.get("format"))


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_has_typed_bodies(
    documents: dict[str, tuple[Flask, dict[str, Any]]], service: str
) -> None:
    _, document = documents[service]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            where = f"{service} {method.upper()} {path}"
            successes = [op["responses"][s] for s in op["responses"] if s.startswith("2")]
            assert successes, where
            for response in successes:
                for media in response["content"].values():
                    assert _typed(document, media["schema"]), where
            if method in ("post", "put", "patch") and (method.upper(), path) not in BODILESS:
                for media in op["requestBody"]["content"].values():
                    assert _typed(document, media["schema"]), where
            errors = [op["responses"][s] for s in op["responses"] if s[0] in "45" or s == "default"]
            assert all(
                r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                for r in errors
            ), where
            assert "security" in op, where
