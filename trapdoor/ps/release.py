"""The release: have the KGC seal a round's model to its contributors, then serve it.

A round is due for release when it is ``closed`` and (bcp) every contributor of the
current attempt audited it. :meth:`Releases.release_round` (1) persists the exact signed
request, (2) calls the KGC, (3) checks and stores the bundle, marks the round released and
opens the next (:meth:`Releases.finish`). A retry re-sends the stored request, so the KGC
(idempotent for the same request) answers with the same bundle; a lease
(``rounds.release_after``) keeps two workers from releasing one round at once, and any
failure leaves the round closed with a back-off.

The request is, for bcp, ``F = Agg · (1 + R N)`` framed with the closed set and each
contributor's statement and audit (:func:`trapdoor.ps.bcp.release_frame`); for a masked
job, JSON naming each contributor's ``y`` by its digest with its statement and seed
ciphertext (:func:`trapdoor.ps.masked.release_body`). A contributor then downloads its part
of the bundle (:meth:`Releases.download`).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from trapdoor.crypto.blocks import add_plaintexts
from trapdoor.protocol.bundle import (
    MaskedReleaseBinding,
    ReleaseBinding,
    blind_to_text,
    plaintexts_from_bytes,
)
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.release_request import release_request_header
from trapdoor.ps import bcp, masked
from trapdoor.ps.kgc_gateway import KgcError, check_masked_release_bundle, check_release_bundle
from trapdoor.ps.models import Release, Round
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import (
    audits_complete,
    check_participant,
    existing_round,
    get_job,
    get_round,
    is_masked,
    open_round,
    round_audits,
    round_uploads,
)
from trapdoor.service.errors import ConflictError, ForbiddenError, TrapdoorError

__all__ = ["Releases"]

log = logging.getLogger(__name__)


class Releases:
    """Release requests of both modes, finishing a release, and the downloads."""

    def __init__(self, state: PsState) -> None:
        self._state = state

    def due(self, now: float) -> list[tuple[str, int]]:
        """``(job_id, round)`` of every closed round whose lease or back-off has run out."""
        with self._state.sessions() as session:
            rows = session.execute(
                select(Round.job_id, Round.round).where(
                    Round.status == "closed",
                    (Round.release_after.is_(None)) | (Round.release_after <= now),
                )
            ).all()
        return [(str(job_id), int(t)) for job_id, t in rows]

    def release_round(self, job_id: str, t: int, *, now: float | None = None) -> bool:
        """Release a fully audited round through the KGC; True if it is released now.

        Any failure (KGC unreachable or refusing, a crash) leaves the round closed with a
        back-off; :meth:`trapdoor.ps.rounds.Rounds.tick` tries again.
        """
        state = self._state
        now = state.now(now)
        with state.transaction() as session:
            job = get_job(session, job_id)
            by_mask = is_masked(job)
            rnd = get_round(session, job_id, t, lock=True)
            if rnd is None or rnd.status != "closed":
                return False
            if not by_mask and not audits_complete(session, rnd):
                return False
            if rnd.release_after is not None and rnd.release_after > now:
                return False
            rnd.release_after = now + state.release_lease_seconds  # our lease on this release
        try:
            if by_mask:
                body, masked_binding = self._masked_request(job_id, t, now)
                bundle = state.gateway.release_masked(body)
                check_masked_release_bundle(bundle, state.kgc, binding=masked_binding)
            else:
                frame, binding, contributors, num_plaintexts = self._request(job_id, t, now)
                bundle = state.gateway.release(frame)
                check_release_bundle(
                    bundle,
                    state.kgc,
                    binding=binding,
                    contributors=contributors,
                    num_plaintexts=num_plaintexts,
                )
            # Stamped when the bundle is stored (the KGC call takes seconds): released_at is
            # when the model became downloadable, and the next round's deadline runs from it.
            self.finish(job_id, t, bundle, max(now, state.clock()))
        except Exception as exc:
            reason = (
                exc.message if isinstance(exc, KgcError | TrapdoorError) else type(exc).__name__
            )
            log.warning("job %s round %d: release failed (%s); will retry", job_id, t, reason)
            with state.transaction() as session:
                rnd = get_round(session, job_id, t, lock=True)
                if rnd is not None and rnd.status == "closed":
                    rnd.release_after = now + state.release_retry_seconds
                    rnd.last_error = reason[:500]
            return False
        return True

    def _request(
        self, job_id: str, t: int, now: float
    ) -> tuple[bytes, ReleaseBinding, list[str], int]:
        """The signed ``F`` frame: the stored one on a retry, else a new one.

        ``F = Agg · (1 + R N)`` from the stored aggregate (model version ``t + 1``) and
        ``R``; both must have the digests every contributor signed, so nothing the
        auditors did not recompute is sent. The header carries the closed set and, per
        contributor (sorted), its upload statement and its audit.
        """
        state = self._state
        with state.sessions() as session:
            job = get_job(session, job_id)
            setup = state.setups.bcp(job)
            num_plaintexts = setup.layout.num_plaintexts
            rnd = get_round(session, job_id, t)
            if rnd is None or rnd.digests is None or rnd.blind is None or not rnd.contributors:
                raise RuntimeError(f"round {t} has no audited attempt")
            contributors = sorted(rnd.contributors)
            binding = _binding(job_id, rnd)
            pending = session.get(Release, (job_id, t))
            if pending is not None and pending.request is not None:
                return pending.request, binding, contributors, num_plaintexts
            aggregate = state.models.load_model(session, job_id, t + 1, setup)
            blinded = add_plaintexts(aggregate, plaintexts_from_bytes(rnd.blind, setup.n))
            if (vector_sha256(aggregate), vector_sha256(blinded)) != (
                rnd.digests["aggregate_sha256"],
                rnd.digests["release_sha256"],
            ):
                raise RuntimeError(f"round {t}'s stored aggregate is not the audited one")
            statements = {u.subject_id: u.statement for u in round_uploads(session, job_id, t)}
            audits = round_audits(session, rnd)
            if any(statements.get(s) is None for s in contributors):
                raise ConflictError("unsigned-upload", "an upload of this round has no statement")
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
        frame = bcp.release_frame(state.signing_key, blinded, header)
        stored = self._store_request(job_id, t, frame, now, blind=stored_blind)
        return stored, binding, contributors, num_plaintexts

    def _masked_request(
        self, job_id: str, t: int, now: float
    ) -> tuple[bytes, MaskedReleaseBinding]:
        """A masked round's signed JSON request: the stored one on a retry, else a new one.

        Per contributor (sorted) its signed statement and the seed ciphertext of its
        stored frame; for a re-run, run 0's ``undecodable`` reports. Nothing of ``Z`` or
        ``y`` goes to the KGC: the binding names each ``y`` by its digest.
        """
        state = self._state
        with state.sessions() as session:
            job = get_job(session, job_id)
            setup = state.setups.masked(job)
            rnd = get_round(session, job_id, t)
            if rnd is None or not rnd.contributors:
                raise RuntimeError(f"round {t} has no summed uploads")
            contributors = sorted(rnd.contributors)
            uploads = {u.subject_id: u for u in round_uploads(session, job_id, t)}
            if any(uploads.get(s) is None or uploads[s].statement is None for s in contributors):
                raise RuntimeError(f"round {t} lacks an upload of a contributor")
            binding = masked.expected_binding(
                setup.terms, t, rnd.run, {s: uploads[s].sha256 for s in contributors}
            )
            pending = session.get(Release, (job_id, t))
            if pending is not None and pending.request is not None:
                return pending.request, binding
            body = masked.release_body(
                state.signing_key,
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
        return self._store_request(job_id, t, body, now, blind=b""), binding

    def _store_request(
        self, job_id: str, t: int, request: bytes, now: float, *, blind: bytes
    ) -> bytes:
        """Persist ``request`` before it is sent; another worker's, if it stored one first.

        ``blind`` is the ``R`` the request was blinded with (masked: none), served with
        the bundle.
        """
        with self._state.transaction() as session:
            release = session.get(Release, (job_id, t), with_for_update=True)
            if release is None:
                session.add(
                    Release(job_id=job_id, round=t, blind=blind, request=request, requested_at=now)
                )
            elif release.request is not None:  # another worker got there first: use its
                return release.request
            else:
                release.blind, release.request, release.requested_at = blind, request, now
        return request

    def finish(self, job_id: str, t: int, bundle: dict[str, Any], now: float) -> None:
        """Store the bundle, mark the round released and open the next (one transaction)."""
        with self._state.transaction() as session:
            job = get_job(session, job_id)
            rnd = get_round(session, job_id, t, lock=True)
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
            total = job.rounds_total
            if t + 1 >= total:
                job.status = "finished"
            else:
                session.add(open_round(job_id, t + 1, now, job.definition))
                job.current_round = t + 1
        log.info("job %s round %d released", job_id, t)
        if t + 1 >= total:
            log.info("job %s finished after %d rounds", job_id, total)
        else:
            log.info("job %s round %d opened", job_id, t + 1)

    def download(self, job_id: str, t: int, subject_id: str) -> dict[str, Any]:
        """A contributor's part of round ``t``'s release bundle, its binding and ``R``.

        Masked: the bundle's binding fields, ``sealed_mask``, ``wrapped_keys_sha256`` and
        ``release_signature``, and only the caller's ``wrapped_key``.
        """
        state = self._state
        with state.sessions() as session:
            job = get_job(session, job_id)
            check_participant(job, subject_id)
            rnd = existing_round(session, job_id, t)
            release = session.get(Release, (job_id, t))
            if rnd.status != "released" or release is None or release.bundle is None:
                raise ConflictError("not-released", f"round {t} is not released yet")
            if is_masked(job):
                view = masked.download_view(release.bundle, subject_id)
            else:
                n = state.setups.bcp(job).n
                blind = blind_to_text(plaintexts_from_bytes(release.blind, n), n)
                view = bcp.download_view(release.bundle, subject_id, blind)
            if view is None:
                raise ForbiddenError("not-a-contributor", f"did not contribute to round {t}")
        log.info("job %s round %d: release downloaded by %s", job_id, t, subject_id)
        return view


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
