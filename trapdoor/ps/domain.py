"""The parameter server's domain: jobs, the round protocol, aggregation, release, download.

No Flask here; :mod:`trapdoor.ps.api` is a thin adapter. The PS never decrypts and no
longer encrypts: ``Enc(W_0)`` is the trivial encryption the job terms name, and the blind
``R`` is added as a trivial encryption too (:func:`trapdoor.protocol.aggregate.audit_round`). A
round
(docs/PROTOCOL.md) goes through these phases, each with its own deadline:

- ``open``: participants commit to the ciphertext they will upload; the PS signs the
  closed set of commitments when everyone committed, or at the deadline with a quorum;
- ``committed``: the committed subjects upload exactly the committed payloads; when all
  did (or at the deadline with a quorum) the PS aggregates attempt 0;
- ``closed``: the contributors of the current attempt recompute ``Agg`` and ``F`` from
  what the PS serves and sign audits; at the deadline the PS drops whoever did not audit
  and aggregates the next attempt over the rest with a fresh ``R``;
- release: when every contributor audited, (1) persist the exact signed request ``F``,
  (2) call the KGC, (3) store the bundle, mark released, open the next round. A retry
  re-sends the stored request, so the KGC (idempotent for the same request) answers with
  the same bundle.

Every state change is one transaction, so a crash at any point leaves a state from which
:meth:`ParameterServer.tick` carries on. Concurrency: one in-process lock serialises state
changes (SQLite); ``SELECT ... FOR UPDATE`` on the round row serialises them across
gunicorn workers (PostgreSQL); a lease (``rounds.release_after``) keeps two workers from
releasing one round at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import RandomSource
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    add_plaintexts,
    element_bytes,
    elements_from_bytes,
    elements_to_bytes,
)
from trapdoor.crypto.encoding import EncodingError, PackingLayout
from trapdoor.crypto.masking import vector_to_bytes
from trapdoor.crypto.pok import RandomnessProof, verify_randomness
from trapdoor.crypto.signing import public_key_hex, sign_json
from trapdoor.crypto.wire import (
    MAX_HEADER_BYTES,
    WireError,
    decode_frame,
    encode_frame,
    encode_payload_frame,
    encode_ring_frame,
    from_obj,
)
from trapdoor.protocol.aggregate import AuditedRound, audit_round
from trapdoor.protocol.bundle import (
    ReleaseBinding,
    blind_to_text,
    bundle_sha256,
    plaintexts_from_bytes,
    plaintexts_to_bytes,
)
from trapdoor.protocol.masked import MaskedLayout, MaskedReleaseBinding, initial_state
from trapdoor.protocol.messages import (
    MAX_ATTEMPT,
    MAX_RUN,
    ClosedSet,
    JobTerms,
    ProtocolError,
    build_closed_set,
    digest_equal,
    initial_ciphertext,
    initial_ciphertext_sha256,
    is_json_int,
    pok_context,
    release_request_header,
    requested_terms,
    sha256_hex,
    vector_sha256,
    verify_audit_statement,
    verify_closed_set,
    verify_commitment,
    verify_job_terms,
    verify_undecodable_statement,
    verify_upload_statement,
)
from trapdoor.ps import masked
from trapdoor.ps.definition import parse_definition
from trapdoor.ps.errors import DomainError
from trapdoor.ps.kgc_gateway import (
    KgcError,
    KgcGateway,
    KgcInfo,
    check_job_answer,
    check_masked_release_bundle,
    check_release_bundle,
)
from trapdoor.ps.models import Audit, Commitment, Job, ModelChunk, Release, Round, Upload
from trapdoor.service.db import session_scope

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "ParameterServer", "TickResult"]

log = logging.getLogger(__name__)
#: What a participant message's check returns (its body, or body and digests).
_Checked = TypeVar("_Checked")

DEFAULT_CHUNK_ELEMENTS = 64
_FRAME_PREFIX_BYTES = 9  # magic, version, header length (trapdoor.crypto.wire)
#: Refusals of a participant-signed message that say "not this participant's signature"
#: (403); the other codes (bad-*, *-mismatch) are a malformed or mislabelled message (422).
_FORBIDDEN_CODES = frozenset(
    {
        "not-a-participant",
        "bad-statement-signature",
        "bad-commitment-signature",
        "bad-audit-signature",
        "bad-undecodable-signature",
    }
)
#: The phases in which a round still waits for something from its participants.
_ACTIVE = ("open", "committed", "closed")


@dataclass(frozen=True)
class _JobCrypto:
    """What a job's messages are checked against; immutable once the job exists."""

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

    @property
    def n(self) -> int:
        return int(self.job_key.params.n)

    @property
    def element_width(self) -> int:
        return element_bytes(self.job_key.params)


@dataclass
class TickResult:
    """What one :meth:`ParameterServer.tick` did (for logs and tests)."""

    committed: list[tuple[str, int]] = field(default_factory=list)
    closed: list[tuple[str, int]] = field(default_factory=list)
    reaggregated: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)


class ParameterServer:
    """Jobs, rounds, aggregation and release over a database and a :class:`KgcGateway`.

    ``clock`` and ``rng`` are passed in so tests are deterministic; ``rng`` draws the
    blinds ``R`` (use ``random.SystemRandom()`` in production). ``subject_id`` is the PS's
    enrolled subject id: the audience of the participant tokens it accepts and the server
    the KGC-signed job terms must name; ``signing_key`` signs closed sets, receipts and
    release requests, and the terms must name its public key.
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
        self._crypto_cache: dict[str, _JobCrypto | masked.MaskedJob] = {}
        #: Called (without arguments) when a round is ready for release; the app wakes
        #: its background worker with it.
        self.on_release_pending: Callable[[], None] | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def verify_key_hex(self) -> str:
        """The PS's Ed25519 public key (closed sets, receipts and release requests)."""
        return public_key_hex(self._signing_key)

    def ping(self) -> bool:
        """Readiness: the database answers."""
        with self._sessions() as session:
            session.execute(text("SELECT 1"))
        return True

    def close(self) -> None:
        """Nothing to stop (the PS holds no worker processes); kept for the app's shutdown."""

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    @staticmethod
    def _job(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise DomainError(404, "job-not-found", f"no job {job_id!r}")
        return job

    @staticmethod
    def _participant(job: Job, subject_id: str) -> None:
        if subject_id not in job.weights:
            raise DomainError(403, "not-a-participant", "not a participant of this job")

    @staticmethod
    def _round(session: Session, job_id: str, t: int, *, lock: bool = False) -> Round | None:
        return session.get(Round, (job_id, t), with_for_update=lock or None)

    def _existing_round(self, session: Session, job_id: str, t: int) -> tuple[Job, Round]:
        job = self._job(session, job_id)
        rnd = self._round(session, job_id, t)
        if rnd is None:
            raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
        return job, rnd

    def _crypto(self, job: Job) -> _JobCrypto:
        """A bcp job's crypto (409 ``wrong-aggregation`` for a masked job)."""
        setup = self._setup(job)
        if not isinstance(setup, _JobCrypto):
            raise DomainError(
                409,
                "wrong-aggregation",
                f"job {job.job_id!r} is masked: it has no commitments, closed sets or audits",
            )
        return setup

    def _masked(self, job: Job) -> masked.MaskedJob:
        """A masked job's layout and terms (409 ``wrong-aggregation`` for a bcp job)."""
        setup = self._setup(job)
        if not isinstance(setup, masked.MaskedJob):
            raise DomainError(409, "wrong-aggregation", f"job {job.job_id!r} is not masked")
        return setup

    def _terms(self, job: Job) -> JobTerms:
        """The job's KGC-signed terms, verified (either aggregation)."""
        return self._setup(job).terms

    def _setup(self, job: Job) -> _JobCrypto | masked.MaskedJob:
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
            raise DomainError(
                409, "unsigned-job", f"stored terms of {job.job_id!r} do not verify: {exc}"
            ) from None
        if terms.raw["job_key"] != job.job_key:
            raise RuntimeError(f"stored job key of {job.job_id!r} is not the KGC-signed one")
        crypto: _JobCrypto | masked.MaskedJob
        if terms.aggregation != _aggregation(job):
            raise RuntimeError(f"stored job {job.job_id!r} is not of its terms' aggregation")
        if terms.aggregation == "masked":
            try:
                layout = MaskedLayout.from_json(job.packing)
            except EncodingError as exc:
                raise RuntimeError(f"stored layout of {job.job_id!r}: {exc}") from None
            crypto = masked.MaskedJob(terms, layout, frozenset(job.weights))
        else:
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

    @staticmethod
    def _closed(crypto: _JobCrypto, rnd: Round) -> ClosedSet:
        """The round's closed set as the PS signed it (verified: the DB is not trusted)."""
        if rnd.closed_set is None:
            raise DomainError(409, "set-not-closed", f"round {rnd.round}'s set is not closed")
        try:
            return verify_closed_set(
                rnd.closed_set, crypto.terms, round_number=rnd.round, run=rnd.run
            )
        except ProtocolError as exc:
            raise RuntimeError(f"stored closed set does not verify: {exc.code}") from None

    # ------------------------------------------------------------------ model storage

    def _chunks(self, vector: EncryptedVector) -> Iterator[tuple[int, bytes]]:
        width = element_bytes(vector.job_key.params)
        size = self._chunk_elements
        for index, start in enumerate(range(0, len(vector.elements), size)):
            yield index, elements_to_bytes(vector.elements[start : start + size], width)

    def _store_model(
        self, session: Session, job_id: str, version: int, vector: EncryptedVector
    ) -> None:
        """Write ``Enc(W_version)`` as chunk rows, replacing an earlier attempt's rows."""
        session.execute(
            delete(ModelChunk).where(ModelChunk.job_id == job_id, ModelChunk.version == version)
        )
        for index, data in self._chunks(vector):
            session.add(ModelChunk(job_id=job_id, version=version, chunk_index=index, data=data))
        session.flush()

    def _store_ring(
        self, session: Session, job_id: str, version: int, data: bytes, layout: MaskedLayout
    ) -> None:
        """Write a masked job's ``Z_version`` (raw ring bytes) as chunk rows, replacing any."""
        session.execute(
            delete(ModelChunk).where(ModelChunk.job_id == job_id, ModelChunk.version == version)
        )
        size = self._chunk_elements * layout.ring.byte_width
        for index, start in enumerate(range(0, len(data), size)):
            session.add(
                ModelChunk(
                    job_id=job_id,
                    version=version,
                    chunk_index=index,
                    data=data[start : start + size],
                )
            )
        session.flush()

    @staticmethod
    def _load_model(
        session: Session, job_id: str, version: int, crypto: _JobCrypto
    ) -> EncryptedVector:
        payload = ParameterServer._model_bytes(session, job_id, version)
        elements = elements_from_bytes(payload, crypto.element_width)
        return EncryptedVector(crypto.job_key, crypto.layout, tuple(elements))

    @staticmethod
    def _model_bytes(session: Session, job_id: str, version: int) -> bytes:
        """``Enc(W_version)``'s payload as stored (its chunks, in order)."""
        rows = session.scalars(
            select(ModelChunk)
            .where(ModelChunk.job_id == job_id, ModelChunk.version == version)
            .order_by(ModelChunk.chunk_index)
        ).all()
        if not rows or [row.chunk_index for row in rows] != list(range(len(rows))):
            raise RuntimeError(f"model {job_id!r} version {version} has missing chunks")
        return b"".join(row.data for row in rows)

    # ------------------------------------------------------------------ jobs

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, have the KGC sign the job's terms, store the initial model, open round 0.

        The terms the KGC signs (:func:`trapdoor.protocol.messages.requested_terms`) digest exactly
        the definition, packing and weights stored here and served by :meth:`job_view`,
        and the initial model stored as version 0: for bcp the trivial ``Enc(W_0)`` (it
        needs no job key to be digested, so it goes into the request, and costs no
        exponentiation to store); for a masked job ``Z_0 = encode(W_0)``, its layout served
        as the ``packing``, with a job key of width 1 (seeds are one block).
        """
        now = self.clock()
        n = int(self.kgc.params.n)
        definition = parse_definition(dict(body), n, param_server=self.subject_id)
        layout = definition.layout
        packing: PackingLayout | None = None
        z0 = b""
        if layout is not None:
            z0 = vector_to_bytes(initial_state(layout, definition.initial_weights), layout.ring)
            packing_json = layout.to_json()
            width, num_plaintexts, length = 1, layout.length, layout.length
            initial_sha256 = sha256_hex(z0)
        else:
            packing = definition.packing(n)
            packing_json = packing.to_json()
            width, num_plaintexts, length = (
                definition.bcp_encoding.width,
                packing.num_plaintexts,
                packing.length,
            )
            initial_sha256 = initial_ciphertext_sha256(
                self.kgc.params, width, packing, definition.initial_weights
            )
        stored = {
            "definition": definition.normalised,
            "packing": packing_json,
            "weights": definition.weights,
        }
        request = requested_terms(
            job_id=definition.job_id,
            definition=stored["definition"],
            packing=stored["packing"],
            weights=stored["weights"],
            width=width,
            num_plaintexts=num_plaintexts,
            initial_ciphertext_sha256=initial_sha256,
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
                param_server_key=self.verify_key_hex,
            )
        except KgcError as exc:
            raise _from_kgc(exc, conflict="job-exists") from None
        model = (
            initial_ciphertext(terms.job_key, packing, definition.initial_weights)
            if packing is not None
            else None
        )
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
                if model is not None:
                    self._store_model(session, definition.job_id, 0, model)
                elif layout is not None:
                    self._store_ring(session, definition.job_id, 0, z0, layout)
                session.add(self._open_round(definition.job_id, 0, now, definition.normalised))
        except IntegrityError:
            raise DomainError(409, "job-exists", f"job {definition.job_id!r} exists") from None
        log.info(
            "job %s created (%s): %d values, width %d",
            definition.job_id,
            definition.aggregation,
            length,
            width,
        )
        return self.job_view(definition.job_id)

    @staticmethod
    def _open_round(job_id: str, t: int, now: float, definition: Mapping[str, Any]) -> Round:
        return Round(
            job_id=job_id,
            round=t,
            status="open",
            opened_at=now,
            deadline=_deadline(definition, now),
            attempt=0,
        )

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
            self._participant(job, subject_id)
            return self._setup(job).max_frame_bytes

    def participants(self, job_id: str) -> frozenset[str]:
        """The job's enrolled participants (404 if there is no such job)."""
        with self._sessions() as session:
            return frozenset(self._job(session, job_id).weights)

    def round_view(self, job_id: str, t: int) -> dict[str, Any]:
        with self._sessions() as session:
            _, rnd = self._existing_round(session, job_id, t)
            contributors = self._uploaders(session, job_id, t)
            committed = (
                sorted(
                    str(c["commitment"]["subject_id"])
                    for c in rnd.closed_set["closed_set"]["commitments"]
                )
                if rnd.closed_set is not None
                else []
            )
            commitments = int(
                session.scalar(
                    select(func.count()).where(Commitment.job_id == job_id, Commitment.round == t)
                )
                or 0
            )
            return {
                "job_id": job_id,
                "round": t,
                "status": rnd.status,
                "run": rnd.run,
                "attempt": rnd.attempt,
                "commitments": commitments,
                "committed": committed,
                "contributors": contributors,
                "uploads": len(contributors),
                "opened_at": rnd.opened_at,
                "deadline": rnd.deadline,
                "closed_at": rnd.closed_at,
                "released_at": rnd.released_at,
            }

    @staticmethod
    def _uploaders(session: Session, job_id: str, t: int) -> list[str]:
        return list(
            session.scalars(
                select(Upload.subject_id)
                .where(Upload.job_id == job_id, Upload.round == t)
                .order_by(Upload.subject_id)
            )
        )

    # ------------------------------------------------------------------ commit phase

    def accept_commitment(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a participant's signed commitment; (answer, whether it is new).

        Checked with :func:`trapdoor.protocol.messages.verify_commitment` for this job's terms,
        round
        ``t`` and the token's subject. The same commitment again is accepted (a restarted
        client), another one refused; the set is closed right after (own transaction) if
        this was the last participant, or the deadline has passed and the quorum is met.
        """
        now = self.clock()
        try:
            with self._lock, session_scope(self._sessions) as session:
                rnd = self._round(session, job_id, t, lock=True)
                run = rnd.run if rnd is not None else 0
                job, body = self._participant_message(
                    session,
                    job_id,
                    subject_id,
                    lambda terms: verify_commitment(
                        signed, terms, round_number=t, subject_id=subject_id, run=run
                    ),
                )
                canonical = {"commitment": body, "signature": signed.get("signature")}
                answer = {
                    "job_id": job_id,
                    "round": t,
                    "run": run,
                    "subject_id": subject_id,
                    "payload_sha256": body["payload_sha256"],
                }
                if self._same_commitment(session, job_id, t, subject_id, canonical):
                    return answer, False
                if rnd is None or rnd.status != "open" or job.status != "running":
                    raise DomainError(
                        409, "round-not-open", f"round {t} is not in its commit phase"
                    )
                if rnd.previous_run is not None and subject_id not in _rerun_set(rnd):
                    raise DomainError(
                        403,
                        "not-in-rerun",
                        f"round {t} re-runs only the contributors of its undecodable release",
                    )
                session.add(
                    Commitment(
                        job_id=job_id,
                        round=t,
                        subject_id=subject_id,
                        payload_sha256=body["payload_sha256"],
                        signed=canonical,
                        committed_at=now,
                    )
                )
                session.flush()
        except IntegrityError:  # lost a race with a concurrent request of the same subject
            with self._sessions() as session:
                if self._same_commitment(session, job_id, t, subject_id, canonical):
                    return answer, False
            raise DomainError(409, "duplicate-commitment", "committed already") from None
        log.info("job %s round %d: commitment of %s accepted", job_id, t, subject_id)
        self._settle_quietly(job_id, t, now)
        return answer, True

    def _participant_message(
        self,
        session: Session,
        job_id: str,
        subject_id: str,
        verify: Callable[[JobTerms], _Checked],
    ) -> tuple[Job, _Checked]:
        """The job and a participant's signed message checked against its terms.

        404 for no job, 403 for a non-participant, and a message that does not verify is
        refused with the status its protocol code calls for (:func:`_refusal`).
        """
        job = self._job(session, job_id)
        self._participant(job, subject_id)
        terms = self._crypto(job).terms  # commitments and audits: bcp only (409 otherwise)
        try:
            return job, verify(terms)
        except ProtocolError as exc:
            raise _refusal(exc) from None

    @staticmethod
    def _same_commitment(
        session: Session, job_id: str, t: int, subject_id: str, canonical: dict[str, Any]
    ) -> bool:
        """True if exactly this commitment is stored; 409 if another one is."""
        stored = session.scalar(
            select(Commitment.signed).where(
                Commitment.job_id == job_id,
                Commitment.round == t,
                Commitment.subject_id == subject_id,
            )
        )
        return _already_stored(
            stored, canonical, "duplicate-commitment", f"another commitment for round {t} is stored"
        )

    def closed_set(self, job_id: str, t: int) -> dict[str, Any]:
        """``{"closed_set": signed}`` of round ``t``; 409 ``set-not-closed`` before."""
        with self._sessions() as session:
            _, rnd = self._existing_round(session, job_id, t)
            if rnd.closed_set is None:
                raise DomainError(409, "set-not-closed", f"round {t}'s set is not closed yet")
            return {"closed_set": rnd.closed_set}

    # ------------------------------------------------------------------ upload phase

    def accept_upload(self, job_id: str, t: int, subject_id: str, data: bytes) -> dict[str, Any]:
        """Validate and store one update; return the PS-signed receipt.

        bcp: an encrypted, committed update, only while the round is ``committed`` and
        only from a subject in the closed set, whose payload must be the committed one.
        The frame's header carries the contributor's statement
        (:func:`trapdoor.protocol.messages.build_upload_statement`) naming the closed set; it is
        stored with the upload (the KGC checks it again at the release).

        masked: a ``ring-vector`` frame of ``y`` with the seed ciphertext and the masked
        upload statement, while the round is ``open`` (:meth:`_store_masked_upload`).

        The checks and the insert are one transaction; the round is aggregated right after
        (own transaction) if this completes the uploads, or the deadline has passed and
        the quorum is now met.
        """
        now = self.clock()
        try:
            with self._lock, session_scope(self._sessions) as session:
                job = self._job(session, job_id)
                self._participant(job, subject_id)
                rnd = self._round(session, job_id, t, lock=True)
                store = self._store_masked_upload if _is_masked(job) else self._store_upload
                signed = store(session, job, rnd, t, subject_id, data, now)
        except IntegrityError:
            # Lost a race with a concurrent identical request (another worker).
            raise DomainError(409, "duplicate-upload", "already uploaded for this round") from None
        log.info("job %s round %d: upload accepted (%d bytes)", job_id, t, len(data))
        self._settle_quietly(job_id, t, now)
        return signed

    def _store_upload(
        self,
        session: Session,
        job: Job,
        rnd: Round | None,
        t: int,
        subject_id: str,
        data: bytes,
        now: float,
    ) -> dict[str, Any]:
        """A bcp upload's checks and insert, in the caller's transaction."""
        job_id = job.job_id
        if rnd is not None and rnd.status == "open":
            raise DomainError(409, "set-not-closed", f"round {t}'s set is not closed yet")
        if rnd is None or rnd.status != "committed" or job.status != "running":
            raise DomainError(409, "round-not-open", f"round {t} takes no uploads")
        crypto = self._crypto(job)
        closed = self._closed(crypto, rnd)
        if subject_id not in closed.payloads:
            raise DomainError(403, "not-committed", f"no commitment in round {t}'s set")
        digest, vector, statement = _check_upload(crypto, job_id, t, subject_id, data, closed)
        self._check_fresh(session, job_id, t, subject_id, digest)
        _check_randomness_proof(crypto, t, subject_id, closed, statement, vector)
        return self._add_upload(
            session, job_id, t, subject_id, digest, vector.to_bytes(), statement, now
        )

    def _store_masked_upload(
        self,
        session: Session,
        job: Job,
        rnd: Round | None,
        t: int,
        subject_id: str,
        data: bytes,
        now: float,
    ) -> dict[str, Any]:
        """A masked upload's checks and insert, in the caller's transaction.

        Only while the round is ``open`` (409 ``round-not-open``) and, in a re-run, only
        from run 0's contributors (403 ``not-in-rerun``); then the frame, its seed and
        statement (:func:`trapdoor.ps.masked.check_upload`), one upload per subject (409
        ``duplicate-upload``), and no ``y`` or seed seen before in the job (409
        ``replayed-payload``). The whole frame is stored, to be served back unchanged.
        """
        job_id = job.job_id
        if rnd is None or rnd.status != "open" or job.status != "running":
            raise DomainError(409, "round-not-open", f"round {t} takes no uploads")
        if rnd.previous_run is not None and subject_id not in _rerun_set(rnd):
            raise DomainError(
                403,
                "not-in-rerun",
                f"round {t} re-runs only the contributors of its undecodable release",
            )
        checked = masked.check_upload(
            self._masked(job), job_id=job_id, t=t, run=rnd.run, subject_id=subject_id, data=data
        )
        self._check_fresh(session, job_id, t, subject_id, checked.digest)
        seen = select(Upload.id).where(
            Upload.job_id == job_id, Upload.seed_sha256 == checked.seed_sha256
        )
        if session.scalar(seen) is not None:
            raise DomainError(409, "replayed-payload", "this seed ciphertext was uploaded before")
        return self._add_upload(
            session,
            job_id,
            t,
            subject_id,
            checked.digest,
            data,
            checked.statement,
            now,
            seed_sha256=checked.seed_sha256,
        )

    @staticmethod
    def _check_fresh(session: Session, job_id: str, t: int, subject_id: str, digest: str) -> None:
        """One upload per (round, subject) and no payload twice in a job (409 otherwise)."""
        taken = session.scalar(
            select(Upload.subject_id).where(
                Upload.job_id == job_id, Upload.round == t, Upload.subject_id == subject_id
            )
        )
        if taken is not None:
            raise DomainError(409, "duplicate-upload", "already uploaded for this round")
        replayed = select(Upload.id).where(Upload.job_id == job_id, Upload.sha256 == digest)
        if session.scalar(replayed):
            raise DomainError(409, "replayed-payload", "this payload was uploaded before")

    def _add_upload(
        self,
        session: Session,
        job_id: str,
        t: int,
        subject_id: str,
        digest: str,
        payload: bytes,
        statement: dict[str, Any],
        now: float,
        *,
        seed_sha256: str | None = None,
    ) -> dict[str, Any]:
        """Insert a checked upload with its statement; the PS-signed receipt."""
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
                seed_sha256=seed_sha256,
                accepted_at=now,
            )
        )
        session.flush()
        return signed

    # ------------------------------------------------------------------ audit phase

    def _aggregated(
        self, session: Session, job_id: str, t: int, requester: str | None
    ) -> tuple[_JobCrypto, Round]:
        """Round ``t`` with an aggregate, for the operator (None) or a current contributor."""
        job, rnd = self._existing_round(session, job_id, t)
        if rnd.digests is None or rnd.contributors is None or rnd.blind is None:
            raise DomainError(409, "not-aggregated", f"round {t} has no aggregate yet")
        if requester is not None and requester not in rnd.contributors:
            raise DomainError(403, "not-a-contributor", f"not a contributor of round {t}'s attempt")
        return self._crypto(job), rnd

    def audit_package(self, job_id: str, t: int, requester: str | None) -> dict[str, Any]:
        """What a contributor audits: the attempt, its contributors, ``R`` and the digests."""
        with self._sessions() as session:
            crypto, rnd = self._aggregated(session, job_id, t, requester)
            assert rnd.digests is not None and rnd.blind is not None  # _aggregated checked
            digests = rnd.digests
            return {
                "job_id": job_id,
                "round": t,
                "run": rnd.run,
                "attempt": rnd.attempt,
                "contributors": list(rnd.contributors or []),
                "closed_set": rnd.closed_set,
                "blind": blind_to_text(plaintexts_from_bytes(rnd.blind, crypto.n), crypto.n),
                **{
                    name: digests[name]
                    for name in (
                        "base_sha256",
                        "aggregate_sha256",
                        "release_sha256",
                        "blind_sha256",
                    )
                },
            }

    def base_frame(self, job_id: str, t: int, requester: str | None) -> bytes:
        """``Enc(W_t)``, framed: the base every auditor adds the uploads to.

        Masked: ``Z_t`` as a ring frame, for the operator or any participant of the job.
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            if _is_masked(job):
                return self._masked_base(session, job, t, requester)
            crypto, _ = self._aggregated(session, job_id, t, requester)
            payload = self._model_bytes(session, job_id, t)
        return encode_payload_frame(
            payload, crypto.layout, crypto.element_width, {"job_id": job_id, "round": t}
        )

    def upload_frame(self, job_id: str, t: int, subject_id: str, requester: str | None) -> bytes:
        """A contributor's upload re-framed with its statement, for the other auditors.

        Masked: the stored frame as it was uploaded (:meth:`_masked_upload`).
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            if _is_masked(job):
                return self._masked_upload(session, job, t, subject_id, requester)
            crypto, rnd = self._aggregated(session, job_id, t, requester)
            upload = session.scalar(
                select(Upload).where(
                    Upload.job_id == job_id, Upload.round == t, Upload.subject_id == subject_id
                )
            )
            if upload is None or subject_id not in (rnd.contributors or []):
                raise DomainError(
                    404, "upload-not-found", f"{subject_id!r} is no contributor of this attempt"
                )
            header = {"job_id": job_id, "round": t, "statement": upload.statement}
            payload = upload.payload  # checked when it was accepted: served as stored
        return encode_payload_frame(payload, crypto.layout, crypto.element_width, header)

    def _masked_base(self, session: Session, job: Job, t: int, requester: str | None) -> bytes:
        """``Z_t`` framed (``ring-vector``): 404 before round ``t`` exists."""
        if requester is not None:
            self._participant(job, requester)
        if self._round(session, job.job_id, t) is None:
            raise DomainError(404, "round-not-found", f"job {job.job_id!r} has no round {t}")
        layout = self._masked(job).layout
        return encode_ring_frame(
            self._model_bytes(session, job.job_id, t),
            bits=layout.ring.bits,
            num_elements=layout.length,
            extra_header={"job_id": job.job_id, "round": t},
        )

    def _masked_upload(
        self, session: Session, job: Job, t: int, subject_id: str, requester: str | None
    ) -> bytes:
        """A contributor's stored upload frame, for the contributors of the released round
        (or the operator): 409 ``not-released`` before, 403 ``not-a-contributor`` to
        anyone else, 404 ``upload-not-found`` for a subject that did not contribute."""
        rnd = self._round(session, job.job_id, t)
        if rnd is None:
            raise DomainError(404, "round-not-found", f"job {job.job_id!r} has no round {t}")
        if rnd.status != "released":
            raise DomainError(409, "not-released", f"round {t} is not released yet")
        contributors = rnd.contributors or []
        if requester is not None and requester not in contributors:
            raise DomainError(403, "not-a-contributor", f"did not contribute to round {t}")
        upload = session.scalar(
            select(Upload).where(
                Upload.job_id == job.job_id, Upload.round == t, Upload.subject_id == subject_id
            )
        )
        if upload is None or subject_id not in contributors:
            raise DomainError(
                404, "upload-not-found", f"{subject_id!r} is no contributor of round {t}"
            )
        return bytes(upload.payload)

    def accept_audit(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a contributor's signed audit of the current attempt; (answer, is it new).

        Its digests must be exactly the attempt's (else 422 ``audit-mismatch``, nothing
        stored); an audit of an earlier attempt is 409 ``stale-attempt``. When every
        contributor of the attempt has audited, the release is due.
        """
        now = self.clock()
        try:
            with self._lock, session_scope(self._sessions) as session:
                rnd = self._round(session, job_id, t, lock=True)
                run = rnd.run if rnd is not None else 0
                _, (body, digests) = self._participant_message(
                    session,
                    job_id,
                    subject_id,
                    lambda terms: verify_audit_statement(
                        signed, terms, round_number=t, subject_id=subject_id, run=run
                    ),
                )
                canonical = {"audit": body, "signature": signed.get("signature")}
                answer = {
                    "job_id": job_id,
                    "round": t,
                    "run": run,
                    "attempt": digests.attempt,
                    "subject_id": subject_id,
                }
                if rnd is None:
                    raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
                if self._same_audit(session, rnd, digests.attempt, subject_id, canonical):
                    return answer, False
                if rnd.digests is None or rnd.contributors is None:
                    raise DomainError(409, "not-aggregated", f"round {t} has no aggregate yet")
                if rnd.status != "closed":
                    raise DomainError(409, "round-not-open", f"round {t} takes no audits")
                if digests.attempt < rnd.attempt:
                    raise DomainError(
                        409, "stale-attempt", f"attempt {digests.attempt} was superseded"
                    )
                if subject_id not in rnd.contributors:
                    raise DomainError(
                        403, "not-a-contributor", f"not a contributor of attempt {rnd.attempt}"
                    )
                if digests.fields() != rnd.digests:
                    differing = sorted(
                        k for k, v in digests.fields().items() if rnd.digests.get(k) != v
                    )
                    raise DomainError(
                        422,
                        "audit-mismatch",
                        "the audit differs from the attempt in: " + ", ".join(differing),
                    )
                session.add(
                    Audit(
                        job_id=job_id,
                        round=t,
                        attempt=digests.attempt,
                        subject_id=subject_id,
                        signed=canonical,
                        audited_at=now,
                    )
                )
                session.flush()
                complete = self._audits_complete(session, rnd)
        except IntegrityError:
            with self._sessions() as session:
                rnd = self._round(session, job_id, t)
                if rnd is not None and self._same_audit(
                    session, rnd, digests.attempt, subject_id, canonical
                ):
                    return answer, False
            raise
        log.info("job %s round %d: audit of %s accepted", job_id, t, subject_id)
        if complete:
            self._release_pending()
        return answer, True

    @staticmethod
    def _same_audit(
        session: Session, rnd: Round, attempt: int, subject_id: str, canonical: dict[str, Any]
    ) -> bool:
        stored = session.scalar(
            select(Audit.signed).where(
                Audit.job_id == rnd.job_id,
                Audit.round == rnd.round,
                Audit.attempt == attempt,
                Audit.subject_id == subject_id,
            )
        )
        return _already_stored(
            stored, canonical, "duplicate-audit", "another audit of this attempt is stored"
        )

    @staticmethod
    def _audits(session: Session, rnd: Round) -> dict[str, dict[str, Any]]:
        """The current attempt's signed audits by subject id."""
        rows = session.execute(
            select(Audit.subject_id, Audit.signed).where(
                Audit.job_id == rnd.job_id, Audit.round == rnd.round, Audit.attempt == rnd.attempt
            )
        ).all()
        return {str(subject): signed for subject, signed in rows}

    def _audits_complete(self, session: Session, rnd: Round) -> bool:
        return rnd.contributors is not None and set(rnd.contributors) <= set(
            self._audits(session, rnd)
        )

    # ------------------------------------------------------------------ phase changes

    def close_round(self, job_id: str, t: int, *, now: float | None = None) -> dict[str, Any]:
        """Operator: end round ``t``'s commit or upload phase now, if it has a quorum.

        Commit phase: close the set of the commitments so far; upload phase: aggregate the
        uploads so far. 409 ``below-quorum`` without a quorum, ``round-not-open`` later.
        """
        now = self._now(now)
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            if rnd.status not in ("open", "committed") or job.status != "running":
                raise DomainError(409, "round-not-open", f"round {t} is past its upload phase")
            ready = self._ready(session, job, rnd)
            quorum = int(job.definition["quorum"])
            if len(ready) < quorum:
                raise DomainError(409, "below-quorum", f"{len(ready)} of the {quorum} needed")
            if rnd.run > 0 and len(ready) < self._expected(job, rnd):
                raise DomainError(
                    409, "rerun-incomplete", "a re-run goes on only with its whole set"
                )
            outcome = self._advance(session, job, rnd, ready, now)
        if outcome == "closed" and _is_masked(job):
            self._release_pending()
        return self.round_view(job_id, t)

    def _ready(self, session: Session, job: Job, rnd: Round) -> list[str]:
        """Who has done the current phase's part: committed, uploaded, or audited."""
        t = rnd.round
        if _is_masked(job):
            return self._uploaders(session, job.job_id, t)
        if rnd.status == "open":
            return list(
                session.scalars(
                    select(Commitment.subject_id)
                    .where(Commitment.job_id == job.job_id, Commitment.round == t)
                    .order_by(Commitment.subject_id)
                )
            )
        if rnd.status == "committed":
            return self._uploaders(session, job.job_id, t)
        return sorted(s for s in self._audits(session, rnd) if s in (rnd.contributors or []))

    def _expected(self, job: Job, rnd: Round) -> int:
        """How many can take part in the current phase (all of them: no need to wait)."""
        if rnd.status == "open":
            return len(_rerun_set(rnd)) if rnd.previous_run is not None else len(job.weights)
        if rnd.status == "committed":
            return len(self._closed(self._crypto(job), rnd).payloads)
        return len(rnd.contributors or [])

    def _advance(self, session: Session, job: Job, rnd: Round, ready: list[str], now: float) -> str:
        """End the current phase with ``ready``: close the set, or aggregate an attempt
        (masked: add the uploads into ``Z``)."""
        if _is_masked(job):
            self._close_masked(session, job, rnd, ready, now)
            return "closed"
        if rnd.status == "open":
            self._close_set(session, job, rnd, now)
            return "committed"
        if rnd.status == "committed":
            self._aggregate(session, job, rnd, ready, 0, now)
            return "closed"
        self._aggregate(session, job, rnd, ready, rnd.attempt + 1, now)
        return "reaggregated"

    def _settle_quietly(self, job_id: str, t: int, now: float) -> None:
        """Settle after a participant's message; its own transaction is already safe."""
        try:
            outcome = self._settle_round(job_id, t, now)
        except Exception as exc:  # tick() settles the round later
            log.error("job %s round %d: settle failed: %s", job_id, t, type(exc).__name__)
            return
        if outcome == "closed":  # a masked round's release is due (bcp: a harmless wake)
            self._release_pending()

    def _settle_round(self, job_id: str, t: int, now: float) -> str | None:
        """End the current phase when complete, or due with a quorum; apply the policy if
        due without one.

        Returns ``"committed"``, ``"closed"``, ``"reaggregated"``, ``"failed"`` or None
        (nothing to do; a closed round whose audits are all in waits for its release).
        """
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None or rnd.status not in _ACTIVE or job.status != "running":
                return None
            if rnd.status == "closed" and _is_masked(job):
                return None  # summed: the release is due
            ready = self._ready(session, job, rnd)
            expected = self._expected(job, rnd)
            complete = len(ready) >= expected
            if rnd.status == "closed" and complete:
                return None  # every audit is in: the release is due
            quorum = int(job.definition["quorum"])
            due = now >= rnd.deadline
            last_attempt = rnd.status == "closed" and rnd.attempt >= MAX_ATTEMPT
            # A re-run must keep run 0's whole set (the KGC allows no other), so it never
            # goes on without someone: it fails instead.
            partial_ok = due and len(ready) >= quorum and rnd.previous_run is None
            if (complete or partial_ok) and not last_attempt:
                outcome = self._advance(session, job, rnd, ready, now)
            elif due and (
                job.definition["below_quorum_policy"] == "fail" or rnd.previous_run is not None
            ):
                self._fail_round(job, rnd, now, f"{len(ready)} of {expected}, quorum {quorum}")
                outcome = "failed"
            else:
                return None
        return outcome

    @staticmethod
    def _fail_round(job: Job, rnd: Round, now: float, reason: str) -> None:
        rnd.status = "failed"
        rnd.closed_at = now
        rnd.last_error = reason[:500]
        job.status = "failed"
        log.warning("job %s round %d (run %d) failed: %s", job.job_id, rnd.round, rnd.run, reason)

    def _close_set(self, session: Session, job: Job, rnd: Round, now: float) -> None:
        """Sign the round's commitments as its closed set; the upload phase starts."""
        crypto = self._crypto(job)
        commitments = session.scalars(
            select(Commitment.signed).where(
                Commitment.job_id == job.job_id, Commitment.round == rnd.round
            )
        ).all()
        rnd.closed_set = build_closed_set(
            self._signing_key,
            crypto.terms,
            round_number=rnd.round,
            commitments=list(commitments),
            closed_at=int(now),
            run=rnd.run,
        )
        rnd.status = "committed"
        rnd.deadline = _deadline(job.definition, now)
        log.info(
            "job %s round %d: set closed with %d commitments",
            job.job_id,
            rnd.round,
            len(commitments),
        )

    def _close_masked(
        self, session: Session, job: Job, rnd: Round, contributors: list[str], now: float
    ) -> None:
        """``Z_{t+1} = Z_t + Σ y_i mod 2^k`` over ``contributors``, in the caller's
        transaction: it becomes model version ``t + 1``; the release is due."""
        layout = self._masked(job).layout
        uploads = [
            u.payload
            for u in self._uploads(session, job.job_id, rnd.round)
            if u.subject_id in contributors
        ]
        base = self._model_bytes(session, job.job_id, rnd.round)
        self._store_ring(
            session, job.job_id, rnd.round + 1, masked.add_uploads(layout, base, uploads), layout
        )
        rnd.status = "closed"
        rnd.contributors = sorted(contributors)
        rnd.closed_at = now
        rnd.deadline = _deadline(job.definition, now)
        rnd.release_after = None
        log.info(
            "job %s round %d (run %d): %d masked uploads summed",
            job.job_id,
            rnd.round,
            rnd.run,
            len(uploads),
        )

    def _audit_round(
        self,
        session: Session,
        crypto: _JobCrypto,
        rnd: Round,
        contributors: list[str],
        attempt: int,
        blind: list[int],
    ) -> AuditedRound:
        """``Agg`` and ``F`` of an attempt, computed exactly as every auditor computes them."""
        uploads = {
            upload.subject_id: EncryptedVector.from_bytes(
                crypto.job_key, crypto.layout, upload.payload
            )
            for upload in self._uploads(session, rnd.job_id, rnd.round)
            if upload.subject_id in contributors
        }
        try:
            return audit_round(
                crypto.terms,
                self._closed(crypto, rnd),
                attempt=attempt,
                base=self._load_model(session, rnd.job_id, rnd.round, crypto),
                uploads=uploads,
                blind=blind,
            )
        except ProtocolError as exc:  # the PS's own data: never a participant's fault
            raise RuntimeError(f"aggregating refused: {exc.code}: {exc.message}") from None

    def _aggregate(
        self,
        session: Session,
        job: Job,
        rnd: Round,
        contributors: list[str],
        attempt: int,
        now: float,
    ) -> None:
        """Aggregate ``attempt`` over ``contributors`` with a fresh ``R``, in the caller's
        transaction: ``Agg`` becomes model version ``t + 1``; the audit phase (re)starts."""
        crypto = self._crypto(job)
        blind = self._draw_blind(crypto)
        audited = self._audit_round(session, crypto, rnd, contributors, attempt, blind)
        self._store_model(session, job.job_id, rnd.round + 1, audited.aggregate)
        rnd.status = "closed"
        rnd.attempt = attempt
        rnd.contributors = list(audited.contributors)
        rnd.blind = plaintexts_to_bytes(blind, crypto.n)
        rnd.digests = audited.digests.fields()
        rnd.closed_at = now
        rnd.deadline = _deadline(job.definition, now)
        rnd.release_after = None
        log.info(
            "job %s round %d: attempt %d aggregated over %d uploads",
            job.job_id,
            rnd.round,
            attempt,
            len(audited.contributors),
        )

    def _draw_blind(self, crypto: _JobCrypto) -> list[int]:
        """A fresh uniform ``R``: one value in ``[0, N)`` per packed plaintext."""
        return [self._rng.randrange(0, crypto.n) for _ in range(crypto.layout.num_plaintexts)]

    @staticmethod
    def _uploads(session: Session, job_id: str, t: int) -> list[Upload]:
        return list(
            session.scalars(
                select(Upload)
                .where(Upload.job_id == job_id, Upload.round == t)
                .order_by(Upload.subject_id)
            )
        )

    def _release_pending(self) -> None:
        if self.on_release_pending is not None:
            self.on_release_pending()

    # ------------------------------------------------------------------ release

    def release_round(self, job_id: str, t: int, *, now: float | None = None) -> bool:
        """Release a fully audited round through the KGC; True if it is released now.

        Any failure (KGC unreachable or refusing, a crash) leaves the round closed with a
        back-off; :meth:`tick` tries again.
        """
        now = self._now(now)
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            is_masked = _is_masked(job)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None or rnd.status != "closed":
                return False
            if not is_masked and not self._audits_complete(session, rnd):
                return False
            if rnd.release_after is not None and rnd.release_after > now:
                return False
            rnd.release_after = now + self._lease_seconds  # our lease on this release
        try:
            if is_masked:
                body, masked_binding = self._masked_release_request(job_id, t, now)
                bundle = self._gateway.release_masked(body)
                check_masked_release_bundle(bundle, self.kgc, binding=masked_binding)
            else:
                frame, binding, contributors, num_plaintexts = self._release_request(job_id, t, now)
                bundle = self._gateway.release(frame)
                check_release_bundle(
                    bundle,
                    self.kgc,
                    binding=binding,
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

    def _release_request(
        self, job_id: str, t: int, now: float
    ) -> tuple[bytes, ReleaseBinding, list[str], int]:
        """The signed ``F`` frame: the stored one on a retry, else a new one.

        ``F = Agg · (1 + R N)`` from the stored aggregate (model version ``t + 1``) and
        ``R``; both must have the digests every contributor signed, so nothing the
        auditors did not recompute is sent. The header carries the closed set and, per
        contributor (sorted), its upload statement and its audit.
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            crypto = self._crypto(job)
            rnd = self._round(session, job_id, t)
            if rnd is None or rnd.digests is None or rnd.blind is None or not rnd.contributors:
                raise RuntimeError(f"round {t} has no audited attempt")
            contributors = sorted(rnd.contributors)
            binding = _binding(job_id, rnd)
            pending = session.get(Release, (job_id, t))
            if pending is not None and pending.request is not None:
                return pending.request, binding, contributors, crypto.layout.num_plaintexts
            aggregate = self._load_model(session, job_id, t + 1, crypto)
            blinded = add_plaintexts(aggregate, plaintexts_from_bytes(rnd.blind, crypto.n))
            if (vector_sha256(aggregate), vector_sha256(blinded)) != (
                rnd.digests["aggregate_sha256"],
                rnd.digests["release_sha256"],
            ):
                raise RuntimeError(f"round {t}'s stored aggregate is not the audited one")
            statements = {u.subject_id: u.statement for u in self._uploads(session, job_id, t)}
            audits = self._audits(session, rnd)
            if any(statements.get(s) is None for s in contributors):
                raise DomainError(
                    409, "unsigned-upload", "an upload of this round has no statement"
                )
            header = release_request_header(
                job_id=job_id,
                round_number=t,
                attempt=rnd.attempt,
                closed_set=dict(rnd.closed_set or {}),
                statements=[statements[s] or {} for s in contributors],
                audits=[audits[s] for s in contributors],
                run=rnd.run,
                undecodable=(rnd.previous_run or {}).get("undecodable", []),
            )
            stored_blind = rnd.blind
        frame = self._signed_frame(blinded, header)
        with self._lock, session_scope(self._sessions) as session:
            release = session.get(Release, (job_id, t), with_for_update=True)
            if release is None:
                session.add(
                    Release(
                        job_id=job_id, round=t, blind=stored_blind, request=frame, requested_at=now
                    )
                )
            elif release.request is not None:  # another worker got there first: use its
                return release.request, binding, contributors, crypto.layout.num_plaintexts
            else:
                release.blind, release.request, release.requested_at = stored_blind, frame, now
        return frame, binding, contributors, crypto.layout.num_plaintexts

    def _masked_release_request(
        self, job_id: str, t: int, now: float
    ) -> tuple[bytes, MaskedReleaseBinding]:
        """A masked round's signed JSON request: the stored one on a retry, else a new one.

        Per contributor (sorted) its signed statement and the seed ciphertext of its
        stored frame; for a re-run, run 0's ``undecodable`` reports. Nothing of ``Z`` or
        ``y`` goes to the KGC: the binding names each ``y`` by its digest.
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            setup = self._masked(job)
            rnd = self._round(session, job_id, t)
            if rnd is None or not rnd.contributors:
                raise RuntimeError(f"round {t} has no summed uploads")
            contributors = sorted(rnd.contributors)
            uploads = {u.subject_id: u for u in self._uploads(session, job_id, t)}
            if any(uploads.get(s) is None or uploads[s].statement is None for s in contributors):
                raise RuntimeError(f"round {t} lacks an upload of a contributor")
            binding = masked.expected_binding(
                setup.terms, t, rnd.run, {s: uploads[s].sha256 for s in contributors}
            )
            pending = session.get(Release, (job_id, t))
            if pending is not None and pending.request is not None:
                return pending.request, binding
            body = masked.release_body(
                self._signing_key,
                job_id=job_id,
                round_number=t,
                run=rnd.run,
                layout=setup.layout,
                uploads=[
                    {
                        "statement": uploads[s].statement or {},
                        "seed": masked.upload_seed(uploads[s].payload),
                    }
                    for s in contributors
                ],
                undecodable=(rnd.previous_run or {}).get("undecodable", []),
            )
        with self._lock, session_scope(self._sessions) as session:
            release = session.get(Release, (job_id, t), with_for_update=True)
            if release is None:
                session.add(
                    Release(job_id=job_id, round=t, blind=b"", request=body, requested_at=now)
                )
            elif release.request is not None:  # another worker got there first: use its
                return release.request, binding
            else:
                release.request, release.requested_at = body, now
        return body, binding

    def _signed_frame(self, vector: EncryptedVector, header: dict[str, Any]) -> bytes:
        """Frame with ``request_signature`` over the full header (``sha256`` included)."""
        signed_header = decode_frame(encode_frame(vector, header), max_header_bytes=None).header
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
            if t + 1 >= job.rounds_total:
                job.status = "finished"
            else:
                session.add(self._open_round(job_id, t + 1, now, job.definition))
                job.current_round = t + 1
        log.info("job %s round %d released", job_id, t)

    # ------------------------------------------------------------------ undecodable releases

    def accept_undecodable(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """A contributor's signed report that round ``t``'s release does not decode.

        Accepted for a released round while the next round has not closed its set, from
        a contributor of the release, naming exactly its bundle
        (:func:`trapdoor.protocol.bundle.bundle_sha256`). When every contributor reported, run 0 is
        rolled back and round ``t`` runs once more from ``W_t`` over the same set (run 1;
        the reports go to the KGC with its release request); after run 1 the job fails.
        (answer, whether the report is new).
        """
        now = self.clock()
        with self._lock, session_scope(self._sessions) as session:
            job = self._job(session, job_id)
            self._participant(job, subject_id)
            rnd = self._round(session, job_id, t, lock=True)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            release = session.get(Release, (job_id, t))
            if rnd.status != "released" or release is None or release.bundle is None:
                raise DomainError(409, "not-released", f"round {t} is not released")
            following = self._round(session, job_id, t + 1, lock=True)
            if following is not None and following.status != "open":
                raise DomainError(409, "round-moved-on", f"round {t + 1} is under way")
            if subject_id not in (rnd.contributors or []):
                raise DomainError(403, "not-a-contributor", f"did not contribute to round {t}")
            digest = (
                masked.bundle_digest(release.bundle)
                if _is_masked(job)
                else bundle_sha256(
                    ReleaseBinding.from_fields(release.bundle), release.bundle["sealed_model"]
                )
            )
            try:
                body = verify_undecodable_statement(
                    signed,
                    self._terms(job),
                    round_number=t,
                    run=rnd.run,
                    subject_id=subject_id,
                    bundle_sha256=digest,
                )
            except ProtocolError as exc:
                raise _refusal(exc) from None
            canonical = {"undecodable": body, "signature": signed.get("signature")}
            answer = {"job_id": job_id, "round": t, "run": rnd.run, "subject_id": subject_id}
            reports = dict(rnd.undecodable or {})
            if _already_stored(
                reports.get(subject_id), canonical, "duplicate-report", "reported already"
            ):
                return answer, False
            reports[subject_id] = canonical
            rnd.undecodable = reports
            log.warning(
                "job %s round %d (run %d): %s reports an undecodable release (%d of %d)",
                job_id,
                t,
                rnd.run,
                subject_id,
                len(reports),
                len(rnd.contributors or []),
            )
            if set(reports) >= set(rnd.contributors or []):
                if following is not None:
                    self._drop_round(session, following)
                job.current_round = t
                if rnd.run < MAX_RUN:
                    self._rerun(session, job, rnd, release, digest, now)
                else:
                    self._fail_round(job, rnd, now, "the re-run's release did not decode either")
        return answer, True

    def _drop_round(self, session: Session, rnd: Round) -> None:
        """Remove a round that has only begun (the round before it is being undone): its
        commitments (bcp) or uploads (masked: its phase takes them)."""
        for table in (Commitment, Upload):
            session.execute(
                delete(table).where(table.job_id == rnd.job_id, table.round == rnd.round)
            )
        session.delete(rnd)
        session.flush()

    def _rerun(
        self, session: Session, job: Job, rnd: Round, release: Release, digest: str, now: float
    ) -> None:
        """Roll round ``t`` back to ``W_t`` and open its one re-run over the same set.

        Run 0's commitments, uploads, audits and release give way to run 1's (the PS's
        uniqueness rules are per round); what the KGC and an operator need of run 0 stays
        in ``previous_run``. Model version ``t + 1`` is replaced when run 1 aggregates.
        """
        reports = rnd.undecodable or {}
        rnd.previous_run = {
            "run": rnd.run,
            "attempt": rnd.attempt,
            "contributors": sorted(rnd.contributors or []),
            "bundle_sha256": digest,
            "digests": rnd.digests,
            "closed_set": rnd.closed_set,
            "released_at": rnd.released_at,
            "undecodable": [reports[s] for s in sorted(reports)],
        }
        for table in (Commitment, Upload, Audit):
            session.execute(
                delete(table).where(table.job_id == job.job_id, table.round == rnd.round)
            )
        session.delete(release)
        if _is_masked(job):  # Z_{t+1} of run 0 is gone; run 1 sums it again from Z_t
            session.execute(
                delete(ModelChunk).where(
                    ModelChunk.job_id == job.job_id, ModelChunk.version == rnd.round + 1
                )
            )
        rnd.run += 1
        rnd.status = "open"
        rnd.opened_at = now
        rnd.deadline = _deadline(job.definition, now)
        rnd.attempt = 0
        rnd.closed_set = rnd.contributors = rnd.blind = rnd.digests = None
        rnd.undecodable = None
        rnd.closed_at = rnd.released_at = rnd.release_after = None
        rnd.last_error = None
        job.status = "running"
        log.warning(
            "job %s round %d: release undecodable for every contributor; re-running it (run %d)",
            job.job_id,
            rnd.round,
            rnd.run,
        )

    # ------------------------------------------------------------------ background work

    def tick(self, now: float | None = None) -> TickResult:
        """Deadline checks and pending releases; called every second by the app's worker."""
        now = self._now(now)
        result = TickResult()
        with self._sessions() as session:
            active = session.execute(
                select(Round.job_id, Round.round)
                .join(Job, Job.job_id == Round.job_id)
                .where(Round.status.in_(_ACTIVE), Job.status == "running")
            ).all()
        for job_id, t in active:
            try:
                outcome = self._settle_round(job_id, t, now)
            except Exception as exc:
                log.error("job %s round %d: settle failed: %s", job_id, t, type(exc).__name__)
                continue
            if outcome is not None:
                getattr(result, outcome).append((job_id, t))
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
        """A contributor's part of round ``t``'s release bundle, its binding and ``R``.

        Masked: the bundle's binding fields, ``sealed_mask``, ``wrapped_keys_sha256`` and
        ``release_signature``, and only the caller's ``wrapped_key``.
        """
        with self._sessions() as session:
            job = self._job(session, job_id)
            self._participant(job, subject_id)
            rnd = self._round(session, job_id, t)
            if rnd is None:
                raise DomainError(404, "round-not-found", f"job {job_id!r} has no round {t}")
            release = session.get(Release, (job_id, t))
            if rnd.status != "released" or release is None or release.bundle is None:
                raise DomainError(409, "not-released", f"round {t} is not released yet")
            bundle = release.bundle
            if _is_masked(job):
                view = masked.download_view(bundle, subject_id)
                if view is None:
                    raise DomainError(403, "not-a-contributor", f"did not contribute to round {t}")
                return view
            wrapped = bundle["wrapped_keys"].get(subject_id)
            if wrapped is None:
                raise DomainError(403, "not-a-contributor", f"did not contribute to round {t}")
            n = self._crypto(job).n
            binding = ReleaseBinding.from_fields(bundle)
            return {
                **binding.fields(),
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


def _aggregation(job: Job) -> str:
    """``"bcp"`` or ``"masked"``, as the stored (normalised, KGC-signed) definition says."""
    return str(job.definition.get("aggregation", "bcp"))


def _is_masked(job: Job) -> bool:
    return _aggregation(job) == "masked"


def _deadline(definition: Mapping[str, Any], now: float) -> float:
    """When the phase starting ``now`` is due: every phase gets the full round deadline."""
    return now + float(definition["round_deadline_seconds"])


def _binding(job_id: str, rnd: Round) -> ReleaseBinding:
    """What the KGC must seal round ``rnd``'s current attempt to (the audited digests)."""
    digests = rnd.digests or {}
    return ReleaseBinding(
        job_id=job_id,
        round=rnd.round,
        run=rnd.run,
        attempt=rnd.attempt,
        base_sha256=str(digests.get("base_sha256")),
        contributors_sha256=str(digests.get("contributors_sha256")),
        blind_sha256=str(digests.get("blind_sha256")),
    )


def _rerun_set(rnd: Round) -> list[str]:
    """Who a re-run is for: exactly the contributors of run 0's release."""
    return list((rnd.previous_run or {}).get("contributors", []))


def _refusal(exc: ProtocolError) -> DomainError:
    """A participant-signed message that does not verify: 403 for a signature, else 422."""
    return DomainError(403 if exc.code in _FORBIDDEN_CODES else 422, exc.code, exc.message)


def _check_upload(
    crypto: _JobCrypto, job_id: str, t: int, subject_id: str, data: bytes, closed: ClosedSet
) -> tuple[str, EncryptedVector, dict[str, Any]]:
    """Frame, header, statement, shape, every group element, then the commitment.

    Returns the payload's SHA-256, the checked vector and the signed statement. The statement
    (cheap) is checked before the group elements (costly); only subjects in the closed set
    get this far.
    """
    if len(data) > crypto.max_frame_bytes:
        raise DomainError(413, "too-large", "upload is larger than this job's model")
    try:
        frame = decode_frame(data)
    except WireError as exc:
        raise DomainError(400, "malformed-frame", str(exc)) from None
    header = frame.header
    round_number = header.get("round")
    if header.get("job_id") != job_id or not is_json_int(round_number) or round_number != t:
        raise DomainError(422, "frame-mismatch", "frame header is for another job or round")
    digest = str(header["sha256"])
    try:
        statement = verify_upload_statement(
            header.get("statement"),
            crypto.terms,
            round_number=t,
            subject_id=subject_id,
            payload_sha256=digest,
            closed_set_sha256=closed.digest,
            run=closed.run,
        )
    except ProtocolError as exc:
        raise _refusal(exc) from None
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
    # Last, so a malformed upload is named for what is wrong with it, even when its
    # sender committed to exactly those bytes.
    if not digest_equal(digest, closed.payloads[subject_id]):
        raise DomainError(422, "upload-mismatch", "the payload is not the committed one")
    return digest, vector, signed


def _already_stored(stored: object, canonical: Mapping[str, Any], code: str, message: str) -> bool:
    """A retried message: True if exactly it is stored, 409 ``code`` if another one is."""
    if stored is None:
        return False
    if stored != canonical:
        raise DomainError(409, code, message)
    return True


def _check_randomness_proof(
    crypto: _JobCrypto,
    t: int,
    subject_id: str,
    closed: ClosedSet,
    signed: Mapping[str, Any],
    vector: EncryptedVector,
) -> None:
    """The sender knows the upload's randomness: it is no re-randomised copy of another's.

    Checked last (two exponentiations), after the cheap replay checks.
    """
    try:
        verify_randomness(
            crypto.job_key.params,
            RandomnessProof.from_obj(signed["statement"]["randomness_proof"]),
            pok_context(crypto.terms, t, closed.digest),
            subject_id,
            a_components=vector.a_components(),
            blocks=crypto.layout.num_blocks,
        )
    except ValueError as exc:
        raise DomainError(422, "bad-randomness-proof", str(exc)) from None


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
