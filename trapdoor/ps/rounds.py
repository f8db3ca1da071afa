"""Rounds: ending each phase, aggregating, failing, and the background tick.

A bcp round (docs/PROTOCOL.md) goes ``open`` (commitments) -> ``committed`` (uploads) ->
``closed`` (audits) -> released, each phase with its own deadline; a masked round goes
``open`` (uploads) -> ``closed`` (summed, release due) -> released. A phase ends when
everyone who can take part did (:meth:`Rounds.settle`, right after each participant's
message), at the deadline with a quorum (:meth:`Rounds.tick`), or when the operator says
so with a quorum (:meth:`Rounds.close_round`). Ending it closes the set of commitments,
aggregates an attempt over the uploads with a fresh blind ``R`` (bcp; a later attempt
drops whoever did not audit), or adds the uploads into ``Z`` (masked). At the deadline
without a quorum the job's ``below_quorum_policy`` decides; a re-run never goes on short.

Every state change is one transaction, so a crash at any point leaves a state from which
:meth:`Rounds.tick` carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from trapdoor.crypto.blocks import EncryptedVector
from trapdoor.protocol.audit import AuditedRound, audit_round
from trapdoor.protocol.bundle import plaintexts_to_bytes
from trapdoor.protocol.commitment import build_closed_set
from trapdoor.protocol.common import MAX_ATTEMPT, ProtocolError
from trapdoor.ps import masked
from trapdoor.ps.bcp import BcpJob, draw_blind
from trapdoor.ps.models import Commitment, Job, Round
from trapdoor.ps.release import Releases
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    ACTIVE,
    deadline,
    existing_round,
    fail_round,
    get_job,
    get_round,
    is_masked,
    model_bytes,
    rerun_set,
    round_audits,
    round_uploads,
    uploaders,
    verified_closed_set,
)
from trapdoor.service.errors import ConflictError

__all__ = ["Rounds", "TickResult"]

log = logging.getLogger(__name__)


@dataclass
class TickResult:
    """What one :meth:`Rounds.tick` did (for logs and tests)."""

    committed: list[tuple[str, int]] = field(default_factory=list)
    closed: list[tuple[str, int]] = field(default_factory=list)
    reaggregated: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)


class Rounds:
    """Phase changes of every round; ``releases`` releases the rounds the tick finds due."""

    def __init__(self, state: PsState, releases: Releases) -> None:
        self._state = state
        self._releases = releases

    def close_round(self, job_id: str, t: int, *, now: float | None = None) -> None:
        """Operator: end round ``t``'s commit or upload phase now, if it has a quorum.

        Commit phase: close the set of the commitments so far; upload phase: aggregate the
        uploads so far. A ``below-quorum`` conflict without a quorum, ``round-not-open``
        later.
        """
        now = self._state.now(now)
        with self._state.transaction() as session:
            job = get_job(session, job_id)
            rnd = existing_round(session, job_id, t, lock=True)
            if rnd.status not in ("open", "committed") or job.status != "running":
                raise ConflictError("round-not-open", f"round {t} is past its upload phase")
            ready = self._ready(session, job, rnd)
            quorum = int(job.definition["quorum"])
            if len(ready) < quorum:
                raise ConflictError("below-quorum", f"{len(ready)} of the {quorum} needed")
            if rnd.run > 0 and len(ready) < self._expected(job, rnd):
                raise ConflictError("rerun-incomplete", "a re-run goes on only with its whole set")
            outcome = self._advance(session, job, rnd, ready, now)
        if outcome == "closed" and is_masked(job):
            self._state.release_pending()

    def settle_quietly(self, job_id: str, t: int, now: float) -> None:
        """Settle after a participant's message; its own transaction is already safe."""
        try:
            outcome = self.settle(job_id, t, now)
        except Exception as exc:  # tick() settles the round later
            log.error("job %s round %d: settle failed: %s", job_id, t, type(exc).__name__)
            return
        if outcome == "closed":  # a masked round's release is due (bcp: a harmless wake)
            self._state.release_pending()

    def settle(self, job_id: str, t: int, now: float) -> str | None:
        """End the current phase when complete, or due with a quorum; apply the policy if
        due without one.

        Returns ``"committed"``, ``"closed"``, ``"reaggregated"``, ``"failed"`` or None
        (nothing to do; a closed round whose audits are all in waits for its release).
        """
        with self._state.transaction() as session:
            job = get_job(session, job_id)
            rnd = get_round(session, job_id, t, lock=True)
            if rnd is None or rnd.status not in ACTIVE or job.status != "running":
                return None
            if rnd.status == "closed" and is_masked(job):
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
                fail_round(job, rnd, now, f"{len(ready)} of {expected}, quorum {quorum}")
                outcome = "failed"
            else:
                return None
        return outcome

    def tick(self, now: float | None = None) -> TickResult:
        """Deadline checks and pending releases; called every second by the app's worker."""
        now = self._state.now(now)
        result = TickResult()
        with self._state.sessions() as session:
            active = session.execute(
                select(Round.job_id, Round.round)
                .join(Job, Job.job_id == Round.job_id)
                .where(Round.status.in_(ACTIVE), Job.status == "running")
            ).all()
        for job_id, t in active:
            try:
                outcome = self.settle(job_id, t, now)
            except Exception as exc:
                log.error("job %s round %d: settle failed: %s", job_id, t, type(exc).__name__)
                continue
            if outcome is not None:
                getattr(result, outcome).append((job_id, t))
        for job_id, t in self._releases.due(now):
            if self._releases.release_round(job_id, t, now=now):
                result.released.append((job_id, t))
        return result

    # ------------------------------------------------------------------ phases

    def _ready(self, session: Session, job: Job, rnd: Round) -> list[str]:
        """Who has done the current phase's part: committed, uploaded, or audited."""
        t = rnd.round
        if is_masked(job) or rnd.status == "committed":
            return uploaders(session, job.job_id, t)
        if rnd.status == "open":
            return list(
                session.scalars(
                    select(Commitment.subject_id)
                    .where(Commitment.job_id == job.job_id, Commitment.round == t)
                    .order_by(Commitment.subject_id)
                )
            )
        return sorted(s for s in round_audits(session, rnd) if s in (rnd.contributors or []))

    def _expected(self, job: Job, rnd: Round) -> int:
        """How many can take part in the current phase (all of them: no need to wait)."""
        if rnd.status == "open":
            return len(rerun_set(rnd)) if rnd.previous_run is not None else len(job.weights)
        if rnd.status == "committed":
            return len(verified_closed_set(self._state.setups.bcp(job), rnd).payloads)
        return len(rnd.contributors or [])

    def _advance(self, session: Session, job: Job, rnd: Round, ready: list[str], now: float) -> str:
        """End the current phase with ``ready``: close the set, or aggregate an attempt
        (masked: add the uploads into ``Z``)."""
        if is_masked(job):
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

    def _close_set(self, session: Session, job: Job, rnd: Round, now: float) -> None:
        """Sign the round's commitments as its closed set; the upload phase starts."""
        setup = self._state.setups.bcp(job)
        commitments = session.scalars(
            select(Commitment.signed).where(
                Commitment.job_id == job.job_id, Commitment.round == rnd.round
            )
        ).all()
        rnd.closed_set = build_closed_set(
            self._state.signing_key,
            setup.terms,
            round_number=rnd.round,
            commitments=list(commitments),
            closed_at=int(now),
            run=rnd.run,
        )
        rnd.status = "committed"
        rnd.deadline = deadline(job.definition, now)
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
        layout = self._state.setups.masked(job).layout
        uploads = [
            u.payload
            for u in round_uploads(session, job.job_id, rnd.round)
            if u.subject_id in contributors
        ]
        base = model_bytes(session, job.job_id, rnd.round)
        total = masked.add_uploads(layout, base, uploads)
        self._state.models.store_ring(session, job.job_id, rnd.round + 1, total, layout)
        rnd.status = "closed"
        rnd.contributors = sorted(contributors)
        rnd.closed_at = now
        rnd.deadline = deadline(job.definition, now)
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
        setup: BcpJob,
        rnd: Round,
        contributors: list[str],
        attempt: int,
        blind: list[int],
    ) -> AuditedRound:
        """``Agg`` and ``F`` of an attempt, computed exactly as every auditor computes them."""
        uploads = {
            upload.subject_id: EncryptedVector.from_bytes(
                setup.job_key, setup.layout, upload.payload
            )
            for upload in round_uploads(session, rnd.job_id, rnd.round)
            if upload.subject_id in contributors
        }
        try:
            return audit_round(
                setup.terms,
                verified_closed_set(setup, rnd),
                attempt=attempt,
                base=self._state.models.load_model(session, rnd.job_id, rnd.round, setup),
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
        setup = self._state.setups.bcp(job)
        blind = draw_blind(self._state.rng, setup)
        audited = self._audit_round(session, setup, rnd, contributors, attempt, blind)
        self._state.models.store_model(session, job.job_id, rnd.round + 1, audited.aggregate)
        rnd.status = "closed"
        rnd.attempt = attempt
        rnd.contributors = list(audited.contributors)
        rnd.blind = plaintexts_to_bytes(blind, setup.n)
        rnd.digests = audited.digests.fields()
        rnd.closed_at = now
        rnd.deadline = deadline(job.definition, now)
        rnd.release_after = None
        log.info(
            "job %s round %d: attempt %d aggregated over %d uploads",
            job.job_id,
            rnd.round,
            attempt,
            len(audited.contributors),
        )
