"""The participant node's operator API through the Flask test client.

No KGC or PS process: the tests that need them use the fakes of
:mod:`trapdoor.participant.testing`, whose answers are built with :mod:`trapdoor.protocol`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.signing import generate_signing_key
from trapdoor.crypto.wire import decode_frame
from trapdoor.participant.node_api import create_app
from trapdoor.participant.testing import (
    KGC_URL,
    PS_SUBJECT,
    PS_URL,
    FakeNetwork,
    JobWorld,
    node_test_config,
)
from trapdoor.protocol.upload import verify_upload_statement

ADMIN = {"Authorization": "Bearer node-admin"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(node_test_config(f"sqlite:///{tmp_path}/node.db", "node-admin"))
    yield app
    app.extensions["participant_node"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


ROUTES = [
    ("get", "/v1/status", None),
    ("post", "/v1/enrol", {"kgc_url": "http://x", "subject_id": "s", "code": "c"}),
    ("post", "/v1/jobs", {"ps_url": "http://x", "job_id": "j"}),
    ("get", "/v1/jobs/j", None),
    ("get", "/v1/jobs/j/model", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_every_v1_route_needs_the_admin_token(
    client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    response = getattr(client, method)(path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized"


@pytest.mark.parametrize("path", ["/v1/enrol", "/v1/jobs"])
def test_malformed_json_is_400(client: FlaskClient, path: str) -> None:
    response = client.post(
        path, data="{not json", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["error"] == "malformed-json"
    response = client.post(path, json=["a list"], headers=ADMIN)
    assert response.status_code == 400


def test_missing_and_mistyped_fields_are_400(client: FlaskClient) -> None:
    response = client.post("/v1/enrol", json={"kgc_url": "http://x"}, headers=ADMIN)
    assert response.status_code == 400 and response.json["error"] == "missing-field"
    body = {"ps_url": "http://x", "job_id": "j", "skip_rounds": [1, "two"]}
    assert client.post("/v1/jobs", json=body, headers=ADMIN).status_code == 400
    body = {"ps_url": "ftp://x", "job_id": "j"}
    assert client.post("/v1/jobs", json=body, headers=ADMIN).status_code == 400


def test_status_before_enrolment(client: FlaskClient) -> None:
    response = client.get("/v1/status", headers=ADMIN)
    assert response.status_code == 200
    body = response.json
    assert body["identity"] == {"enrolled": False, "subject_id": None, "kgc_url": None}
    assert body["data"]["num_train"] > 0 and body["data"]["num_features"] == 64
    assert body["data"]["source"] == "digits:iid:2/4:seed=7"
    assert body["jobs"] == []


def test_join_before_enrolment_is_409(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json={"ps_url": "http://x", "job_id": "j"}, headers=ADMIN)
    assert response.status_code == 409
    assert response.json["error"] == "not-enrolled"


def test_unknown_job_is_404(client: FlaskClient) -> None:
    assert client.get("/v1/jobs/nope", headers=ADMIN).status_code == 404
    assert client.get("/v1/jobs/nope/model", headers=ADMIN).status_code == 404


def test_enrol_with_unreachable_kgc_is_502_and_stores_nothing(client: FlaskClient) -> None:
    body = {"kgc_url": "http://127.0.0.1:9", "subject_id": "s", "code": "c"}
    response = client.post("/v1/enrol", json=body, headers=ADMIN)
    assert response.status_code == 502
    assert "traceback" not in response.get_data(as_text=True).lower()
    assert client.get("/v1/status", headers=ADMIN).json["identity"]["enrolled"] is False


def test_health_and_openapi_are_public_and_list_every_route(client: FlaskClient) -> None:
    assert client.get("/healthz").json["status"] == "ok"
    doc = client.get("/openapi.json").json
    paths = doc["paths"]
    assert set(paths) >= {
        "/healthz",
        "/openapi.json",
        "/v1/status",
        "/v1/enrol",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/model",
    }
    assert "post" in paths["/v1/jobs"] and "post" in paths["/v1/enrol"]
    assert "get" in paths["/v1/jobs/{job_id}/model"]


def test_missing_passphrase_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAPDOOR_NODE_PASSPHRASE", raising=False)
    with pytest.raises(ValueError, match="TRAPDOOR_NODE_PASSPHRASE"):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/n.db", "BACKGROUND": False})


def test_the_app_does_not_keep_the_passphrase(app: Flask) -> None:
    """The node unseals its keys at start; the secret itself is not left in the config."""
    assert "PASSPHRASE" not in app.config


def test_bodies_over_the_limit_are_413_before_parsing(client: FlaskClient) -> None:
    big = {"kgc_url": "http://x", "subject_id": "s", "code": "c" * (70 * 1024)}
    response = client.post("/v1/enrol", json=big, headers=ADMIN)
    assert response.status_code == 413
    assert response.json["error"] == "too-large"


def test_a_mistyped_ps_subject_id_is_400(client: FlaskClient) -> None:
    for value in (7, "", "x" * 129):
        body = {"ps_url": "http://x", "job_id": "j", "ps_subject_id": value}
        assert client.post("/v1/jobs", json=body, headers=ADMIN).status_code == 400


def test_min_quorum_must_be_a_positive_integer(tmp_path: Path) -> None:
    for value in (0, "3", True):
        with pytest.raises(ValueError, match="MIN_QUORUM"):
            create_app(
                {
                    "DATABASE_URL": f"sqlite:///{tmp_path}/q.db",
                    "PASSPHRASE": "p",
                    "BACKGROUND": False,
                    "MIN_QUORUM": value,
                }
            )


def test_the_database_is_owner_only(app: Flask, tmp_path: Path) -> None:
    assert (tmp_path / "node.db").stat().st_mode & 0o077 == 0


# --------------------------------------------------------------------------- with fake services


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    # the node's data is the digits partition: 64 features, 10 classes
    return JobWorld(params_1024[0], rng, ["p0", "node", "p2"], layers=(64, 4, 10))


def _enrol(client: FlaskClient, app: Flask, world: JobWorld, network: FakeNetwork) -> None:
    """Enrol the node as ``node`` at the fake KGC; the job is then signed for its keys."""
    network.kgc.codes["node"] = "code-node"
    body = {"kgc_url": KGC_URL, "subject_id": "node", "code": "code-node"}
    response = client.post("/v1/enrol", json=body, headers=ADMIN)
    assert response.status_code == 201, response.json
    world.identities["node"] = app.extensions["participant_node"].client().identity
    world.resign()


def _join(client: FlaskClient, **extra: Any) -> Any:
    return client.post(
        "/v1/jobs", json={"ps_url": PS_URL, "job_id": "unit-1", **extra}, headers=ADMIN
    )


def test_enrolment_pins_the_kgc_key(
    client: FlaskClient, app: Flask, world: JobWorld, network: FakeNetwork
) -> None:
    _enrol(client, app, world, network)
    identity = app.extensions["participant_node"].client().identity
    assert identity.kgc_verify_key == world.kgc_verify_key
    assert client.get("/v1/status", headers=ADMIN).json["identity"]["subject_id"] == "node"


def test_a_job_the_kgc_did_not_sign_is_422_shown_in_status_and_never_uploaded(
    client: FlaskClient, app: Flask, world: JobWorld, network: FakeNetwork
) -> None:
    _enrol(client, app, world, network)
    world.resign(kgc_key=generate_signing_key())  # a PS-made job key, signed by the PS
    response = _join(client)
    assert response.status_code == 422
    assert response.json["error"] == "job-refused"
    assert "bad-job-signature" in response.json["message"]
    [job] = client.get("/v1/status", headers=ADMIN).json["jobs"]
    assert job["status"] == "refused" and "bad-job-signature" in job["error"]
    assert client.get("/v1/jobs/unit-1", headers=ADMIN).json["status"] == "refused"
    time.sleep(0.2)
    assert network.ps.uploads == []
    assert [r for r in network.ps.requests if r[0] == "POST"] == []


def test_a_quorum_below_min_quorum_is_422(
    client: FlaskClient, app: Flask, world: JobWorld, network: FakeNetwork
) -> None:
    _enrol(client, app, world, network)
    world.definition["quorum"] = 2
    world.resign()
    response = _join(client)
    assert response.status_code == 422 and "quorum-too-small" in response.json["message"]


def test_a_joined_job_uploads_with_a_signed_statement(
    client: FlaskClient, app: Flask, world: JobWorld, network: FakeNetwork
) -> None:
    _enrol(client, app, world, network)
    response = _join(client, ps_subject_id=PS_SUBJECT)
    assert response.status_code == 201, response.json
    assert response.json["ps_subject_id"] == PS_SUBJECT
    deadline = time.monotonic() + 60
    while not network.ps.uploads and time.monotonic() < deadline:
        time.sleep(0.05)
    [(round_number, frame)] = network.ps.uploads[:1]
    parsed = decode_frame(frame)
    statement = verify_upload_statement(
        parsed.header["statement"],
        world.terms(),
        round_number=0,
        subject_id="node",
        payload_sha256=hashlib.sha256(parsed.payload).hexdigest(),
    )
    assert round_number == 0 and statement.audience == PS_SUBJECT
    assert {r["audience"] for r in network.kgc.token_requests} == {PS_SUBJECT}


def test_metrics_are_for_the_nodes_operator(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    client.get("/v1/status", headers=ADMIN)
    text = client.get("/metrics", headers=ADMIN).get_data(as_text=True)
    assert (
        'trapdoor_http_requests_total{endpoint="/v1/status",method="GET",status="200"} 1.0' in text
    )
    assert "trapdoor_rounds_contributed 0.0" in text and "trapdoor_models_opened 0.0" in text
