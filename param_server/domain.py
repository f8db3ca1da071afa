"""The parameter server's domain: jobs, rounds, homomorphic aggregation, release, download.

No Flask here; :mod:`param_server.api` is a thin adapter. The PS never decrypts: it
stores ``Enc(W_t)`` as chunked rows, adds the encrypted updates into ``Enc(W_{t+1})``,
blinds it with a fresh uniform ``R`` and asks the KGC to seal ``W_{t+1} + R`` for the
round's contributors (DESIGN.md §3–§4). It never encrypts with randomness either: ``W_0``
is public and ``R`` is opened only by the KGC, which holds the master key, so both are
added as *trivial* encryptions (:func:`common.blocks.trivial_encryption`,
:func:`common.blocks.add_plaintexts`), one multiplication per element
(docs/SECURITY.md explains why fresh randomness there would protect nothing).

Every state change is one transaction, so a crash at any point leaves a state from which
:meth:`ParameterServer.tick` carries on:

- upload: checks and insert in one transaction (the DB enforces one upload per
  participant and round, and one payload digest per job);
- close: read ``W_t`` and the uploads, write ``W_{t+1}``, mark the round closed;
- release: (1) persist the exact signed request ``F = Enc(W_{t+1}) · (1 + R N)``, (2) call the
  KGC, (3) store the bundle, mark released, open the next round. A retry re-sends the
  stored request, so the KGC (idempotent for the same payload) answers with the same
  bundle.

Concurrency: one in-process lock serialises state changes (SQLite); ``SELECT ... FOR
UPDATE`` on the round row serialises them across gunicorn workers (PostgreSQL); a lease
(``rounds.release_after``) keeps two workers from releasing one round at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.bcp import RandomSource
from common.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    add_plaintexts,
    element_bytes,
    elements_from_bytes,
    elements_to_bytes,
    trivial_encryption,
)
from common.db import session_scope
from common.encoding import PackingLayout, encode_vector
from common.protocol import (
    JobTerms,
    ProtocolError,
    release_request_header,
    requested_terms,
    verify_job_terms,
    verify_upload_statement,
)
from common.release import blind_to_text, plaintexts_from_bytes, plaintexts_to_bytes
from common.signing import public_key_hex, sign_json
from common.wire import MAX_HEADER_BYTES, WireError, decode_frame, encode_frame, from_obj
from param_server.definition import parse_definition
from param_server.errors import DomainError
from param_server.kgc_gateway import (
    KgcError,
    KgcGateway,
    KgcInfo,
    check_job_answer,
    check_release_bundle,
)
from param_server.models import Job, ModelChunk, Release, Round, Upload

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "ParameterServer", "TickResult"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ELEMENTS = 64
_FRAME_PREFIX_BYTES = 9  # magic, version, header length (common.wire)
#: Upload statement errors that say "not this participant's signature" (403); the other
#: codes (bad-statement, statement-mismatch) are a malformed or mislabelled upload (422).
_FORBIDDEN_STATEMENT_CODES = frozenset({"bad-statement-signature", "not-a-participant"})


@dataclass(frozen=True)
class _JobCrypto:
    """What a job's uploads are checked against; immutable once the job exists."""

    job_key: JobKey
    packing: PackingLayout
    layout: BlockLayout
    participants: frozenset[str]
    terms: JobTerms

    @property
    def max_frame_bytes(self) -> int:
        """The largest well-formed upload: a full header and exactly the expected payload."""
        width = element_bytes(self.job_key.params)
        return _FRAME_PREFIX_BYTES + MAX_HEADER_BYTES + self.layout.num_elements * width


@dataclass
class TickResult:
    """What one :meth:`ParameterServer.tick` did (for logs and tests)."""

    closed: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)


class ParameterServer:
    """Jobs, rounds, aggregation and release over a database and a :class:`KgcGateway`.

    ``clock`` and ``rng`` are passed in so tests are deterministic; ``rng`` draws the
    blinds ``R`` (use ``random.SystemRandom()`` in production). ``subject_id`` is the PS's
    enrolled subject id: the audience of the participant tokens it accepts and the server
    the KGC-signed job terms must name.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        gateway: KgcGateway,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        release_retry_seconds: float = 5.0,
        release_lease_seconds: float = 300.0,
        subject_id: str,
    ) -> None:
        if chunk_elements < 1:
            raise ValueError("chunk_elements must be at least 1")
        if not subject_id:
            raise ValueError("the PS's subject id (its tokens' audience) is required")
        self._sessions = sessions
        self._gateway = gateway
        self._signing_key = signing_key
        self.clock = clock
        self._rng: RandomSource = rng or random.SystemRandom()
        self._chunk_elements = chunk_elements
        self._retry_seconds = release_retry_seconds
        self._lease_seconds = release_lease_seconds
        self.subject_id = subject_id
        self.kgc: KgcInfo = gateway.info()
        self._lock = threading.RLock()
        self._cache_lock = threading.Lock()
        self._crypto_cache: dict[str, _JobCrypto] = {}
        #: Called (without arguments) when a round is ready for release; the app wakes
        #: its background worker with it.
        self.on_release_pending: Callable[[], None] | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def verify_key_hex(self) -> str:
        """The PS's Ed25519 public key (receipts and release requests verify under it)."""
        return public_key_hex(self._signing_key)

    def ping(self) -> bool:
        """Readiness: the database answers."""
        with self._sessions() as session:
            session.execute(text("SELECT 1"))
        return True

    def close(self) -> None:
        """Nothing to stop: the PS keeps no worker processes (kept for the app's teardown)."""

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    @staticmethod
    def _job(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise DomainError(404, "job-not-found", f"no job {job_id!r}")
        return job

    @staticmethod
    def _round(session: Session, job_id: str, t: int, *, lock: bool = False) -> Round | None:
        return session.get(Round, (job_id, t), with_for_update=lock or None)

    def _crypto(self, job: Job) -> _JobCrypto:
        with self._cache_lock:
            cached = self._crypto_cache.get(job.job_id)
        if cached is not None:
            return cached
        if job.job_terms is None or job.job_terms_signature is None:
            raise DomainError(
                409, "unsigned-job", f"job {job.job_id!r} has no KGC-signed terms; recreate it"
            )
        job_key = from_obj(job.job_key)
        if not isinstance(job_key, JobKey):
            raise RuntimeError(f"stored job key of {job.job_id!r} is not a job key")
        try:
            terms = verify_job_terms(
                self.kgc.verify_key, job.job_terms, job.job_terms_signature, self.kgc.params
            )
        except ProtocolError as exc:
            raise RuntimeError(f"stored terms of {job.job_id!r} do not verify: {exc}") from None
        if terms.raw["job_key"] != job.job_key:
            raise RuntimeError(f"stored job key of {job.job_id!r} is not the KGC-signed one")
        packing = PackingLayout.from_json(job.packing)
        crypto = _JobCrypto(
            job_key,
            packing,
            BlockLayout(packing.num_plaintexts, job_key.width),
            frozenset(job.weights),
            terms,
        )
        with self._cache_lock:
            self._crypto_cache[job.job_id] = crypto
        return crypto

    # ------------------------------------------------------------------ model storage

    def _chunks(self, vector: EncryptedVector) -> Iterator[tuple[int, bytes]]:
        width = element_bytes(vector.job_key.params)
        size = self._chunk_elements
        for index, start in enumerate(range(0, len(vector.elements), size)):
            yield index, elements_to_bytes(vector.elements[start : start + size], width)

    def _store_model(
        self, session: Session, job_id: str, version: int, vector: EncryptedVector
    ) -> None:
        """Write ``Enc(W_version)`` as chunk rows (fixed number of fixed-width elements)."""
        for index, data in self._chunks(vector):
            session.add(ModelChunk(job_id=job_id, version=version, chunk_index=index, data=data))
        session.flush()

    @staticmethod
    def _load_model(
        session: Session, job_id: str, version: int, crypto: _JobCrypto
    ) -> EncryptedVector:
        rows = session.scalars(
            select(ModelChunk)
            .where(ModelChunk.job_id == job_id, ModelChunk.version == version)
            .order_by(ModelChunk.chunk_index)
        ).all()
        if [row.chunk_index for row in rows] != list(range(len(rows))):
            raise RuntimeError(f"model {job_id!r} version {version} has missing chunks")
        width = element_bytes(crypto.job_key.params)
        elements = elements_from_bytes(b"".join(row.data for row in rows), width)
        return EncryptedVector(crypto.job_key, crypto.layout, tuple(elements))

    # ------------------------------------------------------------------ jobs

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, have the KGC sign the job's terms, store ``Enc(W_0)`` and open round 0.

        The terms the KGC signs (:func:`common.protocol.requested_terms`) digest exactly
        the definition, packing and weights stored here and served by :meth:`job_view`, so
        a participant can check the served job against them.
        """
        now = self.clock()
        n = int(self.kgc.params.n)
        definition = parse_definition(dict(body), n, param_server=self.subject_id)
        packing = definition.packing(n)
        plaintexts, _ = encode_vector(
            definition.initial_weights, packing, clip_bound=definition.model_clip_bound
        )
        stored = {
            "definition": definition.normalised,
            "packing": packing.to_json(),
            "weights": definition.weights,
        }
        request = requested_terms(
            job_id=definition.job_id,
            definition=stored["definition"],
            packing=stored["packing"],
            weights=stored["weights"],
            width=definition.encoding.width,
            num_plaintexts=packing.num_plaintexts,
        )
        with self._sessions() as session:
            if session.get(Job, definition.job_id) is not None:
                raise DomainError(409, "job-exists", f"job {definition.job_id!r} exists")
        try:
            answer = self._gateway.create_job(definition.job_id, request)
            terms, signature = check_job_answer(
                answer,
                self.kgc,
                job_id=definition.job_id,
                requested=request,
                param_server=self.subject_id,
            )
        except KgcError as exc:
            raise _from_kgc(exc, conflict="job-exists") from None
        job_key = terms.job_key
        model = trivial_encryption(job_key, plaintexts)  # W_0 is public: no randomness
        try:
            with self._lock, session_scope(self._sessions) as session:
                session.add(
                    Job(
                        job_id=definition.job_id,
                        definition=stored["definition"],
                        job_key=dict(terms.raw["job_key"]),
                        job_terms=dict(terms.raw),
                        job_terms_signature=signature,
                        packing=stored["packing"],
                        weights=stored["weights"],
                        status="running",
                        current_round=0,
                        rounds_total=definition.rounds,
                        created_at=now,
                    )
                )
                session.flush()
                self._store_model(session, definition.job_id, 0, model)
                opened = self.clock()  # after the KGC call: a full first round
                session.add(self._open_round(definition.job_id, 0, opened, definition.normalised))
        except IntegrityError:
            raise DomainError(409, "job-exists", f"job {definition.job_id!r} exists") from None
        log.info(
            "job %s created: %d values, width %d", definition.job_id, packing.length, job_key.width
        )
        return self.job_view(definition.job_id)

    @staticmethod
    def _open_round(job_id: str, t: int, now: float, definition: Mapping[str, Any]) -> Round:
        deadline = now + float(definition["round_deadline_seconds"])
        return Round(job_id=job_id, round=t, status="open", opened_at=now, deadline=deadline)

    def list_jobs(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            jobs = session.scalars(select(Job).order_by(Job.created_at, Job.job_id)).all()
            return [_job_summary(job) for job in jobs]

    def job_view(self, job_id: str) -> dict[str, Any]:
        with self._sessions() as session:
            job = self._job(session, job_id)
            return {
                **_job_summary(job),
                "definition": job.definition,
                "job_key": job.job_key,
                "job_terms": job.job_terms,
                "job_terms_signature": job.job_terms_signature,
                "packing": job.packing,
                "weights": job.weights,
            }

    def upload_limit(self, job_id: str, subject_id: str) -> int:
        """The most bytes an upload of ``subject_id`` to ``job_id`` may have.

        404 for an unknown job and 403 for a non-participant, so the API refuses both
        before it reads a byte of the body.
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            if subject_id not in job.weights:
                raise DomainError(403, "not-a-participant", "not a participant of this job")
            return self._crypto(job).max_frame_bytes

    def participants(self, job_id: str) -> frozenset[str]:
        """The job's enrolled participants (404 if there is no such job)."""
        with self._sessions() as session:
            return frozenset(self._job(session, job_id).weights)

    def round_view(self, job_id: str, t: int) -> dict[str, Any]:
        with self._sessions() as session:
            self._job(session, job_id)
            rnd = self._round(session, job_id, t)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            contributors = self._contributors(session, job_id, t)
            return {
                "job_id": job_id,
                "round": t,
                "status": rnd.status,
                "contributors": contributors,
                "uploads": len(contributors),
                "opened_at": rnd.opened_at,
                "deadline": rnd.deadline,
                "closed_at": rnd.closed_at,
                "released_at": rnd.released_at,
            }

    @staticmethod
    def _contributors(session: Session, job_id: str, t: int) -> list[str]:
        return list(
            session.scalars(
                select(Upload.subject_id)
                .where(Upload.job_id == job_id, Upload.round == t)
                .order_by(Upload.subject_id)
            )
        )

    # ------------------------------------------------------------------ uploads

    def accept_upload(self, job_id: str, t: int, subject_id: str, data: bytes) -> dict[str, Any]:
        """Validate and store one encrypted update; return the PS-signed receipt.

        The frame's header carries the contributor's signed statement
        (:func:`common.protocol.build_upload_statement`) for this job's terms, round ``t``,
        its own subject id and the frame's payload digest; it is checked with
        :func:`common.protocol.verify_upload_statement` and stored with the upload (the
        KGC checks it again at the release). The checks and the insert are one
        transaction; the round is closed right after (own transaction) if this was the
        last participant, or the deadline has passed and the quorum is now met.
        """
        now = self.clock()
        try:
            with self._lock, session_scope(self._sessions) as session:
                job = self._job(session, job_id)
                if subject_id not in job.weights:
                    raise DomainError(403, "not-a-participant", "not a participant of this job")
                rnd = self._round(session, job_id, t, lock=True)
                if rnd is None or rnd.status != "open":
                    raise DomainError(409, "round-not-open", f"round {t} is not open")
                crypto = self._crypto(job)
                digest, payload, statement = _check_upload(crypto, job_id, t, subject_id, data)
                taken = session.scalar(
                    select(Upload.subject_id).where(
                        Upload.job_id == job_id, Upload.round == t, Upload.subject_id == subject_id
                    )
                )
                if taken is not None:
                    raise DomainError(409, "duplicate-upload", "already uploaded for this round")
                if session.scalar(
                    select(Upload.id).where(Upload.job_id == job_id, Upload.sha256 == digest)
                ):
                    raise DomainError(
                        409, "replayed-payload", "this ciphertext was uploaded before"
                    )
                receipt = {
                    "job_id": job_id,
                    "round": t,
                    "subject_id": subject_id,
                    "sha256": digest,
                    "accepted_at": int(now),
                }
                signed = {"receipt": receipt, "signature": sign_json(self._signing_key, receipt)}
                session.add(
                    Upload(
                        job_id=job_id,
                        round=t,
                        subject_id=subject_id,
                        sha256=digest,
                        payload=payload,
                        receipt=signed,
                        statement=statement,
                        accepted_at=now,
                    )
                )
                session.flush()
        except IntegrityError:
            # Lost a race with a concurrent identical request (another worker).
            raise DomainError(409, "duplicate-upload", "already uploaded for this round") from None
        log.info("job %s round %d: upload accepted (%d bytes)", job_id, t, len(data))
        try:  # complete, or past the deadline with quorum: close now
            self._settle_open_round(job_id, t, now)
        except Exception as exc:  # the upload is safe; tick() closes the round later
            log.error("job %s round %d: close failed: %s", job_id, t, type(exc).__name__)
        return signed

    # ------------------------------------------------------------------ closing

    def close_round(self, job_id: str, t: int, *, now: float | None = None) -> dict[str, Any]:
        """Operator: close round ``t`` now if it is open and has a quorum (else 409)."""
        now = self._now(now)
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            if rnd.status != "open":
                raise DomainError(409, "round-not-open", f"round {t} is not open")
            count = self._upload_count(session, job_id, t)
            quorum = int(job.definition["quorum"])
            if count < quorum:
                raise DomainError(409, "below-quorum", f"{count} of the {quorum} uploads needed")
            self._aggregate(session, job, rnd, self._uploads(session, job_id, t), now)
        self._release_pending()
        return self.round_view(job_id, t)

    def _settle_open_round(self, job_id: str, t: int, now: float) -> str | None:
        """Close an open round when complete or due; fail it if due without quorum.

        Returns ``"closed"``, ``"failed"`` or None (nothing to do).
        """
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None or rnd.status != "open" or job.status != "running":
                return None
            count = self._upload_count(session, job_id, t)
            quorum = int(job.definition["quorum"])
            due = now >= rnd.deadline
            if count == len(job.weights) or (due and count >= quorum):
                self._aggregate(session, job, rnd, self._uploads(session, job_id, t), now)
                outcome = "closed"
            elif due and job.definition["below_quorum_policy"] == "fail":
                rnd.status = "failed"
                rnd.closed_at = now
                job.status = "failed"
                outcome = "failed"
                log.warning(
                    "job %s round %d failed: %d uploads, quorum %d", job_id, t, count, quorum
                )
            else:
                return None
        if outcome == "closed":
            self._release_pending()
        return outcome

    @staticmethod
    def _upload_count(session: Session, job_id: str, t: int) -> int:
        return int(
            session.scalar(select(func.count()).where(Upload.job_id == job_id, Upload.round == t))
            or 0
        )

    @staticmethod
    def _uploads(session: Session, job_id: str, t: int) -> list[Upload]:
        return list(
            session.scalars(
                select(Upload)
                .where(Upload.job_id == job_id, Upload.round == t)
                .order_by(Upload.subject_id)
            )
        )

    def _aggregate(
        self, session: Session, job: Job, rnd: Round, uploads: list[Upload], now: float
    ) -> None:
        """``Enc(W_{t+1}) = Enc(W_t) + Σ Enc(w_i Δ_i)``, written in the caller's transaction."""
        crypto = self._crypto(job)
        t = rnd.round
        model = self._load_model(session, job.job_id, t, crypto)
        updates = [
            EncryptedVector.from_bytes(crypto.job_key, crypto.layout, upload.payload)
            for upload in uploads
        ]
        self._store_model(session, job.job_id, t + 1, EncryptedVector.sum([model, *updates]))
        rnd.status = "closed"
        rnd.closed_at = now
        rnd.release_after = None
        log.info("job %s round %d closed with %d uploads", job.job_id, t, len(uploads))

    def _release_pending(self) -> None:
        if self.on_release_pending is not None:
            self.on_release_pending()

    # ------------------------------------------------------------------ release

    def release_round(self, job_id: str, t: int, *, now: float | None = None) -> bool:
        """Release a closed round through the KGC; True if it is released now.

        Any failure (KGC unreachable or refusing, a crash) leaves the round closed with a
        back-off; :meth:`tick` tries again.
        """
        now = self._now(now)
        with self._lock, session_scope(self._sessions) as session:
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None or rnd.status != "closed":
                return False
            if rnd.release_after is not None and rnd.release_after > now:
                return False
            rnd.release_after = now + self._lease_seconds  # our lease on this release
        try:
            frame, contributors, num_plaintexts = self._release_request(job_id, t, now)
            bundle = self._gateway.release(frame)
            check_release_bundle(
                bundle,
                self.kgc,
                job_id=job_id,
                round_number=t,
                contributors=contributors,
                num_plaintexts=num_plaintexts,
            )
            # Stamped when the bundle is stored (the KGC call takes seconds): released_at is
            # when the model became downloadable, and the next round's deadline runs from it.
            self._finish_release(job_id, t, bundle, max(now, self.clock()))
        except Exception as exc:
            reason = exc.message if isinstance(exc, KgcError | DomainError) else type(exc).__name__
            log.warning("job %s round %d: release failed (%s); will retry", job_id, t, reason)
            with self._lock, session_scope(self._sessions) as session:
                rnd = self._round(session, job_id, t, lock=True)
                if rnd is not None and rnd.status == "closed":
                    rnd.release_after = now + self._retry_seconds
                    rnd.last_error = reason[:500]
            return False
        return True

    def _draw_blind(self, crypto: _JobCrypto) -> list[int]:
        """A fresh uniform ``R``: one value in ``[0, N)`` per packed plaintext."""
        n = int(crypto.job_key.params.n)
        return [self._rng.randrange(0, n) for _ in range(crypto.layout.num_plaintexts)]

    def _release_request(self, job_id: str, t: int, now: float) -> tuple[bytes, list[str], int]:
        """The signed ``Enc(W_{t+1} + R)`` frame: the stored one on a retry, else a new one."""
        with self._sessions() as session:
            pending = session.get(Release, (job_id, t))
            if pending is not None and pending.request is not None:
                return _stored_request(pending.request)
            job = self._job(session, job_id)
            crypto = self._crypto(job)
            model = self._load_model(session, job_id, t + 1, crypto)
            uploads = self._uploads(session, job_id, t)  # sorted by subject id
            contributors = [upload.subject_id for upload in uploads]
            statements = [upload.statement for upload in uploads]
            drawn = pending.blind if pending is not None else None
        n = int(crypto.job_key.params.n)
        blind = plaintexts_from_bytes(drawn, n) if drawn is not None else self._draw_blind(crypto)
        if any(statement is None for statement in statements):
            raise DomainError(409, "unsigned-upload", "an upload of this round has no statement")
        header = release_request_header(
            job_id=job_id,
            round_number=t,
            statements=[statement for statement in statements if statement is not None],
        )
        frame = self._signed_frame(add_plaintexts(model, blind), header)
        with self._lock, session_scope(self._sessions) as session:
            release = session.get(Release, (job_id, t), with_for_update=True)
            if release is None:
                release = Release(job_id=job_id, round=t, blind=plaintexts_to_bytes(blind, n))
                session.add(release)
            elif release.request is not None:  # another worker got there first: use its
                return _stored_request(release.request)
            release.request = frame
            release.requested_at = now
        return frame, contributors, crypto.layout.num_plaintexts

    def _signed_frame(self, vector: EncryptedVector, header: dict[str, Any]) -> bytes:
        """Frame with ``request_signature`` over the full header (``sha256`` included)."""
        signed_header = decode_frame(encode_frame(vector, header)).header
        signature = sign_json(self._signing_key, signed_header)
        return encode_frame(vector, {**header, "request_signature": signature})

    def _finish_release(self, job_id: str, t: int, bundle: dict[str, Any], now: float) -> None:
        """Store the bundle, mark the round released and open the next (one transaction)."""
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            rnd = self._round(session, job_id, t, lock=True)
            release = session.get(Release, (job_id, t))
            if rnd is None or rnd.status != "closed" or release is None:
                return  # another worker finished it
            release.bundle = bundle
            release.request = None
            release.released_at = now
            rnd.status = "released"
            rnd.released_at = now
            rnd.release_after = None
            rnd.last_error = None
            finished = t + 1 >= job.rounds_total
            if finished:
                job.status = "finished"
            else:
                session.add(self._open_round(job_id, t + 1, now, job.definition))
                job.current_round = t + 1
        log.info("job %s round %d released", job_id, t)

    # ------------------------------------------------------------------ background work

    def tick(self, now: float | None = None) -> TickResult:
        """Deadline checks and pending releases; called every second by the app's worker."""
        now = self._now(now)
        result = TickResult()
        with self._sessions() as session:
            open_rounds = session.execute(
                select(Round.job_id, Round.round)
                .join(Job, Job.job_id == Round.job_id)
                .where(Round.status == "open", Job.status == "running")
            ).all()
        for job_id, t in open_rounds:
            try:
                outcome = self._settle_open_round(job_id, t, now)
            except Exception as exc:
                log.error("job %s round %d: settle failed: %s", job_id, t, type(exc).__name__)
                continue
            if outcome == "closed":
                result.closed.append((job_id, t))
            elif outcome == "failed":
                result.failed.append((job_id, t))
        with self._sessions() as session:
            pending = session.execute(
                select(Round.job_id, Round.round).where(
                    Round.status == "closed",
                    (Round.release_after.is_(None)) | (Round.release_after <= now),
                )
            ).all()
        for job_id, t in pending:
            if self.release_round(job_id, t, now=now):
                result.released.append((job_id, t))
        return result

    # ------------------------------------------------------------------ download

    def download(self, job_id: str, t: int, subject_id: str) -> dict[str, Any]:
        """A contributor's part of the release bundle of round ``t``, with the blind ``R``."""
        with self._sessions() as session:
            job = self._job(session, job_id)
            if subject_id not in job.weights:
                raise DomainError(403, "not-a-participant", "not a participant of this job")
            rnd = self._round(session, job_id, t)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            release = session.get(Release, (job_id, t))
            if rnd.status != "released" or release is None or release.bundle is None:
                raise DomainError(409, "not-released", f"round {t} is not released yet")
            bundle = release.bundle
            wrapped = bundle["wrapped_keys"].get(subject_id)
            if wrapped is None:
                raise DomainError(403, "not-a-contributor", f"did not contribute to round {t}")
            n = int(self._crypto(job).job_key.params.n)
            return {
                "job_id": job_id,
                "round": t,
                "num_plaintexts": bundle["num_plaintexts"],
                "sealed_model": bundle["sealed_model"],
                "wrapped_key": wrapped,
                "blind": blind_to_text(plaintexts_from_bytes(release.blind, n), n),
                "kgc_signature": bundle["kgc_signature"],
            }


# ---------------------------------------------------------------------- helpers


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "current_round": job.current_round,
        "rounds_total": job.rounds_total,
        "created_at": job.created_at,
    }


def _check_upload(
    crypto: _JobCrypto, job_id: str, t: int, subject_id: str, data: bytes
) -> tuple[str, bytes, dict[str, Any]]:
    """Frame, header, statement, shape and every group element.

    Returns the payload's SHA-256, the payload and the signed statement. The statement
    (cheap to check) is checked before the group elements (costly).
    """
    if len(data) > crypto.max_frame_bytes:
        raise DomainError(413, "too-large", "upload is larger than this job's model")
    try:
        frame = decode_frame(data)
    except WireError as exc:
        raise DomainError(400, "malformed-frame", str(exc)) from None
    header = frame.header
    if header.get("job_id") != job_id or not _is_int(header.get("round")) or header["round"] != t:
        raise DomainError(422, "frame-mismatch", "frame header is for another job or round")
    digest = str(header["sha256"])
    try:
        statement = verify_upload_statement(
            header.get("statement"),
            crypto.terms,
            round_number=t,
            subject_id=subject_id,
            payload_sha256=digest,
        )
    except ProtocolError as exc:
        status = 403 if exc.code in _FORBIDDEN_STATEMENT_CODES else 422
        raise DomainError(status, exc.code, exc.message) from None
    signed = {"statement": statement, "signature": header["statement"]["signature"]}
    if header.get("num_plaintexts") != crypto.packing.num_plaintexts:
        raise DomainError(
            422, "wrong-shape", f"expected {crypto.packing.num_plaintexts} plaintexts"
        )
    try:
        vector = frame.vector(crypto.job_key)
    except ValueError as exc:
        raise DomainError(422, "invalid-ciphertext", str(exc)) from None
    if vector.layout != crypto.layout:
        raise DomainError(422, "wrong-shape", "block layout does not match the job")
    return digest, frame.payload, signed


def _stored_request(frame: bytes) -> tuple[bytes, list[str], int]:
    """A persisted release request with the contributors and size its header names."""
    header = decode_frame(frame).header
    return frame, list(header["contributors"]), int(header["num_plaintexts"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_kgc(exc: KgcError, *, conflict: str) -> DomainError:
    """Map a KGC refusal to what the PS's own caller should see."""
    if exc.code == "bad-kgc-answer":  # the KGC answered something the PS must not use
        return DomainError(502, "bad-kgc-answer", exc.message)
    if exc.retryable:
        return DomainError(503, "kgc-unavailable", "the KGC cannot be reached; try again later")
    if exc.status == 409:
        return DomainError(409, conflict, exc.message)
    if exc.status in (400, 404, 422):
        return DomainError(422, "kgc-rejected", exc.message)
    return DomainError(502, "kgc-error", exc.message)
