"""The parameter server's HTTP API through the Flask test client (docs/PROTOCOL.md).

Every endpoint's success and error paths; after each refused request the database is
checked to hold nothing new.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from ps_api_support import ApiWorld
from ps_api_support import expect_error as _error
from sqlalchemy import func, select, text
from werkzeug.test import EnvironBuilder, run_wsgi_app

from trapdoor.crypto.blocks import EncryptedVector, VectorEncryptor, element_bytes
from trapdoor.crypto.encoding import PackingLayout, encode_vector
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import (
    generate_signing_key,
    issue_token,
    public_key_from_hex,
    verify_json,
)
from trapdoor.crypto.wire import FRAME_MAGIC, decode_frame, encode_frame
from trapdoor.protocol.audit import build_undecodable_statement
from trapdoor.protocol.bundle import ReleaseBinding, bundle_sha256
from trapdoor.protocol.commitment import build_commitment
from trapdoor.protocol.common import sha256_hex, vector_sha256
from trapdoor.protocol.job import check_job_view
from trapdoor.protocol.receipt import build_receipt, verify_receipt
from trapdoor.protocol.token import KGC_AUDIENCE
from trapdoor.protocol.upload import build_upload_statement
from trapdoor.ps.models import Audit, Commitment, Job, ModelChunk, Round, Upload
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    open_model,
    play_round,
    randomness_proof,
)
from trapdoor.service.errors import TrapdoorError

LENGTH = 300
TOLERANCE = 2.0**-18
ALL = ("p1", "p2", "p3", "p4")


# ---------------------------------------------------------------------- helpers


def _count(api: ApiWorld, model: Any) -> int:
    with api.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def _definition(api: ApiWorld, job_id: str = "job-a", **overrides: Any) -> dict[str, Any]:
    w0 = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    return make_definition(job_id, api.participants, w0, **overrides)


def _create(api: ApiWorld, job_id: str = "job-a", **overrides: Any) -> dict[str, Any]:
    response = api.client.post(
        "/v1/jobs", json=_definition(api, job_id, **overrides), headers=api.admin
    )
    assert response.status_code == 201, response.get_json()
    job: dict[str, Any] = response.get_json()
    return job


class Uploader:
    """Participants' side: check the job's signed terms, commit, encrypt and post uploads.

    Each subject's round-``t`` vector is drawn once (:meth:`vector`), so what it commits
    to is what :meth:`frame` uploads.
    """

    def __init__(self, api: ApiWorld, job: dict[str, Any]) -> None:
        self.api = api
        self.job = job
        self.terms = job_terms_of(job, api.kgc.info(), param_server=PS_SUBJECT_ID)
        self.encryptor = VectorEncryptor(job_key_of(job), window=4)
        self.rng = random.Random(17)
        self.vectors: dict[tuple[str, int], EncryptedVector] = {}

    def participant(self, subject: str) -> TestParticipant:
        return self.api.participant(subject)

    def vector(self, subject: str, t: int, delta: Any = None) -> EncryptedVector:
        if (subject, t) not in self.vectors:
            delta = np.full(LENGTH, 0.01) if delta is None else delta
            p = self.participant(subject)
            self.vectors[subject, t] = p.encrypt(self.job, delta, self.encryptor, self.rng)
        return self.vectors[subject, t]

    def commit(self, t: int, subjects: tuple[str, ...] = ALL, **deltas: Any) -> None:
        """``subjects`` commit over HTTP (all of them: the set closes)."""
        for s in subjects:
            self.participant(s).commit(
                self.api.port, self.terms, t, self.vector(s, t, deltas.get(s))
            )

    def closed_digest(self, t: int) -> str:
        """The round's closed set digest ("0" * 64 while it is not closed)."""
        try:
            return self.participant("p1").closed(self.api.port, self.terms, t).digest
        except TrapdoorError:
            return "0" * 64

    def frame(self, subject: str, t: int, delta: Any = None) -> bytes:
        vector = self.vector(subject, t, delta)
        return self.participant(subject).frame(self.terms, t, vector, self.closed_digest(t))

    def statement(self, subject: str, t: int, payload: bytes) -> dict[str, Any]:
        """``subject``'s signed statement for ``payload`` as its round-``t`` upload."""
        return build_upload_statement(
            self.participant(subject).signing_key,
            self.terms,
            round_number=t,
            subject_id=subject,
            payload_sha256=sha256_hex(payload),
            closed_set_sha256=self.closed_digest(t),
            randomness_proof=randomness_proof(
                self.terms, t, self.closed_digest(t), subject
            ),  # made up: the checks under test come first
        )

    def commit_payload(self, subject: str, t: int, payload: bytes) -> None:
        """``subject`` commits to arbitrary bytes (a participant that means harm)."""
        signed = build_commitment(
            self.participant(subject).signing_key,
            self.terms,
            round_number=t,
            subject_id=subject,
            payload_sha256=sha256_hex(payload),
        )
        self.api.port.accept_commitment(self.job["job_id"], t, subject, signed)

    def reframe(
        self, frame: bytes, *, subject: str = "p1", payload: bytes | None = None, **changes: Any
    ) -> bytes:
        """:func:`_reframe` with ``subject``'s statement signed for the new round and payload.

        The participant itself is the attacker here: its statement is honest about what
        it sends, so the frame reaches the PS's ciphertext checks.
        """
        parsed = decode_frame(frame)
        payload = parsed.payload if payload is None else payload
        t = changes.get("round", parsed.header["round"])
        t = t if isinstance(t, int) and not isinstance(t, bool) else 0
        statement = self.statement(subject, t, payload)
        return _reframe(frame, payload=payload, **{"statement": statement, **changes})

    def post(
        self,
        data: bytes,
        *,
        t: int = 0,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> Any:
        return self.api.client.post(
            f"/v1/jobs/{job_id or self.job['job_id']}/rounds/{t}/uploads",
            data=data,
            headers=headers or {},
            content_type=content_type,
        )


def _reframe(frame: bytes, *, payload: bytes | None = None, **changes: Any) -> bytes:
    """Rebuild a frame with a changed header or payload, digest recomputed (a valid frame)."""
    parsed = decode_frame(frame)
    payload = parsed.payload if payload is None else payload
    header = {**parsed.header, **changes, "sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return struct.pack(">4sBI", FRAME_MAGIC, 1, len(head)) + head + payload


# ---------------------------------------------------------------------- meta


def test_openapi_lists_every_route_and_health(api: ApiWorld) -> None:
    doc = api.client.get("/openapi.json").get_json()
    expected = {
        "/healthz": {"get"},
        "/openapi.json": {"get"},
        "/metrics": {"get"},
        "/v1/info": {"get"},
        "/v1/jobs": {"get", "post"},
        "/v1/jobs/{job_id}": {"get"},
        "/v1/jobs/{job_id}/participation": {"put"},
        "/v1/jobs/{job_id}/rounds/{t}": {"get"},
        "/v1/jobs/{job_id}/rounds/{t}/commitments": {"get", "post"},
        "/v1/jobs/{job_id}/rounds/{t}/uploads": {"post"},
        "/v1/jobs/{job_id}/rounds/{t}/uploads/{subject_id}": {"get"},
        "/v1/jobs/{job_id}/rounds/{t}/audit": {"get"},
        "/v1/jobs/{job_id}/rounds/{t}/base": {"get"},
        "/v1/jobs/{job_id}/rounds/{t}/audits": {"post"},
        "/v1/jobs/{job_id}/rounds/{t}/close": {"post"},
        "/v1/jobs/{job_id}/rounds/{t}/model": {"get"},
        "/v1/jobs/{job_id}/rounds/{t}/undecodable": {"post"},
        "/v1/jobs/{job_id}/rounds/{t}/metrics": {"post"},
    }
    assert {path: set(ops) for path, ops in doc["paths"].items()} == expected
    assert doc["info"]["title"] == "trapdoor-param-server"
    health = api.client.get("/healthz").get_json()
    assert health == {"status": "ok", "service": "trapdoor-param-server", "database": True}
    info = api.client.get("/v1/info").get_json()
    assert public_key_from_hex(info["verify_key"]) is not None
    assert info["subject_id"] == "ps-test"


def test_schema_comes_from_the_alembic_history(api: ApiWorld) -> None:
    with api.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version_param_server")).all()


def test_unknown_route_and_method_are_json_errors(api: ApiWorld) -> None:
    _error(api.client.get("/v1/nothing"), 404, "not-found")
    _error(api.client.delete("/v1/jobs"), 405, "method-not-allowed")
    _error(api.client.get("/v1/jobs/job-a/rounds/-1", headers=api.admin), 404)


def test_huge_round_numbers_are_404_not_500(api: ApiWorld) -> None:
    _create(api)
    p1 = api.participants[0]
    for t in (2**31, 2**63, 10**30):
        _error(api.client.get(f"/v1/jobs/job-a/rounds/{t}", headers=api.admin), 404, "not-found")
        for tail in ("model", "audit", "base", "commitments", "uploads/p1"):
            _error(api.client.get(f"/v1/jobs/job-a/rounds/{t}/{tail}", headers=api.auth(p1)), 404)
        for tail in ("commitments", "audits"):
            _error(
                api.client.post(f"/v1/jobs/job-a/rounds/{t}/{tail}", json={}, headers=api.auth(p1)),
                404,
            )
        _error(api.client.post(f"/v1/jobs/job-a/rounds/{t}/close", headers=api.admin), 404)
        _error(
            api.client.post(
                f"/v1/jobs/job-a/rounds/{t}/uploads",
                data=b"x",
                content_type="application/octet-stream",
                headers=api.auth(p1),
            ),
            404,
        )
    _error(
        api.client.get(f"/v1/jobs/job-a/rounds/{2**31 - 1}", headers=api.admin),
        404,
        "round-not-found",
    )


def test_bodies_are_bounded_before_they_are_read(api: ApiWorld) -> None:
    big = {"pad": "x" * (100 * 1024)}
    # A JSON control view takes 64 KiB: refused before authentication or parsing.
    _error(
        api.client.post("/v1/jobs/job-a/rounds/0/close", json=big, headers=api.admin),
        413,
        "too-large",
    )
    _error(api.client.post("/v1/jobs/job-a/rounds/0/close", json=big), 413, "too-large")
    # A job definition carries the initial weights: far more than 64 KiB is read and parsed.
    response = api.client.post("/v1/jobs", json={**_definition(api), **big}, headers=api.admin)
    _error(response, 400, "bad-definition")  # the unknown field, not the size
    large = make_definition("job-large", api.participants, np.zeros(12_000))
    assert len(json.dumps(large)) > 100 * 1024
    assert api.client.post("/v1/jobs", json=large, headers=api.admin).status_code == 201
    # ... up to the app's cap.
    api.app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    _error(api.client.post("/v1/jobs", json=large, headers=api.admin), 413, "too-large")
    assert _count(api, Job) == 1


# ---------------------------------------------------------------------- jobs


def test_create_job(api: ApiWorld) -> None:
    job = _create(api)
    assert job["job_id"] == "job-a" and job["status"] == "running"
    assert job["current_round"] == 0 and job["rounds_total"] == 2
    assert job["weights"] == pytest.approx({"p1": 0.1, "p2": 0.2, "p3": 0.3, "p4": 0.4})
    packing = PackingLayout.from_json(job["packing"])
    assert packing.length == LENGTH and packing.max_terms == 1024
    assert job["definition"]["quorum"] == 2
    assert set(job) == {
        "job_id",
        "status",
        "current_round",
        "rounds_total",
        "created_at",
        "definition",
        "job_key",
        "job_terms",
        "job_terms_signature",
        "packing",
        "weights",
    }
    # What a participant checks: KGC-signed terms of exactly the served job, for this PS.
    info = api.kgc.info()
    served = api.client.get("/v1/jobs/job-a", headers=api.auth(api.participants[0])).get_json()
    terms = check_job_view(
        served, info.verify_key, info.params, min_quorum=2, param_server="ps-test"
    )
    assert terms.param_server == api.client.get("/v1/info").get_json()["subject_id"]
    assert terms.participants == ("p1", "p2", "p3", "p4")
    assert _count(api, ModelChunk) == 4  # 12 elements in chunks of 3
    assert api.client.get("/v1/jobs/job-a/rounds/0", headers=api.admin).get_json()["status"] == (
        "open"
    )


def test_create_job_errors_store_nothing(api: ApiWorld) -> None:
    body = _definition(api)
    post = api.client.post
    _error(post("/v1/jobs", json=body), 401, "unauthorized")
    _error(post("/v1/jobs", json=body, headers={"Authorization": "Bearer wrong"}), 401)
    _error(post("/v1/jobs", json=body, headers=api.auth(api.participants[0])), 401)
    _error(
        post("/v1/jobs", data="{not json", content_type="application/json", headers=api.admin),
        400,
        "malformed-json",
    )
    _error(post("/v1/jobs", json=[1, 2], headers=api.admin), 400, "malformed-json")
    _error(post("/v1/jobs", data="x", content_type="text/plain", headers=api.admin), 415)
    _error(post("/v1/jobs", json={**body, "job_id": 7}, headers=api.admin), 400, "bad-definition")
    _error(post("/v1/jobs", json={**body, "quorum": 9}, headers=api.admin), 422)
    unknown = {
        **body,
        "participants": [*body["participants"], {"subject_id": "ghost", "num_samples": 5}],
    }
    _error(post("/v1/jobs", json=unknown, headers=api.admin), 422, "kgc-rejected")
    assert _count(api, Job) == _count(api, ModelChunk) == _count(api, Round) == 0
    _create(api)
    _error(post("/v1/jobs", json=body, headers=api.admin), 409, "job-exists")
    assert _count(api, Job) == 1


def test_list_and_get_jobs(api: ApiWorld) -> None:
    _create(api, "job-a")
    _create(api, "job-b")
    listing = api.client.get("/v1/jobs", headers=api.admin).get_json()
    assert [j["job_id"] for j in listing["jobs"]] == ["job-a", "job-b"]
    _error(api.client.get("/v1/jobs"), 401)
    _error(api.client.get("/v1/jobs", headers=api.auth(api.participants[0])), 401)

    p1 = api.participants[0]
    assert api.client.get("/v1/jobs/job-a", headers=api.auth(p1)).status_code == 200
    assert api.client.get("/v1/jobs/job-a", headers=api.admin).status_code == 200
    _error(api.client.get("/v1/jobs/job-a", headers=api.auth(api.stranger)), 403)
    _error(api.client.get("/v1/jobs/nope", headers=api.admin), 404, "job-not-found")
    _error(api.client.get("/v1/jobs/nope", headers=api.auth(p1)), 404, "job-not-found")


def test_tokens_forged_expired_malformed_or_wrong_role(api: ApiWorld) -> None:
    _create(api)
    p1 = api.participants[0]
    forged = issue_token(
        generate_signing_key(),
        subject="p1",
        role="participant",
        now=api.clock.now,
        ttl_seconds=300,
        token_id="x",
        audience=PS_SUBJECT_ID,
    )
    expired = p1.token(api.kgc, api.clock.now - 3600)
    for token in (forged, expired, "v1.abc.def", "garbage", forged + "x"):
        response = api.client.get("/v1/jobs/job-a", headers={"Authorization": f"Bearer {token}"})
        _error(response, 401, "invalid-token")
    _error(api.client.get("/v1/jobs/job-a", headers={"Authorization": "Basic abc"}), 401)
    _error(
        api.client.get("/v1/jobs/job-a", headers=api.auth(p1, role="param_server")),
        403,
        "wrong-role",
    )


def test_tokens_for_another_audience_or_issuer_are_401_at_every_participant_endpoint(
    api: ApiWorld,
) -> None:
    """A token a participant got for another PS (or for the KGC) is no good here."""
    job = _create(api)
    uploader = Uploader(api, job)
    p1 = api.participants[0]
    uploader.commit(0)
    frame = uploader.frame("p1", 0)
    commitment = p1.commitment(uploader.terms, 1, uploader.vector("p1", 1))
    elsewhere = [
        api.auth(p1, audience="another-ps"),
        api.auth(p1, audience=KGC_AUDIENCE),
        {"Authorization": f"Bearer {p1.token(api.kgc, api.clock.now, issuer='someone')}"},
    ]
    for headers in elsewhere:
        _error(api.client.get("/v1/jobs/job-a", headers=headers), 401, "invalid-token")
        _error(api.client.get("/v1/jobs/job-a/rounds/0", headers=headers), 401, "invalid-token")
        _error(uploader.post(frame, headers=headers), 401, "invalid-token")
        for tail in ("model", "audit", "base", "commitments", "uploads/p1"):
            response = api.client.get(f"/v1/jobs/job-a/rounds/0/{tail}", headers=headers)
            _error(response, 401, "invalid-token")
        for tail, body in (("commitments", commitment), ("audits", {})):
            response = api.client.post(
                f"/v1/jobs/job-a/rounds/1/{tail}", json=body, headers=headers
            )
            _error(response, 401, "invalid-token")
    assert _count(api, Upload) == 0 and _count(api, Commitment) == 4
    assert uploader.post(frame, headers=api.auth(p1)).status_code == 201


def test_get_round(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    p1 = api.participants[0]
    view = api.client.get("/v1/jobs/job-a/rounds/0", headers=api.auth(p1)).get_json()
    assert (view["status"], view["attempt"], view["committed"]) == ("open", 0, [])
    api.clock.advance(5)
    uploader.commit(0)
    assert uploader.post(uploader.frame("p1", 0), headers=api.auth(p1)).status_code == 201
    view = api.client.get("/v1/jobs/job-a/rounds/0", headers=api.auth(p1)).get_json()
    assert view["status"] == "committed" and view["committed"] == list(ALL)
    assert view["contributors"] == ["p1"] and view["uploads"] == 1
    assert view["deadline"] == api.clock.now + 600  # the upload phase's own deadline
    _error(api.client.get("/v1/jobs/job-a/rounds/5", headers=api.admin), 404, "round-not-found")
    _error(api.client.get("/v1/jobs/job-a/rounds/0", headers=api.auth(api.stranger)), 403)
    _error(api.client.get("/v1/jobs/nope/rounds/0", headers=api.admin), 404)
    _error(api.client.get("/v1/jobs/job-a/rounds/0"), 401)


# ---------------------------------------------------------------------- uploads


def test_upload_returns_a_receipt_signed_by_the_ps(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    uploader.commit(0)
    frame = uploader.frame("p2", 0)
    response = uploader.post(frame, headers=api.auth(api.participants[1]))
    assert response.status_code == 201
    signed = response.get_json()
    receipt = signed["receipt"]
    assert receipt == {
        "job_id": "job-a",
        "round": 0,
        "subject_id": "p2",
        "sha256": decode_frame(frame).header["sha256"],
        "accepted_at": api.clock.now,
    }
    verify_key = public_key_from_hex(api.client.get("/v1/info").get_json()["verify_key"])
    verify_json(verify_key, receipt, signed["signature"])
    # The PS answers with exactly what the shared builder makes, and it verifies as such.
    upload = {"job_id": "job-a", "subject_id": "p2", "sha256": receipt["sha256"]}
    assert signed == build_receipt(api.ps_key, round_number=0, accepted_at=api.clock.now, **upload)
    assert verify_receipt(verify_key, signed, round_number=0, **upload).accepted_at == api.clock.now
    with api.engine.connect() as conn:
        stored = conn.execute(select(Upload.statement)).scalar_one()
    assert stored == decode_frame(frame).header["statement"]


def test_upload_auth_errors_store_nothing(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    uploader.commit(0)
    frame = uploader.frame("p1", 0)
    p1 = api.participants[0]
    _error(uploader.post(frame), 401, "unauthorized")
    _error(uploader.post(frame, headers={"Authorization": "Bearer v1.x.y"}), 401, "invalid-token")
    _error(uploader.post(frame, headers=api.admin), 401, "invalid-token")
    _error(uploader.post(frame, headers=api.auth(p1, role="param_server")), 403, "wrong-role")
    _error(uploader.post(frame, headers=api.auth(api.stranger)), 403, "not-a-participant")
    _error(uploader.post(frame, headers=api.auth(p1), job_id="nope"), 404, "job-not-found")
    _error(uploader.post(frame, headers=api.auth(p1), t=1), 409, "round-not-open")
    _error(uploader.post(frame, headers=api.auth(p1), content_type="application/json"), 415)
    assert _count(api, Upload) == 0


def test_upload_before_the_set_is_closed_is_409_and_stores_nothing(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    uploader.commit(0, ("p1",))
    _error(
        uploader.post(uploader.frame("p1", 0), headers=api.auth(api.participants[0])),
        409,
        "set-not-closed",
    )
    _error(
        api.client.get("/v1/jobs/job-a/rounds/0/commitments", headers=api.admin),
        409,
        "set-not-closed",
    )
    assert _count(api, Upload) == 0


def test_upload_frame_errors_store_nothing(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    params = job_key_of(job).params
    width = element_bytes(params)
    payload = uploader.vector("p1", 0).to_bytes()
    n_element = int(params.n).to_bytes(width, "big")  # gcd(N, N) != 1: not in Z*_{N^2}
    big_element = int(params.nsquare).to_bytes(width, "big")  # not below N^2
    short = encode_vector(
        np.zeros(LENGTH - 40),
        PackingLayout.from_json({**job["packing"], "length": LENGTH - 40}),
        clip_bound=1.0,
    )[0]
    short_vector = uploader.encryptor.encrypt(short, uploader.rng)
    # A participant must commit to the bytes it uploads: p2 .. p4 commit to bad ones.
    bad_payloads = {
        "p2": n_element + payload[width:],
        "p3": big_element + payload[width:],
        "p4": short_vector.to_bytes(),
    }
    uploader.commit(0, ("p1",))
    for subject, bad in bad_payloads.items():
        uploader.commit_payload(subject, 0, bad)
    frame = uploader.frame("p1", 0)
    fewer_blocks = encode_frame(
        short_vector,
        {
            "job_id": "job-a",
            "round": 0,
            "statement": uploader.statement("p4", 0, bad_payloads["p4"]),
        },
    )
    reframe = uploader.reframe
    uncommitted = uploader.vector("p1", 1).to_bytes()  # a well-formed ciphertext, not p1's
    cases = [
        ("p1", b"NOPE" + frame[4:], 400, "malformed-frame"),  # bad magic
        ("p1", frame[:-1] + bytes([frame[-1] ^ 1]), 400, "malformed-frame"),  # digest mismatch
        ("p1", frame[:7], 400, "malformed-frame"),  # truncated
        ("p1", b"", 400, "malformed-frame"),
        ("p1", reframe(frame, job_id="job-b"), 422, "frame-mismatch"),
        ("p1", reframe(frame, round=1), 422, "frame-mismatch"),
        ("p1", reframe(frame, round=True), 422, "frame-mismatch"),
        ("p1", _reframe(frame, payload=payload[:-width]), 422, "statement-mismatch"),  # unsigned
        ("p1", reframe(frame, payload=payload[:-width]), 422, "invalid-ciphertext"),  # short
        ("p1", reframe(frame, payload=uncommitted), 422, "upload-mismatch"),  # valid, other
        ("p1", reframe(frame, num_elements=11), 422, "invalid-ciphertext"),
        ("p1", reframe(frame, element_bytes=width + 1), 422, "invalid-ciphertext"),
        ("p2", reframe(frame, subject="p2", payload=bad_payloads["p2"]), 422, "invalid-ciphertext"),
        ("p3", reframe(frame, subject="p3", payload=bad_payloads["p3"]), 422, "invalid-ciphertext"),
        ("p4", fewer_blocks, 422, "wrong-shape"),  # 8 plaintexts instead of 9
        ("p1", frame + bytes(200_000), 413, "too-large"),  # larger than this job's frames
    ]
    for subject, data, status, code in cases:
        _error(uploader.post(data, headers=api.auth(api.participant(subject))), status, code)
    assert _count(api, Upload) == 0
    assert uploader.post(frame, headers=api.auth(api.participants[0])).status_code == 201


def test_upload_past_max_content_length_is_413(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    uploader.commit(0)
    api.app.config["MAX_CONTENT_LENGTH"] = 1024
    response = uploader.post(uploader.frame("p1", 0), headers=api.auth(api.participants[0]))
    _error(response, 413, "too-large")
    assert _count(api, Upload) == 0


def test_upload_limit_is_the_jobs_frame_size_set_before_reading(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    uploader.commit(0)
    p1 = api.participants[0]
    frame = uploader.frame("p1", 0)
    oversized = frame + bytes(200_000)
    # Unknown job, or not a participant: refused before a byte of the body is read.
    _error(uploader.post(oversized, headers=api.auth(p1), job_id="nope"), 404, "job-not-found")
    _error(uploader.post(oversized, headers=api.auth(api.stranger)), 403, "not-a-participant")

    stream = io.BytesIO()

    def streamed(data: bytes) -> tuple[int, Any]:
        """Chunked, as a server that terminates the stream passes it: no Content-Length."""
        nonlocal stream
        stream = io.BytesIO(data)
        environ = EnvironBuilder(
            path="/v1/jobs/job-a/rounds/0/uploads",
            method="POST",
            input_stream=stream,
            content_type="application/octet-stream",
            headers=list(api.auth(p1).items()),
            environ_overrides={"wsgi.input_terminated": True},
        ).get_environ()
        del environ["CONTENT_LENGTH"]
        body, status, _ = run_wsgi_app(api.app, environ)
        return int(status.split()[0]), json.loads(b"".join(body))

    status, body = streamed(oversized)
    assert (status, body["error"]) == (413, "too-large")
    limit = api.ps.upload_limit("job-a", "p1")
    assert len(frame) <= limit < stream.tell() < len(oversized)  # read no further
    assert _count(api, Upload) == 0
    assert streamed(frame)[0] == 201
    assert _count(api, Upload) == 1


def test_replays_are_409_within_and_across_rounds(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    p1, p2, p3, p4 = api.participants
    first = uploader.frame("p1", 0)
    # p2 commits to p1's ciphertext (it saw it somewhere): the upload is a replay still.
    uploader.commit(0, ("p1", "p3", "p4"))
    uploader.commit_payload("p2", 0, decode_frame(first).payload)
    first = uploader.frame("p1", 0)  # now under the closed set
    assert uploader.post(first, headers=api.auth(p1)).status_code == 201
    _error(uploader.post(first, headers=api.auth(p1)), 409, "duplicate-upload")
    # p2 posts p1's bytes: p1's statement is not p2's; re-signed by p2, still a replay.
    _error(uploader.post(first, headers=api.auth(p2)), 422, "statement-mismatch")
    copied = uploader.reframe(first, subject="p2")
    _error(uploader.post(copied, headers=api.auth(p2)), 409, "replayed-payload")
    assert _count(api, Upload) == 1

    for p in (p3, p4):
        assert (
            uploader.post(uploader.frame(p.subject_id, 0), headers=api.auth(p)).status_code == 201
        )
    api.clock.advance(601)  # p2 has nothing it may upload: the deadline ends the phase
    api.ps.tick()
    for s in ("p1", "p3", "p4"):
        api.participant(s).audit(api.port, uploader.terms, 0)
    assert api.ps.tick().released == [("job-a", 0)]
    # Round 0 is over: the old request again, and its ciphertext re-framed for round 1.
    _error(uploader.post(first, headers=api.auth(p1)), 409, "round-not-open")
    uploader.commit(1, ("p2", "p3", "p4"))
    uploader.commit_payload("p1", 1, decode_frame(first).payload)
    _error(uploader.post(_reframe(first, round=1), t=1, headers=api.auth(p1)), 422)
    _error(
        uploader.post(uploader.reframe(first, round=1), t=1, headers=api.auth(p1)),
        409,
        "replayed-payload",
    )
    assert _count(api, Upload) == 3


# ---------------------------------------------------------------------- commitments and audits


def test_commitments_over_http(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    p1 = api.participants[0]
    url = "/v1/jobs/job-a/rounds/0/commitments"
    signed = p1.commitment(uploader.terms, 0, uploader.vector("p1", 0))
    _error(api.client.post(url, json=signed), 401, "unauthorized")
    _error(api.client.post(url, json=signed, headers=api.admin), 401, "invalid-token")
    _error(
        api.client.post(url, json=signed, headers=api.auth(api.stranger)), 403, "not-a-participant"
    )
    _error(
        api.client.post(url, json=signed, headers=api.auth(api.participants[1])),
        422,
        "commitment-mismatch",
    )
    _error(api.client.post(url, data="x", content_type="text/plain", headers=api.auth(p1)), 415)
    _error(api.client.post(url, json={"pad": "x" * 70_000}, headers=api.auth(p1)), 413, "too-large")
    _error(api.client.get(url, headers=api.auth(p1)), 409, "set-not-closed")
    assert _count(api, Commitment) == 0

    response = api.client.post(url, json=signed, headers=api.auth(p1))
    assert response.status_code == 201
    assert response.get_json() == {
        "job_id": "job-a",
        "round": 0,
        "run": 0,
        "subject_id": "p1",
        "payload_sha256": vector_sha256(uploader.vector("p1", 0)),
    }
    again = api.client.post(url, json=signed, headers=api.auth(p1))
    assert (again.status_code, again.get_json()) == (200, response.get_json())
    other = p1.commitment(uploader.terms, 0, uploader.vector("p2", 0))
    _error(api.client.post(url, json=other, headers=api.auth(p1)), 409, "duplicate-commitment")
    uploader.commit(0, ("p2", "p3", "p4"))
    served = api.client.get(url, headers=api.auth(p1)).get_json()
    assert served == api.client.get(url, headers=api.admin).get_json()
    assert [
        c["commitment"]["subject_id"] for c in served["closed_set"]["closed_set"]["commitments"]
    ] == list(ALL)
    _error(api.client.get(url, headers=api.auth(api.stranger)), 403, "not-a-participant")
    assert _count(api, Commitment) == 4


def test_audit_endpoints(api: ApiWorld) -> None:
    job = _create(api, quorum=2)
    uploader = Uploader(api, job)
    p1, p2, p3, _ = api.participants
    uploader.commit(0, ("p1", "p2", "p3"))
    api.client.post("/v1/jobs/job-a/rounds/0/close", headers=api.admin)  # the set: p1 .. p3
    prefix = "/v1/jobs/job-a/rounds/0"
    _error(api.client.get(f"{prefix}/audit", headers=api.auth(p1)), 409, "not-aggregated")
    for s in ("p1", "p2"):
        uploader.post(uploader.frame(s, 0), headers=api.auth(api.participant(s)))
    api.clock.advance(601)
    assert api.ps.tick().closed == [("job-a", 0)]

    package = api.client.get(f"{prefix}/audit", headers=api.auth(p1)).get_json()
    assert set(package) == {
        "job_id",
        "round",
        "run",
        "attempt",
        "contributors",
        "closed_set",
        "blind",
        "base_sha256",
        "aggregate_sha256",
        "release_sha256",
        "blind_sha256",
    }
    assert package["contributors"] == ["p1", "p2"] and package["attempt"] == 0
    base = api.client.get(f"{prefix}/base", headers=api.auth(p1))
    assert base.mimetype == "application/octet-stream"
    assert decode_frame(base.get_data()).header["round"] == 0
    upload = api.client.get(f"{prefix}/uploads/p2", headers=api.auth(p1))
    header = decode_frame(upload.get_data()).header
    assert header["statement"]["statement"]["subject_id"] == "p2"
    assert header["sha256"] == vector_sha256(uploader.vector("p2", 0))
    for path in ("audit", "base", "uploads/p1"):
        _error(api.client.get(f"{prefix}/{path}", headers=api.auth(p3)), 403, "not-a-contributor")
        _error(api.client.get(f"{prefix}/{path}", headers=api.auth(api.stranger)), 403)
        _error(api.client.get(f"{prefix}/{path}"), 401)
    _error(api.client.get(f"{prefix}/uploads/p3", headers=api.auth(p1)), 404, "upload-not-found")

    digests = p1.recompute(api.port, uploader.terms, 0)  # really recomputed from what is served
    wrong = p1.audit_statement(uploader.terms, 0, replace(digests, release_sha256="0" * 64))
    audits = f"{prefix}/audits"
    _error(api.client.post(audits, json=wrong, headers=api.auth(p1)), 422, "audit-mismatch")
    good = p1.audit_statement(uploader.terms, 0, digests)
    _error(api.client.post(audits, json=good, headers=api.auth(p2)), 422, "audit-mismatch")
    by_p3 = p3.audit_statement(uploader.terms, 0, digests)  # p3 committed but never uploaded
    _error(api.client.post(audits, json=by_p3, headers=api.auth(p3)), 403, "not-a-contributor")
    assert _count(api, Audit) == 0
    response = api.client.post(audits, json=good, headers=api.auth(p1))
    assert response.status_code == 201
    assert response.get_json() == {
        "job_id": "job-a",
        "round": 0,
        "run": 0,
        "attempt": 0,
        "subject_id": "p1",
    }
    assert api.client.post(audits, json=good, headers=api.auth(p1)).status_code == 200
    p2.audit(api.port, uploader.terms, 0)
    assert api.ps.tick().released == [("job-a", 0)]
    assert _count(api, Audit) == 2


def test_full_job_over_http_every_contributor_decodes_the_fedavg_model(api: ApiWorld) -> None:
    job = _create(api)
    uploader = Uploader(api, job)
    w = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    for t in range(2):
        deltas = {
            s: np.random.default_rng(10 * t + i).normal(0, 0.2, LENGTH) for i, s in enumerate(ALL)
        }
        contributions = [(api.participant(s), uploader.vector(s, t, deltas[s])) for s in ALL]
        play_round(api.port, uploader.terms, t, contributions)
        assert api.ps.tick().released == [("job-a", t)]
        expected = w + sum(job["weights"][s] * d for s, d in deltas.items())
        for s in ALL:
            bundle = api.client.get(
                f"/v1/jobs/job-a/rounds/{t}/model", headers=api.auth(api.participant(s))
            ).get_json()
            got = open_model(job, api.participant(s), bundle)
            assert np.max(np.abs(got - expected)) < TOLERANCE
        w = expected
    assert api.client.get("/v1/jobs/job-a", headers=api.admin).get_json()["status"] == "finished"


# ---------------------------------------------------------------------- close and download


def test_close_round(api: ApiWorld) -> None:
    job = _create(api, quorum=2)
    uploader = Uploader(api, job)
    p1, p2, *_ = api.participants
    close = "/v1/jobs/job-a/rounds/0/close"
    uploader.commit(0, ("p1",))
    _error(api.client.post(close), 401)
    _error(api.client.post(close, headers=api.auth(p1)), 401)
    _error(api.client.post(close, headers=api.admin), 409, "below-quorum")
    uploader.commit(0, ("p2",))
    response = api.client.post(close, headers=api.admin)
    assert response.status_code == 200 and response.get_json()["status"] == "committed"
    uploader.post(uploader.frame("p1", 0), headers=api.auth(p1))
    _error(api.client.post(close, headers=api.admin), 409, "below-quorum")
    uploader.post(uploader.frame("p2", 0), headers=api.auth(p2))  # the last committed upload
    view = api.client.get("/v1/jobs/job-a/rounds/0", headers=api.admin).get_json()
    assert view["status"] == "closed"
    _error(api.client.post(close, headers=api.admin), 409, "round-not-open")
    _error(api.client.post("/v1/jobs/job-a/rounds/7/close", headers=api.admin), 404)
    _error(api.client.post("/v1/jobs/nope/rounds/0/close", headers=api.admin), 404)


def test_download_contributors_only(api: ApiWorld) -> None:
    job = _create(api, quorum=2)
    uploader = Uploader(api, job)
    p1, p2, p3, _ = api.participants
    deltas = {s: np.random.default_rng(i).normal(0, 0.2, LENGTH) for i, s in enumerate("ab")}
    model = "/v1/jobs/job-a/rounds/0/model"
    uploader.commit(0, ("p1", "p3"), p1=deltas["a"], p3=deltas["b"])
    api.client.post("/v1/jobs/job-a/rounds/0/close", headers=api.admin)
    uploader.post(uploader.frame("p1", 0), headers=api.auth(p1))
    _error(api.client.get(model, headers=api.auth(p1)), 409, "not-released")
    uploader.post(uploader.frame("p3", 0), headers=api.auth(p3))
    _error(api.client.get(model, headers=api.auth(p1)), 409, "not-released")
    for p in (p1, p3):
        p.audit(api.port, uploader.terms, 0)
    assert api.ps.tick().released == [("job-a", 0)]

    response = api.client.get(model, headers=api.auth(p1))
    assert response.status_code == 200
    bundle = response.get_json()
    assert set(bundle) == {
        "job_id",
        "round",
        "run",
        "attempt",
        "base_sha256",
        "contributors_sha256",
        "blind_sha256",
        "num_plaintexts",
        "sealed_model",
        "wrapped_key",
        "blind",
        "kgc_signature",
    }
    w0 = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    expected = w0 + 0.1 * deltas["a"] + 0.3 * deltas["b"]
    for p in (p1, p3):
        got = open_model(job, p, api.client.get(model, headers=api.auth(p)).get_json())
        assert np.max(np.abs(got - expected)) < TOLERANCE
    # Served under another binding (here: another attempt), the bundle does not open.
    with pytest.raises(SealError):
        open_model(job, p1, {**bundle, "attempt": 1})

    _error(api.client.get(model, headers=api.auth(p2)), 403, "not-a-contributor")
    _error(api.client.get(model, headers=api.auth(api.stranger)), 403, "not-a-participant")
    _error(api.client.get(model, headers=api.auth(p1, role="param_server")), 403, "wrong-role")
    _error(api.client.get(model), 401)
    _error(api.client.get(model, headers=api.admin), 401)
    _error(api.client.get("/v1/jobs/nope/rounds/0/model", headers=api.auth(p1)), 404)

    # Reports that the release does not decode: the contributor's own, for this bundle.
    report = "/v1/jobs/job-a/rounds/0/undecodable"
    signed = build_undecodable_statement(
        p1.signing_key,
        uploader.terms,
        round_number=0,
        run=0,
        subject_id=p1.subject_id,
        bundle_sha256=bundle_sha256(ReleaseBinding.from_fields(bundle), bundle["sealed_model"]),
    )
    _error(api.client.post(report, json=signed), 401)
    _error(api.client.post(report, json=signed, headers=api.auth(p2)), 403, "not-a-contributor")
    bad_json = {"data": "{", "content_type": "application/json", "headers": api.auth(p1)}
    _error(api.client.post(report, **bad_json), 400)
    _error(
        api.client.post(report, json={**signed, "signature": "x"}, headers=api.auth(p1)),
        403,
        "bad-undecodable-signature",
    )
    _error(api.client.post(report.replace("/0/", "/1/"), json=signed, headers=api.auth(p1)), 409)
    created = api.client.post(report, json=signed, headers=api.auth(p1))
    assert created.status_code == 201 and created.get_json()["run"] == 0
    assert api.client.post(report, json=signed, headers=api.auth(p1)).status_code == 200
    # One report of two: the round stays released, the model still downloadable.
    assert api.client.get(model, headers=api.auth(p1)).status_code == 200
    _error(api.client.get("/v1/jobs/job-a/rounds/9/model", headers=api.auth(p1)), 404)


def test_kgc_down_at_job_creation_is_503_and_stores_nothing(api: ApiWorld) -> None:
    from trapdoor.ps.kgc_gateway import KgcError

    api.kgc.failure = KgcError(0, "unreachable", "connection refused")
    response = api.client.post("/v1/jobs", json=_definition(api), headers=api.admin)
    _error(response, 503, "kgc-unavailable")
    assert _count(api, Job) == 0 and _count(api, ModelChunk) == 0
