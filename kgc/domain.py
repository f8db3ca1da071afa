"""What the KGC does, without the web layer: identities, tokens, job keys, releases.

DESIGN §4–§5 and the KGC section of docs/PROTOCOL.md. :class:`KgcService` holds the
opened master key and signing key, a session factory, and an injected clock and
randomness, so tests are deterministic. Every refusal is a :mod:`kgc.errors` exception
raised *before* anything is written; every write is one transaction, and the unique
constraints of :mod:`kgc.models` settle races between workers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.bcp import InvalidElementError, MasterKey, PublicKey, PublicParams, RandomSource
from common.blocks import JobKey, generate_job_key
from common.db import session_scope
from common.release import seal_release
from common.sealing import RandomBytes
from common.signing import (
    ROLES,
    SignatureError,
    TokenClaims,
    TokenError,
    b64encode,
    issue_token,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from common.wire import VectorFrame, WireError, decode_frame, from_hex, from_obj, to_hex, to_obj
from kgc.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
)
from kgc.models import NAME_LENGTH, Job, Release, Subject, TokenNonce

__all__ = [
    "MAX_SKEW_SECONDS",
    "MAX_WIDTH",
    "TOKEN_TTL_SECONDS",
    "KgcService",
    "token_challenge",
]

log = logging.getLogger(__name__)

TOKEN_TTL_SECONDS = 300
MAX_SKEW_SECONDS = 60
MAX_WIDTH = 1024  # job key components: each costs one keygen exponentiation
MAX_PARTICIPANTS = 10_000
ISSUER = "kgc"
_JOB_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_NONCE = re.compile(r"\A[\x21-\x7e]{8,128}\Z")  # printable ASCII, no spaces


def token_challenge(subject_id: str, timestamp: int, nonce: str) -> dict[str, Any]:
    """What a subject signs to get a token (docs/PROTOCOL.md, ``POST /v1/tokens``)."""
    return {"purpose": "token", "subject_id": subject_id, "timestamp": timestamp, "nonce": nonce}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
            certificate: dict[str, Any] = {
                "subject_id": subject.id,
                "name": subject.name,
                "role": subject.role,
                "signing_key": signing_key,
                "issued_at": int(now),
            }
            bcp_h: str | None = None
            if subject.role == "participant":
                if bcp_public_key is None:
                    raise BadRequestError("missing-field", "participants must send bcp_public_key")
                public = self._participant_key(bcp_public_key)
                bcp_h = to_hex(public.h)
                certificate["bcp_public_key"] = to_obj(public)
            elif bcp_public_key is not None:
                raise BadRequestError("bad-field", "only participants have a bcp_public_key")
            signature = sign_json(self._signing_key, certificate)
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
        self, subject_id: str, timestamp: int, nonce: str, signature: str
    ) -> dict[str, Any]:
        """A short-lived token for a signed, fresh, never-seen challenge.

        Replays are refused with 409 ``nonce-replayed`` (a conflict with a stored nonce),
        stale or future timestamps with 401 ``stale-timestamp``.
        """
        if not _NONCE.match(nonce):
            raise BadRequestError("bad-field", "nonce must be 8 to 128 printable ASCII characters")
        now = self._clock()
        try:
            with session_scope(self._sessions) as session:
                subject = session.get(Subject, subject_id)
                if subject is None:
                    raise NotFoundError("not-found", "no such subject")
                if not subject.completed or subject.signing_key is None:
                    raise ForbiddenError("not-enrolled", "this subject has not completed enrolment")
                try:
                    verify_json(
                        public_key_from_hex(subject.signing_key),
                        token_challenge(subject_id, timestamp, nonce),
                        signature,
                    )
                except (SignatureError, ValueError):
                    raise UnauthorizedError(
                        "bad-signature", "the challenge signature does not verify"
                    ) from None
                if abs(now - timestamp) > self.max_skew:
                    raise UnauthorizedError(
                        "stale-timestamp", f"timestamp is more than {self.max_skew} s off"
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
            issuer=ISSUER,
        )
        return {"token": token, "expires_at": int(now) + self.token_ttl}

    def authenticate(self, token: str, role: str) -> TokenClaims:
        """Check a bearer token: 401 if forged, expired or malformed, 403 if wrong role."""
        try:
            claims = verify_token(self.verify_key, token, now=self._clock())
        except TokenError as exc:
            raise UnauthorizedError("invalid-token", str(exc)) from None
        if claims.issuer != ISSUER:
            raise UnauthorizedError("invalid-token", "token was not issued by this KGC")
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

    def create_job(
        self,
        requester: str,
        job_id: str,
        width: int,
        participants: Sequence[object],
        quorum: int,
    ) -> dict[str, Any]:
        """Make and sign a fresh job key; its secrets are never kept (DESIGN §2)."""
        if not _JOB_ID.match(job_id):
            raise BadRequestError("bad-field", "job_id must be 1-64 of A-Z a-z 0-9 . _ - ")
        if not all(isinstance(p, str) for p in participants):
            raise BadRequestError("bad-field", "participants must be a list of subject ids")
        members = [str(p) for p in participants]
        if not 1 <= width <= MAX_WIDTH:
            raise InvalidError("invalid-width", f"width must be 1 to {MAX_WIDTH}")
        if not 0 < len(members) <= MAX_PARTICIPANTS:
            raise InvalidError("invalid-participants", "a job needs 1 to 10000 participants")
        if len(set(members)) != len(members):
            raise InvalidError("duplicate-participant", "participants must be distinct")
        if not 1 <= quorum <= len(members):
            raise InvalidError(
                "invalid-quorum", "quorum must be between 1 and the participant count"
            )
        with self._sessions() as session:
            self._param_server(session, requester)
            if session.get(Job, job_id) is not None:
                raise ConflictError("job-exists", f"job {job_id} already exists")
            known = set(
                session.scalars(
                    select(Subject.id).where(
                        Subject.id.in_(members),
                        Subject.role == "participant",
                        Subject.completed.is_(True),
                    )
                )
            )
        unknown = [m for m in members if m not in known]
        if unknown:
            raise InvalidError(
                "unknown-participant",
                "not enrolled participants: " + ", ".join(unknown[:10]),
            )
        job_key = generate_job_key(self.params, width, self._rng)
        key_obj = to_obj(job_key)
        signature = sign_json(self._signing_key, {"job_id": job_id, "job_key": key_obj})
        try:
            with session_scope(self._sessions) as session:
                session.add(
                    Job(
                        job_id=job_id,
                        owner_id=requester,
                        job_key=key_obj,
                        signature=signature,
                        participants=members,
                        quorum=quorum,
                        width=width,
                        created_at=self._clock(),
                    )
                )
        except IntegrityError:
            raise ConflictError("job-exists", f"job {job_id} already exists") from None
        log.info("job %s: key of width %d for %d participants", job_id, width, len(members))
        return {"job_id": job_id, "job_key": key_obj, "signature": signature}

    # ------------------------------------------------------------------ releases

    def release(
        self, requester: str, job_id: str, frame_bytes: bytes
    ) -> tuple[dict[str, Any], bool]:
        """Open ``Enc(W + R)`` and seal ``W + R`` for the round's contributors only.

        Returns the signed bundle and whether it is new. The same request again returns
        the stored bundle; another payload (or contributor set) for a released round is
        409 ``already-released``.
        """
        try:
            frame = decode_frame(frame_bytes)
        except WireError as exc:
            raise BadRequestError("bad-frame", str(exc)) from None
        header = dict(frame.header)
        digest = str(header["sha256"])
        with self._sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError("not-found", "no such job")
            if job.owner_id != requester:
                raise ForbiddenError(
                    "not-job-owner", "this job belongs to another parameter server"
                )
            ps = self._param_server(session, requester)
            round_number, contributors = self._check_request(
                header, job, public_key_from_hex(ps.signing_key)
            )
            stored = self._stored_release(session, job_id, round_number)
            if stored is not None:
                return self._same_release(stored, digest, contributors), False
            keys = {
                subject.id: PublicKey(self.params, from_hex(subject.bcp_public_key))
                for subject in session.scalars(select(Subject).where(Subject.id.in_(contributors)))
                if subject.bcp_public_key is not None
            }
            job_key = from_obj(job.job_key)
        if not isinstance(job_key, JobKey) or sorted(keys) != sorted(contributors):
            raise RuntimeError("stored job or participant keys are inconsistent")
        bundle = self._seal(frame, job_key, keys, job_id, round_number)
        try:
            with session_scope(self._sessions) as session:
                session.add(
                    Release(
                        job_id=job_id,
                        round=round_number,
                        payload_sha256=digest,
                        contributors=sorted(contributors),
                        bundle=bundle,
                        released_at=self._clock(),
                    )
                )
        except IntegrityError:  # a concurrent identical request stored first
            with self._sessions() as session:
                stored = self._stored_release(session, job_id, round_number)
                if stored is None:
                    raise
                return self._same_release(stored, digest, contributors), False
        log.info("released job %s round %d to %d contributors", job_id, round_number, len(keys))
        return bundle, True

    def _check_request(
        self, header: dict[str, Any], job: Job, ps_key: Ed25519PublicKey
    ) -> tuple[int, list[str]]:
        """PS signature, round, contributors, receipts and quorum (docs/PROTOCOL.md)."""
        signature = header.pop("request_signature", None)
        try:
            verify_json(ps_key, header, signature)
        except SignatureError:
            raise ForbiddenError(
                "bad-request-signature", "the request is not signed by this job's server"
            ) from None
        if header.get("job_id") != job.job_id:
            raise InvalidError("job-mismatch", "the frame is for another job")
        round_number = header.get("round")
        if not isinstance(round_number, int) or isinstance(round_number, bool) or round_number < 0:
            raise BadRequestError("bad-field", "round must be a non-negative integer")
        contributors = header.get("contributors")
        receipts = header.get("receipts")
        if not isinstance(contributors, list) or not all(isinstance(c, str) for c in contributors):
            raise BadRequestError("bad-field", "contributors must be a list of subject ids")
        if not isinstance(receipts, list):
            raise BadRequestError("bad-field", "receipts must be a list")
        if len(set(contributors)) != len(contributors):
            raise InvalidError("duplicate-contributor", "contributors must be distinct")
        outsiders = sorted(set(contributors) - set(job.participants))
        if outsiders:
            raise InvalidError(
                "not-a-participant", "not participants of this job: " + ", ".join(outsiders[:10])
            )
        if len(receipts) != len(contributors):
            raise InvalidError("receipt-mismatch", "one receipt per contributor is needed")
        receipted: set[str] = set()
        for signed in receipts:
            receipt = signed.get("receipt") if isinstance(signed, dict) else None
            if not isinstance(receipt, dict):
                raise BadRequestError(
                    "bad-field", 'each receipt is {"receipt": {...}, "signature"}'
                )
            try:
                verify_json(ps_key, receipt, signed.get("signature"))
            except SignatureError:
                raise ForbiddenError(
                    "bad-receipt", "a receipt is not signed by this job's server"
                ) from None
            subject = receipt.get("subject_id")
            if (
                receipt.get("job_id") != job.job_id
                or not _is_int(receipt.get("round"))
                or receipt.get("round") != round_number
                or subject not in contributors
                or subject in receipted
            ):
                raise InvalidError(
                    "receipt-mismatch", "a receipt does not match this job, round or contributor"
                )
            receipted.add(str(subject))
        if len(contributors) < job.quorum:
            raise InvalidError(
                "below-quorum", f"{len(contributors)} contributors, the quorum is {job.quorum}"
            )
        return round_number, list(contributors)

    @staticmethod
    def _stored_release(session: Session, job_id: str, round_number: int) -> Release | None:
        return session.scalar(
            select(Release).where(Release.job_id == job_id, Release.round == round_number)
        )

    @staticmethod
    def _same_release(stored: Release, digest: str, contributors: list[str]) -> dict[str, Any]:
        """The stored bundle for an identical request; 409 for anything else."""
        if stored.payload_sha256 != digest or sorted(stored.contributors) != sorted(contributors):
            raise ConflictError(
                "already-released", f"round {stored.round} was released for another request"
            )
        return dict(stored.bundle)

    def _seal(
        self,
        frame: VectorFrame,
        job_key: JobKey,
        keys: dict[str, PublicKey],
        job_id: str,
        round_number: int,
    ) -> dict[str, Any]:
        try:
            vector = frame.vector(job_key)
        except InvalidElementError as exc:
            raise InvalidError("invalid-element", str(exc)) from None
        except ValueError as exc:
            raise InvalidError("invalid-frame", str(exc)) from None
        bundle = seal_release(
            self._master_key,
            vector,
            keys,
            job_id=job_id,
            round_number=round_number,
            rng=self._rng,
            random_bytes=self._random_bytes,
            workers=self.release_workers,
        )
        bundle["kgc_signature"] = sign_json(self._signing_key, bundle)
        return bundle
