"""A stub KGC speaking the HTTP contract of docs/PROTOCOL.md, over a FakeKgc.

It lets the HTTP gateway, the enrolment and the CLI be tested without the KGC service
and without sockets: :class:`FlaskSession` routes ``requests`` calls into the stub's
Flask test client. Its checks are the shared ones (:mod:`trapdoor.protocol`): token
challenges for an audience, and the FakeKgc's job and release checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, jsonify, request

from trapdoor.crypto.signing import (
    TokenError,
    issue_token,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_token,
)
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.enrolment import Certificate, sign_certificate
from trapdoor.protocol.token import (
    KGC_AUDIENCE,
    TokenChallenge,
    check_nonce,
    check_timestamp,
    verify_token_challenge,
)
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.ps.testing import FakeClock, FakeKgc


def _same(terms: dict[str, Any]) -> dict[str, Any]:
    return terms


class StubKgc:
    """Enrolment, tokens, jobs and releases; counts tokens and can revoke them."""

    def __init__(self, fake: FakeKgc, clock: FakeClock, *, subject_id: str, code: str) -> None:
        self.fake = fake
        self.clock = clock
        self.subject_id = subject_id
        self.code = code
        self.enrolled_key: str | None = None
        self.tokens_issued = 0
        self.revoked_before = 0.0  # tokens issued before this time are refused
        self.nonces: set[str] = set()
        self.sign_jobs_with = fake.signing_key
        #: A dishonest KGC (or a man in the middle): rewrites the signed terms it answers.
        self.tamper_terms: Callable[[dict[str, Any]], dict[str, Any]] = _same
        self.token_requests: list[dict[str, Any]] = []
        self.app = self._make_app()

    def _make_app(self) -> Flask:
        app = Flask("stub-kgc")
        fake = self.fake

        @app.errorhandler(KgcError)
        def _kgc_error(exc: KgcError) -> Any:
            return jsonify(error=exc.code, message=exc.message), exc.status

        def ps_token() -> str:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            try:
                claims = verify_token(
                    fake.signing_key.public_key(),
                    token,
                    now=self.clock(),
                    audience=KGC_AUDIENCE,
                    roles=("param_server",),
                )
            except TokenError as exc:
                raise KgcError(401, "invalid-token", str(exc)) from None
            if claims.issued_at < self.revoked_before:
                raise KgcError(401, "invalid-token", "revoked")
            return claims.subject

        @app.get("/v1/info")
        def info() -> Any:
            return jsonify(
                params=to_obj(fake.master_key.params),
                verify_key=public_key_hex(fake.signing_key),
                demo=True,
            )

        @app.post("/v1/enrolments/<subject_id>/complete")
        def complete(subject_id: str) -> Any:
            body = request.get_json()
            if subject_id != self.subject_id or body.get("code") != self.code:
                raise KgcError(403, "forbidden", "bad code")
            if self.enrolled_key is not None:
                raise KgcError(409, "conflict", "already enrolled")
            self.enrolled_key = body["signing_key"]
            fake.ps_verify_key = public_key_from_hex(self.enrolled_key)
            certificate = Certificate(
                subject_id=subject_id,
                name="parameter server",
                role="param_server",
                signing_key=self.enrolled_key,
                issued_at=int(self.clock()),
            )
            return jsonify(sign_certificate(fake.signing_key, certificate))

        @app.post("/v1/tokens")
        def tokens() -> Any:
            body = request.get_json()
            self.token_requests.append(body)
            try:
                challenge, signature = TokenChallenge.from_request(body)
            except ProtocolError as exc:
                raise KgcError(400, exc.code, exc.message) from None
            if challenge.audience not in (KGC_AUDIENCE, self.subject_id):
                raise KgcError(422, "unknown-audience", "no such audience")
            now = self.clock()
            try:
                check_nonce(challenge.nonce)
                verify_token_challenge(challenge, signature, self.enrolled_key or "")
                check_timestamp(challenge, now=now, max_skew=60)
            except ProtocolError as exc:
                raise KgcError(401, exc.code, exc.message) from None
            if challenge.nonce in self.nonces:
                raise KgcError(409, "nonce-replayed", "this challenge nonce was used before")
            self.nonces.add(challenge.nonce)
            self.tokens_issued += 1
            token = issue_token(
                fake.signing_key,
                subject=challenge.subject_id,
                role="param_server",
                now=now,
                ttl_seconds=300,
                token_id=challenge.nonce,
                audience=challenge.audience,
            )
            return jsonify(token=token, expires_at=int(now) + 300)

        @app.post("/v1/jobs")
        def jobs() -> Any:
            subject = ps_token()
            body = request.get_json()
            if set(body) != {"job_id", "terms"}:
                raise KgcError(400, "bad-request", 'a job request is {"job_id", "terms"}')
            answer = fake.create_job(body["job_id"], body["terms"], param_server=subject)
            answer["job_terms"] = self.tamper_terms(answer["job_terms"])
            if self.sign_jobs_with is not fake.signing_key or self.tamper_terms is not _same:
                answer["job_terms_signature"] = sign_json(self.sign_jobs_with, answer["job_terms"])
            return jsonify(answer), 201

        @app.post("/v1/jobs/<job_id>/releases")
        def releases(job_id: str) -> Any:
            ps_token()
            return jsonify(fake.release(request.get_data()))

        return app


class FlaskSession(requests.Session):
    """A ``requests.Session`` whose requests go to a Flask app's test client."""

    def __init__(self, app: Flask) -> None:
        super().__init__()
        self.client = app.test_client()

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        json: Any = None,
        data: Any = None,
        headers: Any = None,
        **_: Any,
    ) -> requests.Response:
        answer = self.client.open(
            urlsplit(url).path, method=method, json=json, data=data, headers=headers or {}
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response._content = answer.get_data()
        response.headers.update(dict(answer.headers))
        response.encoding = "utf-8"
        response.url = url
        return response
