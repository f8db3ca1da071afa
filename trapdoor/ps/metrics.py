"""Shared evaluation metrics: contributors' reports and their average per round.

Only in a job whose definition says ``"share_metrics": true`` (signed into the job's
terms, so every participant agreed to it by joining). After round ``t`` is released,
each of its contributors may send one signed report of how ``W_{t+1}`` scores on its
own test rows (:mod:`trapdoor.protocol.metrics`); the round's view shows the average
weighted by examples, and who reported. The PS never sees the model: it only averages
what contributors chose to tell it.
"""

from __future__ import annotations

import logging
from typing import Any

from trapdoor.protocol.commitment import Signed
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.metrics import MetricsReport, aggregate_metrics, verify_metrics_report
from trapdoor.ps.checks import refusal, with_report
from trapdoor.ps.models import Job, Round
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import check_contributor, check_participant, existing_round, get_job
from trapdoor.service.errors import ConflictError

__all__ = ["Metrics", "shared_metrics", "shares_metrics"]

log = logging.getLogger(__name__)


def shares_metrics(job: Job) -> bool:
    """Whether the job's (KGC-signed) definition opted in to shared metrics."""
    return bool(job.definition.get("share_metrics", False))


def shared_metrics(rnd: Round) -> dict[str, Any]:
    """Round ``t``'s reports averaged (:func:`trapdoor.protocol.metrics.aggregate_metrics`)."""
    reports = rnd.metric_reports or {}
    bodies = [MetricsReport.from_json(r[MetricsReport.FIELD]) for r in reports.values()]
    summary = aggregate_metrics((b.loss, b.num_examples, b.metrics) for b in bodies)
    return {**summary, "reported": sorted(reports)}


class Metrics:
    """Contributors' signed evaluations of a released round."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def accept_report(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a contributor's signed report of round ``t``'s released model.

        Refused (and nothing stored) for a job without ``share_metrics``, a round not
        released, a caller that did not contribute to it, a report for another job,
        round, run or signer, a bad signature, or values out of bounds; a second,
        different report from the same contributor is a conflict. (answer, is it new).
        """
        state = self._state
        with state.transaction() as session:
            job = get_job(session, job_id)
            check_participant(job, subject_id)
            if not shares_metrics(job):
                raise ConflictError("metrics-not-shared", f"job {job_id!r} does not share metrics")
            rnd = existing_round(session, job_id, t, lock=True)
            if rnd.status != "released":
                raise ConflictError("not-released", f"round {t} is not released")
            check_contributor(rnd, subject_id)
            try:
                body = verify_metrics_report(
                    signed,
                    state.setups.terms(job),
                    round_number=t,
                    run=rnd.run,
                    subject_id=subject_id,
                )
            except ProtocolError as exc:
                raise refusal(exc) from None
            answer = {"job_id": job_id, "round": t, "run": rnd.run, "subject_id": subject_id}
            report = Signed(body, signed["signature"])
            reports = with_report(rnd.metric_reports, subject_id, report, "duplicate-metrics")
            if reports is None:
                return answer, False
            rnd.metric_reports = reports
            log.info(
                "job %s round %d: %s reported its evaluation (%d of %d)",
                job_id,
                t,
                subject_id,
                len(reports),
                len(rnd.contributors or []),
            )
        return answer, True
