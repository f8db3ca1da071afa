"""What the KGC does, without the web layer: identities, tokens, job terms, releases.

DESIGN §4–§5, the KGC section of docs/PROTOCOL.md.
:class:`KgcService` holds the opened master key and signing key, a session factory, and
an injected clock and randomness, so tests are deterministic. Every refusal is a
:mod:`trapdoor.service.errors` exception raised *before* anything is written; every write is one
transaction, and the unique constraints of :mod:`trapdoor.kgc.models` settle races between workers.

The parameter server is semi-trusted: the KGC takes nothing on its word. A job's terms
(the PS and its certified key, participants and theirs, weights, quorum, rounds, shape,
the digest of ``Enc(W_0)``) are signed by the KGC when the job is made
(:func:`trapdoor.protocol.job.sign_job_terms`). A release is granted only on that schedule
(each round once, in order, below ``rounds``), only for contributors in the PS-signed
closed commitment set whose own upload and audit statements verify against those terms,
and only when every audit names the frame being opened as ``F`` and, as its base, the
aggregate of the job's previous release (round 0: the signed ``Enc(W_0)``), so the chain
of opened aggregates cannot be broken
(:func:`trapdoor.protocol.release_request.check_release_request`, docs/PROTOCOL.md). A
masked job (docs/PROTOCOL.md, "Masked mode") is released on the same schedule from a JSON
request whose statements each name one contributor's ``y`` and seed
(:func:`trapdoor.protocol.release_request.check_masked_release_request`): the KGC decrypts
those seeds under the job key only and seals the sum of their masks, never a model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import (
    InvalidElementError,
    MasterKey,
    PublicKey,
    PublicParams,
    RandomSource,
)
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    element_bytes,
    elements_from_bytes,
    elements_to_bytes,
    generate_job_key,
)
from trapdoor.crypto.sealing import RandomBytes
from trapdoor.crypto.signing import (
    ROLES,
    TokenClaims,
    TokenError,
    b64encode,
    issue_token,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_token,
)
from trapdoor.crypto.wire import (
    FRAME_MAGIC,
    VectorFrame,
    WireError,
    decode_frame,
    from_hex,
    from_obj,
    to_hex,
    to_obj,
)
from trapdoor.kgc.models import (
    NAME_LENGTH,
    SUBJECT_ID_LENGTH,
    AuditEntry,
    Job,
    Release,
    Subject,
    TokenNonce,
)
from trapdoor.protocol.bundle import (
    MaskedReleaseBinding,
    ReleaseBinding,
    bundle_sha256,
    seal_mask_sum,
    seal_release,
)
from trapdoor.protocol.common import ProtocolError, is_json_int, json_sha256
from trapdoor.protocol.enrolment import Certificate, sign_certificate
from trapdoor.protocol.job import (
    JOB_TERMS_PURPOSE,
    JobTerms,
    check_requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.release_request import (
    MaskedReleaseCheck,
    ReleaseCheck,
    ReleasedRound,
    ReleaseSchedule,
    check_masked_release_request,
    check_release_request,
    kgc_mask_sum,
    release_header_limit,
    release_schedule,
    repeats_release,
    request_run,
    verify_release_signature,
)
from trapdoor.protocol.token import (
    KGC_AUDIENCE,
    TokenChallenge,
    check_nonce,
    check_timestamp,
    verify_token_challenge,
)
from trapdoor.service.audit_log import append_entry, export_entries
from trapdoor.service.db import database_bytes, session_scope
from trapdoor.service.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    TrapdoorError,
    UnauthorizedError,
)

__all__ = [
    "BCP_MEDIA_TYPE",
    "FRAME_PREFIX_BYTES",
    "MASKED_MEDIA_TYPE",
    "MAX_SKEW_SECONDS",
    "MAX_WIDTH",
    "TOKEN_TTL_SECONDS",
    "KgcService",
    "ReleaseIntake",
    "protocol_refusal",
]

log = logging.getLogger(__name__)

TOKEN_TTL_SECONDS = 300
MAX_SKEW_SECONDS = 60
MAX_WIDTH = 1024  # job key components: each costs one keygen exponentiation
MAX_PARTICIPANTS = 10_000
ISSUER = "kgc"
#: Bytes before a frame's JSON header: magic, version, header length (``trapdoor.crypto.wire``).
FRAME_PREFIX_BYTES = 9
_JOB_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_TERMS_CACHE_SIZE = 1024
#: The body of a release request, by the job's aggregation: a vector frame (bcp) or the
#: JSON of ``trapdoor.protocol.release_request.masked_release_request_header`` (masked).
BCP_MEDIA_TYPE = "application/octet-stream"
MASKED_MEDIA_TYPE = "application/json"

#: How a :class:`trapdoor.protocol.common.ProtocolError` code becomes a refusal
#: (docs/PROTOCOL.md):
#: a schedule violation is a conflict with the KGC's state, a forged signature is 403 (the
#: bearer token was valid, the request was not), a malformed field 400, the rest 422
#: (``not-committed``, ``closed-set-mismatch``, ``audit-mismatch``, ``bad-audit``, ...).
_PROTOCOL_REFUSALS: dict[str, type[TrapdoorError]] = {
    "round-out-of-range": ConflictError,
    "out-of-schedule": ConflictError,
    "bad-request-signature": ForbiddenError,
    "bad-statement-signature": ForbiddenError,
    "bad-closed-set-signature": ForbiddenError,
    "bad-commitment-signature": ForbiddenError,
    "bad-audit-signature": ForbiddenError,
    "bad-undecodable-signature": ForbiddenError,
    "bad-field": BadRequestError,
    "bad-terms": BadRequestError,
}


def protocol_refusal(exc: ProtocolError) -> TrapdoorError:
    """The KGC's refusal for a failed protocol check: same code, kind by code."""
    return _PROTOCOL_REFUSALS.get(exc.code, InvalidError)(exc.code, exc.message)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseIntake:
    """What a release request for one job must be, known before its body is read."""

    #: the job's ``aggregation``: ``"bcp"`` or ``"masked"``
    aggregation: str
    #: the body's content type: :data:`BCP_MEDIA_TYPE` or :data:`MASKED_MEDIA_TYPE`
    media_type: str
    #: the most bytes the body may have
    limit: int


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _masked_request_body(body: bytes) -> dict[str, Any]:
    """A masked release request's JSON object; a vector frame is 400 ``wrong-aggregation``,
    anything else that is not a JSON object 400 ``malformed-json``."""
    if body.startswith(FRAME_MAGIC):
        raise BadRequestError(
            "wrong-aggregation",
            "this job is masked: its release request is a JSON object, not a vector frame",
        )
    try:
        header = json.loads(body, parse_constant=_refuse_constant)
        # Lone surrogates ("\\ud800") parse but cannot be signed or stored as UTF-8.
        json.dumps(header, ensure_ascii=False).encode()
    except (ValueError, RecursionError, UnicodeError):
        header = None
    if not isinstance(header, dict):
        raise BadRequestError("malformed-json", "the release request is not a JSON object")
    return header


def _masked_uploads_sha256(header: Mapping[str, Any]) -> str | None:
    """What makes a masked request "the same request again": the digest of each upload
    statement's ``y`` and seed digests by subject, ``json_sha256({subject:
    {"payload_sha256", "seed_sha256"}})``. Read from the request as sent (after
    :func:`trapdoor.protocol.release_request.check_masked_release_request` these are verified; for a
    repeat they are only compared with a stored release's); None when malformed."""
    uploads = header.get("uploads")
    if not isinstance(uploads, list):
        return None
    named: dict[str, dict[str, str]] = {}
    for upload in uploads:
        try:
            body = upload["statement"]["statement"]
            subject = body["subject_id"]
            digests = {k: body[k] for k in ("payload_sha256", "seed_sha256")}
        except (KeyError, TypeError):
            return None
        if not isinstance(subject, str) or subject in named:
            return None
        if not all(isinstance(v, str) for v in digests.values()):
            return None
        named[subject] = digests
    return json_sha256(named)


class KgcService:
    """The key generation center: the one trusted party (DESIGN §1, §4).

    It never returns a plaintext: a release opens only ``W + R`` (uniformly blinded) and
    seals it for the round's contributors. Job keys are made and their secrets dropped;
    the master key opens anything under them.
    """

    def __init__(
        self,
        master_key: MasterKey,
        signing_key: Ed25519PrivateKey,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        random_bytes: RandomBytes = os.urandom,
        demo: bool = False,
        token_ttl: int = TOKEN_TTL_SECONDS,
        max_skew: int = MAX_SKEW_SECONDS,
        release_workers: int = 1,
    ) -> None:
        self._master_key = master_key
        self._signing_key = signing_key
        self._sessions = sessions
        self._clock = clock
        self._rng: RandomSource = rng or secrets.SystemRandom()
        self._random_bytes = random_bytes
        self.demo = demo
        self.token_ttl = token_ttl
        self.max_skew = max_skew
        self.release_workers = release_workers
        # Verified terms per (job, signature): a job's terms never change once signed.
        self._terms_cache: dict[tuple[str, str], JobTerms] = {}
        self._terms_lock = threading.Lock()

    def __repr__(self) -> str:  # never print a key
        return f"KgcService(bits={self.params.bits}, demo={self.demo})"

    # ------------------------------------------------------------------ public facts

    @property
    def params(self) -> PublicParams:
        return self._master_key.params

    @property
    def verify_key(self) -> Ed25519PublicKey:
        """The Ed25519 key that verifies tokens, certificates, job keys and bundles."""
        return self._signing_key.public_key()

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: public parameters, verification key, demo flag."""
        return {
            "params": to_obj(self.params),
            "verify_key": public_key_hex(self._signing_key),
            "demo": self.demo,
        }

    def ping(self) -> str:
        """``"ok"`` when the database answers (for ``/healthz``)."""
        with self._sessions() as session:
            session.execute(text("SELECT 1"))
        return "ok"

    def stats(self) -> dict[str, Any]:
        """Counts for the operator's metrics: subjects by role (and enrolments still
        waiting for their code), jobs, releases, the database's size."""
        with self._sessions() as session:
            roles = session.execute(
                select(Subject.role, func.count()).where(Subject.completed).group_by(Subject.role)
            ).all()
            pending = session.scalar(
                select(func.count()).select_from(Subject).where(Subject.completed.is_(False))
            )
            jobs = session.scalar(select(func.count()).select_from(Job))
            releases = session.scalar(select(func.count()).select_from(Release))
            engine = session.get_bind()
        return {
            "subjects": {str(role): int(n) for role, n in roles},
            "enrolments_pending": int(pending or 0),
            "jobs_signed": int(jobs or 0),
            "releases_sealed": int(releases or 0),
            "database_bytes": database_bytes(engine),
        }

    # ------------------------------------------------------------------ audit log

    def _audit(
        self, session: Session, event: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        """Chain a signed row into the audit log, in the action's own transaction."""
        append_entry(
            session,
            AuditEntry,
            self._signing_key,
            at=self._clock(),
            event=event,
            subject=subject,
            detail=detail,
        )

    def audit_log(self) -> list[dict[str, Any]]:
        """The whole audit log, oldest first (``GET /v1/audit-log``)."""
        with self._sessions() as session:
            return export_entries(session, AuditEntry)

    # ------------------------------------------------------------------ enrolment

    def enrol(self, name: str, role: str) -> dict[str, str]:
        """Create a subject and its one-time code; only the code's digest is stored."""
        name = name.strip()
        if not 0 < len(name) <= NAME_LENGTH:
            raise BadRequestError("bad-field", f"name must be 1 to {NAME_LENGTH} characters")
        if role not in ROLES:
            raise BadRequestError("bad-field", f"role must be one of {', '.join(ROLES)}")
        subject_id = "sub-" + self._random_bytes(8).hex()
        code = b64encode(self._random_bytes(24))
        with session_scope(self._sessions) as session:
            session.add(
                Subject(
                    id=subject_id,
                    name=name,
                    role=role,
                    code_hash=_digest(code),
                    completed=False,
                    created_at=self._clock(),
                )
            )
            self._audit(session, "enrolment", subject_id, {"role": role, "name": name})
        log.info("enrolled subject %s as %s", subject_id, role)
        return {"subject_id": subject_id, "code": code}

    def complete_enrolment(
        self,
        subject_id: str,
        code: str,
        signing_key: str,
        bcp_public_key: object | None,
    ) -> dict[str, Any]:
        """Certify the subject's Ed25519 key (and a participant's BCP key), once."""
        try:
            public_key_from_hex(signing_key)
        except ValueError:
            raise BadRequestError(
                "bad-field", "signing_key must be an Ed25519 public key (64 hex characters)"
            ) from None
        signing_key = signing_key.lower()
        now = self._clock()
        with session_scope(self._sessions) as session:
            subject = session.get(Subject, subject_id)
            if subject is None:
                raise NotFoundError("not-found", "no such subject")
            if not hmac.compare_digest(_digest(code), subject.code_hash):
                raise UnauthorizedError("invalid-code", "the enrolment code is not valid")
            if subject.completed:
                raise ConflictError("already-enrolled", "this enrolment was already completed")
            bcp_h: str | None = None
            bcp_obj: dict[str, Any] | None = None
            if subject.role == "participant":
                if bcp_public_key is None:
                    raise BadRequestError("missing-field", "participants must send bcp_public_key")
                public = self._participant_key(bcp_public_key)
                bcp_h = to_hex(public.h)
                bcp_obj = to_obj(public)
            elif bcp_public_key is not None:
                raise BadRequestError("bad-field", "only participants have a bcp_public_key")
            signed = sign_certificate(
                self._signing_key,
                Certificate(
                    subject_id=subject.id,
                    name=subject.name,
                    role=subject.role,
                    signing_key=signing_key,
                    issued_at=int(now),
                    bcp_public_key=bcp_obj,
                ),
            )
            certificate, signature = signed["certificate"], signed["signature"]
            done = session.execute(
                update(Subject)
                .where(Subject.id == subject_id, Subject.completed.is_(False))
                .values(
                    completed=True,
                    signing_key=signing_key,
                    bcp_public_key=bcp_h,
                    certificate=certificate,
                    signature=signature,
                    completed_at=now,
                )
            )
            if getattr(done, "rowcount", 1) != 1:  # a concurrent completion won
                raise ConflictError("already-enrolled", "this enrolment was already completed")
            self._audit(session, "certificate-issued", subject_id, {"role": subject.role})
        log.info("certified subject %s", subject_id)
        return {"certificate": certificate, "signature": signature}

    def _participant_key(self, obj: object) -> PublicKey:
        """A participant's BCP public key: well-formed, in the group, under our params."""
        try:
            public = from_obj(obj)
        except InvalidElementError as exc:
            raise InvalidError("invalid-key", f"bcp_public_key is not a valid key: {exc}") from None
        except ValueError as exc:
            raise BadRequestError("bad-field", f"bcp_public_key is malformed: {exc}") from None
        if not isinstance(public, PublicKey):
            raise BadRequestError("bad-field", "bcp_public_key must be a bcp-public-key object")
        if public.params != self.params:
            raise InvalidError("wrong-params", "bcp_public_key is not under this KGC's parameters")
        return public

    def subject(self, subject_id: str) -> dict[str, Any]:
        """A completed subject's certificate and the KGC's signature over it."""
        with self._sessions() as session:
            subject = session.get(Subject, subject_id)
            if subject is None:
                raise NotFoundError("not-found", "no such subject")
            if not subject.completed or subject.certificate is None:
                raise NotFoundError("not-enrolled", "this subject has not completed its enrolment")
            return {"certificate": subject.certificate, "signature": subject.signature}

    # ------------------------------------------------------------------ tokens

    def issue_token(
        self, subject_id: str, timestamp: int, nonce: str, audience: str, signature: str
    ) -> dict[str, Any]:
        """A short-lived token for ``audience``, for a signed, fresh, never-seen challenge.

        The challenge (:class:`trapdoor.protocol.token.TokenChallenge`) names the audience;
        its nonce, signature and timestamp are checked by :mod:`trapdoor.protocol.token`.
        ``audience`` is ``"kgc"`` or the subject id of an enrolled, completed parameter
        server; anything else is 422 ``unknown-audience``. Replays are refused with 409
        ``nonce-replayed`` (a conflict with a stored nonce), stale or future timestamps
        with 401 ``stale-timestamp``. Nothing is stored for a refused challenge.
        """
        try:
            check_nonce(nonce)
        except ProtocolError as exc:
            raise BadRequestError(exc.code, exc.message) from None
        now = self._clock()
        try:
            with session_scope(self._sessions) as session:
                subject = session.get(Subject, subject_id)
                if subject is None:
                    raise NotFoundError("not-found", "no such subject")
                if not subject.completed or subject.signing_key is None:
                    raise ForbiddenError("not-enrolled", "this subject has not completed enrolment")
                challenge = TokenChallenge(subject_id, timestamp, nonce, audience)
                try:
                    verify_token_challenge(challenge, signature, subject.signing_key)
                    check_timestamp(challenge, now=now, max_skew=self.max_skew)
                except ProtocolError as exc:
                    raise UnauthorizedError(exc.code, exc.message) from None
                if not self._known_audience(session, audience):
                    raise InvalidError(
                        "unknown-audience",
                        'audience must be "kgc" or the subject id of an enrolled param_server',
                    )
                # A pruned nonce cannot come back: its challenge is stale by now.
                session.execute(
                    delete(TokenNonce).where(TokenNonce.timestamp < int(now) - 2 * self.max_skew)
                )
                if session.scalar(
                    select(TokenNonce.id).where(
                        TokenNonce.subject_id == subject_id, TokenNonce.nonce == nonce
                    )
                ):
                    raise ConflictError("nonce-replayed", "this challenge nonce was used before")
                session.add(TokenNonce(subject_id=subject_id, nonce=nonce, timestamp=timestamp))
                session.flush()
                role = subject.role
        except IntegrityError:  # the same nonce, concurrently
            raise ConflictError("nonce-replayed", "this challenge nonce was used before") from None
        token = issue_token(
            self._signing_key,
            subject=subject_id,
            role=role,
            now=now,
            ttl_seconds=self.token_ttl,
            token_id=self._random_bytes(16).hex(),
            audience=audience,
            issuer=ISSUER,
        )
        return {"token": token, "expires_at": int(now) + self.token_ttl}

    @staticmethod
    def _known_audience(session: Session, audience: str) -> bool:
        """``"kgc"``, or the subject id of an enrolled, completed parameter server."""
        if audience == KGC_AUDIENCE:
            return True
        if not 0 < len(audience) <= SUBJECT_ID_LENGTH:
            return False
        server = session.get(Subject, audience)
        return server is not None and server.completed and server.role == "param_server"

    def authenticate(self, token: str, role: str) -> TokenClaims:
        """Check a bearer token: 401 if forged, expired, malformed or for another audience
        (only ``aud == "kgc"`` is accepted here), 403 if of the wrong role."""
        try:
            claims = verify_token(
                self.verify_key, token, now=self._clock(), audience=KGC_AUDIENCE, issuer=ISSUER
            )
        except TokenError as exc:
            raise UnauthorizedError("invalid-token", str(exc)) from None
        if claims.role != role:
            raise ForbiddenError("wrong-role", f"this needs a {role} token")
        return claims

    def _param_server(self, session: Session, subject_id: str) -> Subject:
        subject = session.get(Subject, subject_id)
        if (
            subject is None
            or not subject.completed
            or subject.role != "param_server"
            or subject.signing_key is None
        ):
            raise ForbiddenError(
                "not-enrolled", "the token's subject is not an enrolled param_server"
            )
        return subject

    # ------------------------------------------------------------------ jobs

    def create_job(self, requester: str, job_id: str, terms: object) -> dict[str, Any]:
        """Check the requested terms, make a job key and sign both (docs/PROTOCOL.md).

        ``terms`` is :func:`trapdoor.protocol.job.requested_terms` output. The KGC adds the
        requesting PS and its certified Ed25519 key (closed commitment sets verify under
        it), the participants' certified Ed25519 keys and the fresh job key, and
        signs the whole (:func:`trapdoor.protocol.job.sign_job_terms`); the job key's secrets
        are never kept (DESIGN §2). Returns ``{"job_id", "job_key", "job_terms",
        "job_terms_signature"}``.
        """
        try:
            return self._create_job(requester, job_id, terms)
        except TrapdoorError as exc:
            log.info("job %r refused for %s: %s", job_id, requester, exc.code)
            raise

    def _create_job(self, requester: str, job_id: str, terms: object) -> dict[str, Any]:
        if not _JOB_ID.match(job_id):
            raise BadRequestError("bad-field", "job_id must be 1-64 of A-Z a-z 0-9 . _ - ")
        try:
            requested = check_requested_terms(terms)
        except ProtocolError as exc:
            raise protocol_refusal(exc) from None
        if requested.job_id != job_id:
            raise InvalidError("job-mismatch", "terms.job_id differs from job_id")
        members: list[str] = list(requested.participants)
        width = requested.width
        if not 1 <= width <= MAX_WIDTH:
            raise InvalidError("invalid-width", f"width must be 1 to {MAX_WIDTH}")
        if requested.aggregation == "masked" and width != 1:
            raise InvalidError(
                "invalid-width", "a masked job has width 1 (its seeds are one block each)"
            )
        if len(members) > MAX_PARTICIPANTS:
            raise InvalidError(
                "invalid-participants", f"a job needs 1 to {MAX_PARTICIPANTS} participants"
            )
        with self._sessions() as session:
            param_server_key = str(self._param_server(session, requester).signing_key)
            if session.get(Job, job_id) is not None:
                raise ConflictError("job-exists", f"job {job_id} already exists")
            signing_keys = {
                subject.id: subject.signing_key
                for subject in session.scalars(
                    select(Subject).where(
                        Subject.id.in_(members),
                        Subject.role == "participant",
                        Subject.completed.is_(True),
                    )
                )
                if subject.signing_key is not None
            }
        unknown = [m for m in members if m not in signing_keys]
        if unknown:
            raise InvalidError(
                "unknown-participant",
                "not enrolled participants: " + ", ".join(unknown[:10]),
            )
        job_key = generate_job_key(self.params, width, self._rng)
        key_obj = to_obj(job_key)
        signed, signature = sign_job_terms(
            self._signing_key,
            requested,
            param_server=requester,
            param_server_key=param_server_key,
            signing_keys=signing_keys,
            job_key=key_obj,
        )
        try:
            with session_scope(self._sessions) as session:
                session.add(
                    Job(
                        job_id=job_id,
                        owner_id=requester,
                        job_key=key_obj,
                        terms=signed,
                        terms_signature=signature,
                        participants=members,
                        quorum=requested.quorum,
                        rounds=requested.rounds,
                        width=width,
                        created_at=self._clock(),
                    )
                )
                session.flush()  # a second job of this id fails here, before the log
                self._audit(
                    session,
                    "job-signed",
                    requester,
                    {"job_id": job_id, "participants": members, "rounds": requested.rounds},
                )
        except IntegrityError:
            raise ConflictError("job-exists", f"job {job_id} already exists") from None
        log.info(
            "job %s: signed terms, key of width %d for %d participants, %d rounds",
            job_id,
            width,
            len(members),
            requested.rounds,
        )
        return {
            "job_id": job_id,
            "job_key": key_obj,
            "job_terms": signed,
            "job_terms_signature": signature,
        }

    def _terms(self, job: Job) -> JobTerms:
        """The job's KGC-signed terms, verified (cached per job and signature).

        Terms signed before the current protocol (no terms, or another purpose) name no
        PS key and no ``Enc(W_0)``: nothing could check a release against them.
        """
        if (
            job.terms is None
            or job.terms_signature is None
            or job.terms.get("purpose") != JOB_TERMS_PURPOSE
        ):
            raise ConflictError(
                "legacy-job", "this job was made under an older protocol: make a new job"
            )
        cache_key = (job.job_id, job.terms_signature)
        with self._terms_lock:
            cached = self._terms_cache.get(cache_key)
        if cached is not None:
            return cached
        try:
            terms = verify_job_terms(self.verify_key, job.terms, job.terms_signature, self.params)
        except ProtocolError as exc:
            raise RuntimeError(f"stored terms of job {job.job_id!r} do not verify") from exc
        if terms.job_id != job.job_id or terms.param_server != job.owner_id:
            raise RuntimeError(f"stored terms of job {job.job_id!r} name another job or server")
        with self._terms_lock:
            if len(self._terms_cache) >= _TERMS_CACHE_SIZE:
                self._terms_cache.clear()
            self._terms_cache[cache_key] = terms
        return terms

    # ------------------------------------------------------------------ releases

    def frame_limit(self, terms: JobTerms) -> int:
        """The largest release frame ``terms`` allow: prefix, header, the job's elements."""
        layout = BlockLayout(terms.num_plaintexts, terms.width)
        return (
            FRAME_PREFIX_BYTES
            + release_header_limit(len(terms.participants))
            + layout.num_elements * element_bytes(self.params)
        )

    def _owned_job(self, session: Session, requester: str, job_id: str) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError("not-found", "no such job")
        if job.owner_id != requester:
            raise ForbiddenError("not-job-owner", "this job belongs to another parameter server")
        return job

    def release_intake(self, requester: str, job_id: str) -> ReleaseIntake:
        """What a release request for this job must be (read nothing before): its
        aggregation, content type and size cap. A bcp job takes a vector frame of at most
        :meth:`frame_limit`; a masked job a JSON object of at most
        :func:`trapdoor.protocol.release_request.release_header_limit` for its participants.

        404 for an unknown job, 403 for another server's job, 409 for a legacy job.
        """
        try:
            with self._sessions() as session:
                terms = self._terms(self._owned_job(session, requester, job_id))
        except TrapdoorError as exc:
            self._log_refusal(requester, job_id, exc)
            raise
        if terms.aggregation == "masked":
            return ReleaseIntake(
                "masked", MASKED_MEDIA_TYPE, release_header_limit(len(terms.participants))
            )
        return ReleaseIntake("bcp", BCP_MEDIA_TYPE, self.frame_limit(terms))

    def release_body_limit(self, requester: str, job_id: str) -> int:
        """How many bytes a release request for this job may have (read nothing before);
        :meth:`release_intake`'s ``limit``."""
        return self.release_intake(requester, job_id).limit

    def release(self, requester: str, job_id: str, body: bytes) -> tuple[dict[str, Any], bool]:
        """Release one round of a job for its contributors only; the job's terms decide how
        (:meth:`release_intake`). Returns the bundle and whether it is new.

        A bcp job (``body`` is a vector frame): open ``F = Enc(W + R)`` and seal ``W + R``.
        The request must be signed by the job's server, on the KGC's schedule (round
        ``t`` only when ``t`` rounds are released and ``t < rounds``), and carry the
        PS-signed closed commitment set and, per contributor (at least ``quorum``), an
        upload statement and an audit statement signed by that participant; every audit
        must name this frame as ``F`` and, as its base, the aggregate of round ``t - 1``'s
        release (round 0: the signed ``Enc(W_0)``). The frame must have the job's shape
        (docs/PROTOCOL.md).

        A masked job (``body`` is JSON): :meth:`_masked_release`. A body of the other
        mode (a JSON object for a bcp job, a frame for a masked one) is 400
        ``wrong-aggregation``.

        Either way the same request again returns the stored bundle; anything else for a
        released round is 409 ``already-released``. Nothing is decrypted or sealed for a
        refused request, and every refusal is logged with its code.
        """
        try:
            with self._sessions() as session:
                job = self._owned_job(session, requester, job_id)
                ps = self._param_server(session, requester)
                terms = self._terms(job)
                ps_key = public_key_from_hex(str(ps.signing_key))
            if terms.aggregation == "masked":
                return self._masked_release(job_id, terms, ps_key, body)
            return self._release(job_id, terms, ps_key, body)
        except TrapdoorError as exc:
            self._log_refusal(requester, job_id, exc)
            raise

    @staticmethod
    def _log_refusal(requester: str, job_id: str, exc: TrapdoorError) -> None:
        quiet = isinstance(exc, BadRequestError | NotFoundError)  # not a sign of an attack
        level = logging.INFO if quiet else logging.WARNING
        log.log(level, "release for job %r by %s refused: %s", job_id, requester, exc.code)

    def _release(
        self, job_id: str, terms: JobTerms, ps_key: Ed25519PublicKey, frame_bytes: bytes
    ) -> tuple[dict[str, Any], bool]:
        if frame_bytes.lstrip()[:1] == b"{":
            raise BadRequestError(
                "wrong-aggregation",
                "this job aggregates with bcp: its release request is a vector frame, not JSON",
            )
        try:
            frame = decode_frame(
                frame_bytes,
                max_bytes=self.frame_limit(terms),
                max_header_bytes=release_header_limit(len(terms.participants)),
            )
        except WireError as exc:
            raise BadRequestError("bad-frame", str(exc)) from None
        header = frame.header
        digest = str(header["sha256"])
        try:
            round_number = verify_release_signature(header, ps_key)
            run = request_run(header)
        except ProtocolError as exc:
            raise protocol_refusal(exc) from None
        if header.get("job_id") != job_id:
            raise InvalidError("job-mismatch", "the request is for another job")
        with self._sessions() as session:
            stored = self._stored_release(session, job_id, round_number, run)
            if stored is not None:
                return self._same_release(stored, digest, header), False
            chain = self._chain(session, job_id, terms, run)
        self._check_shape(header, terms)
        vector = self._vector(frame, terms.job_key)  # every element checked, nothing opened
        current_a = vector.a_components()
        try:
            check = check_release_request(
                header,
                terms,
                next_round=chain.next_round,
                base_sha256=chain.base_sha256,
                payload_sha256=digest,
                previous_a=chain.previous_a or [1] * len(current_a),
                current_a=current_a,
                undecoded=chain.undecoded,
            )
        except ProtocolError as exc:
            raise protocol_refusal(exc) from None
        keys = self._contributor_keys(check.contributors)
        bundle = self._seal(vector, keys, self._binding(job_id, check))
        row = Release(
            job_id=job_id,
            round=check.round,
            run=check.run,
            undecodable=list(header["undecodable"]) if check.run else None,
            attempt=check.digests.attempt,
            payload_sha256=digest,
            aggregate_sha256=check.digests.aggregate_sha256,
            a_components=elements_to_bytes(current_a, element_bytes(self.params)),
            contributors=sorted(check.contributors),
            bundle=bundle,
            released_at=self._clock(),
        )
        stored_instead = self._store_release(
            row, lambda stored: self._same_release(stored, digest, header)
        )
        if stored_instead is not None:
            return stored_instead, False
        log.info(
            "released job %s round %d (run %d, attempt %d) to %d contributors",
            job_id,
            check.round,
            check.run,
            check.digests.attempt,
            len(keys),
        )
        return bundle, True

    def _store_release(
        self, row: Release, same: Callable[[Release], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Store a new release; None. If a concurrent request stored this (round, run)
        first, ``same(stored)`` answers instead (the stored bundle, or 409)."""
        try:
            with session_scope(self._sessions) as session:
                session.add(row)
                session.flush()  # a concurrent release of this (round, run) fails here
                self._audit(
                    session,
                    "release-sealed",
                    None,
                    {
                        "job_id": row.job_id,
                        "round": row.round,
                        "run": row.run,
                        "contributors": list(row.contributors),
                    },
                )
        except IntegrityError:
            with self._sessions() as session:
                stored = self._stored_release(session, row.job_id, row.round, row.run)
                if stored is None:
                    raise
                return same(stored)
        return None

    def _contributor_keys(self, contributors: tuple[str, ...]) -> dict[str, PublicKey]:
        """The contributors' certified BCP public keys (their bundle's data key is wrapped
        to them)."""
        with self._sessions() as session:
            keys = {
                subject.id: PublicKey(self.params, from_hex(subject.bcp_public_key))
                for subject in session.scalars(select(Subject).where(Subject.id.in_(contributors)))
                if subject.bcp_public_key is not None and subject.role == "participant"
            }
        if sorted(keys) != sorted(contributors):
            raise RuntimeError("stored participant keys are inconsistent with the job terms")
        return keys

    def _masked_release(
        self, job_id: str, terms: JobTerms, ps_key: Ed25519PublicKey, body: bytes
    ) -> tuple[dict[str, Any], bool]:
        """A masked job's release (docs/PROTOCOL.md, "Masked mode"): the PS-signed JSON
        request checked by :func:`trapdoor.protocol.release_request.check_masked_release_request`,
        then ``D_t = Σ μ_i`` (:func:`~trapdoor.protocol.release_request.kgc_mask_sum`) sealed to the
        contributors (:func:`~trapdoor.protocol.bundle.seal_mask_sum`).

        The release row stores ``aggregate_sha256`` = ``json_sha256({subject: y digest})``
        (what the binding lists), ``payload_sha256`` = :func:`_masked_uploads_sha256` (so
        "the same request again" is the same contributors with the same ``y`` and seed
        digests), ``attempt`` 0 and no ``A`` components (empty bytes).
        Every seed is decrypted and hashed without a branch on its value: a tampered seed
        only changes ``D``.
        """
        header = _masked_request_body(body)
        try:
            round_number = verify_release_signature(header, ps_key)
            run = request_run(header)
        except ProtocolError as exc:
            raise protocol_refusal(exc) from None
        if header.get("job_id") != job_id:
            raise InvalidError("job-mismatch", "the request is for another job")
        if header.get("aggregation") != "masked":
            raise BadRequestError("bad-field", "this job's releases are masked")
        with self._sessions() as session:
            stored = self._stored_release(session, job_id, round_number, run)
            if stored is not None:
                return self._same_masked_release(stored, header), False
            chain = self._chain(session, job_id, terms, run)
        try:
            check = check_masked_release_request(
                header, terms, next_round=chain.next_round, undecoded=chain.undecoded
            )
        except ProtocolError as exc:
            raise protocol_refusal(exc) from None
        keys = self._contributor_keys(check.contributors)
        bundle = self._seal_masks(job_id, terms, check, keys)
        uploads_sha256 = _masked_uploads_sha256(header)
        if uploads_sha256 is None:  # the check verified every statement: cannot happen
            raise RuntimeError("a checked masked request lost its upload statements")
        row = Release(
            job_id=job_id,
            round=check.round,
            run=check.run,
            undecodable=list(header["undecodable"]) if check.run else None,
            attempt=0,
            payload_sha256=uploads_sha256,
            aggregate_sha256=json_sha256(dict(check.payloads)),
            a_components=b"",
            contributors=list(check.contributors),
            bundle=bundle,
            released_at=self._clock(),
        )
        stored_instead = self._store_release(
            row, lambda stored: self._same_masked_release(stored, header)
        )
        if stored_instead is not None:
            return stored_instead, False
        log.info(
            "released masked job %s round %d (run %d) to %d contributors",
            job_id,
            check.round,
            check.run,
            len(keys),
        )
        return bundle, True

    def _seal_masks(
        self,
        job_id: str,
        terms: JobTerms,
        check: MaskedReleaseCheck,
        keys: dict[str, PublicKey],
    ) -> dict[str, Any]:
        """``D_t`` of a checked request, sealed and signed for its contributors."""
        mask_sum = kgc_mask_sum(self._master_key, terms, check)
        return seal_mask_sum(
            self._signing_key,
            self._master_key,
            mask_sum,
            check.layout,
            keys,
            binding=MaskedReleaseBinding(
                job_id, terms.digest, check.round, check.run, dict(check.payloads)
            ),
            rng=self._rng,
            random_bytes=self._random_bytes,
        )

    @staticmethod
    def _same_masked_release(stored: Release, header: Mapping[str, Any]) -> dict[str, Any]:
        """The stored bundle for the same masked request again: the same contributors
        with the same ``y`` and seed digests (:func:`_masked_uploads_sha256`); 409 for
        anything else."""
        uploads_sha256 = _masked_uploads_sha256(header)
        contributors = header.get("contributors")
        same = (
            uploads_sha256 is not None
            and isinstance(contributors, list)
            and all(isinstance(c, str) for c in contributors)
            and sorted(contributors) == sorted(stored.contributors)
            and hmac.compare_digest(uploads_sha256, stored.payload_sha256)
        )
        if not same:
            raise ConflictError(
                "already-released",
                f"round {stored.round} (run {stored.run}) was released for another request",
            )
        return dict(stored.bundle)

    def _chain(self, session: Session, job_id: str, terms: JobTerms, run: int) -> ReleaseSchedule:
        """Where a request for ``run`` must continue the job's chain of releases
        (:func:`trapdoor.protocol.release_request.release_schedule` over the newest two
        releases), so a PS can neither restart from another history nor re-run anything but
        the newest."""
        rows = session.scalars(
            select(Release)
            .where(Release.job_id == job_id)
            .order_by(Release.round.desc(), Release.run.desc())
            .limit(2)
        ).all()
        width = element_bytes(self.params)
        newest = []
        for index, row in enumerate(rows):
            if row.aggregate_sha256 is None or row.a_components is None:
                raise ConflictError(
                    "legacy-job", "this job's last release predates audited aggregates"
                )
            newest.append(
                ReleasedRound(
                    round=row.round,
                    run=row.run,
                    contributors=tuple(row.contributors),
                    aggregate_sha256=row.aggregate_sha256,
                    a_components=elements_from_bytes(row.a_components, width),
                    # only the newest can be re-run: only its reports are ever checked
                    bundle_sha256=self._bundle_sha256(terms, row.bundle)
                    if index == 0 and run > 0
                    else "",
                )
            )
        return release_schedule(terms, newest, run)

    @staticmethod
    def _bundle_sha256(terms: JobTerms, bundle: Mapping[str, Any]) -> str:
        """What an ``undecodable`` report names for a stored bundle of either mode."""
        if terms.aggregation == "masked":
            return bundle_sha256(MaskedReleaseBinding.from_fields(bundle), bundle["sealed_mask"])
        return bundle_sha256(ReleaseBinding.from_fields(bundle), bundle["sealed_model"])

    @staticmethod
    def _binding(job_id: str, check: ReleaseCheck) -> ReleaseBinding:
        """What the bundle is sealed to: the audited attempt, its base, set and blind."""
        digests = check.digests
        return ReleaseBinding(
            job_id=job_id,
            round=check.round,
            run=check.run,
            attempt=digests.attempt,
            base_sha256=digests.base_sha256,
            contributors_sha256=digests.contributors_sha256,
            blind_sha256=digests.blind_sha256,
        )

    @staticmethod
    def _check_shape(header: dict[str, Any], terms: JobTerms) -> None:
        """The frame carries exactly the job's ``num_plaintexts`` and ``width``."""
        num_plaintexts, width = header.get("num_plaintexts"), header.get("width")
        if (
            not is_json_int(num_plaintexts)
            or not is_json_int(width)
            or num_plaintexts != terms.num_plaintexts
            or width != terms.width
        ):
            raise InvalidError(
                "wrong-shape",
                f"the frame must hold {terms.num_plaintexts} plaintexts of width {terms.width}",
            )

    @staticmethod
    def _stored_release(
        session: Session, job_id: str, round_number: int, run: int
    ) -> Release | None:
        return session.scalar(
            select(Release).where(
                Release.job_id == job_id, Release.round == round_number, Release.run == run
            )
        )

    @staticmethod
    def _same_release(stored: Release, digest: str, header: dict[str, Any]) -> dict[str, Any]:
        """The stored bundle for the same request again (a retry); 409 for anything else
        (:func:`trapdoor.protocol.release_request.repeats_release`)."""
        same = repeats_release(
            header,
            digest,
            released_payload_sha256=stored.payload_sha256,
            released_contributors=stored.contributors,
            released_attempt=stored.attempt,
        )
        if not same:
            raise ConflictError(
                "already-released",
                f"round {stored.round} (run {stored.run}) was released for another request",
            )
        return dict(stored.bundle)

    @staticmethod
    def _vector(frame: VectorFrame, job_key: JobKey) -> EncryptedVector:
        """The frame's vector, every element checked (nothing is opened yet)."""
        try:
            return frame.vector(job_key)
        except InvalidElementError as exc:
            raise InvalidError("invalid-element", str(exc)) from None
        except ValueError as exc:
            raise InvalidError("invalid-frame", str(exc)) from None

    def _seal(
        self,
        vector: EncryptedVector,
        keys: dict[str, PublicKey],
        binding: ReleaseBinding,
    ) -> dict[str, Any]:
        bundle = seal_release(
            self._master_key,
            vector,
            keys,
            binding=binding,
            rng=self._rng,
            random_bytes=self._random_bytes,
            workers=self.release_workers,
        )
        bundle["kgc_signature"] = sign_json(self._signing_key, bundle)
        return bundle
