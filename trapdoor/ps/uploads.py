"""Commitments and uploads: what participants send a round, checked and stored once.

bcp: each participant first commits to the ciphertext it will upload
(:func:`trapdoor.protocol.commitment.verify_commitment`); the PS signs the closed set of
commitments (:mod:`trapdoor.ps.rounds`), and only its subjects then upload exactly the
committed payloads, each frame carrying the contributor's statement naming the closed set
and a proof that it knows the ciphertext's randomness (:mod:`trapdoor.ps.bcp`).

masked: a ``ring-vector`` frame of ``y`` with the seed ciphertext and the masked upload
statement, while the round is ``open`` (:mod:`trapdoor.ps.masked`).

Either way one upload per (round, subject), no payload (or seed) twice in a job, and a
PS-signed receipt. The checks and the insert are one transaction; the round is settled
right after in its own (:meth:`trapdoor.ps.rounds.Rounds.settle_quietly`).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trapdoor.protocol.commitment import Signed, verify_commitment
from trapdoor.protocol.receipt import build_receipt
from trapdoor.protocol.upload import MaskedUploadStatement, UploadStatement
from trapdoor.ps import bcp, masked
from trapdoor.ps.checks import already_stored
from trapdoor.ps.models import Commitment, Job, Round, Upload
from trapdoor.ps.rounds import Rounds
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    check_participant,
    existing_round,
    get_job,
    get_round,
    is_masked,
    participant_message,
    rerun_set,
    verified_closed_set,
)
from trapdoor.service.errors import ConflictError, ForbiddenError

__all__ = ["Uploads"]

log = logging.getLogger(__name__)


class Uploads:
    """Commitments, the closed set as served, and uploads of both modes."""

    def __init__(self, state: PsState, rounds: Rounds) -> None:
        self._state = state
        self._rounds = rounds

    def accept_commitment(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a participant's signed commitment; (answer, whether it is new).

        Checked with :func:`trapdoor.protocol.commitment.verify_commitment` for this job's
        terms, round ``t`` and the token's subject. The same commitment again is accepted
        (a restarted client), another one refused; the set is closed right after (own
        transaction) if this was the last participant, or the deadline has passed and the
        quorum is met.
        """
        state = self._state
        now = state.clock()
        try:
            with state.transaction() as session:
                rnd = get_round(session, job_id, t, lock=True)
                run = rnd.run if rnd is not None else 0
                job, body = participant_message(
                    session,
                    state.setups,
                    job_id,
                    subject_id,
                    lambda terms: verify_commitment(
                        signed, terms, round_number=t, subject_id=subject_id, run=run
                    ),
                )
                canonical = Signed(body, signed["signature"]).to_json()
                answer = {
                    "job_id": job_id,
                    "round": t,
                    "run": run,
                    "subject_id": subject_id,
                    "payload_sha256": body.payload_sha256,
                }
                if _same_commitment(session, job_id, t, subject_id, canonical):
                    return answer, False
                if rnd is None or rnd.status != "open" or job.status != "running":
                    raise ConflictError("round-not-open", f"round {t} is not in its commit phase")
                _check_rerun(rnd, subject_id)
                session.add(
                    Commitment(
                        job_id=job_id,
                        round=t,
                        subject_id=subject_id,
                        payload_sha256=body.payload_sha256,
                        signed=canonical,
                        committed_at=now,
                    )
                )
                session.flush()
        except IntegrityError:  # lost a race with a concurrent request of the same subject
            with state.sessions() as session:
                if _same_commitment(session, job_id, t, subject_id, canonical):
                    return answer, False
            raise ConflictError("duplicate-commitment", "committed already") from None
        log.info("job %s round %d: commitment of %s accepted", job_id, t, subject_id)
        self._rounds.settle_quietly(job_id, t, now)
        return answer, True

    def closed_set(self, job_id: str, t: int) -> dict[str, Any]:
        """``{"closed_set": signed}`` of round ``t``; a ``set-not-closed`` conflict before."""
        with self._state.sessions() as session:
            get_job(session, job_id)
            rnd = existing_round(session, job_id, t)
            if rnd.closed_set is None:
                raise ConflictError("set-not-closed", f"round {t}'s set is not closed yet")
            return {"closed_set": rnd.closed_set}

    def accept_upload(self, job_id: str, t: int, subject_id: str, data: bytes) -> dict[str, Any]:
        """Validate and store one update; return the PS-signed receipt.

        bcp: an encrypted, committed update, only while the round is ``committed`` and
        only from a subject in the closed set, whose payload must be the committed one.
        The frame's header carries the contributor's statement
        (:func:`trapdoor.protocol.upload.build_upload_statement`) naming the closed set;
        it is stored with the upload (the KGC checks it again at the release).

        masked: a ``ring-vector`` frame of ``y`` with the seed ciphertext and the masked
        upload statement, while the round is ``open`` (:meth:`_store_masked`).

        The checks and the insert are one transaction; the round is aggregated right after
        (own transaction) if this completes the uploads, or the deadline has passed and
        the quorum is now met.
        """
        now = self._state.clock()
        try:
            with self._state.transaction() as session:
                job = get_job(session, job_id)
                check_participant(job, subject_id)
                rnd = get_round(session, job_id, t, lock=True)
                store = self._store_masked if is_masked(job) else self._store_bcp
                signed = store(session, job, rnd, t, subject_id, data, now)
        except IntegrityError:
            # Lost a race with a concurrent identical request (another worker).
            raise ConflictError("duplicate-upload", "already uploaded for this round") from None
        log.info(
            "job %s round %d: upload of %s accepted (%d bytes)", job_id, t, subject_id, len(data)
        )
        self._rounds.settle_quietly(job_id, t, now)
        return signed

    def _store_bcp(
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
            raise ConflictError("set-not-closed", f"round {t}'s set is not closed yet")
        if rnd is None or rnd.status != "committed" or job.status != "running":
            raise ConflictError("round-not-open", f"round {t} takes no uploads")
        setup = self._state.setups.bcp(job)
        closed = verified_closed_set(setup, rnd)
        if subject_id not in closed.payloads:
            raise ForbiddenError("not-committed", f"no commitment in round {t}'s set")
        digest, vector, statement = bcp.check_upload(setup, job_id, t, subject_id, data, closed)
        _check_fresh(session, job_id, t, subject_id, digest)
        bcp.check_randomness_proof(setup, t, subject_id, closed, statement, vector)
        return self._add(session, job_id, t, subject_id, digest, vector.to_bytes(), statement, now)

    def _store_masked(
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

        Only while the round is ``open`` (``round-not-open``) and, in a re-run, only from
        run 0's contributors (``not-in-rerun``); then the frame, its seed and statement
        (:func:`trapdoor.ps.masked.check_upload`), one upload per subject
        (``duplicate-upload``), and no ``y`` or seed seen before in the job
        (``replayed-payload``). The whole frame is stored, to be served back unchanged.
        """
        job_id = job.job_id
        if rnd is None or rnd.status != "open" or job.status != "running":
            raise ConflictError("round-not-open", f"round {t} takes no uploads")
        _check_rerun(rnd, subject_id)
        checked = masked.check_upload(
            self._state.setups.masked(job),
            job_id=job_id,
            t=t,
            run=rnd.run,
            subject_id=subject_id,
            data=data,
        )
        _check_fresh(session, job_id, t, subject_id, checked.digest)
        seen = select(Upload.id).where(
            Upload.job_id == job_id, Upload.seed_sha256 == checked.seed_sha256
        )
        if session.scalar(seen) is not None:
            raise ConflictError("replayed-payload", "this seed ciphertext was uploaded before")
        return self._add(
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

    def _add(
        self,
        session: Session,
        job_id: str,
        t: int,
        subject_id: str,
        digest: str,
        payload: bytes,
        statement: Signed[UploadStatement | MaskedUploadStatement],
        now: float,
        *,
        seed_sha256: str | None = None,
    ) -> dict[str, Any]:
        """Insert a checked upload with its statement; the PS-signed receipt."""
        signed = build_receipt(
            self._state.signing_key,
            job_id=job_id,
            round_number=t,
            subject_id=subject_id,
            sha256=digest,
            accepted_at=now,
        )
        session.add(
            Upload(
                job_id=job_id,
                round=t,
                subject_id=subject_id,
                sha256=digest,
                payload=payload,
                receipt=signed,
                statement=statement.to_json(),
                seed_sha256=seed_sha256,
                accepted_at=now,
            )
        )
        session.flush()
        return signed


def _check_rerun(rnd: Round, subject_id: str) -> None:
    """A re-run takes part only from the contributors of its undecodable release."""
    if rnd.previous_run is not None and subject_id not in rerun_set(rnd):
        raise ForbiddenError(
            "not-in-rerun",
            f"round {rnd.round} re-runs only the contributors of its undecodable release",
        )


def _same_commitment(
    session: Session, job_id: str, t: int, subject_id: str, canonical: dict[str, Any]
) -> bool:
    """True if exactly this commitment is stored; a conflict if another one is."""
    stored = session.scalar(
        select(Commitment.signed).where(
            Commitment.job_id == job_id,
            Commitment.round == t,
            Commitment.subject_id == subject_id,
        )
    )
    return already_stored(
        stored, canonical, "duplicate-commitment", f"another commitment for round {t} is stored"
    )


def _check_fresh(session: Session, job_id: str, t: int, subject_id: str, digest: str) -> None:
    """One upload per (round, subject) and no payload twice in a job (conflicts otherwise)."""
    taken = session.scalar(
        select(Upload.subject_id).where(
            Upload.job_id == job_id, Upload.round == t, Upload.subject_id == subject_id
        )
    )
    if taken is not None:
        raise ConflictError("duplicate-upload", "already uploaded for this round")
    replayed = select(Upload.id).where(Upload.job_id == job_id, Upload.sha256 == digest)
    if session.scalar(replayed):
        raise ConflictError("replayed-payload", "this payload was uploaded before")
