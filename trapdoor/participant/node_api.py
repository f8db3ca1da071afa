"""HTTP API of the participant node (docs/PROTOCOL.md, participant-node section).

It serves the node's own operator only (:func:`~trapdoor.service.web.admin_required` on
every ``/v1`` endpoint); the node is never called by the KGC or the PS. Views parse, call
:class:`ParticipantNode` and answer JSON; no business rule lives here, and the node's
refusals become JSON in the one handler of :func:`trapdoor.service.web.register_error_handlers`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy.orm import sessionmaker

from trapdoor.ml.data import LocalData
from trapdoor.participant.app import AppLoadError, NumPyApp, load_app
from trapdoor.participant.node import PASSPHRASE_ENV, ParticipantNode, load_local_data
from trapdoor.participant.node_schemas import (
    EnrolRequest,
    JoinRequest,
    LatestModel,
    NodeJobStatus,
    NodeStatus,
)
from trapdoor.participant.settings import NodeSettings
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.db import make_engine, migrate, prepare_sqlite_file
from trapdoor.service.errors import BadRequestError
from trapdoor.service.openapi import ADMIN
from trapdoor.service.schemas import SignedCertificate
from trapdoor.service.web import (
    add_common_routes,
    admin_required,
    documented,
    field,
    json_body,
    limit_request_bodies,
    register_error_handlers,
)

__all__ = ["DEFAULTS", "bp", "create_app"]

DEFAULTS: dict[str, Any] = {
    **NodeSettings().app_config(),  # the environment's defaults (one place for them)
    "AUTO_MIGRATE": True,
    "BACKGROUND": True,
    "ENCRYPT_WORKERS": 1,
    "POLL_SECONDS": 0.5,
    #: The smallest job quorum this node accepts (a job below it is refused).
    "MIN_QUORUM": DEFAULT_MIN_QUORUM,
    "DATASET": "digits",
    "PARTITION_INDEX": 0,
    "NUM_PARTITIONS": 1,
    "PARTITION_SCHEME": "iid",
    "PARTITION_SEED": 0,
    "DATA_PATH": None,
    #: The training app: ``module:object`` or a ``trapdoor.apps`` entry point name (or an
    #: app object); None trains the job's own model on the node's data.
    "APP": None,
    #: Put first on ``sys.path`` before ``APP`` is imported (``node serve --app-dir``).
    "APP_DIR": None,
    "MAX_CONTENT_LENGTH": 1 << 20,
}

bp = Blueprint("participant_node", __name__)


def _node() -> ParticipantNode:
    node: ParticipantNode = current_app.extensions["participant_node"]
    return node


@bp.get("/v1/status")
@documented(responses={200: NodeStatus}, auth=[ADMIN])
@admin_required
def status() -> Any:
    """Identity (subject id, enrolled), local data summary and joined jobs."""
    return jsonify(_node().status())


@bp.post("/v1/enrol")
@documented(
    request=EnrolRequest,
    responses={201: SignedCertificate},
    errors=[404, 409, 422, 502, 503],
    auth=[ADMIN],
)
@admin_required
def enrol() -> Any:
    """Enrol with the KGC: keys are generated here and sealed at rest; the certificate."""
    body = json_body()
    kgc_url = field(body, "kgc_url", str)
    subject_id = field(body, "subject_id", str)
    code = field(body, "code", str)
    if not kgc_url.startswith(("http://", "https://")):
        raise BadRequestError("bad-field", "kgc_url must be an http(s) URL")
    return jsonify(_node().enrol(kgc_url, subject_id, code)), 201


@bp.post("/v1/jobs")
@documented(
    request=JoinRequest,
    responses={201: NodeJobStatus},
    errors=[404, 409, 422, 502, 503],
    auth=[ADMIN],
)
@admin_required
def join() -> Any:
    """Join a job at a parameter server; a background worker trains each open round.

    ``ps_subject_id`` (optional) pins the PS's subject id. A job that does not check
    against the KGC-signed terms is 422 ``job-refused`` (the reason in ``message``, and
    in the node's status); nothing is uploaded for it.
    """
    body = json_body()
    ps_url = field(body, "ps_url", str)
    job_id = field(body, "job_id", str)
    skip = field(body, "skip_rounds", list, required=False, default=[])
    ps_subject_id = field(body, "ps_subject_id", str, required=False, default=None)
    if not ps_url.startswith(("http://", "https://")):
        raise BadRequestError("bad-field", "ps_url must be an http(s) URL")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in skip):
        raise BadRequestError("bad-field", "skip_rounds must be non-negative integers")
    if ps_subject_id is not None and not 0 < len(ps_subject_id) <= 128:
        raise BadRequestError("bad-field", "ps_subject_id must be 1 to 128 characters")
    return jsonify(_node().join(ps_url, job_id, skip, ps_subject_id)), 201


@bp.get("/v1/jobs/<job_id>")
@documented(responses={200: NodeJobStatus}, auth=[ADMIN])
@admin_required
def job_status(job_id: str) -> Any:
    """A joined job: status and per-round metrics (loss, clip, timings, bytes, accuracy)."""
    return jsonify(_node().job_status(job_id))


@bp.get("/v1/jobs/<job_id>/model")
@documented(responses={200: LatestModel}, auth=[ADMIN])
@admin_required
def latest_model(job_id: str) -> Any:
    """The latest released model this node holds: round and base64url float64 weights."""
    return jsonify(_node().latest_model(job_id))


def _training_app(
    configured: object, data: LocalData, app_dir: str | None = None
) -> NumPyApp | None:
    """The ``APP`` setting as an app (:class:`AppLoadError` when it cannot be one); a
    factory gets the node's data (:func:`~trapdoor.participant.app.load_app`)."""
    if configured is None or isinstance(configured, NumPyApp):
        return configured
    if isinstance(configured, str):
        return load_app(configured, data, app_dir=app_dir)
    raise AppLoadError(f"APP must be module:object or an entry point name, not {configured!r}")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The participant node's app; ``config`` overrides :data:`DEFAULTS`."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    # Popped, as in the KGC and the PS: the node keeps its unsealed keys, not the secret.
    passphrase = app.config.pop("PASSPHRASE", None) or NodeSettings.from_env().passphrase
    if not passphrase:
        raise ValueError(f"set {PASSPHRASE_ENV} (it seals this node's keys)")
    min_quorum = app.config["MIN_QUORUM"]
    if isinstance(min_quorum, bool) or not isinstance(min_quorum, int) or min_quorum < 1:
        raise ValueError("MIN_QUORUM must be a positive integer")
    url = str(app.config["DATABASE_URL"])
    prepare_sqlite_file(url)  # owner-only folder and file, before Alembic creates it
    if app.config["AUTO_MIGRATE"]:
        migrate("participant", url)
    engine = make_engine(url)
    data = load_local_data(app.config)
    node = ParticipantNode(
        sessionmaker(engine, expire_on_commit=False),
        data,
        passphrase,
        rng=app.config.get("RNG") or secrets.SystemRandom(),
        workers=int(app.config["ENCRYPT_WORKERS"]),
        poll_seconds=float(app.config["POLL_SECONDS"]),
        min_quorum=min_quorum,
        app=_training_app(app.config.get("APP"), data, app.config.get("APP_DIR")),
    )
    app.extensions["participant_node"] = node
    register_error_handlers(app)
    limit_request_bodies(app)
    add_common_routes(app, "trapdoor-participant-node", "0.1.0", stats=node.stats)
    app.register_blueprint(bp)
    if app.config["BACKGROUND"]:
        node.start()
    return app
