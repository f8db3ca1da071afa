"""What each participant's node says about a job: joined it, or declined it and why.

Only informational (nothing in the protocol waits for it), so a bearer token is enough:
the operator of a job sees which nodes took it and which refused it, with the node's
reason (its data does not fit the model, say), instead of a round that stays open with
no commitments and no explanation.
"""

from __future__ import annotations

import logging
from typing import Any

from trapdoor.ps.state import PsState
from trapdoor.ps.storage import check_participant, get_job
from trapdoor.service.errors import BadRequestError

__all__ = ["MAX_REASON", "PARTICIPATION_STATUSES", "Participation"]

log = logging.getLogger(__name__)

PARTICIPATION_STATUSES = ("joined", "declined")
#: The longest reason a node may give (characters).
MAX_REASON = 500


def _reason(status: str, reason: object) -> str | None:
    if status == "joined":
        if reason is not None:
            raise BadRequestError("bad-field", "a node that joined gives no reason")
        return None
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequestError("bad-field", "a node that declines says why (reason)")
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise BadRequestError(
            "bad-field", f"reason must be printable text of at most {MAX_REASON} characters"
        )
    return reason.strip()


class Participation:
    """Each participant's latest word on a job (one row of JSON per job)."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def record(self, job_id: str, subject_id: str, body: Any) -> dict[str, Any]:
        """Store ``{"status": "joined"|"declined", "reason"}`` from a participant of the
        job (the latest replaces the earlier one); the stored entry."""
        if not isinstance(body, dict) or set(body) - {"status", "reason"}:
            raise BadRequestError("bad-field", 'the body is {"status", "reason"}')
        status = body.get("status")
        if status not in PARTICIPATION_STATUSES:
            raise BadRequestError("bad-field", f"status must be one of {PARTICIPATION_STATUSES}")
        reason = _reason(str(status), body.get("reason"))
        state = self._state
        with state.transaction() as session:
            job = get_job(session, job_id)
            check_participant(job, subject_id)
            entry = {"status": status, "reason": reason, "at": state.clock()}
            job.participation = {**(job.participation or {}), subject_id: entry}
        if status == "declined":
            log.warning("job %s: %s declined: %s", job_id, subject_id, reason)
        else:
            log.info("job %s: %s joined", job_id, subject_id)
        return {"job_id": job_id, "subject_id": subject_id, **entry}
