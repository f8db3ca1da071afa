"""Undecodable releases and the one re-run of a round (docs/PROTOCOL.md).

A contributor whose release does not decode signs a report naming exactly the bundle it
got (:func:`trapdoor.protocol.audit.verify_undecodable_statement`). When every
contributor of the release reported, and the next round has not closed its set, round
``t`` is rolled back to ``W_t`` and runs once more over the same set (run 1), with the
reports going to the KGC in its release request; if run 1's release does not decode
either, the job fails.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from trapdoor.protocol.audit import verify_undecodable_statement
from trapdoor.protocol.commitment import Signed
from trapdoor.protocol.common import MAX_RUN, ProtocolError
from trapdoor.ps import bcp, masked
from trapdoor.ps.checks import refusal, with_report
from trapdoor.ps.models import Audit, Commitment, Job, Release, Round, Upload
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    check_contributor,
    check_participant,
    deadline,
    drop_model,
    existing_round,
    fail_round,
    get_job,
    get_round,
    is_masked,
)
from trapdoor.service.errors import ConflictError

__all__ = ["Reruns"]

log = logging.getLogger(__name__)


class Reruns:
    """Reports of undecodable releases, and rolling a round back for its re-run."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def accept_undecodable(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """A contributor's signed report that round ``t``'s release does not decode.

        Accepted for a released round while the next round has not closed its set, from
        a contributor of the release, naming exactly its bundle
        (:func:`trapdoor.protocol.bundle.bundle_sha256`). When every contributor reported,
        run 0 is rolled back and round ``t`` runs once more from ``W_t`` over the same set
        (run 1; the reports go to the KGC with its release request); after run 1 the job
        fails. (answer, whether the report is new).
        """
        state = self._state
        now = state.clock()
        with state.transaction() as session:
            job = get_job(session, job_id)
            check_participant(job, subject_id)
            rnd = existing_round(session, job_id, t, lock=True)
            release = session.get(Release, (job_id, t))
            if rnd.status != "released" or release is None or release.bundle is None:
                raise ConflictError("not-released", f"round {t} is not released")
            following = get_round(session, job_id, t + 1, lock=True)
            if following is not None and following.status != "open":
                raise ConflictError("round-moved-on", f"round {t + 1} is under way")
            check_contributor(rnd, subject_id)
            bundle = release.bundle
            digest = masked.bundle_digest(bundle) if is_masked(job) else bcp.bundle_digest(bundle)
            try:
                body = verify_undecodable_statement(
                    signed,
                    state.setups.terms(job),
                    round_number=t,
                    run=rnd.run,
                    subject_id=subject_id,
                    bundle_sha256=digest,
                )
            except ProtocolError as exc:
                raise refusal(exc) from None
            answer = {"job_id": job_id, "round": t, "run": rnd.run, "subject_id": subject_id}
            report = Signed(body, signed["signature"])
            reports = with_report(rnd.undecodable, subject_id, report, "duplicate-report")
            if reports is None:
                return answer, False
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
                    _drop_round(session, following)
                job.current_round = t
                if rnd.run < MAX_RUN:
                    _rerun(session, job, rnd, release, digest, now)
                else:
                    fail_round(job, rnd, now, "the re-run's release did not decode either")
        return answer, True


def _drop_round(session: Session, rnd: Round) -> None:
    """Remove a round that has only begun (the round before it is being undone): its
    commitments (bcp) or uploads (masked: its phase takes them)."""
    for table in (Commitment, Upload):
        session.execute(delete(table).where(table.job_id == rnd.job_id, table.round == rnd.round))
    session.delete(rnd)
    session.flush()


def _rerun(
    session: Session, job: Job, rnd: Round, release: Release, digest: str, now: float
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
        session.execute(delete(table).where(table.job_id == job.job_id, table.round == rnd.round))
    session.delete(release)
    if is_masked(job):  # Z_{t+1} of run 0 is gone; run 1 sums it again from Z_t
        drop_model(session, job.job_id, rnd.round + 1)
    rnd.run += 1
    rnd.status = "open"
    rnd.opened_at = now
    rnd.deadline = deadline(job.definition, now)
    rnd.attempt = 0
    rnd.closed_set = rnd.contributors = rnd.blind = rnd.digests = None
    rnd.undecodable = None
    rnd.metric_reports = None  # they scored run 0's model
    rnd.closed_at = rnd.released_at = rnd.release_after = None
    rnd.last_error = None
    job.status = "running"
    log.warning(
        "job %s round %d: release undecodable for every contributor; re-running it (run %d)",
        job.job_id,
        rnd.round,
        rnd.run,
    )
