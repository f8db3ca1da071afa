"""The KGC's HTTP API through the Flask test client (docs/PROTOCOL.md, KGC section).

Every endpoint's success and error paths: status, error code, and that a refused
request stored nothing. The release tests play a dishonest parameter server
(docs/PROTOCOL.md): relabelled rounds, repeated rounds,
forged or misdirected closed sets, upload statements and audits, another ``F`` than the
audited one, a broken chain of aggregates, outsiders, too few contributors and oversized
bodies are all refused with their status, and no release is stored.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kgc_api_support import PASSPHRASE, ApiWorld, build_api_world, error

from trapdoor.crypto.blocks import BlockLayout, element_bytes
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import (
    generate_signing_key,
    issue_token,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from trapdoor.crypto.wire import FRAME_MAGIC, from_obj, to_obj
from trapdoor.kgc.app import create_app
from trapdoor.kgc.keystore import DemoParamsRefusedError, WrongPassphraseError
from trapdoor.kgc.models import Job, Release, Subject, TokenNonce
from trapdoor.kgc.testing import RoundPlay, TestSubject, dishonest_requests, job_request, play_round
from trapdoor.protocol.bundle import ReleaseBinding, open_release
from trapdoor.protocol.job import JobTerms, verify_job_terms
from trapdoor.protocol.release_request import release_header_limit

OCTET = {"Content-Type": "application/octet-stream"}
PARAMS = load_demo_master_key(1024).params


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
        "/metrics": {"get"},
        "/v1/audit-log": {"get"},
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
    members = [api.enrol(owners[1], "B").subject_id]
    request = job_request("job-x", members, params=PARAMS, quorum=1)
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

    def play(
        self, signers: Sequence[TestSubject] | None = None, *, seed: int = 1, **kwargs: Any
    ) -> RoundPlay:
        """An honest round played by the PS with ``signers`` (default: the first two)."""
        chosen = self.members[:2] if signers is None else signers
        return play_round(self.terms, self.ps.signing_key, chosen, random.Random(seed), **kwargs)


@pytest.fixture
def job(api: ApiWorld, owners: list[TestSubject]) -> JobWorld:
    ps = api.enrol(TestSubject.param_server(), "PS")
    members = [api.enrol(o, f"org{i}") for i, o in enumerate(owners[:3])]
    outsider = api.enrol(owners[3], "outsider")
    auth = api.token(ps)
    body = job_request(
        "job-1",
        [m.subject_id for m in members],
        params=PARAMS,
        quorum=2,
        rounds=ROUNDS,
        width=3,
        num_plaintexts=NUM_PLAINTEXTS,
    )
    answer = api.client.post("/v1/jobs", json=body, headers=auth)
    assert answer.status_code == 201, answer.get_json()
    out = answer.get_json()
    assert set(out) == {"job_id", "job_key", "job_terms", "job_terms_signature"}
    terms = verify_job_terms(_verify_key(api), out["job_terms"], out["job_terms_signature"], PARAMS)
    assert out["job_key"] == out["job_terms"]["job_key"]
    assert {k: out["job_terms"][k] for k in body["terms"]} == body["terms"]
    assert terms.param_server == ps.subject_id and terms.job_key.width == 3
    assert terms.param_server_key == public_key_hex(ps.signing_key)
    assert dict(terms.signing_keys) == {
        m.subject_id: public_key_hex(m.signing_key) for m in members
    }
    return JobWorld(api, ps, members, outsider, terms, auth)


def test_create_job_refusals(job: JobWorld) -> None:
    api, now = job.api, job.api.clock()
    ids = [m.subject_id for m in job.members]
    good = job_request("job-2", ids, params=PARAMS, quorum=2)
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

    def members(participants: list[str], job_id: str = "job-2") -> dict[str, Any]:
        return job_request(job_id, participants, params=PARAMS, quorum=2)

    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (good, {}, 401, "unauthorized"),
        (good, {"Authorization": f"Bearer {forged}"}, 401, "invalid-token"),
        (good, {"Authorization": "Bearer v1.a.b"}, 401, "invalid-token"),
        (good, p_auth, 403, "wrong-role"),
        (good, api.admin, 401, "invalid-token"),
        (members(ids, "job-1"), job.ps_auth, 409, "job-exists"),
        (members([*ids, "sub-none"]), job.ps_auth, 422, "unknown-participant"),
        (members([*ids, job.ps.subject_id]), job.ps_auth, 422, "unknown-participant"),
        (with_terms(quorum=9), job.ps_auth, 422, "invalid-quorum"),
        (with_terms(width=2000), job.ps_auth, 422, "invalid-width"),
        (with_terms(job_id="job-3"), job.ps_auth, 422, "job-mismatch"),
        (with_terms(width="3"), job.ps_auth, 400, "bad-terms"),
        (with_terms(rounds=0), job.ps_auth, 400, "bad-terms"),
        (with_terms(participants="a,b"), job.ps_auth, 400, "bad-terms"),
        (with_terms(initial_ciphertext_sha256=None), job.ps_auth, 400, "bad-terms"),
        (with_terms(param_server_key="00" * 32), job.ps_auth, 400, "bad-terms"),
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


def _post_release(
    job: JobWorld, frame: bytes, headers: dict[str, str] | None = None, job_id: str = "job-1"
) -> Any:
    return job.api.client.post(
        f"/v1/jobs/{job_id}/releases",
        data=frame,
        headers={**OCTET, **(job.ps_auth if headers is None else headers)},
    )


def _open(bundle: dict[str, Any], subject: TestSubject, wrapped: Any, play: RoundPlay) -> list[int]:
    """What ``subject`` opens with ``wrapped``, under the binding the bundle names."""
    assert subject.secret_key is not None
    opened = open_release(
        subject.secret_key,
        binding=ReleaseBinding.from_fields(bundle),
        sealed_model=bundle["sealed_model"],
        wrapped_key=wrapped,
        blind=play.blind,
    )
    return [int(v) for v in opened]


def test_release_for_contributors_only_and_idempotent(job: JobWorld) -> None:
    play = job.play()
    first = _post_release(job, play.frame())
    assert first.status_code == 201, first.get_json()
    bundle = first.get_json()
    verify_json(
        _verify_key(job.api),
        {k: v for k, v in bundle.items() if k != "kgc_signature"},
        bundle["kgc_signature"],
    )
    assert sorted(bundle["wrapped_keys"]) == sorted(play.ids)
    assert (bundle["job_id"], bundle["round"], bundle["attempt"]) == ("job-1", 0, 0)
    assert bundle["base_sha256"] == job.terms.initial_ciphertext_sha256
    assert bundle["blind_sha256"] == play.digests.blind_sha256
    for member in play.signers:
        wrapped = bundle["wrapped_keys"][member.subject_id]
        assert _open(bundle, member, wrapped, play) == list(play.model)
        # Served under another binding (round, attempt, base...), the bundle opens nothing.
        for field, value in (("round", 1), ("attempt", 1), ("base_sha256", "ab" * 32)):
            with pytest.raises(SealError):
                _open({**bundle, field: value}, member, wrapped, play)
    for stranger in (job.members[2], job.outsider):
        for wrapped in bundle["wrapped_keys"].values():
            with pytest.raises(SealError):
                _open(bundle, stranger, wrapped, play)

    again = _post_release(job, play.frame(), headers=job.api.token(job.ps))
    assert again.status_code == 200
    assert again.get_json() == bundle
    # Attack (b): round 0 again, with another F or another contributor set.
    error(_post_release(job, job.play(seed=2).frame()), 409, "already-released")
    error(_post_release(job, job.play(job.members).frame()), 409, "already-released")
    assert job.api.count(Release) == 1


def test_release_refusals_store_nothing(job: JobWorld) -> None:
    """A dishonest PS changes one piece of an honest request; the status says which."""
    api = job.api
    play = job.play(seed=3)
    refusals = dishonest_requests(
        play, spare=job.members[2], outsider=job.outsider, rng=random.Random(4)
    )
    for refusal in refusals:
        response = _post_release(job, refusal.frame)
        assert response.get_json()["error"] == refusal.code, (refusal.what, response.get_json())
        error(response, refusal.status, refusal.code)
        assert api.count(Release) == 0
    cases: list[tuple[bytes, dict[str, str] | None, int, str]] = [
        (play.frame(extra={"round": 1000}), None, 409, "round-out-of-range"),
        (play.frame(extra={"round": ROUNDS}), None, 409, "round-out-of-range"),
        (job.play(round_number=1).frame(), None, 409, "out-of-schedule"),
        (FRAME_MAGIC + b"\x01garbage", None, 400, "bad-frame"),
        (play.frame()[:-1], None, 400, "bad-frame"),
        (play.frame(), {}, 401, "unauthorized"),
        (play.frame(), api.token(job.members[0]), 403, "wrong-role"),
    ]
    for body, headers, status, code in cases:
        error(_post_release(job, body, headers), status, code)
        assert api.count(Release) == 0
    error(_post_release(job, play.frame(), job_id="job-none"), 404, "not-found")
    wrong_type = api.client.post(
        "/v1/jobs/job-1/releases", json={"frame": "x"}, headers=job.ps_auth
    )
    error(wrong_type, 415, "unsupported-media-type")
    other_ps = api.enrol(TestSubject.param_server(), "PS2")
    error(
        _post_release(job, play.frame(ps_key=other_ps.signing_key), api.token(other_ps)),
        403,
        "not-job-owner",
    )
    limit = api.app.config["MAX_CONTENT_LENGTH"]
    api.app.config["MAX_CONTENT_LENGTH"] = 256
    error(_post_release(job, play.frame()), 413, "too-large")
    api.app.config["MAX_CONTENT_LENGTH"] = limit
    assert api.count(Release) == 0
    # The honest request still goes through afterwards.
    assert _post_release(job, play.frame()).status_code == 201


def test_release_bodies_are_bounded_by_the_jobs_frame(job: JobWorld) -> None:
    """Attack (f): a body over the job's frame size is 413, before it is read."""
    api = job.api
    layout = BlockLayout(NUM_PLAINTEXTS, 3)
    header = release_header_limit(len(job.terms.participants))  # sized to the job
    limit = 9 + header + layout.num_elements * element_bytes(PARAMS)
    good = job.play(seed=4).frame()
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


def test_rounds_are_released_on_the_kgcs_schedule_and_chain(job: JobWorld) -> None:
    previous: RoundPlay | None = None
    for t in range(ROUNDS):
        play = job.play(job.members[: 2 + t % 2], seed=10 + t, after=previous)
        if t + 1 < ROUNDS:
            early = job.play(seed=20 + t, after=play)
            error(_post_release(job, early.frame()), 409, "out-of-schedule")
        if previous is not None:
            # A PS that restarts from Enc(W_0), or replays an audit of round t-1.
            restart = job.play(play.signers, seed=30 + t, round_number=t)
            error(_post_release(job, restart.frame()), 422, "audit-mismatch")
            replayed = [previous.audits[0], *play.audits[1:]]
            error(_post_release(job, play.frame(audits=replayed)), 422, "audit-mismatch")
        answer = _post_release(job, play.frame())
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["round"] == t
        assert answer.get_json()["base_sha256"] == play.digests.base_sha256
        previous = play
    assert previous is not None
    beyond = job.play(seed=99, after=previous, round_number=ROUNDS)
    error(_post_release(job, beyond.frame()), 409, "round-out-of-range")
    assert job.api.count(Release) == ROUNDS


def test_refused_releases_are_logged_with_their_code(
    job: JobWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    frame = job.play(seed=5).frame(extra={"round": 1000})
    error(_post_release(job, frame), 409, "round-out-of-range")
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


def test_metrics_count_subjects_and_refusals_for_the_operator(api: ApiWorld) -> None:
    assert api.client.get("/metrics").status_code == 401
    api.client.post("/v1/enrolments", json={"name": "", "role": "participant"}, headers=api.admin)
    scrape = api.client.get("/metrics", headers=api.admin)
    assert scrape.status_code == 200 and scrape.mimetype == "text/plain"
    text = scrape.get_data(as_text=True)
    assert 'trapdoor_errors_total{code="unauthorized"} 1.0' in text
    assert 'endpoint="/v1/enrolments",method="POST",status="400"' in text
    assert "trapdoor_enrolments_pending" in text and "trapdoor_database_bytes" in text
