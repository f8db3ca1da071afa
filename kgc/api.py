"""HTTP endpoints of the KGC (docs/PROTOCOL.md, KGC section): a thin layer over the domain.

Each view parses and type-checks its input (``common.service.field``), checks the caller
(admin token or KGC token with the right role) and calls :class:`kgc.domain.KgcService`.
Nothing here logs a token, a code, a key or a plaintext.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from common.service import ApiError, bearer_token, field, json_body, require_admin
from kgc.domain import KgcService
from kgc.errors import KgcError

__all__ = ["EXTENSION", "bp", "service"]

EXTENSION = "kgc"

bp = Blueprint("kgc", __name__, url_prefix="/v1")


def service() -> KgcService:
    """The app's :class:`KgcService` (set by :func:`kgc.app.create_app`)."""
    svc: KgcService = current_app.extensions[EXTENSION]
    return svc


@bp.app_errorhandler(KgcError)
def _kgc_error(exc: KgcError) -> Any:
    """A domain refusal as ``{"error": code, "message": text}`` with its status."""
    return jsonify(error=exc.code, message=exc.message), exc.status


def _param_server() -> str:
    """The subject id of the calling parameter server (401/403 otherwise)."""
    return service().authenticate(bearer_token(), "param_server").subject


@bp.get("/info")
def info() -> Any:
    """Public BCP parameters, the KGC's Ed25519 verification key and the demo flag."""
    return jsonify(service().info())


@bp.post("/enrolments")
def enrol() -> Any:
    """Operator: enrol a participant or the parameter server; returns a one-time code."""
    require_admin()
    body = json_body()
    name = field(body, "name", str)
    role = field(body, "role", str)
    return jsonify(service().enrol(name, role)), 201


@bp.post("/enrolments/<subject_id>/complete")
def complete_enrolment(subject_id: str) -> Any:
    """Holder of the code: certify a signing key (and a participant's BCP public key)."""
    body = json_body()
    code = field(body, "code", str)
    signing_key = field(body, "signing_key", str)
    bcp_public_key = field(body, "bcp_public_key", dict, required=False)
    return jsonify(service().complete_enrolment(subject_id, code, signing_key, bcp_public_key))


@bp.get("/subjects/<subject_id>")
def subject(subject_id: str) -> Any:
    """A subject's certificate and the KGC's signature over it."""
    return jsonify(service().subject(subject_id))


@bp.post("/tokens")
def tokens() -> Any:
    """Enrolled subject: a short-lived token for a signed, fresh challenge."""
    body = json_body()
    answer = service().issue_token(
        field(body, "subject_id", str),
        field(body, "timestamp", int),
        field(body, "nonce", str),
        field(body, "signature", str),
    )
    return jsonify(answer)


@bp.post("/jobs")
def create_job() -> Any:
    """Parameter server: a fresh job key, signed by the KGC."""
    requester = _param_server()
    body = json_body()
    answer = service().create_job(
        requester,
        field(body, "job_id", str),
        field(body, "width", int),
        field(body, "participants", list),
        field(body, "quorum", int),
    )
    return jsonify(answer), 201


@bp.post("/jobs/<job_id>/releases")
def release(job_id: str) -> Any:
    """Parameter server: open ``Enc(W + R)`` and seal it for the round's contributors.

    Body: a binary vector frame (``application/octet-stream``) whose header carries the
    round, contributors, receipts and the server's ``request_signature``. 201 for a new
    release, 200 with the stored bundle for a repeat of the same request.
    """
    requester = _param_server()
    if request.mimetype != "application/octet-stream":
        raise ApiError(
            415, "unsupported-media-type", "expected Content-Type: application/octet-stream"
        )
    bundle, created = service().release(requester, job_id, request.get_data(cache=False))
    return jsonify(bundle), 201 if created else 200
