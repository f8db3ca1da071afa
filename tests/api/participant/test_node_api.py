"""The participant node's operator API through the Flask test client (no KGC, no PS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from participant.node_api import create_app

ADMIN = {"Authorization": "Bearer node-admin"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/node.db",
            "ADMIN_TOKEN": "node-admin",
            "PASSPHRASE": "node-pass",
            "BACKGROUND": False,
            "DATASET": "digits",
            "NUM_PARTITIONS": 4,
            "PARTITION_INDEX": 2,
            "PARTITION_SEED": 7,
        }
    )
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
