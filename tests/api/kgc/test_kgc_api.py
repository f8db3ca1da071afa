"""The KGC's HTTP API through the Flask test client (docs/PROTOCOL.md, KGC section).

Every endpoint's success and error paths: status, error code, and that a refused
request stored nothing. The release tests play a dishonest parameter server
(docs/PROTOCOL.md): relabelled rounds, repeated rounds, forged or misdirected upload
statements, outsiders, too few contributors and oversized bodies are all refused, and no
release is stored.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gmpy2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kgc_api_support import PASSPHRASE, ApiWorld, build_api_world, error

from common.blocks import BlockLayout, EncryptedVector, JobKey, element_bytes
from common.demo_params import load_demo_master_key
from common.protocol import JobTerms, verify_job_terms
from common.release import open_release
from common.sealing import SealError
from common.signing import (
    generate_signing_key,
    issue_token,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from common.wire import FRAME_MAGIC, MAX_HEADER_BYTES, from_obj, to_obj
from kgc.app import create_app
from kgc.keystore import DemoParamsRefusedError, WrongPassphraseError
from kgc.models import Job, Release, Subject, TokenNonce
from kgc.testing import (
    TestSubject,
    encrypt_plaintexts,
    job_request,
    signed_release,
    statement_for,
)

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


# ---------------------------------------------------------------- bounded bodies


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/enrolments"])
def test_control_bodies_over_64_kib_are_refused_unparsed(api: ApiWorld, path: str) -> None:
    # Not JSON at all: a 400 would mean it was parsed; 413 means it never was read.
    body = b"{" + b"x" * (64 * 1024)
    response = api.client.post(path, data=body, content_type="application/json", headers=api.admin)
    error(response, 413, "too-large")
    assert (api.count(TokenNonce), api.count(Subject)) == (0, 0)
    # At the limit it is read (and refused as the malformed JSON it is).
    at_limit = b"{" + b"x" * (64 * 1024 - 1)
    error(
        api.client.post(path, data=at_limit, content_type="application/json", headers=api.admin),
        400,
        "malformed-json",
    )


# ---------------------------------------------------------------- tokens


def test_token_flow_and_refusals(api: ApiWorld, owners: list[TestSubject]) -> None:
    p = api.enrol(owners[0])
    ps = api.enrol(TestSubject.param_server(), "PS")
    now = api.clock()
    ok = api.client.post("/v1/tokens", json=p.challenge(now, "nonce-ok-01"))
    assert ok.status_code == 200
    assert ok.get_json()["expires_at"] == int(now) + 300
    claims = verify_token(_verify_key(api), ok.get_json()["token"], now=now, audience="kgc")
    assert (claims.subject, claims.audience) == (p.subject_id, "kgc")
    assert api.count(TokenNonce) == 1

    forged = {**p.challenge(now, "nonce-x-01"), "signature": sign_json(generate_signing_key(), {})}
    swapped = {**p.challenge(now, "nonce-x-11"), "audience": ps.subject_id}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": p.challenge(now, "nonce-ok-01")}, 409, "nonce-replayed"),
        ({"json": forged}, 401, "bad-signature"),
        ({"json": swapped}, 401, "bad-signature"),
        ({"json": p.challenge(now - 61, "nonce-x-02")}, 401, "stale-timestamp"),
        ({"json": p.challenge(now + 3600, "nonce-x-03")}, 401, "stale-timestamp"),
        (
            {"json": {**p.challenge(now, "nonce-x-04"), "timestamp": str(int(now))}},
            400,
            "bad-field",
        ),
        ({"json": {**p.challenge(now, "nonce-x-05"), "timestamp": True}}, 400, "bad-field"),
        ({"json": {**p.challenge(now, "nonce-x-06"), "nonce": 7}}, 400, "bad-field"),
        ({"json": {**p.challenge(now, "nonce-x-08"), "audience": ["kgc"]}}, 400, "bad-field"),
        (
            {"json": {k: v for k, v in p.challenge(now, "nonce-x-09").items() if k != "audience"}},
            400,
            "missing-field",
        ),
        ({"json": {"subject_id": p.subject_id, "timestamp": int(now)}}, 400, "missing-field"),
        ({"data": "[", "content_type": "application/json"}, 400, "malformed-json"),
        ({"json": {**p.challenge(now, "nonce-x-07"), "subject_id": "sub-none"}}, 404, "not-found"),
        ({"json": p.challenge(now, "nonce-x-10", audience="sub-none")}, 422, "unknown-audience"),
        (
            {"json": p.challenge(now, "nonce-x-12", audience=p.subject_id)},
            422,
            "unknown-audience",
        ),
    ]
    for kwargs, status, code in cases:
        error(api.client.post("/v1/tokens", **kwargs), status, code)
    assert api.count(TokenNonce) == 1


def test_a_token_for_a_param_server_is_refused_by_the_kgc(
    api: ApiWorld, owners: list[TestSubject]
) -> None:
    """Attack (e): a token a node got for one PS is no good at the KGC."""
    ps = api.enrol(TestSubject.param_server(), "PS")
    api.enrol(owners[0])
    body = ps.challenge(api.clock(), "nonce-ps-01", audience=ps.subject_id)
    answer = api.client.post("/v1/tokens", json=body)
    assert answer.status_code == 200, answer.get_json()
    token = answer.get_json()["token"]
    claims = verify_token(_verify_key(api), token, now=api.clock(), audience=ps.subject_id)
    assert claims.audience == ps.subject_id
    request = job_request("job-x", [api.enrol(owners[1], "B").subject_id], quorum=1)
    headers = {"Authorization": f"Bearer {token}"}
    error(api.client.post("/v1/jobs", json=request, headers=headers), 401, "invalid-token")
    ok = api.client.post("/v1/jobs", json=request, headers=api.token(ps))
    assert ok.status_code == 201, ok.get_json()


# ---------------------------------------------------------------- jobs

ROUNDS = 3
NUM_PLAINTEXTS = 5


@dataclass
class JobWorld:
    api: ApiWorld
    ps: TestSubject
    members: list[TestSubject]
    outsider: TestSubject
    terms: JobTerms
    ps_auth: dict[str, str]

    @property
    def job_key(self) -> JobKey:
        return self.terms.job_key

    def frame(
        self,
        vector: EncryptedVector,
        round_number: int,
        signers: list[TestSubject],
        *,
        ps_key: Ed25519PrivateKey | None = None,
        **kwargs: Any,
    ) -> bytes:
        """A release request for ``round_number`` with ``signers``' own statements."""
        key = ps_key or self.ps.signing_key
        return signed_release(key, self.terms, vector, round_number, signers, **kwargs)


@pytest.fixture
def job(api: ApiWorld, owners: list[TestSubject]) -> JobWorld:
    ps = api.enrol(TestSubject.param_server(), "PS")
    members = [api.enrol(o, f"org{i}") for i, o in enumerate(owners[:3])]
    outsider = api.enrol(owners[3], "outsider")
    auth = api.token(ps)
    body = job_request(
        "job-1",
        [m.subject_id for m in members],
        quorum=2,
        rounds=ROUNDS,
        width=3,
        num_plaintexts=NUM_PLAINTEXTS,
    )
    answer = api.client.post("/v1/jobs", json=body, headers=auth)
    assert answer.status_code == 201, answer.get_json()
    out = answer.get_json()
    assert set(out) == {"job_id", "job_key", "job_terms", "job_terms_signature"}
    terms = verify_job_terms(
        _verify_key(api),
        out["job_terms"],
        out["job_terms_signature"],
        load_demo_master_key(1024).params,
    )
    assert out["job_key"] == out["job_terms"]["job_key"]
    assert {k: out["job_terms"][k] for k in body["terms"]} == body["terms"]
    assert terms.param_server == ps.subject_id and terms.job_key.width == 3
    assert dict(terms.signing_keys) == {
        m.subject_id: public_key_hex(m.signing_key) for m in members
    }
    return JobWorld(api, ps, members, outsider, terms, auth)


def test_create_job_refusals(job: JobWorld) -> None:
    api, now = job.api, job.api.clock()
    ids = [m.subject_id for m in job.members]
    good = job_request("job-2", ids, quorum=2)
    p_auth = api.token(job.members[0])
    forged = issue_token(
        generate_signing_key(),
        subject=job.ps.subject_id,
        role="param_server",
        now=now,
        ttl_seconds=300,
        token_id="t",
        audience="kgc",
    )

    def with_terms(**changes: Any) -> dict[str, Any]:
        return {**good, "terms": {**good["terms"], **changes}}

    def members(participants: list[str]) -> dict[str, Any]:
        return job_request("job-2", participants, quorum=2)

    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (good, {}, 401, "unauthorized"),
        (good, {"Authorization": f"Bearer {forged}"}, 401, "invalid-token"),
        (good, {"Authorization": "Bearer v1.a.b"}, 401, "invalid-token"),
        (good, p_auth, 403, "wrong-role"),
        (good, api.admin, 401, "invalid-token"),
        (job_request("job-1", ids, quorum=2), job.ps_auth, 409, "job-exists"),
        (members([*ids, "sub-none"]), job.ps_auth, 422, "unknown-participant"),
        (members([*ids, job.ps.subject_id]), job.ps_auth, 422, "unknown-participant"),
        (with_terms(quorum=9), job.ps_auth, 422, "invalid-quorum"),
        (with_terms(width=2000), job.ps_auth, 422, "invalid-width"),
        (with_terms(job_id="job-3"), job.ps_auth, 422, "job-mismatch"),
        (with_terms(width="3"), job.ps_auth, 400, "bad-terms"),
        (with_terms(rounds=0), job.ps_auth, 400, "bad-terms"),
        (with_terms(participants="a,b"), job.ps_auth, 400, "bad-terms"),
        (with_terms(extra=1), job.ps_auth, 400, "bad-terms"),
        ({**good, "job_id": "bad id"}, job.ps_auth, 400, "bad-field"),
        ({**good, "terms": "x"}, job.ps_auth, 400, "bad-field"),
        ({"job_id": "job-2"}, job.ps_auth, 400, "missing-field"),
        ({"terms": good["terms"]}, job.ps_auth, 400, "missing-field"),
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
    model = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
    blind = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
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
    frame = job.frame(vector, 0, job.members[:2])
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
    # Attack (b): round 0 again, with another payload or another contributor set.
    _, _, other = _blinded(job, 2)
    error(_post_release(job, job.frame(other, 0, job.members[:2])), 409, "already-released")
    error(_post_release(job, job.frame(vector, 0, job.members)), 409, "already-released")
    assert job.api.count(Release) == 1


def test_release_refusals_store_nothing(job: JobWorld) -> None:
    api = job.api
    a, b, c = job.members
    _, _, vector = _blinded(job, 3)
    rogue = generate_signing_key()

    def frame(round_number: int = 0, signers: list[TestSubject] | None = None, **kw: Any) -> bytes:
        return job.frame(vector, round_number, [a, b] if signers is None else signers, **kw)

    def stmt(subject: TestSubject, round_number: int = 0, **kw: Any) -> dict[str, Any]:
        return statement_for(subject, kw.pop("terms", job.terms), round_number, **kw)

    bad = list(vector.elements)
    bad[2] = gmpy2.mpz(job.job_key.params.n) * 3  # shares a factor with N
    outside = EncryptedVector(vector.job_key, vector.layout, tuple(bad), _trusted=True)
    other_ps = replace(job.terms, param_server="sub-another-ps")
    other_job = replace(job.terms, job_id="job-2")
    cases: list[tuple[bytes, dict[str, str] | None, int, str]] = [
        # Attack (a), (g): relabelled rounds.
        (frame(1000), None, 409, "round-out-of-range"),
        (frame(ROUNDS), None, 409, "round-out-of-range"),
        (frame(1), None, 409, "out-of-schedule"),
        # Attack (c): statements signed by the PS or another participant, or for another
        # round, job or audience.
        (
            frame(statements=[stmt(a), stmt(b, signing_key=job.ps.signing_key)]),
            None,
            403,
            "bad-statement-signature",
        ),
        (
            frame(statements=[stmt(a), stmt(b, signing_key=c.signing_key)]),
            None,
            403,
            "bad-statement-signature",
        ),
        (frame(statements=[stmt(a), stmt(b, 1)]), None, 422, "statement-mismatch"),
        (frame(statements=[stmt(a), stmt(b, terms=other_job)]), None, 422, "statement-mismatch"),
        (frame(statements=[stmt(a), stmt(b, terms=other_ps)]), None, 422, "statement-mismatch"),
        # Attack (d): an outsider, too few contributors.
        (frame(signers=[a, job.outsider]), None, 422, "not-a-participant"),
        (frame(signers=[a]), None, 422, "below-quorum"),
        (frame(signers=[a, a]), None, 422, "duplicate-contributor"),
        # The request and the frame.
        (frame(ps_key=rogue), None, 403, "bad-request-signature"),
        (frame(extra={"round": -1}), None, 400, "bad-field"),
        (frame(job_id="job-2"), None, 422, "job-mismatch"),
        (job.frame(outside, 0, [a, b]), None, 422, "invalid-element"),
        (FRAME_MAGIC + b"\x01garbage", None, 400, "bad-frame"),
        (frame()[:-1], None, 400, "bad-frame"),
        (frame(), {}, 401, "unauthorized"),
        (frame(), api.token(job.members[0]), 403, "wrong-role"),
    ]
    for body, headers, status, code in cases:
        error(_post_release(job, body, headers), status, code)
        assert api.count(Release) == 0
    error(_post_release(job, frame(), job_id="job-none"), 404, "not-found")
    wrong_type = api.client.post(
        "/v1/jobs/job-1/releases", json={"frame": "x"}, headers=job.ps_auth
    )
    error(wrong_type, 415, "unsupported-media-type")
    other_ps_subject = api.enrol(TestSubject.param_server(), "PS2")
    error(
        _post_release(job, frame(ps_key=other_ps_subject.signing_key), api.token(other_ps_subject)),
        403,
        "not-job-owner",
    )
    api.app.config["MAX_CONTENT_LENGTH"] = 256
    error(_post_release(job, frame()), 413, "too-large")
    assert api.count(Release) == 0


def test_release_bodies_are_bounded_by_the_jobs_frame(job: JobWorld) -> None:
    """Attack (f): a body over the job's frame size is 413, before it is read."""
    api = job.api
    params = job.job_key.params
    layout = BlockLayout(NUM_PLAINTEXTS, 3)
    limit = 9 + MAX_HEADER_BYTES + layout.num_elements * element_bytes(params)
    _, _, vector = _blinded(job, 4)
    good = job.frame(vector, 0, job.members[:2])
    assert len(good) < limit < 64 * 1024 * 1024
    error(_post_release(job, b"\0" * (limit + 1)), 413, "too-large")
    error(_post_release(job, good + b"\0" * (limit + 1 - len(good))), 413, "too-large")
    # Unknown jobs and foreign tokens are refused before any body is read.
    error(_post_release(job, b"\0" * (limit + 1), job_id="job-none"), 404, "not-found")
    error(_post_release(job, b"\0" * (limit + 1), headers={}), 401, "unauthorized")
    # At the limit the body is read (and refused as the bad frame it is).
    error(_post_release(job, b"\0" * limit), 400, "bad-frame")
    assert api.count(Release) == 0
    assert _post_release(job, good).status_code == 201


def test_rounds_are_released_on_the_kgcs_schedule(job: JobWorld) -> None:
    for t in range(ROUNDS):
        _, _, vector = _blinded(job, 10 + t)
        if t + 1 < ROUNDS:
            error(_post_release(job, job.frame(vector, t + 1, job.members)), 409, "out-of-schedule")
        answer = _post_release(job, job.frame(vector, t, job.members[: 2 + t % 2]))
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["round"] == t
    _, _, vector = _blinded(job, 99)
    error(_post_release(job, job.frame(vector, ROUNDS, job.members)), 409, "round-out-of-range")
    assert job.api.count(Release) == ROUNDS


def test_refused_releases_are_logged_with_their_code(
    job: JobWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, _, vector = _blinded(job, 5)
    error(_post_release(job, job.frame(vector, 1000, job.members)), 409, "round-out-of-range")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and refusals[-1].levelno == logging.WARNING
    assert "round-out-of-range" in refusals[-1].getMessage()
    assert job.ps_auth["Authorization"].split()[1] not in caplog.text


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
