"""Jobs: create one (its terms signed by the KGC), list and view jobs and rounds.

Creating a job validates the definition (:func:`trapdoor.ps.definition.parse_definition`),
has the KGC sign exactly the terms the PS stores and serves
(:func:`trapdoor.protocol.job.requested_terms`), stores the initial model as version 0
and opens round 0. The views are what participants check a job and follow a round by.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.masking import vector_to_bytes
from trapdoor.protocol.common import sha256_hex
from trapdoor.protocol.job import (
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_state,
    requested_terms,
)
from trapdoor.ps.checks import from_kgc
from trapdoor.ps.definition import parse_definition
from trapdoor.ps.kgc_gateway import KgcError, check_job_answer
from trapdoor.ps.metrics import shared_metrics, shares_metrics
from trapdoor.ps.models import Commitment, Job, Round, Upload
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    check_participant,
    existing_round,
    get_job,
    open_round,
    uploaders,
)
from trapdoor.service.db import database_bytes
from trapdoor.service.errors import ConflictError

__all__ = ["Jobs"]

log = logging.getLogger(__name__)


class Jobs:
    """Job creation and the read-only views of jobs and rounds."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, have the KGC sign the job's terms, store the initial model, open round 0.

        The terms the KGC signs digest exactly the definition, packing and weights stored
        here and served by :meth:`job_view`, and the initial model stored as version 0: for bcp
        the trivial ``Enc(W_0)`` (it needs no job key to be digested, so it goes into the
        request, and costs no exponentiation to store); for a masked job
        ``Z_0 = encode(W_0)``, its layout served as the ``packing``, with a job key of
        width 1 (seeds are one block).
        """
        state = self._state
        now = state.clock()
        n = int(state.kgc.params.n)
        definition = parse_definition(dict(body), n, param_server=state.subject_id)
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
                state.kgc.params, width, packing, definition.initial_weights
            )
        job_id = definition.job_id
        request = requested_terms(
            job_id=job_id,
            definition=definition.normalised,
            packing=packing_json,
            weights=definition.weights,
            width=width,
            num_plaintexts=num_plaintexts,
            initial_ciphertext_sha256=initial_sha256,
        )
        with state.sessions() as session:
            if session.get(Job, job_id) is not None:
                raise _exists(job_id)
        try:
            answer = state.gateway.create_job(job_id, request)
            terms, signature = check_job_answer(
                answer,
                state.kgc,
                job_id=job_id,
                requested=request,
                param_server=state.subject_id,
                param_server_key=state.verify_key_hex,
            )
        except KgcError as exc:
            raise from_kgc(exc, conflict="job-exists") from None
        model = (
            initial_ciphertext(terms.job_key, packing, definition.initial_weights)
            if packing is not None
            else None
        )
        try:
            with state.transaction() as session:
                session.add(
                    Job(
                        job_id=job_id,
                        definition=definition.normalised,
                        job_key=dict(terms.raw["job_key"]),
                        job_terms=dict(terms.raw),
                        job_terms_signature=signature,
                        packing=packing_json,
                        weights=definition.weights,
                        status="running",
                        current_round=0,
                        rounds_total=definition.rounds,
                        created_at=now,
                    )
                )
                session.flush()
                if model is not None:
                    state.models.store_model(session, job_id, 0, model)
                elif layout is not None:
                    state.models.store_ring(session, job_id, 0, z0, layout)
                session.add(open_round(job_id, 0, now, definition.normalised))
        except IntegrityError:
            raise _exists(job_id) from None
        log.info(
            "job %s created (%s): %d values, width %d",
            job_id,
            definition.aggregation,
            length,
            width,
        )
        log.info("job %s round 0 opened", job_id)
        return self.job_view(job_id)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job's summary, oldest first."""
        with self._state.sessions() as session:
            jobs = session.scalars(select(Job).order_by(Job.created_at, Job.job_id)).all()
            return [_summary(job) for job in jobs]

    def job_view(self, job_id: str, *, operator: bool = False) -> dict[str, Any]:
        """The job as participants check it: definition, KGC-signed terms, packing, weights;
        for its ``operator`` also what each participant's node said about it."""
        with self._state.sessions() as session:
            job = get_job(session, job_id)
            view = {
                **_summary(job),
                "definition": job.definition,
                "job_key": job.job_key,
                "job_terms": job.job_terms,
                "job_terms_signature": job.job_terms_signature,
                "packing": job.packing,
                "weights": job.weights,
            }
            if operator:
                view["participation"] = dict(job.participation or {})
            return view

    def upload_limit(self, job_id: str, subject_id: str) -> int:
        """The most bytes an upload of ``subject_id`` to ``job_id`` may have.

        Not found for an unknown job and forbidden for a non-participant, so the API
        refuses both before it reads a byte of the body.
        """
        with self._state.sessions() as session:
            job = get_job(session, job_id)
            check_participant(job, subject_id)
            return self._state.setups.setup(job).max_frame_bytes

    def participants(self, job_id: str) -> frozenset[str]:
        """The job's enrolled participants (not found if there is no such job)."""
        with self._state.sessions() as session:
            return frozenset(get_job(session, job_id).weights)

    def stats(self) -> dict[str, Any]:
        """What the operator's metrics show (``/metrics``): jobs and rounds by status,
        uploads stored, the last release's latency (round closed -> released) and the
        database's size. Counts only: no job id, no subject."""
        with self._state.sessions() as session:
            jobs = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            rounds = dict(
                session.execute(select(Round.status, func.count()).group_by(Round.status)).all()
            )
            uploads = int(session.scalar(select(func.count()).select_from(Upload)) or 0)
            last = session.execute(
                select(Round.released_at, Round.closed_at)
                .where(Round.released_at.is_not(None), Round.closed_at.is_not(None))
                .order_by(Round.released_at.desc())
                .limit(1)
            ).first()
            engine = session.get_bind()
        return {
            "jobs": {str(k): int(v) for k, v in jobs.items()},
            "rounds": {str(k): int(v) for k, v in rounds.items()},
            "uploads_stored": uploads,
            "last_release_latency_seconds": _latency(last),
            "database_bytes": database_bytes(engine),
        }

    def round_view(self, job_id: str, t: int) -> dict[str, Any]:
        """Round ``t``'s phase, run, attempt, who committed and uploaded, and its times."""
        with self._state.sessions() as session:
            job = get_job(session, job_id)
            rnd = existing_round(session, job_id, t)
            contributors = uploaders(session, job_id, t)
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
            view: dict[str, Any] = {
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
            if shares_metrics(job):
                view["shared_metrics"] = shared_metrics(rnd)
            return view


def _latency(row: Any) -> float:
    """Seconds from a round's close to its release (0 before any release)."""
    if row is None or row[0] is None or row[1] is None:
        return 0.0
    return float(row[0]) - float(row[1])


def _exists(job_id: str) -> ConflictError:
    return ConflictError("job-exists", f"job {job_id!r} exists")


def _summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "current_round": job.current_round,
        "rounds_total": job.rounds_total,
        "created_at": job.created_at,
    }
