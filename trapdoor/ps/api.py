"""HTTP adapters of the parameter server (docs/PROTOCOL.md, parameter-server section).

Each view says who may call it with a decorator (:func:`~trapdoor.service.web.admin_required`,
:data:`participant_required`, :data:`operator_or_participant`), parses, calls
:class:`~trapdoor.ps.domain.ParameterServer` and returns JSON (or a frame); no business
rule lives here, and refusals become JSON in the one handler of
:func:`trapdoor.service.web.register_error_handlers`. The round protocol's views
(commitments, uploads, audit package, base, uploads for auditors, audits) follow
docs/PROTOCOL.md; a masked job (its "Masked mode" section) uses the same URLs for its
uploads, bundle downloads, stored upload frames and ``Z_t``, and the domain dispatches by
the job's aggregation. Participant tokens are verified offline
with the KGC's key and must name this PS's subject id as their audience; the operator
uses the service's admin token.

Bodies are bounded before they are read (:func:`trapdoor.service.web.limit_request_bodies`):
64 KiB by default, the job definition up to :data:`JOB_BODY_LIMIT` (it carries the initial
weights), and an upload up to its job's largest well-formed frame, set once the uploader
is authenticated and the job known.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from trapdoor.crypto.signing import ROLES, TokenClaims, TokenError, verify_token
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.schemas import (
    AuditAnswer,
    AuditPackage,
    BcpDownload,
    ClosedSetAnswer,
    CommitmentAnswer,
    JobDefinition,
    JobList,
    JobView,
    MaskedDownload,
    MetricsAnswer,
    ParticipationAnswer,
    ParticipationNotice,
    PsInfo,
    RoundView,
    UndecodableAnswer,
)
from trapdoor.service.errors import ForbiddenError, UnauthorizedError, UnsupportedMediaError
from trapdoor.service.openapi import ADMIN, FRAME, TOKEN
from trapdoor.service.schemas import (
    SignedAudit,
    SignedCommitment,
    SignedMetricsReport,
    SignedReceipt,
    SignedUndecodable,
)
from trapdoor.service.web import (
    ROUND,
    admin_required,
    bearer_required,
    body_limit,
    documented,
    is_admin_token,
    json_body,
    read_body,
)

__all__ = ["JOB_BODY_LIMIT", "bp", "operator_or_participant", "participant_required"]

#: A job definition carries the initial weights (base64url float64): up to 64 MiB, and
#: never more than the app's ``MAX_CONTENT_LENGTH``.
JOB_BODY_LIMIT = 64 * 1024 * 1024
#: Before authentication an upload is held to the app's ``MAX_CONTENT_LENGTH`` only; the
#: view then lowers the limit to the job's largest well-formed frame before reading.
_UPLOAD_PRELIMIT = 1 << 62

bp = Blueprint("param_server", __name__)
#: Who may call a view of a job: its operator or one of its participants.
_EITHER = (ADMIN, TOKEN)


def _service() -> ParameterServer:
    service: ParameterServer = current_app.extensions["param_server"]
    return service


def _claims(token: str) -> TokenClaims:
    """A valid participant token (unauthorized: forged, expired or malformed; forbidden:
    another role)."""
    service = _service()
    try:
        claims = verify_token(
            service.kgc.verify_key,
            token,
            now=service.clock(),
            audience=service.subject_id,
            issuer="kgc",
            roles=ROLES,
        )
    except TokenError as exc:
        raise UnauthorizedError("invalid-token", str(exc)) from None
    if claims.role != "participant":
        raise ForbiddenError("wrong-role", "this endpoint is for participants")
    return claims


def _participant(token: str, **_view_args: Any) -> str:
    """The subject id of a participant's valid token."""
    return _claims(token).subject


def _operator_or_participant_of(token: str, job_id: str, **_view_args: Any) -> str | None:
    """The requesting participant's subject id, or None for the operator."""
    if is_admin_token(token):
        return None
    subject = _claims(token).subject
    if subject not in _service().participants(job_id):
        raise ForbiddenError("not-a-participant", "not a participant of this job")
    return subject


#: Participant views: they get the caller's subject id as ``subject``.
participant_required = bearer_required(_participant, keyword="subject")
#: Views of a job for its operator or its participants: they get ``requester``, the
#: participant's subject id or None for the operator.
operator_or_participant = bearer_required(_operator_or_participant_of, keyword="requester")


def _created(answer: tuple[dict[str, Any], bool]) -> Any:
    """201 for a message stored now, 200 for the same message again (a retry)."""
    body, created = answer
    return jsonify(body), 201 if created else 200


def _frame(data: bytes) -> Response:
    return Response(data, mimetype="application/octet-stream")


@bp.get("/v1/info")
@documented(responses={200: PsInfo})
def info() -> Any:
    """The PS's identity: the Ed25519 key that signs receipts and release requests."""
    service = _service()
    return jsonify(
        service="trapdoor-param-server",
        subject_id=service.subject_id,
        verify_key=service.verify_key_hex,
        kgc_verify_key=service.kgc.verify_key_hex,
    )


@bp.post("/v1/jobs")
@documented(
    request=JobDefinition, responses={201: JobView}, errors=[409, 422, 502, 503], auth=[ADMIN]
)
@body_limit(JOB_BODY_LIMIT)
@admin_required
def create_job() -> Any:
    """Operator: create a job (the KGC signs its terms and makes its key; Enc(W_0) stored)."""
    return jsonify(_service().create_job(json_body())), 201


@bp.get("/v1/jobs")
@documented(responses={200: JobList}, auth=[ADMIN])
@admin_required
def list_jobs() -> Any:
    """Operator: every job with its status."""
    return jsonify(jobs=_service().list_jobs())


@bp.get("/v1/jobs/<job_id>")
@documented(responses={200: JobView}, auth=_EITHER)
@operator_or_participant
def get_job(job_id: str, requester: str | None) -> Any:
    """A job: definition, KGC-signed terms, job key, packing layout, public weights, progress
    (the operator also sees which participants' nodes joined or declined it, and why)."""
    return jsonify(_service().job_view(job_id, operator=requester is None))


@bp.put("/v1/jobs/<job_id>/participation")
@documented(
    request=ParticipationNotice,
    responses={200: ParticipationAnswer},
    errors=[400, 404],
    auth=[TOKEN],
)
@participant_required
def participation(job_id: str, subject: str) -> Any:
    """Participant: its node joined the job, or declined it (with its reason)."""
    return jsonify(_service().record_participation(job_id, subject, json_body()))


@bp.get(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>")
@documented(responses={200: RoundView}, auth=_EITHER)
@operator_or_participant
def get_round(job_id: str, t: int, requester: str | None) -> Any:
    """A round: phase, attempt, committed subjects, contributors, deadline."""
    return jsonify(_service().round_view(job_id, t))


@bp.route(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/commitments", methods=["GET", "POST"])
@documented(method="GET", responses={200: ClosedSetAnswer}, errors=[409], auth=_EITHER)
@documented(
    method="POST",
    request=SignedCommitment,
    responses={201: CommitmentAnswer, 200: CommitmentAnswer},
    errors=[409, 422],
    auth=[TOKEN],
)
def commitments(job_id: str, t: int) -> Any:
    """POST, participant: commit to the payload it will upload in round t (commit phase).
    GET, participant of the job or operator: the PS-signed closed commitment set (409
    set-not-closed before).

    One view for both methods: werkzeug answers 405 instead of 404 for an out-of-range
    round when two views share a path; each method has its own callers.
    """
    if request.method == "GET":
        return _closed_set(job_id=job_id, t=t)
    return _commit(job_id=job_id, t=t)


@operator_or_participant
def _closed_set(job_id: str, t: int, requester: str | None) -> Any:
    return jsonify(_service().closed_set(job_id, t))


@participant_required
def _commit(job_id: str, t: int, subject: str) -> Any:
    return _created(_service().accept_commitment(job_id, t, subject, json_body()))


@bp.post(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/uploads")
@documented(request=FRAME, responses={201: SignedReceipt}, errors=[409, 422], auth=[TOKEN])
@body_limit(_UPLOAD_PRELIMIT)
@participant_required
def upload(job_id: str, t: int, subject: str) -> Any:
    """Participant: upload Enc(w_i Δ_i) with its signed statement; answers a signed receipt.

    Masked job: a ring-vector frame of y with its seed ciphertext and statement, capped at
    exactly one y plus a full header.
    """
    if request.mimetype != "application/octet-stream":
        raise UnsupportedMediaError("unsupported-media-type", "expected application/octet-stream")
    # Unknown job (404) or stranger (403) before a byte is read; then the job's frame size.
    limit = _service().upload_limit(job_id, subject)
    data = read_body(limit, "upload is larger than this job's model")
    return jsonify(_service().accept_upload(job_id, t, subject, data)), 201


@bp.get(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/audit")
@documented(responses={200: AuditPackage}, errors=[409], auth=_EITHER)
@operator_or_participant
def audit_package(job_id: str, t: int, requester: str | None) -> Any:
    """Contributor of the current attempt: its contributors, closed set, R and digests."""
    return jsonify(_service().audit_package(job_id, t, requester))


@bp.get(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/base")
@documented(responses={200: FRAME}, errors=[409], auth=_EITHER)
@operator_or_participant
def base(job_id: str, t: int, requester: str | None) -> Any:
    """Contributor of the current attempt: Enc(W_t), framed (masked: Z_t, to any
    participant of the job)."""
    return _frame(_service().base_frame(job_id, t, requester))


@bp.get(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/uploads/<subject_id>")
@documented(responses={200: FRAME}, errors=[409], auth=_EITHER)
@operator_or_participant
def upload_of(job_id: str, t: int, subject_id: str, requester: str | None) -> Any:
    """Contributor of the current attempt: another contributor's upload and statement
    (masked: the stored frame, to the contributors of the released round)."""
    return _frame(_service().upload_frame(job_id, t, subject_id, requester))


@bp.post(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/audits")
@documented(
    request=SignedAudit,
    responses={201: AuditAnswer, 200: AuditAnswer},
    errors=[409, 422],
    auth=[TOKEN],
)
@participant_required
def audit(job_id: str, t: int, subject: str) -> Any:
    """Contributor of the current attempt: its signed audit of the aggregate and blind."""
    return _created(_service().accept_audit(job_id, t, subject, json_body()))


@bp.post(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/undecodable")
@documented(
    request=SignedUndecodable,
    responses={201: UndecodableAnswer, 200: UndecodableAnswer},
    errors=[409, 422],
    auth=[TOKEN],
)
@participant_required
def undecodable(job_id: str, t: int, subject: str) -> Any:
    """Contributor of round t's release: its signed report that the release does not decode."""
    return _created(_service().accept_undecodable(job_id, t, subject, json_body()))


@bp.post(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/metrics")
@documented(
    request=SignedMetricsReport,
    responses={201: MetricsAnswer, 200: MetricsAnswer},
    errors=[409, 422],
    auth=[TOKEN],
)
@participant_required
def metrics(job_id: str, t: int, subject: str) -> Any:
    """Contributor of round t's release, in a job with share_metrics: its signed
    evaluation of the released model (the round's view shows the weighted average)."""
    return _created(_service().accept_metrics(job_id, t, subject, json_body()))


@bp.post(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/close")
@documented(responses={200: RoundView}, errors=[409], auth=[ADMIN])
@admin_required
def close_round(job_id: str, t: int) -> Any:
    """Operator: end round t's commit or upload phase now if it has its quorum."""
    return jsonify(_service().close_round(job_id, t))


@bp.get(f"/v1/jobs/<job_id>/rounds/<{ROUND}:t>/model")
@documented(responses={200: BcpDownload | MaskedDownload}, errors=[409], auth=[TOKEN])
@participant_required
def download(job_id: str, t: int, subject: str) -> Any:
    """Contributor of round t's released attempt: its sealed bundle, binding and R
    (masked: the bundle with only the caller's wrapped key)."""
    return jsonify(_service().download(job_id, t, subject))
