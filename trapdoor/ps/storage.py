"""What the parameter server stores and how every step reads it back.

- the model of each version as chunk rows: ``Enc(W_t)`` (bcp, fixed-width group
  elements) or ``Z_t`` (masked, raw ring bytes), so no row grows with the model;
- a job's setup, what its messages are checked against (:class:`~trapdoor.ps.bcp.BcpJob`
  or :class:`~trapdoor.ps.masked.MaskedJob`), rebuilt from the stored KGC-signed terms,
  verified again (the database is not trusted) and cached;
- the row lookups and round-row changes the steps share, with the refusals they imply
  (no such job or round, not a participant).

Every function works in the caller's session and transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    element_bytes,
    elements_from_bytes,
    elements_to_bytes,
)
from trapdoor.crypto.encoding import EncodingError, PackingLayout
from trapdoor.crypto.wire import from_obj
from trapdoor.protocol.commitment import ClosedSet, verify_closed_set
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.job import JobTerms, MaskedLayout, verify_job_terms
from trapdoor.ps.bcp import BcpJob
from trapdoor.ps.checks import refusal
from trapdoor.ps.kgc_gateway import KgcInfo
from trapdoor.ps.masked import MaskedJob
from trapdoor.ps.models import Audit, Job, ModelChunk, Round, Upload
from trapdoor.service.errors import ConflictError, ForbiddenError, NotFoundError

__all__ = [
    "ACTIVE",
    "DEFAULT_CHUNK_ELEMENTS",
    "JobSetups",
    "ModelStore",
    "audits_complete",
    "check_participant",
    "deadline",
    "drop_model",
    "existing_round",
    "fail_round",
    "get_job",
    "get_round",
    "is_masked",
    "model_bytes",
    "open_round",
    "participant_message",
    "rerun_set",
    "round_audits",
    "round_uploads",
    "uploaders",
    "verified_closed_set",
]

log = logging.getLogger(__name__)
#: What a participant message's check returns (its body, or body and digests).
_Checked = TypeVar("_Checked")

DEFAULT_CHUNK_ELEMENTS = 64
#: The phases in which a round still waits for something from its participants.
ACTIVE = ("open", "committed", "closed")


# ---------------------------------------------------------------------- model chunks


class ModelStore:
    """The model of each version as chunk rows of at most ``chunk_elements`` elements."""

    def __init__(self, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        if chunk_elements < 1:
            raise ValueError("chunk_elements must be at least 1")
        self.chunk_elements = chunk_elements

    def store_model(
        self, session: Session, job_id: str, version: int, vector: EncryptedVector
    ) -> None:
        """Write ``Enc(W_version)`` as chunk rows, replacing an earlier attempt's rows."""
        width = element_bytes(vector.job_key.params)
        data = elements_to_bytes(vector.elements, width)
        self._write(session, job_id, version, data, self.chunk_elements * width)

    def store_ring(
        self, session: Session, job_id: str, version: int, data: bytes, layout: MaskedLayout
    ) -> None:
        """Write a masked job's ``Z_version`` (raw ring bytes) as chunk rows, replacing any."""
        self._write(session, job_id, version, data, self.chunk_elements * layout.ring.byte_width)

    @staticmethod
    def _write(session: Session, job_id: str, version: int, data: bytes, size: int) -> None:
        drop_model(session, job_id, version)
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
    def load_model(session: Session, job_id: str, version: int, job: BcpJob) -> EncryptedVector:
        """``Enc(W_version)`` of a bcp job, from its chunks."""
        elements = elements_from_bytes(model_bytes(session, job_id, version), job.element_width)
        return EncryptedVector(job.job_key, job.layout, tuple(elements))


def model_bytes(session: Session, job_id: str, version: int) -> bytes:
    """Model version ``version``'s payload as stored (its chunks, in order)."""
    rows = session.scalars(
        select(ModelChunk)
        .where(ModelChunk.job_id == job_id, ModelChunk.version == version)
        .order_by(ModelChunk.chunk_index)
    ).all()
    if not rows or [row.chunk_index for row in rows] != list(range(len(rows))):
        raise RuntimeError(f"model {job_id!r} version {version} has missing chunks")
    return b"".join(row.data for row in rows)


def drop_model(session: Session, job_id: str, version: int) -> None:
    """Delete model version ``version``'s chunks (none is fine)."""
    session.execute(
        delete(ModelChunk).where(ModelChunk.job_id == job_id, ModelChunk.version == version)
    )


# ---------------------------------------------------------------------- job setups


class JobSetups:
    """Each job's setup from its stored terms, checked under the KGC's key once, cached.

    Thread-safe: the app's request threads and its background worker share one.
    """

    def __init__(self, kgc: KgcInfo) -> None:
        self._kgc = kgc
        self._lock = threading.Lock()
        self._cache: dict[str, BcpJob | MaskedJob] = {}

    def setup(self, job: Job) -> BcpJob | MaskedJob:
        """The job's setup, either aggregation (a conflict for unsigned stored terms)."""
        with self._lock:
            cached = self._cache.get(job.job_id)
        if cached is not None:
            return cached
        setup = self._build(job)
        with self._lock:
            self._cache[job.job_id] = setup
        return setup

    def bcp(self, job: Job) -> BcpJob:
        """A bcp job's setup (a ``wrong-aggregation`` conflict for a masked job)."""
        setup = self.setup(job)
        if not isinstance(setup, BcpJob):
            raise ConflictError(
                "wrong-aggregation",
                f"job {job.job_id!r} is masked: it has no commitments, closed sets or audits",
            )
        return setup

    def masked(self, job: Job) -> MaskedJob:
        """A masked job's setup (a ``wrong-aggregation`` conflict for a bcp job)."""
        setup = self.setup(job)
        if not isinstance(setup, MaskedJob):
            raise ConflictError("wrong-aggregation", f"job {job.job_id!r} is not masked")
        return setup

    def terms(self, job: Job) -> JobTerms:
        """The job's KGC-signed terms, verified (either aggregation)."""
        return self.setup(job).terms

    def _build(self, job: Job) -> BcpJob | MaskedJob:
        if job.job_terms is None or job.job_terms_signature is None:
            raise ConflictError(
                "unsigned-job", f"job {job.job_id!r} has no KGC-signed terms; recreate it"
            )
        job_key = from_obj(job.job_key)
        if not isinstance(job_key, JobKey):
            raise RuntimeError(f"stored job key of {job.job_id!r} is not a job key")
        try:
            terms = verify_job_terms(
                self._kgc.verify_key, job.job_terms, job.job_terms_signature, self._kgc.params
            )
        except ProtocolError as exc:
            raise ConflictError(
                "unsigned-job", f"stored terms of {job.job_id!r} do not verify: {exc}"
            ) from None
        if terms.raw["job_key"] != job.job_key:
            raise RuntimeError(f"stored job key of {job.job_id!r} is not the KGC-signed one")
        if terms.aggregation != aggregation(job):
            raise RuntimeError(f"stored job {job.job_id!r} is not of its terms' aggregation")
        if terms.aggregation == "masked":
            try:
                layout = MaskedLayout.from_json(job.packing)
            except EncodingError as exc:
                raise RuntimeError(f"stored layout of {job.job_id!r}: {exc}") from None
            return MaskedJob(terms, layout, frozenset(job.weights))
        packing = PackingLayout.from_json(job.packing)
        return BcpJob(
            job_key,
            packing,
            BlockLayout(packing.num_plaintexts, job_key.width),
            frozenset(job.weights),
            terms,
        )


# ---------------------------------------------------------------------- jobs and rounds


def get_job(session: Session, job_id: str) -> Job:
    """The job (``job-not-found`` if there is none)."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError("job-not-found", f"no job {job_id!r}")
    return job


def check_participant(job: Job, subject_id: str) -> None:
    """Refuse (``not-a-participant``) a subject the job does not list."""
    if subject_id not in job.weights:
        raise ForbiddenError("not-a-participant", "not a participant of this job")


def check_contributor(rnd: Round, subject_id: str) -> None:
    """Refuse (``not-a-contributor``) a subject that did not contribute to the round."""
    if subject_id not in (rnd.contributors or []):
        raise ForbiddenError("not-a-contributor", f"did not contribute to round {rnd.round}")


def participant_message(
    session: Session,
    setups: JobSetups,
    job_id: str,
    subject_id: str,
    verify: Callable[[JobTerms], _Checked],
) -> tuple[Job, _Checked]:
    """The job and a participant's signed commitment or audit, checked against its terms.

    Not found for no job, forbidden for a non-participant, a conflict for a masked job
    (it has neither), and a message that does not verify is refused as its protocol code
    calls for (:func:`trapdoor.ps.checks.refusal`).
    """
    job = get_job(session, job_id)
    check_participant(job, subject_id)
    terms = setups.bcp(job).terms
    try:
        return job, verify(terms)
    except ProtocolError as exc:
        raise refusal(exc) from None


def aggregation(job: Job) -> str:
    """``"bcp"`` or ``"masked"``, as the stored (normalised, KGC-signed) definition says."""
    return str(job.definition.get("aggregation", "bcp"))


def is_masked(job: Job) -> bool:
    return aggregation(job) == "masked"


def get_round(session: Session, job_id: str, t: int, *, lock: bool = False) -> Round | None:
    """Round ``t`` of the job, if it exists (``lock``: ``SELECT ... FOR UPDATE``)."""
    return session.get(Round, (job_id, t), with_for_update=lock or None)


def existing_round(session: Session, job_id: str, t: int, *, lock: bool = False) -> Round:
    """Round ``t`` (``round-not-found`` if the job has no such round)."""
    rnd = get_round(session, job_id, t, lock=lock)
    if rnd is None:
        raise NotFoundError("round-not-found", f"job {job_id!r} has no round {t}")
    return rnd


def deadline(definition: Mapping[str, Any], now: float) -> float:
    """When the phase starting ``now`` is due: every phase gets the full round deadline."""
    return now + float(definition["round_deadline_seconds"])


def open_round(job_id: str, t: int, now: float, definition: Mapping[str, Any]) -> Round:
    """A new round ``t`` in its first phase (the caller adds it to its session)."""
    return Round(
        job_id=job_id,
        round=t,
        status="open",
        opened_at=now,
        deadline=deadline(definition, now),
        attempt=0,
    )


def fail_round(job: Job, rnd: Round, now: float, reason: str) -> None:
    """Mark the round, and with it the job, failed for ``reason``."""
    rnd.status = "failed"
    rnd.closed_at = now
    rnd.last_error = reason[:500]
    job.status = "failed"
    log.warning("job %s round %d (run %d) failed: %s", job.job_id, rnd.round, rnd.run, reason)


def rerun_set(rnd: Round) -> list[str]:
    """Who a re-run is for: exactly the contributors of run 0's release."""
    return list((rnd.previous_run or {}).get("contributors", []))


def verified_closed_set(job: BcpJob, rnd: Round) -> ClosedSet:
    """The round's closed set as the PS signed it (verified: the DB is not trusted)."""
    if rnd.closed_set is None:
        raise ConflictError("set-not-closed", f"round {rnd.round}'s set is not closed")
    try:
        return verify_closed_set(rnd.closed_set, job.terms, round_number=rnd.round, run=rnd.run)
    except ProtocolError as exc:
        raise RuntimeError(f"stored closed set does not verify: {exc.code}") from None


# ---------------------------------------------------------------------- uploads and audits


def round_uploads(session: Session, job_id: str, t: int) -> list[Upload]:
    """Round ``t``'s uploads, by subject id."""
    return list(
        session.scalars(
            select(Upload)
            .where(Upload.job_id == job_id, Upload.round == t)
            .order_by(Upload.subject_id)
        )
    )


def uploaders(session: Session, job_id: str, t: int) -> list[str]:
    """Who uploaded to round ``t``, sorted."""
    return list(
        session.scalars(
            select(Upload.subject_id)
            .where(Upload.job_id == job_id, Upload.round == t)
            .order_by(Upload.subject_id)
        )
    )


def round_audits(session: Session, rnd: Round) -> dict[str, dict[str, Any]]:
    """The current attempt's signed audits by subject id."""
    rows = session.execute(
        select(Audit.subject_id, Audit.signed).where(
            Audit.job_id == rnd.job_id, Audit.round == rnd.round, Audit.attempt == rnd.attempt
        )
    ).all()
    return {str(subject): signed for subject, signed in rows}


def audits_complete(session: Session, rnd: Round) -> bool:
    """Every contributor of the current attempt has audited it."""
    return rnd.contributors is not None and set(rnd.contributors) <= set(round_audits(session, rnd))
