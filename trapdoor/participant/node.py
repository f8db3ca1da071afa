"""The participant node's domain: identity at rest, joined jobs, one worker per job.

A node runs beside one data owner's data. It only calls out (KGC, parameter server); its
operator drives it through :mod:`trapdoor.participant.node_api`. Each joined job gets a worker
thread that, round after round, trains on ``W_t`` if it holds it, uploads ``Enc(w_i Δ_i)``,
waits for the release and downloads ``W_{t+1}``. A node that skips a round is not a
contributor, so it never receives ``W_{t+1}`` and cannot train any later round: that is the
protocol (contributor-only release), and the worker stops there.

A job is joined only once its view checks against the terms the KGC signed
(:meth:`ParticipantClient.fetch_job`): a refused job is recorded with status ``refused`` and
its reason, and nothing is ever encrypted for it. Released models are sealed at rest
(:class:`ModelSealer`): AES-256-GCM under a key derived from the node identity's Ed25519
private key, bound to the job and round.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tenacity
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import RandomSource
from trapdoor.crypto.blocks import EncryptedVector
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import b64encode, canonical_json, private_key_to_bytes
from trapdoor.ml.data import (
    DEFAULT_LABEL,
    DataError,
    LocalData,
    check_local_data,
    model_io_sizes,
)
from trapdoor.ml.data import load_local_data as load_data
from trapdoor.ml.datasets import Dataset, load_dataset, partition
from trapdoor.participant.app import ModelApp, NumPyApp
from trapdoor.participant.client import (
    ClientError,
    Identity,
    JobView,
    ParticipantClient,
    UndecodableReleaseError,
)
from trapdoor.participant.node_models import NodeIdentity, NodeJob, NodeModel, NodeRound
from trapdoor.participant.settings import NodeSettings
from trapdoor.protocol.common import MAX_RUN
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.db import database_bytes, session_scope
from trapdoor.service.errors import (
    BadGatewayError,
    ConflictError,
    ForbiddenError,
    InternalError,
    InvalidError,
    NotFoundError,
    TrapdoorError,
    UnavailableError,
    kind_for_status,
)
from trapdoor.service.http import ServiceError

__all__ = [
    "MODEL_KEY_INFO",
    "PASSPHRASE_ENV",
    "LocalData",
    "ModelSealer",
    "ParticipantNode",
    "dataset_partitions",
    "load_identity",
    "load_local_data",
]

log = logging.getLogger(__name__)

PASSPHRASE_ENV = NodeSettings.variable("passphrase")
TRANSIENT = (0, 502, 503, 504)
#: HKDF ``info`` of the key that seals released models at rest.
MODEL_KEY_INFO = b"trapdoor-node/model-at-rest/v1"
#: ``NodeModel.sealing`` of a sealed model; ``"none"`` marks a row written before sealing.
MODEL_SEALING = "a256gcm-v1"


def _relayed(status: int, relayed: tuple[int, ...]) -> type[TrapdoorError]:
    """The kind of a KGC or PS refusal passed on to the operator: the same kind for a
    ``relayed`` status, a bad gateway for any other (the node's own request failed)."""
    return (kind_for_status(status) if status in relayed else None) or BadGatewayError


# --------------------------------------------------------------------------- local data


def dataset_partitions(
    name: str, num_partitions: int, scheme: str = "iid", seed: int = 0
) -> tuple[Dataset, list[np.ndarray]]:
    """The split every party agrees on: ``load_dataset(seed)`` then ``partition(seed)``.

    The demo's plaintext reference uses the same function, so both runs see the same rows.
    """
    dataset = load_dataset(name, seed=seed)
    parts = partition(dataset.y_train, num_partitions, np.random.default_rng(seed), scheme=scheme)
    return dataset, parts


def load_local_data(config: Mapping[str, Any]) -> LocalData:
    """The node's rows, shape-checked at start (:class:`DataError` naming the source).

    ``DATA_PATH``: a source of :func:`trapdoor.ml.data.load_local_data` (``.npz`` with
    X_train, y_train, X_test, y_test; or ``.csv``, ``.parquet``, ``.npz`` with X and y), its
    test rows from ``DATA_TEST_PATH`` or a ``DATA_TEST_FRACTION`` split by ``DATA_SPLIT_SEED``,
    its label column ``DATA_LABEL``. Without it, a partition of a bundled data set.
    """
    path = config.get("DATA_PATH")
    if path:
        fraction = config.get("DATA_TEST_FRACTION")
        return load_data(
            str(path),
            config.get("DATA_TEST_PATH") or None,
            label=str(config.get("DATA_LABEL") or DEFAULT_LABEL),
            test_fraction=None if fraction is None else float(fraction),
            seed=int(config.get("DATA_SPLIT_SEED", 0)),
        )
    name = str(config.get("DATASET", "digits"))
    num = int(config.get("NUM_PARTITIONS", 1))
    index = int(config.get("PARTITION_INDEX", 0))
    scheme = str(config.get("PARTITION_SCHEME", "iid"))
    seed = int(config.get("PARTITION_SEED", 0))
    if not 0 <= index < num:
        raise ValueError(f"PARTITION_INDEX {index} is outside 0..{num - 1}")
    dataset, parts = dataset_partitions(name, num, scheme, seed)
    rows = parts[index]
    return LocalData(
        dataset.X_train[rows],
        dataset.y_train[rows],
        dataset.X_test,
        dataset.y_test,
        f"{name}:{scheme}:{index}/{num}:seed={seed}",
    )


def load_identity(
    sessions: sessionmaker[Session], passphrase: str, *, pin: bool = True
) -> Identity | None:
    """The node's identity from its database (``None`` before enrolment).

    An identity sealed before the KGC's key was pinned (a database from before
    hardening step 1) gets it once here, with ``pin``: the key is fetched from the KGC's
    ``GET /v1/info``, pinned only if the stored certificate verifies under it and the
    parameters are those of our BCP key (:meth:`ParticipantClient.ensure_kgc_pinned`), and
    the identity is stored sealed again with it. From then on the key never changes.
    Raises :class:`~trapdoor.service.http.ServiceError` if the KGC cannot be reached for that, and
    :class:`~trapdoor.participant.client.ClientError` if the key does not check.
    """
    with session_scope(sessions) as session:
        row = session.get(NodeIdentity, 1)
        if row is None:
            return None
        sealed, kgc_url = row.sealed, row.kgc_url
    identity = Identity.from_sealed(sealed, passphrase)
    identity.kgc_url = kgc_url
    if pin and identity.kgc_verify_key is None:
        ParticipantClient(identity, kgc_url).ensure_kgc_pinned()
        with session_scope(sessions) as session:
            row = session.get(NodeIdentity, 1)
            assert row is not None
            row.sealed = identity.to_sealed(passphrase)
        log.info("pinned the KGC's verification key of an older node identity")
    return identity


class ModelSealer:
    """Released models at rest: AES-256-GCM, associated data = (job id, round).

    The key is ``HKDF-SHA256(Ed25519 private key bytes, info=MODEL_KEY_INFO)``, derived
    once per process when the identity is unlocked: a copy of the database without the
    passphrase holds no readable model. A blob is ``nonce (12 bytes) || ciphertext``.
    """

    def __init__(self, identity: Identity) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MODEL_KEY_INFO)
        self._aead = AESGCM(hkdf.derive(private_key_to_bytes(identity.signing_key)))

    def __repr__(self) -> str:  # never print a key
        return "ModelSealer()"

    @staticmethod
    def _aad(job_id: str, round_number: int) -> bytes:
        return canonical_json({"job_id": job_id, "round": int(round_number), "v": 1})

    def seal(self, job_id: str, round_number: int, weights: npt.ArrayLike) -> bytes:
        plain = np.asarray(weights, dtype="<f8").tobytes()
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, self._aad(job_id, round_number))

    def open(self, job_id: str, round_number: int, blob: bytes) -> npt.NDArray[np.float64]:
        """The weights; :class:`SealError` for another key, job or round, or tampering."""
        try:
            plain = self._aead.decrypt(
                bytes(blob[:12]), bytes(blob[12:]), self._aad(job_id, round_number)
            )
        except (InvalidTag, ValueError):
            raise SealError("cannot open the stored model: wrong key or tampered") from None
        return np.frombuffer(plain, dtype="<f8").astype(np.float64)


# --------------------------------------------------------------------------- the node


class ParticipantNode:
    """Enrolment, jobs and their workers over one database.

    ``rng`` draws keys and encryption randomness (``None``: the OS generator).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        data: LocalData,
        passphrase: str,
        *,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        workers: int = 1,
        poll_seconds: float = 0.5,
        round_timeout: float = 24 * 3600.0,
        min_quorum: int = DEFAULT_MIN_QUORUM,
        app: NumPyApp | None = None,
    ) -> None:
        if not passphrase:
            raise ValueError(f"a passphrase is required ({PASSPHRASE_ENV})")
        check_local_data(data)  # the shape now; the fit to each job's model at its join
        self.sessions = sessions
        self.data = data
        #: What trains each round: the operator's app, else the job's model on our data.
        self.app: NumPyApp = app if app is not None else ModelApp(data)
        self._passphrase = passphrase
        self.clock = clock
        self.rng = rng
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.round_timeout = round_timeout
        self.min_quorum = min_quorum
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._client: ParticipantClient | None = None
        self._sealer: ModelSealer | None = None

    # -- identity

    def client(self) -> ParticipantClient:
        """The client for this node's identity (a conflict, ``not-enrolled``, before enrolment)."""
        with self._lock:
            if self._client is None:
                try:
                    identity = load_identity(self.sessions, self._passphrase)
                except SealError:
                    raise UnavailableError(
                        "sealed", f"{PASSPHRASE_ENV} does not open the stored identity"
                    ) from None
                except ServiceError as exc:
                    raise UnavailableError(
                        "kgc-unreachable", f"cannot pin the KGC's key: {exc.message}"
                    ) from None
                except ClientError as exc:
                    raise UnavailableError(exc.code, exc.message) from None
                if identity is None:
                    raise ConflictError("not-enrolled", "this node is not enrolled yet")
                self._client = self._make_client(identity)
            return self._client

    def _make_client(self, identity: Identity) -> ParticipantClient:
        client = ParticipantClient(
            identity,
            identity.kgc_url,
            rng=self.rng,
            clock=self.clock,
            workers=self.workers,
            min_quorum=self.min_quorum,
        )
        self._sealer = ModelSealer(identity)
        self._reseal_legacy_models(self._sealer)
        return client

    def sealer(self) -> ModelSealer:
        """The at-rest key of released models (derived when the identity is unlocked)."""
        self.client()
        assert self._sealer is not None
        return self._sealer

    def _reseal_legacy_models(self, sealer: ModelSealer) -> None:
        """Seal models a node stored in the clear before models were sealed at rest."""
        with session_scope(self.sessions) as session:
            for model in session.scalars(select(NodeModel).where(NodeModel.sealing == "none")):
                model.weights = sealer.seal(
                    model.job_id, model.round, np.frombuffer(model.weights, dtype="<f8")
                )
                model.sealing = MODEL_SEALING

    def _open_model(self, model: NodeModel) -> npt.NDArray[np.float64]:
        if model.sealing == "none":  # written in the clear before sealing existed
            return np.frombuffer(model.weights, dtype="<f8").astype(np.float64)
        if model.sealing != MODEL_SEALING:
            raise SealError(f"unknown model sealing {model.sealing!r}")
        return self.sealer().open(model.job_id, model.round, model.weights)

    def enrol(self, kgc_url: str, subject_id: str, code: str) -> dict[str, Any]:
        """Make keys locally, complete the enrolment, store them sealed; the certificate."""
        with session_scope(self.sessions) as session:
            if session.get(NodeIdentity, 1) is not None:
                raise ConflictError("already-enrolled", "this node is already enrolled")
        try:
            client = ParticipantClient.enrol(
                kgc_url,
                subject_id,
                code,
                rng=self.rng,
                clock=self.clock,
                workers=self.workers,
                min_quorum=self.min_quorum,
            )
        except ServiceError as exc:
            kind = _relayed(exc.status, (400, 403, 404, 409, 422))
            raise kind(exc.code, f"KGC refused the enrolment: {exc.message}") from None
        except ClientError as exc:  # a certificate or KGC answer that does not check
            raise BadGatewayError(exc.code, f"KGC enrolment not accepted: {exc.message}") from None
        identity = client.identity
        with session_scope(self.sessions) as session:
            session.add(
                NodeIdentity(
                    id=1,
                    subject_id=subject_id,
                    kgc_url=kgc_url,
                    sealed=identity.to_sealed(self._passphrase),
                    certificate=identity.certificate,
                    created_at=self.clock(),
                )
            )
        with self._lock:
            self._client = client
            self._sealer = ModelSealer(identity)
        return {"certificate": identity.certificate, "signature": identity.certificate_signature}

    def status(self) -> dict[str, Any]:
        with session_scope(self.sessions) as session:
            ident = session.get(NodeIdentity, 1)
            jobs = [self._job_summary(j) for j in session.scalars(select(NodeJob)).all()]
            identity = {
                "enrolled": ident is not None,
                "subject_id": ident.subject_id if ident else None,
                "kgc_url": ident.kgc_url if ident else None,
            }
        return {"identity": identity, "data": self.data.summary(), "jobs": jobs}

    def stats(self) -> dict[str, Any]:
        """Counts for the operator's metrics: joined jobs by status, rounds this node
        contributed to, released models it opened, the database's size."""
        with session_scope(self.sessions) as session:
            jobs = session.execute(
                select(NodeJob.status, func.count()).group_by(NodeJob.status)
            ).all()
            contributed = session.scalar(
                select(func.count()).select_from(NodeRound).where(NodeRound.contributed)
            )
            opened = session.scalar(
                select(func.count()).select_from(NodeRound).where(NodeRound.status == "released")
            )
            engine = session.get_bind()
        return {
            "jobs": {str(status): int(n) for status, n in jobs},
            "rounds_contributed": int(contributed or 0),
            "models_opened": int(opened or 0),
            "database_bytes": database_bytes(engine),
        }

    # -- jobs

    @staticmethod
    def _job_summary(job: NodeJob) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "ps_url": job.ps_url,
            "ps_subject_id": job.ps_subject_id,
            "status": job.status,
            "next_round": job.next_round,
            "holds_model": job.holds_model,
            "skip_rounds": list(job.skip_rounds),
            "error": job.error,
            "model": job.model_spec,
            "share_metrics": bool(job.share_metrics),
        }

    def join(
        self,
        ps_url: str,
        job_id: str,
        skip_rounds: list[int] | None = None,
        ps_subject_id: str | None = None,
    ) -> dict[str, Any]:
        """Join a job at a PS (it must list us) and start its worker.

        ``ps_subject_id`` pins the PS's subject id (else its ``/v1/info`` names it). A job
        whose view does not check against the KGC-signed terms is refused (422
        ``job-refused``, the reason in the message), recorded with status ``refused``
        and its reason, and never trained or uploaded for; joining it again retries.
        """
        client = self.client()
        url = ps_url.rstrip("/")
        with session_scope(self.sessions) as session:
            existing = session.get(NodeJob, job_id)
            if existing is not None and existing.status != "refused":
                raise ConflictError("already-joined", f"already joined {job_id}")
        try:
            view = client.fetch_job(url, job_id, refresh=True, ps_subject_id=ps_subject_id)
            view.index_of(client.identity.subject_id)
        except ServiceError as exc:
            kind = _relayed(exc.status, (401, 403, 404))
            raise kind(exc.code, f"PS refused the job: {exc.message}") from None
        except ClientError as exc:
            if exc.code == "job-refused":
                self._record_refusal(job_id, url, ps_subject_id, exc.message)
                raise InvalidError("job-refused", exc.message) from None
            if exc.code == "not-a-participant":
                raise ForbiddenError(exc.code, exc.message) from None
            if exc.code == "ps-subject-conflict":
                raise ConflictError(exc.code, exc.message) from None
            raise BadGatewayError(exc.code, exc.message) from None
        self._check_data_for(client, view, job_id, url)
        with session_scope(self.sessions) as session:
            existing = session.get(NodeJob, job_id)
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(
                NodeJob(
                    job_id=job_id,
                    ps_url=url,
                    ps_subject_id=view.ps_subject_id,
                    skip_rounds=sorted({int(t) for t in skip_rounds or []}),
                    status="joined",
                    next_round=0,
                    holds_model=True,
                    joined_at=self.clock(),
                    model_spec=dict(view.raw["definition"]["model"]),
                    share_metrics=view.share_metrics,
                )
            )
        self._tell_ps(client, url, job_id, "joined")
        self._start_worker(job_id)
        return self.job_status(job_id)

    def _check_data_for(
        self, client: ParticipantClient, view: JobView, job_id: str, ps_url: str
    ) -> None:
        """Refuse to join a job our data cannot train (422 ``bad-data``, recorded as a
        refusal with its reason, and told to the PS's operator), before any worker runs:
        no round's upload is spent on rows of the wrong width or labels the model has no
        class for."""
        features, classes = model_io_sizes(view.model)
        try:
            check_local_data(self.data, features=features, classes=classes)
        except DataError as exc:
            self._record_refusal(job_id, ps_url, view.ps_subject_id, f"bad-data: {exc}")
            # The operator learns why, not where: our file's path stays here.
            told = str(exc).replace(self.data.source, "the node's data")
            self._tell_ps(client, ps_url, job_id, "declined", f"bad-data: {told}")
            raise InvalidError("bad-data", str(exc)) from None

    @staticmethod
    def _tell_ps(
        client: ParticipantClient,
        ps_url: str,
        job_id: str,
        status: str,
        reason: str | None = None,
    ) -> None:
        """Best effort: the PS's operator sees that we joined, or why we declined."""
        try:
            client.tell_participation(ps_url, job_id, status, reason and reason[:500])
        except (ServiceError, ClientError) as exc:
            log.warning("job %s: could not tell the PS we %s: %s", job_id, status, exc)

    def _record_refusal(
        self, job_id: str, ps_url: str, ps_subject_id: str | None, reason: str
    ) -> None:
        """A refused job shows in the node's status with its reason (nothing else kept)."""
        log.warning("job %s refused: %s", job_id, reason)
        with session_scope(self.sessions) as session:
            job = session.get(NodeJob, job_id)
            if job is None:
                job = NodeJob(job_id=job_id, next_round=0, holds_model=False, skip_rounds=[])
                session.add(job)
            job.ps_url = ps_url
            job.ps_subject_id = ps_subject_id
            job.status = "refused"
            job.error = reason
            job.joined_at = self.clock()

    def job_status(self, job_id: str) -> dict[str, Any]:
        with session_scope(self.sessions) as session:
            job = session.get(NodeJob, job_id)
            if job is None:
                raise NotFoundError("not-found", f"no joined job {job_id}")
            rounds = session.scalars(
                select(NodeRound).where(NodeRound.job_id == job_id).order_by(NodeRound.round)
            ).all()
            return {
                **self._job_summary(job),
                "rounds": [
                    {
                        "round": r.round,
                        "status": r.status,
                        "contributed": r.contributed,
                        "test_accuracy": r.test_accuracy,
                        "test_loss": r.test_loss,
                        "receipt": r.receipt,
                        **r.metrics,
                    }
                    for r in rounds
                ],
            }

    def latest_model(self, job_id: str) -> dict[str, Any]:
        with session_scope(self.sessions) as session:
            if session.get(NodeJob, job_id) is None:
                raise NotFoundError("not-found", f"no joined job {job_id}")
            model = session.get(NodeModel, job_id)
            if model is None:
                raise NotFoundError("no-model", "no released model held for this job yet")
            try:
                weights = self._open_model(model)
            except SealError as exc:
                raise InternalError("model-unreadable", str(exc)) from None
            blob = np.asarray(weights, dtype="<f8").tobytes()
            return {"job_id": job_id, "round": model.round, "weights": b64encode(blob)}

    # -- workers

    def start(self) -> None:
        """Resume the workers of unfinished jobs (after a restart)."""
        with session_scope(self.sessions) as session:
            ids = list(
                session.scalars(
                    select(NodeJob.job_id).where(NodeJob.status.in_(("joined", "running")))
                )
            )
        for job_id in ids:
            self._start_worker(job_id)

    def _start_worker(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._threads and self._threads[job_id].is_alive():
                return
            thread = threading.Thread(
                target=self._worker, args=(job_id,), name=f"job-{job_id}", daemon=True
            )
            self._threads[job_id] = thread
        thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        if self._client is not None:
            self._client.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for every worker to end (tests and the demo)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())

    def _set_job(self, job_id: str, **values: Any) -> None:
        """Update a job's row; a new status is one protocol event, so one log line."""
        if "status" in values:
            log.info("job %s: %s", job_id, values["status"])
        with session_scope(self.sessions) as session:
            job = session.get(NodeJob, job_id)
            if job is not None:
                for key, value in values.items():
                    setattr(job, key, value)

    def _put_round(self, job_id: str, t: int, **values: Any) -> None:
        """Update round ``t``'s row; each status (committed, uploaded, audited, ...) is one
        protocol event, logged as one line."""
        if "status" in values:
            log.info("job %s round %d: %s", job_id, t, values["status"])
        with session_scope(self.sessions) as session:
            row = session.get(NodeRound, (job_id, t))
            if row is None:
                row = NodeRound(job_id=job_id, round=t, status="new", contributed=False, metrics={})
                session.add(row)
            metrics = values.pop("metrics", None)
            if metrics:
                row.metrics = {**(row.metrics or {}), **metrics}
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = self.clock()

    def _retry(self, call: Callable[[], Any], attempts: int = 20) -> Any:
        """Ride out a PS or KGC restart: transient errors are retried with exponential
        back-off (from ``poll_seconds``, at most 10 s apart); a stop ends the wait."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, ServiceError) and exc.status in TRANSIENT
            ),
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential(multiplier=self.poll_seconds, max=10.0),
            sleep=self._sleep_unless_stopped,
            reraise=True,
        )
        return retrying(call)

    def _sleep_unless_stopped(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise ClientError("stopped")

    def _initial_state(
        self, job_id: str, view: JobView
    ) -> tuple[int, npt.NDArray[np.float64] | None]:
        """Next round and the ``W_t`` we hold for it (``None``: we hold no model)."""
        with session_scope(self.sessions) as session:
            job = session.get(NodeJob, job_id)
            assert job is not None
            t, holds = job.next_round, job.holds_model
            model = session.get(NodeModel, job_id)
            if not holds:
                return t, None
            if t == 0:
                return 0, view.initial_weights
            if model is not None and model.round == t - 1:
                return t, self._open_model(model)
        return t, None

    def _worker(self, job_id: str) -> None:
        try:
            self._run_job(job_id)
        except ClientError as exc:
            if exc.code == "job-refused":
                log.warning("job %s refused: %s", job_id, exc.message)
                self._set_job(job_id, status="refused", error=exc.message)
            elif not self._stop.is_set():
                log.warning("job %s stopped: %s", job_id, exc)
                self._set_job(job_id, status="failed", error=str(exc))
        except DataError as exc:  # the data changed under us, or a model we could not size
            log.warning("job %s failed on its data: %s", job_id, exc)
            self._set_job(job_id, status="failed", error=f"bad-data: {exc}")
        except ServiceError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            self._set_job(job_id, status="failed", error=f"{exc.status} {exc.code}: {exc.message}")
        except Exception as exc:
            log.exception("job %s worker crashed", job_id)
            self._set_job(job_id, status="failed", error=f"internal: {type(exc).__name__}")

    def _run_job(self, job_id: str) -> None:
        client = self.client()
        with session_scope(self.sessions) as session:
            job = session.get(NodeJob, job_id)
            assert job is not None
            ps_url, skip, ps_subject = job.ps_url, set(job.skip_rounds), job.ps_subject_id
        view: JobView = self._retry(
            lambda: client.fetch_job(ps_url, job_id, ps_subject_id=ps_subject)
        )
        self._set_job(job_id, status="running")
        t, weights = self._initial_state(job_id, view)
        while t < view.rounds_total:
            if self._stop.is_set():
                return
            if weights is None or t in skip:
                # Not a contributor of round t: no W_{t+1} for us, so no later round either.
                self._put_round(job_id, t, status="skipped" if weights is not None else "no-model")
                self._set_job(job_id, status="excluded", holds_model=False, next_round=t + 1)
                self._put_round(job_id, t, metrics={"note": "not a contributor: model withheld"})
                client.forget_job(job_id)
                return
            try:
                if view.aggregation == "masked":
                    self._masked_round(client, view, job_id, t, weights)
                else:
                    self._bcp_round(client, view, job_id, t, weights)
            except ClientError as exc:
                if exc.code != "not-included":
                    raise
                # The round's set closed without us, or we were dropped: no W_{t+1}.
                self._put_round(job_id, t, status="excluded", metrics={"note": exc.message})
                self._set_job(job_id, status="excluded", holds_model=False, next_round=t + 1)
                client.forget_job(job_id)
                return
            try:
                weights = self._download(client, view, job_id, t, weights)
            except UndecodableReleaseError as exc:
                self._report_undecodable(client, view, job_id, t, exc)
                continue  # round t's re-run, from the same W_t
            t += 1
        self._set_job(job_id, status="finished", next_round=t)
        client.forget_job(job_id)

    def _bcp_round(
        self,
        client: ParticipantClient,
        view: JobView,
        job_id: str,
        t: int,
        weights: npt.NDArray[np.float64],
    ) -> None:
        """Commit, upload, and audit each attempt until round ``t`` is released."""
        own = self._train_round(client, view, job_id, t, weights)
        self._retry(
            lambda: client.audit_until_released(
                view,
                t,
                self.round_timeout,
                own=own,
                poll_seconds=self.poll_seconds,
                should_stop=self._stop.is_set,
            )
        )
        self._put_round(job_id, t, status="audited", metrics={"audit": client.last_audit})

    def _masked_round(
        self,
        client: ParticipantClient,
        view: JobView,
        job_id: str,
        t: int,
        weights: npt.NDArray[np.float64],
    ) -> None:
        """Train, mask and upload round ``t`` in one request, then wait for its release.

        After a restart that came after the upload (409 ``duplicate-upload``), the round
        goes on with our upload. :class:`ClientError` ``not-included`` when the round was
        released without us.
        """
        with session_scope(self.sessions) as session:
            done = session.get(NodeRound, (job_id, t))
            uploaded = done is not None and done.contributed
        if not uploaded:
            prepared = client.prepare_masked_update(view, t, weights, app=self.app)
            try:
                receipt = self._retry(lambda: client.upload_masked(view, prepared))
            except ServiceError as exc:
                if exc.status != 409 or exc.code != "duplicate-upload":
                    raise
                receipt = None
            self._put_round(
                job_id,
                t,
                status="uploaded",
                contributed=True,
                receipt=receipt,
                metrics=prepared.metrics,
            )
        status = self._retry(
            lambda: client.wait_for_release(
                view.ps_url,
                job_id,
                t,
                self.round_timeout,
                poll_seconds=self.poll_seconds,
                should_stop=self._stop.is_set,
            )
        )
        if client.identity.subject_id not in status.get("contributors", []):
            raise ClientError(f"round {t} was released without us", "not-included")

    def _train_round(
        self,
        client: ParticipantClient,
        view: JobView,
        job_id: str,
        t: int,
        weights: npt.NDArray[np.float64],
    ) -> EncryptedVector | None:
        """Train, commit and upload round ``t``; our ciphertext (None after a restart).

        After a restart that came after the upload, the audit fetches our upload back from
        the PS (checked against our commitment in the closed set).
        """
        with session_scope(self.sessions) as session:
            done = session.get(NodeRound, (job_id, t))
            if done is not None and done.contributed:
                return None  # uploaded before a restart
        try:
            prepared = client.prepare_update(view, t, weights, app=self.app)
            self._retry(lambda: client.commit(view, prepared))
            self._put_round(job_id, t, status="committed", metrics=prepared.metrics)
            self._retry(
                lambda: client.wait_for_round(
                    view.ps_url,
                    job_id,
                    t,
                    self.round_timeout,
                    at_least="committed",
                    poll_seconds=self.poll_seconds,
                    should_stop=self._stop.is_set,
                )
            )
            closed = self._retry(lambda: client.closed_set(view, t, prepared.run))
            receipt = self._retry(lambda: client.upload(view, prepared, closed))
        except ServiceError as exc:
            if exc.status != 409 or "duplicate" not in exc.code:
                raise
            # Committed before a restart. If the upload got through too (we died before
            # recording it), the audit fetches it back from the PS; otherwise we no longer
            # hold the committed ciphertext and the round goes on without us.
            status = self._retry(lambda: client.round_status(view.ps_url, job_id, t))
            if client.identity.subject_id not in status.get("contributors", []):
                raise ClientError(
                    f"round {t}: {exc.code} after a restart", "not-included"
                ) from None
            self._put_round(
                job_id,
                t,
                status="uploaded",
                contributed=True,
                metrics={"note": "uploaded before a restart"},
            )
            return None
        self._put_round(
            job_id,
            t,
            status="uploaded",
            contributed=True,
            receipt=receipt,
            metrics=prepared.metrics,
        )
        return prepared.vector

    def _report_undecodable(
        self,
        client: ParticipantClient,
        view: JobView,
        job_id: str,
        t: int,
        exc: UndecodableReleaseError,
    ) -> None:
        """Report round ``t``'s undecodable release and wait for its re-run.

        After a re-run's release fails to decode as well, the job cannot go on
        (:class:`ClientError`: the worker marks it failed).
        """
        run = exc.binding.run
        self._put_round(
            job_id,
            t,
            status="undecodable",
            contributed=False,
            metrics={f"undecodable_run_{run}": exc.message},
        )
        self._retry(lambda: client.report_undecodable(view, exc))
        if run >= MAX_RUN:
            raise ClientError(f"round {t}: the re-run's release did not decode either", exc.code)
        self._retry(
            lambda: client.wait_for_rerun(
                view,
                t,
                self.round_timeout,
                poll_seconds=self.poll_seconds,
                should_stop=self._stop.is_set,
            )
        )
        self._put_round(job_id, t, status="rerun")

    def _download(
        self,
        client: ParticipantClient,
        view: JobView,
        job_id: str,
        t: int,
        current: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        start = time.perf_counter()
        weights: npt.NDArray[np.float64] = self._retry(
            lambda: client.download_model(view.ps_url, job_id, t, current)
        )
        download_s = time.perf_counter() - start
        log.info("job %s round %d: released model downloaded and opened", job_id, t)
        evaluation = self._evaluate(client, view, t, weights)
        with session_scope(self.sessions) as session:
            row = session.get(NodeRound, (job_id, t))
            assert row is not None
            row.status = "released"
            if "loss" in evaluation:
                row.test_loss = evaluation["loss"]
                row.test_accuracy = evaluation["metrics"].get("accuracy")
            timings = dict((row.metrics or {}).get("timings", {}))
            timings["download_s"] = download_s
            row.metrics = {
                **(row.metrics or {}),
                "timings": timings,
                "bytes_down": client.last_download_bytes,
                "evaluation": evaluation,
            }
            row.updated_at = self.clock()
            self._store_model(session, job_id, t, weights)
            job = session.get(NodeJob, job_id)
            assert job is not None
            job.next_round = t + 1
        return weights

    def _evaluate(
        self,
        client: ParticipantClient,
        view: JobView,
        t: int,
        weights: npt.NDArray[np.float64],
    ) -> dict[str, Any]:
        """Our app's ``evaluate`` of ``W_{t+1}`` on our test rows, and, in a job with
        ``share_metrics``, its signed report to the PS.

        Neither is allowed to stop the job: the model is ours already, and an app whose
        evaluation fails (or a PS that does not take the report) is recorded, not fatal.
        """
        try:
            loss, examples, metrics = client.evaluate_model(view, t, weights, self.app)
        except ClientError as exc:
            log.warning("job %s round %d: evaluation failed: %s", view.job_id, t, exc.message)
            return {"error": exc.message}
        evaluation: dict[str, Any] = {"loss": loss, "num_examples": examples, "metrics": metrics}
        if view.share_metrics:
            try:
                self._retry(
                    lambda: client.report_metrics(view, t, loss, examples, metrics), attempts=5
                )
                evaluation["reported"] = True
                log.info("job %s round %d: evaluation reported to the PS", view.job_id, t)
            except (ClientError, ServiceError) as exc:
                log.warning("job %s round %d: evaluation not reported: %s", view.job_id, t, exc)
                evaluation["reported"] = False
        return evaluation

    def _store_model(
        self, session: Session, job_id: str, t: int, weights: npt.NDArray[np.float64]
    ) -> None:
        """Keep ``W_{t+1}`` (released at the end of round ``t``) sealed at rest."""
        blob = self.sealer().seal(job_id, t, weights)
        model = session.get(NodeModel, job_id)
        if model is None:
            session.add(NodeModel(job_id=job_id, round=t, weights=blob, sealing=MODEL_SEALING))
        else:
            model.round, model.weights, model.sealing = t, blob, MODEL_SEALING
