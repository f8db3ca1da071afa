"""The parameter server's domain: one façade over a module per protocol step.

No Flask here; :mod:`trapdoor.ps.api` is a thin adapter over :class:`ParameterServer`.
The PS never decrypts and no longer encrypts: ``Enc(W_0)`` is the trivial encryption the
job terms name, and the blind ``R`` is added as a trivial encryption too
(:func:`trapdoor.protocol.audit.audit_round`). Where each step lives:

==========================================  ===========================================
step                                        module
==========================================  ===========================================
create, list and view jobs and rounds       :mod:`trapdoor.ps.jobs`
commitments, closed set, uploads (both)     :mod:`trapdoor.ps.uploads`
audit package, frames, audits               :mod:`trapdoor.ps.audits`
ending phases, aggregating, failing, tick   :mod:`trapdoor.ps.rounds`
release requests, finishing, downloads      :mod:`trapdoor.ps.release`
undecodable reports and re-runs             :mod:`trapdoor.ps.reruns`
shared evaluation metrics (opt-in)          :mod:`trapdoor.ps.metrics`
nodes that joined or declined a job         :mod:`trapdoor.ps.participation`
model chunks, job setups, row lookups       :mod:`trapdoor.ps.storage`
each mode's pure checks and messages        :mod:`trapdoor.ps.bcp`, :mod:`trapdoor.ps.masked`
refusals shared by every check              :mod:`trapdoor.ps.checks`
the state every step shares                 :mod:`trapdoor.ps.state`
==========================================  ===========================================

Every state change is one transaction, so a crash at any point leaves a state from which
:meth:`ParameterServer.tick` carries on. Refusals are
:class:`~trapdoor.service.errors.TrapdoorError` subclasses; the web layer maps them to
HTTP statuses.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import RandomSource
from trapdoor.ps.audits import Audits
from trapdoor.ps.jobs import Jobs
from trapdoor.ps.kgc_gateway import KgcGateway, KgcInfo
from trapdoor.ps.metrics import Metrics
from trapdoor.ps.participation import Participation
from trapdoor.ps.release import Releases
from trapdoor.ps.reruns import Reruns
from trapdoor.ps.rounds import Rounds, TickResult
from trapdoor.ps.state import PsState
from trapdoor.ps.storage import DEFAULT_CHUNK_ELEMENTS, JobSetups, ModelStore
from trapdoor.ps.uploads import Uploads

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "ParameterServer", "TickResult"]


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
        models = ModelStore(chunk_elements)
        if not subject_id:
            raise ValueError("the PS's subject id (its tokens' audience) is required")
        kgc = gateway.info()
        self._state = state = PsState(
            sessions=sessions,
            gateway=gateway,
            signing_key=signing_key,
            subject_id=subject_id,
            kgc=kgc,
            clock=clock,
            rng=rng or random.SystemRandom(),
            models=models,
            setups=JobSetups(kgc),
            release_retry_seconds=release_retry_seconds,
            release_lease_seconds=release_lease_seconds,
        )
        self._jobs = Jobs(state)
        self._releases = Releases(state)
        self._rounds = Rounds(state, self._releases)
        self._uploads = Uploads(state, self._rounds)
        self._audits = Audits(state)
        self._reruns = Reruns(state)
        self._metrics = Metrics(state)
        self._participation = Participation(state)

    # ------------------------------------------------------------------ plumbing

    @property
    def subject_id(self) -> str:
        """The PS's enrolled subject id (its tokens' audience)."""
        return self._state.subject_id

    @property
    def kgc(self) -> KgcInfo:
        """The KGC's public parameters and verification key, fetched at start."""
        return self._state.kgc

    @property
    def clock(self) -> Callable[[], float]:
        return self._state.clock

    @property
    def verify_key_hex(self) -> str:
        """The PS's Ed25519 public key (closed sets, receipts and release requests)."""
        return self._state.verify_key_hex

    @property
    def on_release_pending(self) -> Callable[[], None] | None:
        """Called (without arguments) when a round is ready for release; the app wakes its
        background worker with it."""
        return self._state.on_release_pending

    @on_release_pending.setter
    def on_release_pending(self, callback: Callable[[], None] | None) -> None:
        self._state.on_release_pending = callback

    def ping(self) -> bool:
        """Readiness: the database answers."""
        with self._state.sessions() as session:
            session.execute(text("SELECT 1"))
        return True

    def close(self) -> None:
        """Nothing to stop (the PS holds no worker processes); kept for the app's shutdown."""

    # ------------------------------------------------------------------ jobs

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, have the KGC sign the job's terms, store ``W_0``, open round 0."""
        return self._jobs.create_job(body)

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._jobs.list_jobs()

    def job_view(self, job_id: str, *, operator: bool = False) -> dict[str, Any]:
        return self._jobs.job_view(job_id, operator=operator)

    def record_participation(self, job_id: str, subject_id: str, body: Any) -> dict[str, Any]:
        """A participant's node joined the job, or declined it and why (for the operator)."""
        return self._participation.record(job_id, subject_id, body)

    def upload_limit(self, job_id: str, subject_id: str) -> int:
        """The most bytes an upload of ``subject_id`` to ``job_id`` may have."""
        return self._jobs.upload_limit(job_id, subject_id)

    def participants(self, job_id: str) -> frozenset[str]:
        return self._jobs.participants(job_id)

    def round_view(self, job_id: str, t: int) -> dict[str, Any]:
        return self._jobs.round_view(job_id, t)

    def stats(self) -> dict[str, Any]:
        """Counts for the operator's metrics (jobs, rounds, uploads, release latency)."""
        return self._jobs.stats()

    # ------------------------------------------------------------------ commitments, uploads

    def accept_commitment(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a participant's signed commitment; (answer, whether it is new)."""
        return self._uploads.accept_commitment(job_id, t, subject_id, signed)

    def closed_set(self, job_id: str, t: int) -> dict[str, Any]:
        return self._uploads.closed_set(job_id, t)

    def accept_upload(self, job_id: str, t: int, subject_id: str, data: bytes) -> dict[str, Any]:
        """Validate and store one update (either mode); return the PS-signed receipt."""
        return self._uploads.accept_upload(job_id, t, subject_id, data)

    # ------------------------------------------------------------------ audits

    def audit_package(self, job_id: str, t: int, requester: str | None) -> dict[str, Any]:
        return self._audits.audit_package(job_id, t, requester)

    def base_frame(self, job_id: str, t: int, requester: str | None) -> bytes:
        return self._audits.base_frame(job_id, t, requester)

    def upload_frame(self, job_id: str, t: int, subject_id: str, requester: str | None) -> bytes:
        return self._audits.upload_frame(job_id, t, subject_id, requester)

    def accept_audit(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """Store a contributor's signed audit of the current attempt; (answer, is it new)."""
        return self._audits.accept_audit(job_id, t, subject_id, signed)

    # ------------------------------------------------------------------ phases, release

    def close_round(self, job_id: str, t: int, *, now: float | None = None) -> dict[str, Any]:
        """Operator: end round ``t``'s commit or upload phase now; the round's new view."""
        self._rounds.close_round(job_id, t, now=now)
        return self._jobs.round_view(job_id, t)

    def release_round(self, job_id: str, t: int, *, now: float | None = None) -> bool:
        """Release a fully audited round through the KGC; True if it is released now."""
        return self._releases.release_round(job_id, t, now=now)

    def accept_undecodable(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """A contributor's signed report that round ``t``'s release does not decode."""
        return self._reruns.accept_undecodable(job_id, t, subject_id, signed)

    def accept_metrics(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        """A contributor's signed evaluation of round ``t``'s released model (jobs with
        ``share_metrics``); (answer, whether it is new)."""
        return self._metrics.accept_report(job_id, t, subject_id, signed)

    def tick(self, now: float | None = None) -> TickResult:
        """Deadline checks and pending releases; called every second by the app's worker."""
        return self._rounds.tick(now)

    def download(self, job_id: str, t: int, subject_id: str) -> dict[str, Any]:
        """A contributor's part of round ``t``'s release bundle, its binding and ``R``."""
        return self._releases.download(job_id, t, subject_id)
