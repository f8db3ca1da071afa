"""The KGC's HTTP API through the Flask test client (docs/PROTOCOL.md, KGC section).

Every endpoint's success and error paths: status, error code, and that a refused
request stored nothing.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gmpy2
import pytest
from kgc_api_support import PASSPHRASE, ApiWorld, build_api_world, error

from common.blocks import EncryptedVector, JobKey
from common.demo_params import load_demo_master_key
from common.release import open_release
from common.sealing import SealError
from common.signing import (
    generate_signing_key,
    issue_token,
    public_key_from_hex,
    sign_json,
    verify_json,
)
from common.wire import FRAME_MAGIC, from_obj, to_obj
from kgc.app import create_app
from kgc.keystore import DemoParamsRefusedError, WrongPassphraseError
from kgc.models import Job, Release, Subject, TokenNonce
from kgc.testing import TestSubject, encrypt_plaintexts, receipt_for, release_frame

OCTET = {"Content-Type": "application/octet-stream"}


def _verify_key(api: ApiWorld) -> Any:
    return public_key_from_hex(api.client.get("/v1/info").get_json()["verify_key"])


# ---------------------------------------------------------------- meta and info


def test_healthz(api: ApiWorld) -> None:
    body = api.client.get("/healthz").get_json()
    assert body == {"status": "ok", "service": "trapdoor-kgc", "database": "ok", "demo": True}


def test_openapi_lists_every_route(api: ApiWorld) -> None:
    doc = api.client.get("/openapi.json").get_json()
    expected = {
        "/healthz": {"get"},
        "/openapi.json": {"get"},
        "/v1/info": {"get"},
        "/v1/enrolments": {"post"},
        "/v1/enrolments/{subject_id}/complete": {"post"},
        "/v1/subjects/{subject_id}": {"get"},
        "/v1/tokens": {"post"},
        "/v1/jobs": {"post"},
        "/v1/jobs/{job_id}/releases": {"post"},
    }
    assert {path: set(ops) for path, ops in doc["paths"].items()} == expected
    rules = {r.rule for r in api.app.url_map.iter_rules() if r.endpoint != "static"}
    assert len(rules) == len(expected)


def test_info(api: ApiWorld) -> None:
    body = api.client.get("/v1/info").get_json()
    assert set(body) == {"params", "verify_key", "demo"}
    assert from_obj(body["params"]) == load_demo_master_key(1024).params
    assert body["demo"] is True
    public_key_from_hex(body["verify_key"])


def test_unknown_route_and_method_are_json(api: ApiWorld) -> None:
    error(api.client.get("/v1/nothing"), 404, "not-found")
    error(api.client.get("/v1/tokens"), 405, "method-not-allowed")


# ---------------------------------------------------------------- enrolments


def test_enrolment_success(api: ApiWorld) -> None:
    answer = api.client.post(
        "/v1/enrolments", json={"name": "Clinic", "role": "participant"}, headers=api.admin
    )
    assert answer.status_code == 201
    assert set(answer.get_json()) == {"subject_id", "code"}
    assert api.count(Subject) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"name": "a", "role": "participant"}}, 401, "unauthorized"),
        (
            {
                "json": {"name": "a", "role": "participant"},
                "headers": {"Authorization": "Bearer x"},
            },
            401,
            "unauthorized",
        ),
        (
            {"data": "{nope", "content_type": "application/json", "admin": True},
            400,
            "malformed-json",
        ),
        ({"json": ["name", "role"], "admin": True}, 400, "malformed-json"),
        (
            {"data": "name=a", "content_type": "text/plain", "admin": True},
            415,
            "unsupported-media-type",
        ),
        ({"json": {"role": "participant"}, "admin": True}, 400, "missing-field"),
        ({"json": {"name": "a"}, "admin": True}, 400, "missing-field"),
        ({"json": {"name": 5, "role": "participant"}, "admin": True}, 400, "bad-field"),
        ({"json": {"name": "a", "role": "operator"}, "admin": True}, 400, "bad-field"),
        ({"json": {"name": "", "role": "participant"}, "admin": True}, 400, "bad-field"),
    ],
)
def test_enrolment_refusals(api: ApiWorld, kwargs: dict[str, Any], status: int, code: str) -> None:
    if kwargs.pop("admin", False):
        kwargs["headers"] = api.admin
    error(api.client.post("/v1/enrolments", **kwargs), status, code)
    assert api.count(Subject) == 0


def test_enrolment_is_disabled_without_an_admin_token(kgc_template: Path, tmp_path: Path) -> None:
    world = build_api_world(kgc_template, tmp_path, ADMIN_TOKEN=None)
    try:
        response = world.client.post(
            "/v1/enrolments",
            json={"name": "a", "role": "participant"},
            headers={"Authorization": "Bearer anything"},
        )
        error(response, 403, "forbidden")
        assert world.count(Subject) == 0
    finally:
        world.close()


def test_complete_enrolment_and_certificate(api: ApiWorld, owners: list[TestSubject]) -> None:
    answer = api.client.post(
        "/v1/enrolments", json={"name": "A", "role": "participant"}, headers=api.admin
    ).get_json()
    subject = replace(owners[0], subject_id=answer["subject_id"])
    url = f"/v1/enrolments/{subject.subject_id}/complete"
    body = subject.completion(answer["code"])

    error(api.client.get(f"/v1/subjects/{subject.subject_id}"), 404, "not-enrolled")
    done = api.client.post(url, json=body)
    assert done.status_code == 200
    cert = done.get_json()
    verify_json(_verify_key(api), cert["certificate"], cert["signature"])
    assert cert["certificate"]["bcp_public_key"] == body["bcp_public_key"]
    assert api.client.get(f"/v1/subjects/{subject.subject_id}").get_json() == cert

    error(api.client.post(url, json=body), 409, "already-enrolled")
    error(api.client.get("/v1/subjects/sub-nobody"), 404, "not-found")


def test_complete_enrolment_refusals(api: ApiWorld, owners: list[TestSubject]) -> None:
    answer = api.client.post(
        "/v1/enrolments", json={"name": "A", "role": "participant"}, headers=api.admin
    ).get_json()
    sid = answer["subject_id"]
    url = f"/v1/enrolments/{sid}/complete"
    good = replace(owners[0], subject_id=sid).completion(answer["code"])
    foreign = to_obj(load_demo_master_key(2048).params.keygen(random.Random(1))[0])
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/v1/enrolments/sub-none/complete", {"json": good}, 404, "not-found"),
        (url, {"json": {**good, "code": "wrong"}}, 401, "invalid-code"),
        (url, {"data": "{", "content_type": "application/json"}, 400, "malformed-json"),
        (url, {"json": {k: v for k, v in good.items() if k != "code"}}, 400, "missing-field"),
        (
            url,
            {"json": {k: v for k, v in good.items() if k != "signing_key"}},
            400,
            "missing-field",
        ),
        (
            url,
            {"json": {k: v for k, v in good.items() if k != "bcp_public_key"}},
            400,
            "missing-field",
        ),
        (url, {"json": {**good, "code": 1234}}, 400, "bad-field"),
        (url, {"json": {**good, "signing_key": "zz"}}, 400, "bad-field"),
        (url, {"json": {**good, "bcp_public_key": "h"}}, 400, "bad-field"),
        (url, {"json": {**good, "bcp_public_key": {"kind": "bcp-public-key"}}}, 400, "bad-field"),
        (url, {"json": {**good, "bcp_public_key": foreign}}, 422, "wrong-params"),
        (
            url,
            {"json": {**good, "bcp_public_key": {**good["bcp_public_key"], "h": "0"}}},
            422,
            "invalid-key",
        ),
    ]
    for path, kwargs, status, code in cases:
        error(api.client.post(path, **kwargs), status, code)
    with api.engine.connect() as conn:
        assert conn.execute(Subject.__table__.select()).one().completed is False
    assert api.client.post(url, json=good).status_code == 200


# ---------------------------------------------------------------- tokens


def test_token_flow_and_refusals(api: ApiWorld, owners: list[TestSubject]) -> None:
    p = api.enrol(owners[0])
    now = api.clock()
    ok = api.client.post("/v1/tokens", json=p.challenge(now, "nonce-ok-01"))
    assert ok.status_code == 200
    assert ok.get_json()["expires_at"] == int(now) + 300
    assert api.count(TokenNonce) == 1

    forged = {**p.challenge(now, "nonce-x-01"), "signature": sign_json(generate_signing_key(), {})}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": p.challenge(now, "nonce-ok-01")}, 409, "nonce-replayed"),
        ({"json": forged}, 401, "bad-signature"),
        ({"json": p.challenge(now - 61, "nonce-x-02")}, 401, "stale-timestamp"),
        ({"json": p.challenge(now + 3600, "nonce-x-03")}, 401, "stale-timestamp"),
        (
            {"json": {**p.challenge(now, "nonce-x-04"), "timestamp": str(int(now))}},
            400,
            "bad-field",
        ),
        ({"json": {**p.challenge(now, "nonce-x-05"), "timestamp": True}}, 400, "bad-field"),
        ({"json": {**p.challenge(now, "nonce-x-06"), "nonce": 7}}, 400, "bad-field"),
        ({"json": {"subject_id": p.subject_id, "timestamp": int(now)}}, 400, "missing-field"),
        ({"data": "[", "content_type": "application/json"}, 400, "malformed-json"),
        ({"json": {**p.challenge(now, "nonce-x-07"), "subject_id": "sub-none"}}, 404, "not-found"),
    ]
    for kwargs, status, code in cases:
        error(api.client.post("/v1/tokens", **kwargs), status, code)
    assert api.count(TokenNonce) == 1


# ---------------------------------------------------------------- jobs


@dataclass
class JobWorld:
    api: ApiWorld
    ps: TestSubject
    members: list[TestSubject]
    outsider: TestSubject
    job_key: JobKey
    ps_auth: dict[str, str]


@pytest.fixture
def job(api: ApiWorld, owners: list[TestSubject]) -> JobWorld:
    ps = api.enrol(TestSubject.param_server(), "PS")
    members = [api.enrol(o, f"org{i}") for i, o in enumerate(owners[:3])]
    outsider = api.enrol(owners[3], "outsider")
    auth = api.token(ps)
    body = {
        "job_id": "job-1",
        "width": 3,
        "participants": [m.subject_id for m in members],
        "quorum": 2,
    }
    answer = api.client.post("/v1/jobs", json=body, headers=auth)
    assert answer.status_code == 201, answer.get_json()
    out = answer.get_json()
    verify_json(_verify_key(api), {"job_id": "job-1", "job_key": out["job_key"]}, out["signature"])
    job_key = from_obj(out["job_key"])
    assert isinstance(job_key, JobKey) and job_key.width == 3
    return JobWorld(api, ps, members, outsider, job_key, auth)


def test_create_job_refusals(job: JobWorld) -> None:
    api, now = job.api, job.api.clock()
    ids = [m.subject_id for m in job.members]
    good = {"job_id": "job-2", "width": 3, "participants": ids, "quorum": 2}
    p_auth = api.token(job.members[0])
    forged = issue_token(
        generate_signing_key(),
        subject=job.ps.subject_id,
        role="param_server",
        now=now,
        ttl_seconds=300,
        token_id="t",
    )
    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (good, {}, 401, "unauthorized"),
        (good, {"Authorization": f"Bearer {forged}"}, 401, "invalid-token"),
        (good, {"Authorization": "Bearer v1.a.b"}, 401, "invalid-token"),
        (good, p_auth, 403, "wrong-role"),
        (good, api.admin, 401, "invalid-token"),
        ({**good, "job_id": "job-1"}, job.ps_auth, 409, "job-exists"),
        ({**good, "participants": [*ids, "sub-none"]}, job.ps_auth, 422, "unknown-participant"),
        (
            {**good, "participants": [*ids, job.ps.subject_id]},
            job.ps_auth,
            422,
            "unknown-participant",
        ),
        ({**good, "quorum": 9}, job.ps_auth, 422, "invalid-quorum"),
        ({**good, "width": "3"}, job.ps_auth, 400, "bad-field"),
        ({**good, "width": 2.5}, job.ps_auth, 400, "bad-field"),
        ({**good, "participants": "a,b"}, job.ps_auth, 400, "bad-field"),
        ({**good, "participants": [1, 2]}, job.ps_auth, 400, "bad-field"),
        ({k: v for k, v in good.items() if k != "quorum"}, job.ps_auth, 400, "missing-field"),
    ]
    for body, headers, status, code in cases:
        error(api.client.post("/v1/jobs", json=body, headers=headers), status, code)
    error(
        api.client.post("/v1/jobs", data="{", content_type="application/json", headers=job.ps_auth),
        400,
        "malformed-json",
    )
    api.clock.advance(306)
    error(api.client.post("/v1/jobs", json=good, headers=job.ps_auth), 401, "invalid-token")
    assert api.count(Job) == 1


# ---------------------------------------------------------------- releases


def _blinded(job: JobWorld, seed: int) -> tuple[list[int], list[int], EncryptedVector]:
    n = int(job.job_key.params.n)
    rng = random.Random(seed)
    model = [rng.randrange(n) for _ in range(5)]
    blind = [rng.randrange(n) for _ in range(5)]
    plain = [(w + r) % n for w, r in zip(model, blind, strict=True)]
    return model, blind, encrypt_plaintexts(job.job_key, plain, rng)


def _post_release(
    job: JobWorld, frame: bytes, headers: dict[str, str] | None = None, job_id: str = "job-1"
) -> Any:
    return job.api.client.post(
        f"/v1/jobs/{job_id}/releases",
        data=frame,
        headers={**OCTET, **(job.ps_auth if headers is None else headers)},
    )


def test_release_for_contributors_only_and_idempotent(job: JobWorld) -> None:
    model, blind, vector = _blinded(job, 1)
    contributors = [m.subject_id for m in job.members[:2]]
    frame = release_frame(
        job.ps.signing_key, vector, job_id="job-1", round_number=0, contributors=contributors
    )
    first = _post_release(job, frame)
    assert first.status_code == 201, first.get_json()
    bundle = first.get_json()
    verify_json(
        _verify_key(job.api),
        {k: v for k, v in bundle.items() if k != "kgc_signature"},
        bundle["kgc_signature"],
    )
    assert sorted(bundle["wrapped_keys"]) == sorted(contributors)

    def open_with(subject: TestSubject, wrapped: Any) -> list[int]:
        assert subject.secret_key is not None
        return [
            int(v)
            for v in open_release(
                subject.secret_key,
                job_id="job-1",
                round_number=0,
                sealed_model=bundle["sealed_model"],
                wrapped_key=wrapped,
                blind=blind,
            )
        ]

    for member in job.members[:2]:
        assert open_with(member, bundle["wrapped_keys"][member.subject_id]) == model
    for stranger in (job.members[2], job.outsider):
        for wrapped in bundle["wrapped_keys"].values():
            with pytest.raises(SealError):
                open_with(stranger, wrapped)

    again = _post_release(job, frame, headers=job.api.token(job.ps))
    assert again.status_code == 200
    assert again.get_json() == bundle
    _, _, other = _blinded(job, 2)
    different = release_frame(
        job.ps.signing_key, other, job_id="job-1", round_number=0, contributors=contributors
    )
    error(_post_release(job, different), 409, "already-released")
    assert job.api.count(Release) == 1


def test_release_refusals_store_nothing(job: JobWorld) -> None:
    api, key = job.api, job.ps.signing_key
    a, b, _ = (m.subject_id for m in job.members)
    _, _, vector = _blinded(job, 3)
    rogue = generate_signing_key()

    def frame(vec: EncryptedVector = vector, signer: Any = key, **kwargs: Any) -> bytes:
        args: dict[str, Any] = {"job_id": "job-1", "round_number": 0, "contributors": [a, b]}
        args.update(kwargs)
        return release_frame(signer, vec, **args)

    bad = list(vector.elements)
    bad[2] = gmpy2.mpz(job.job_key.params.n) * 3  # shares a factor with N
    outside = EncryptedVector(vector.job_key, vector.layout, tuple(bad), _trusted=True)
    cases: list[tuple[bytes, dict[str, str] | None, int, str]] = [
        (frame(contributors=[a]), None, 422, "below-quorum"),
        (frame(signer=rogue), None, 403, "bad-request-signature"),
        (
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(rogue, "job-1", 0, b)]),
            None,
            403,
            "bad-receipt",
        ),
        (
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(key, "job-1", 5, b)]),
            None,
            422,
            "receipt-mismatch",
        ),
        (frame(contributors=[a, job.outsider.subject_id]), None, 422, "not-a-participant"),
        (frame(contributors=[a, a]), None, 422, "duplicate-contributor"),
        (frame(outside), None, 422, "invalid-element"),
        (FRAME_MAGIC + b"\x01garbage", None, 400, "bad-frame"),
        (frame()[:-1], None, 400, "bad-frame"),
        (frame(), {}, 401, "unauthorized"),
        (frame(), api.token(job.members[0]), 403, "wrong-role"),
    ]
    for body, headers, status, code in cases:
        error(_post_release(job, body, headers), status, code)
    error(_post_release(job, frame(), job_id="job-none"), 404, "not-found")
    wrong_type = api.client.post(
        "/v1/jobs/job-1/releases", json={"frame": "x"}, headers=job.ps_auth
    )
    error(wrong_type, 415, "unsupported-media-type")
    api.app.config["MAX_CONTENT_LENGTH"] = 256
    error(_post_release(job, frame()), 413, "too-large")
    assert api.count(Release) == 0


# ---------------------------------------------------------------- app factory, logs


def test_app_opens_the_sealed_keys_from_the_environment(
    kgc_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAPDOOR_KGC_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("TRAPDOOR_KGC_PASSPHRASE_FILE", raising=False)
    world = build_api_world(kgc_template, tmp_path, PASSPHRASE=None, AUTO_MIGRATE=True)
    try:
        assert "PASSPHRASE" not in world.app.config
        assert world.client.get("/v1/info").get_json()["demo"] is True
    finally:
        world.close()
    with pytest.raises(DemoParamsRefusedError):
        create_app({"DATABASE_URL": world.url, "PASSPHRASE": PASSPHRASE})
    with pytest.raises(WrongPassphraseError):
        create_app({"DATABASE_URL": world.url, "PASSPHRASE": "wrong", "DEMO": True})


def test_no_secret_reaches_the_logs(
    api: ApiWorld, owners: list[TestSubject], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = api.client.post(
        "/v1/enrolments", json={"name": "A", "role": "participant"}, headers=api.admin
    ).get_json()
    subject = replace(owners[0], subject_id=answer["subject_id"])
    api.client.post(
        f"/v1/enrolments/{subject.subject_id}/complete", json=subject.completion(answer["code"])
    )
    headers = api.token(subject)
    api.client.post("/v1/enrolments/x/complete", json={"code": answer["code"], "signing_key": 1})
    assert subject.subject_id in caplog.text  # the log is not simply empty
    for secret in (
        answer["code"],
        headers["Authorization"].split()[1],
        PASSPHRASE,
        api.app.config["ADMIN_TOKEN"],
    ):
        assert secret not in caplog.text
