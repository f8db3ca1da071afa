"""HTTP endpoints of the KGC (docs/PROTOCOL.md, KGC section): a thin layer over the domain.

Each view says who may call it with a decorator (:func:`~trapdoor.service.web.admin_required`
for the operator, :func:`param_server_required` for a KGC token of the parameter-server
role), parses and type-checks its input (``trapdoor.service.web.field``) and calls
:class:`trapdoor.kgc.domain.KgcService`; its refusals become JSON in the one handler of
:func:`trapdoor.service.web.register_error_handlers`. Nothing here logs a token, a code, a
key or a plaintext.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from trapdoor.kgc.domain import KgcService
from trapdoor.kgc.schemas import (
    BcpBundle,
    CompletionRequest,
    Enrolment,
    EnrolmentRequest,
    JobAnswer,
    JobRequest,
    KgcInfo,
    MaskedBundle,
    MaskedReleaseRequest,
    TokenAnswer,
    TokenRequest,
)
from trapdoor.service.errors import UnsupportedMediaError
from trapdoor.service.openapi import ADMIN, FRAME, TOKEN
from trapdoor.service.schemas import AuditLogExport, SignedCertificate
from trapdoor.service.web import (
    admin_required,
    bearer_required,
    body_limit,
    documented,
    field,
    json_body,
    read_body,
)

__all__ = ["EXTENSION", "RELEASE_BODY_CEILING", "bp", "param_server_required", "service"]

EXTENSION = "kgc"
#: What the app lets a release request announce before its view runs; the view then sets
#: the job's own frame size (and the app's ``MAX_CONTENT_LENGTH`` caps both).
RELEASE_BODY_CEILING = 2**40

bp = Blueprint("kgc", __name__, url_prefix="/v1")


def service() -> KgcService:
    """The app's :class:`KgcService` (set by :func:`trapdoor.kgc.app.create_app`)."""
    svc: KgcService = current_app.extensions[EXTENSION]
    return svc


def _param_server(token: str, **_view_args: Any) -> str:
    """The subject id of the calling parameter server (unauthorized or forbidden otherwise)."""
    return service().authenticate(token, "param_server").subject


#: Views of the parameter server: they get its subject id as ``requester``.
param_server_required = bearer_required(_param_server, keyword="requester")


@bp.get("/info")
@documented(responses={200: KgcInfo})
def info() -> Any:
    """Public BCP parameters, the KGC's Ed25519 verification key and the demo flag."""
    return jsonify(service().info())


@bp.post("/enrolments")
@documented(request=EnrolmentRequest, responses={201: Enrolment}, auth=[ADMIN])
@admin_required
def enrol() -> Any:
    """Operator: enrol a participant or the parameter server; returns a one-time code."""
    body = json_body()
    name = field(body, "name", str)
    role = field(body, "role", str)
    return jsonify(service().enrol(name, role)), 201


@bp.get("/audit-log")
@documented(responses={200: AuditLogExport}, auth=[ADMIN])
@admin_required
def audit_log() -> Any:
    """Operator: the tamper-evident audit log, oldest first, with the KGC's verify key."""
    return jsonify(entries=service().audit_log(), verify_key=service().info()["verify_key"])


@bp.post("/enrolments/<subject_id>/complete")
@documented(request=CompletionRequest, responses={200: SignedCertificate}, errors=[401, 409, 422])
def complete_enrolment(subject_id: str) -> Any:
    """Holder of the code: certify a signing key (and a participant's BCP public key)."""
    body = json_body()
    code = field(body, "code", str)
    signing_key = field(body, "signing_key", str)
    bcp_public_key = field(body, "bcp_public_key", dict, required=False)
    return jsonify(service().complete_enrolment(subject_id, code, signing_key, bcp_public_key))


@bp.get("/subjects/<subject_id>")
@documented(responses={200: SignedCertificate})
def subject(subject_id: str) -> Any:
    """A subject's certificate and the KGC's signature over it."""
    return jsonify(service().subject(subject_id))


@bp.post("/tokens")
@documented(request=TokenRequest, responses={200: TokenAnswer}, errors=[401, 403, 404, 409, 422])
def tokens() -> Any:
    """Enrolled subject: a short-lived token for one audience, for a signed, fresh challenge.

    Body: ``{"subject_id", "timestamp", "nonce", "audience", "signature"}``; ``audience`` is
    ``"kgc"`` or the subject id of an enrolled parameter server (else 422
    ``unknown-audience``) and the signature covers ``trapdoor.protocol.token.token_challenge``.
    """
    body = json_body()
    answer = service().issue_token(
        field(body, "subject_id", str),
        field(body, "timestamp", int),
        field(body, "nonce", str),
        field(body, "audience", str),
        field(body, "signature", str),
    )
    return jsonify(answer)


@bp.post("/jobs")
@documented(request=JobRequest, responses={201: JobAnswer}, errors=[409, 422], auth=[TOKEN])
@param_server_required
def create_job(requester: str) -> Any:
    """Parameter server: KGC-signed job terms with a fresh job key.

    Body: ``{"job_id", "terms": trapdoor.protocol.job.requested_terms(...)}`` → 201
    ``{"job_id", "job_key", "job_terms", "job_terms_signature"}``.
    """
    body = json_body()
    answer = service().create_job(requester, field(body, "job_id", str), field(body, "terms", dict))
    return jsonify(answer), 201


@bp.post("/jobs/<job_id>/releases")
@documented(
    request=(FRAME, MaskedReleaseRequest),
    responses={201: BcpBundle | MaskedBundle, 200: BcpBundle | MaskedBundle},
    errors=[409, 422],
    auth=[TOKEN],
)
@body_limit(RELEASE_BODY_CEILING)
@param_server_required
def release(job_id: str, requester: str) -> Any:
    """Parameter server: release one round of a job, sealed for its contributors.

    A bcp job (``application/octet-stream``): a binary vector frame ``F = Enc(W + R)``
    whose header is ``trapdoor.protocol.release_request.release_request_header`` (job,
    round, attempt, contributors, the closed commitment set, the contributors' upload
    statements and audits) plus the server's ``request_signature``; at most the job's frame
    size. A masked job (``application/json``):
    ``trapdoor.protocol.release_request.masked_release_request_header`` plus
    ``request_signature``; at most ``trapdoor.protocol.release_request.release_header_limit(P)``
    bytes. Either cap is checked before the body is read (413); a content type that is not
    the job's is 415. 201 for a new release, 200 with the stored bundle for a repeat of the
    same request.
    """
    intake = service().release_intake(requester, job_id)
    if request.mimetype != intake.media_type:
        raise UnsupportedMediaError(
            "unsupported-media-type",
            f"this is a {intake.aggregation} job: expected Content-Type: {intake.media_type}",
        )
    data = read_body(intake.limit, f"release request is over this job's {intake.limit} bytes")
    bundle, created = service().release(requester, job_id, data)
    return jsonify(bundle), 201 if created else 200
