"""The audit phase: what contributors recompute a round from, and their signed audits.

After a bcp round aggregates an attempt, every contributor fetches the attempt's package
(contributors, closed set, blind ``R`` and digests), the base ``Enc(W_t)`` and the other
contributors' uploads, recomputes ``Agg`` and ``F`` and signs an audit of the digests
(:func:`trapdoor.protocol.audit.verify_audit_statement`). When every contributor of the
attempt audited, the release is due. A masked round has no audits; the same two frame
endpoints serve its ``Z_t`` and, once released, the uploads each contributor adds up.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trapdoor.crypto.wire import encode_payload_frame, encode_ring_frame
from trapdoor.protocol.audit import verify_audit_statement
from trapdoor.protocol.bundle import blind_to_text, plaintexts_from_bytes
from trapdoor.protocol.commitment import Signed
from trapdoor.ps.bcp import BcpJob
from trapdoor.ps.checks import already_stored
from trapdoor.ps.models import Audit, Job, Round, Upload
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    audits_complete,
    check_contributor,
    check_participant,
    existing_round,
    get_job,
    get_round,
    is_masked,
    model_bytes,
    participant_message,
)
from trapdoor.service.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
)

__all__ = ["Audits"]

log = logging.getLogger(__name__)
_PACKAGE_DIGESTS = ("base_sha256", "aggregate_sha256", "release_sha256", "blind_sha256")


class Audits:
    """The audit package, the frames auditors recompute from, and accepting audits."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def audit_package(self, job_id: str, t: int, requester: str | None) -> dict[str, Any]:
        """What a contributor audits: the attempt, its contributors, ``R`` and the digests."""
        with self._state.sessions() as session:
            setup, rnd = self._aggregated(session, job_id, t, requester)
            assert rnd.digests is not None and rnd.blind is not None  # _aggregated checked
            return {
                "job_id": job_id,
                "round": t,
                "run": rnd.run,
                "attempt": rnd.attempt,
                "contributors": list(rnd.contributors or []),
                "closed_set": rnd.closed_set,
                "blind": blind_to_text(plaintexts_from_bytes(rnd.blind, setup.n), setup.n),
                **{name: rnd.digests[name] for name in _PACKAGE_DIGESTS},
            }

    def base_frame(self, job_id: str, t: int, requester: str | None) -> bytes:
        """``Enc(W_t)``, framed: the base every auditor adds the uploads to.

        Masked: ``Z_t`` as a ring frame, for the operator or any participant of the job.
        """
        with self._state.sessions() as session:
            job = get_job(session, job_id)
            if is_masked(job):
                return self._masked_base(session, job, t, requester)
            setup, _ = self._aggregated(session, job_id, t, requester)
            payload = model_bytes(session, job_id, t)
        return encode_payload_frame(
            payload, setup.layout, setup.element_width, {"job_id": job_id, "round": t}
        )

    def upload_frame(self, job_id: str, t: int, subject_id: str, requester: str | None) -> bytes:
        """A contributor's upload re-framed with its statement, for the other auditors.

        Masked: the stored frame as it was uploaded (:meth:`_masked_upload`).
        """
        with self._state.sessions() as session:
            job = get_job(session, job_id)
            if is_masked(job):
                return self._masked_upload(session, job, t, subject_id, requester)
            setup, rnd = self._aggregated(session, job_id, t, requester)
            upload = _upload(session, job_id, t, subject_id)
            if upload is None or subject_id not in (rnd.contributors or []):
                raise NotFoundError(
                    "upload-not-found", f"{subject_id!r} is no contributor of this attempt"
                )
            header = {"job_id": job_id, "round": t, "statement": upload.statement}
            payload = upload.payload  # checked when it was accepted: served as stored
        return encode_payload_frame(payload, setup.layout, setup.element_width, header)

    def accept_audit(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a contributor's signed audit of the current attempt; (answer, is it new).

        Its digests must be exactly the attempt's (else invalid ``audit-mismatch``, nothing
        stored); an audit of an earlier attempt is a ``stale-attempt`` conflict. When every
        contributor of the attempt has audited, the release is due.
        """
        state = self._state
        now = state.clock()
        try:
            with state.transaction() as session:
                rnd = get_round(session, job_id, t, lock=True)
                run = rnd.run if rnd is not None else 0
                _, audit = participant_message(
                    session,
                    state.setups,
                    job_id,
                    subject_id,
                    lambda terms: verify_audit_statement(
                        signed, terms, round_number=t, subject_id=subject_id, run=run
                    ),
                )
                digests = audit.digests
                canonical = Signed(audit, signed["signature"]).to_json()
                answer = {
                    "job_id": job_id,
                    "round": t,
                    "run": run,
                    "attempt": digests.attempt,
                    "subject_id": subject_id,
                }
                if rnd is None:
                    raise NotFoundError("round-not-found", f"job {job_id!r} has no round {t}")
                if _same_audit(session, rnd, digests.attempt, subject_id, canonical):
                    return answer, False
                if rnd.digests is None or rnd.contributors is None:
                    raise ConflictError("not-aggregated", f"round {t} has no aggregate yet")
                if rnd.status != "closed":
                    raise ConflictError("round-not-open", f"round {t} takes no audits")
                if digests.attempt < rnd.attempt:
                    raise ConflictError(
                        "stale-attempt", f"attempt {digests.attempt} was superseded"
                    )
                if subject_id not in rnd.contributors:
                    raise ForbiddenError(
                        "not-a-contributor", f"not a contributor of attempt {rnd.attempt}"
                    )
                if digests.fields() != rnd.digests:
                    differing = sorted(
                        k for k, v in digests.fields().items() if rnd.digests.get(k) != v
                    )
                    raise InvalidError(
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
                complete = audits_complete(session, rnd)
        except IntegrityError:
            with state.sessions() as session:
                rnd = get_round(session, job_id, t)
                if rnd is not None and _same_audit(
                    session, rnd, digests.attempt, subject_id, canonical
                ):
                    return answer, False
            raise
        log.info("job %s round %d: audit of %s accepted", job_id, t, subject_id)
        if complete:
            state.release_pending()
        return answer, True

    # ------------------------------------------------------------------ helpers

    def _aggregated(
        self, session: Session, job_id: str, t: int, requester: str | None
    ) -> tuple[BcpJob, Round]:
        """Round ``t`` with an aggregate, for the operator (None) or a current contributor."""
        job = get_job(session, job_id)
        rnd = existing_round(session, job_id, t)
        if rnd.digests is None or rnd.contributors is None or rnd.blind is None:
            raise ConflictError("not-aggregated", f"round {t} has no aggregate yet")
        if requester is not None and requester not in rnd.contributors:
            raise ForbiddenError("not-a-contributor", f"not a contributor of round {t}'s attempt")
        return self._state.setups.bcp(job), rnd

    def _masked_base(self, session: Session, job: Job, t: int, requester: str | None) -> bytes:
        """``Z_t`` framed (``ring-vector``): not found before round ``t`` exists."""
        if requester is not None:
            check_participant(job, requester)
        existing_round(session, job.job_id, t)
        layout = self._state.setups.masked(job).layout
        return encode_ring_frame(
            model_bytes(session, job.job_id, t),
            bits=layout.ring.bits,
            num_elements=layout.length,
            extra_header={"job_id": job.job_id, "round": t},
        )

    @staticmethod
    def _masked_upload(
        session: Session, job: Job, t: int, subject_id: str, requester: str | None
    ) -> bytes:
        """A contributor's stored upload frame, for the contributors of the released round
        (or the operator): a ``not-released`` conflict before, forbidden
        (``not-a-contributor``) to anyone else, not found (``upload-not-found``) for a
        subject that did not contribute."""
        rnd = existing_round(session, job.job_id, t)
        if rnd.status != "released":
            raise ConflictError("not-released", f"round {t} is not released yet")
        contributors = rnd.contributors or []
        if requester is not None:
            check_contributor(rnd, requester)
        upload = _upload(session, job.job_id, t, subject_id)
        if upload is None or subject_id not in contributors:
            raise NotFoundError(
                "upload-not-found", f"{subject_id!r} is no contributor of round {t}"
            )
        return bytes(upload.payload)


def _upload(session: Session, job_id: str, t: int, subject_id: str) -> Upload | None:
    return session.scalar(
        select(Upload).where(
            Upload.job_id == job_id, Upload.round == t, Upload.subject_id == subject_id
        )
    )


def _same_audit(
    session: Session, rnd: Round, attempt: int, subject_id: str, canonical: dict[str, Any]
) -> bool:
    """True if exactly this audit is stored; a ``duplicate-audit`` conflict if another is."""
    stored = session.scalar(
        select(Audit.signed).where(
            Audit.job_id == rnd.job_id,
            Audit.round == rnd.round,
            Audit.attempt == attempt,
            Audit.subject_id == subject_id,
        )
    )
    return already_stored(
        stored, canonical, "duplicate-audit", "another audit of this attempt is stored"
    )
