"""The participant client library: enrol, get tokens, train, encrypt, upload, download.

This is the participant node without the web layer, usable from a script or a notebook::

    info = requests.get(kgc_url + "/v1/info").json()
    client = ParticipantClient.enrol(kgc_url, subject_id, code, rng=secrets.SystemRandom())
    job = client.fetch_job(ps_url, "digits-1")
    receipt, metrics = client.train_and_upload(job, 0, job.initial_weights, X, y)
    client.wait_for_release(ps_url, job.job_id, 0, timeout=600)
    w1 = client.download_model(ps_url, job.job_id, 0)

It follows docs/PROTOCOL.md: keys are generated here and only their public halves leave
(certified by the KGC); the update is scaled by the public weight ``w_i``, clipped (the clip
is reported), packed and encrypted under the job key; the released model is opened with
this participant's own BCP secret key.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bcp import PublicKey, PublicParams, RandomSource, SecretKey
from common.blocks import EncryptionMasks, JobKey, VectorEncryptor
from common.encoding import PackingLayout, decode_vector, encode_vector
from common.http import ServiceClient, ServiceError
from common.release import blind_from_text, open_release
from common.sealing import SealError, open_with_passphrase, seal_with_passphrase
from common.signing import (
    b64decode,
    generate_signing_key,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_hex,
    sign_json,
)
from common.wire import encode_frame, from_obj, to_obj
from participant.models import Model, model_from_spec
from participant.training import TrainingConfig, local_fit, participant_rng

__all__ = [
    "ClientError",
    "Identity",
    "JobView",
    "ParticipantClient",
    "decode_weights",
    "fetch_kgc_params",
]

Clock = Callable[[], float]

#: A cached token is renewed this many seconds before it expires (clock skew, slow calls).
TOKEN_MARGIN_SECONDS = 30.0


class ClientError(RuntimeError):
    """The protocol cannot go on (round failed, timed out, job malformed)."""


# --------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """Who this participant is: subject id, Ed25519 signing key, BCP key pair.

    Only :meth:`to_sealed` serialises it, so the secrets never sit on disk in the clear.
    """

    subject_id: str
    signing_key: Ed25519PrivateKey
    secret_key: SecretKey
    certificate: dict[str, Any] | None = None
    certificate_signature: str | None = None
    kgc_url: str = ""

    @classmethod
    def generate(cls, subject_id: str, params: PublicParams, rng: RandomSource) -> Identity:
        """Fresh keys made locally: the KGC only ever sees the public halves."""
        _, secret = params.keygen(rng)
        return cls(subject_id, generate_signing_key(), secret)

    @property
    def public_key(self) -> PublicKey:
        return self.secret_key.public_key

    @property
    def signing_key_hex(self) -> str:
        return public_key_hex(self.signing_key)

    def __repr__(self) -> str:  # never print a secret
        return f"Identity(subject_id={self.subject_id!r})"

    def to_sealed(self, passphrase: str | bytes) -> dict[str, Any]:
        """The identity sealed at rest (scrypt + AES-GCM)."""
        plain = {
            "subject_id": self.subject_id,
            "signing_key": private_key_to_bytes(self.signing_key).hex(),
            "bcp_secret_key": to_obj(self.secret_key),
            "certificate": self.certificate,
            "certificate_signature": self.certificate_signature,
            "kgc_url": self.kgc_url,
        }
        return seal_with_passphrase(json.dumps(plain, sort_keys=True).encode(), passphrase)

    @classmethod
    def from_sealed(cls, sealed: Any, passphrase: str | bytes) -> Identity:
        """Open a sealed identity; :class:`SealError` on a wrong passphrase or bad data."""
        raw = open_with_passphrase(sealed, passphrase)
        try:
            obj = json.loads(raw)
            secret = from_obj(obj["bcp_secret_key"])
            if not isinstance(secret, SecretKey):
                raise SealError("sealed identity holds no BCP secret key")
            return cls(
                subject_id=str(obj["subject_id"]),
                signing_key=private_key_from_bytes(bytes.fromhex(obj["signing_key"])),
                secret_key=secret,
                certificate=obj.get("certificate"),
                certificate_signature=obj.get("certificate_signature"),
                kgc_url=str(obj.get("kgc_url") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SealError):
                raise
            raise SealError("sealed identity is malformed") from None


def fetch_kgc_params(kgc_url: str) -> PublicParams:
    """The deployment's BCP parameters from ``GET /v1/info`` of the KGC."""
    info = ServiceClient(kgc_url).get_json("/v1/info", auth=False)
    params = from_obj(info.get("params"))
    if not isinstance(params, PublicParams):
        raise ClientError("KGC /v1/info has no bcp-params")
    return params


def decode_weights(text: str) -> npt.NDArray[np.float64]:
    """``initial_weights`` of a job definition: base64url of float64 little-endian."""
    return np.frombuffer(b64decode(text), dtype="<f8").astype(np.float64)


# --------------------------------------------------------------------------- job view


@dataclass
class JobView:
    """The PS's job view (``GET /v1/jobs/<id>``) parsed once, plus where it came from."""

    ps_url: str
    raw: dict[str, Any]
    job_key: JobKey
    packing: PackingLayout
    model: Model
    training: TrainingConfig
    seed: int
    participants: list[str]
    weights: dict[str, float]
    clip_bound: float
    rounds_total: int
    initial_weights: npt.NDArray[np.float64] = field(repr=False)

    @property
    def job_id(self) -> str:
        return str(self.raw["job_id"])

    def index_of(self, subject_id: str) -> int:
        """Participant ``i`` is the ``i``-th entry of the job's list (seeds its training)."""
        try:
            return self.participants.index(subject_id)
        except ValueError:
            raise ClientError(f"{subject_id} is not a participant of {self.job_id}") from None

    @classmethod
    def parse(cls, ps_url: str, raw: dict[str, Any]) -> JobView:
        try:
            definition = raw["definition"]
            job_key = from_obj(raw["job_key"])
            if not isinstance(job_key, JobKey):
                raise ClientError("job_key is not a bcp-job-key")
            training = dict(definition.get("training") or {})
            config = TrainingConfig(
                learning_rate=float(training.get("learning_rate", 0.1)),
                local_epochs=int(training.get("local_epochs", 1)),
                batch_size=int(training.get("batch_size", 32)),
                mode=str(training.get("mode", "fedavg")),
            )
            return cls(
                ps_url=ps_url,
                raw=raw,
                job_key=job_key,
                packing=PackingLayout.from_json(raw["packing"]),
                model=model_from_spec(definition["model"]),
                training=config,
                seed=int(training.get("seed", 0)),
                participants=[str(p["subject_id"]) for p in definition["participants"]],
                weights={str(k): float(v) for k, v in raw["weights"].items()},
                clip_bound=float(definition["encoding"]["clip_bound"]),
                rounds_total=int(raw.get("rounds_total", definition.get("rounds", 0))),
                initial_weights=decode_weights(definition["initial_weights"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ClientError):
                raise
            raise ClientError(f"malformed job view: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- client


def _default_window(job: JobView) -> int:
    """Small fixed-base tables when few exponentiations will use them (cheap to build)."""
    blocks = -(-job.packing.num_plaintexts // job.job_key.width)
    return 7 if blocks * max(job.rounds_total, 1) >= 64 else 4


class ParticipantClient:
    """One participant talking to the KGC and parameter servers.

    ``rng`` draws keys and encryption randomness (pass ``secrets.SystemRandom()`` in
    production, a seeded ``random.Random`` in tests); ``clock`` gives UNIX seconds.

    Encryption is split in two (:class:`~common.blocks.EncryptionMasks`): the
    exponentiations run on a background thread while the participant trains (and, with
    ``precompute_next``, while it waits for the previous release), so after training only
    one multiplication per ciphertext element is left.
    """

    def __init__(
        self,
        identity: Identity,
        kgc_url: str,
        *,
        rng: RandomSource | None = None,
        clock: Clock = time.time,
        workers: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 120.0,
        precompute_next: bool = True,
    ) -> None:
        self.identity = identity
        self.kgc_url = kgc_url.rstrip("/")
        self.rng: RandomSource = rng or secrets.SystemRandom()
        self.clock = clock
        self.workers = workers
        self.sleep = sleep
        self.timeout = timeout
        self._kgc = ServiceClient(self.kgc_url, timeout=timeout)
        self._token: tuple[str, float] | None = None
        self._jobs: dict[tuple[str, str], JobView] = {}
        self.precompute_next = precompute_next
        self._encryptors: dict[str, VectorEncryptor] = {}
        self._mask_thread: ThreadPoolExecutor | None = None
        self._masks: dict[str, Future[tuple[EncryptionMasks, float]]] = {}

    # -- enrolment and tokens

    @classmethod
    def enrol(
        cls,
        kgc_url: str,
        subject_id: str,
        code: str,
        params: PublicParams | None = None,
        *,
        rng: RandomSource | None = None,
        clock: Clock = time.time,
        workers: int = 1,
    ) -> ParticipantClient:
        """Generate keys locally and complete the enrolment the KGC operator started.

        ``params`` defaults to the KGC's published ones (``GET /v1/info``).
        """
        rng = rng or secrets.SystemRandom()
        params = params or fetch_kgc_params(kgc_url)
        identity = Identity.generate(subject_id, params, rng)
        identity.kgc_url = kgc_url.rstrip("/")
        answer = ServiceClient(kgc_url).post_json(
            f"/v1/enrolments/{subject_id}/complete",
            {
                "code": code,
                "signing_key": identity.signing_key_hex,
                "bcp_public_key": to_obj(identity.public_key),
            },
            auth=False,
        )
        identity.certificate = answer.get("certificate")
        identity.certificate_signature = answer.get("signature")
        return cls(identity, kgc_url, rng=rng, clock=clock, workers=workers)

    def token(self) -> str:
        """A KGC token for this subject, cached until shortly before it expires."""
        now = self.clock()
        if self._token is not None and now < self._token[1] - TOKEN_MARGIN_SECONDS:
            return self._token[0]
        challenge = {
            "purpose": "token",
            "subject_id": self.identity.subject_id,
            "timestamp": int(now),
            "nonce": secrets.token_urlsafe(16),
        }
        body = {
            "subject_id": challenge["subject_id"],
            "timestamp": challenge["timestamp"],
            "nonce": challenge["nonce"],
            "signature": sign_json(self.identity.signing_key, challenge),
        }
        answer = self._kgc.post_json("/v1/tokens", body, auth=False)
        self._token = (str(answer["token"]), float(answer["expires_at"]))
        return self._token[0]

    def _ps(self, ps_url: str) -> ServiceClient:
        return ServiceClient(ps_url, self.token, timeout=self.timeout)

    # -- jobs

    def fetch_job(self, ps_url: str, job_id: str, *, refresh: bool = False) -> JobView:
        """The job's definition, key and packing (cached: they never change)."""
        key = (ps_url.rstrip("/"), job_id)
        if refresh or key not in self._jobs:
            raw = self._ps(ps_url).get_json(f"/v1/jobs/{job_id}")
            self._jobs[key] = JobView.parse(key[0], raw)
        return self._jobs[key]

    def round_status(self, ps_url: str, job_id: str, round_number: int) -> dict[str, Any]:
        result: dict[str, Any] = self._ps(ps_url).get_json(
            f"/v1/jobs/{job_id}/rounds/{round_number}"
        )
        return result

    def encryptor(self, job: JobView) -> VectorEncryptor:
        """One encryptor per job: its fixed-base tables pay off over the rounds."""
        enc = self._encryptors.get(job.job_id)
        if enc is None:
            enc = VectorEncryptor(job.job_key, workers=self.workers, window=_default_window(job))
            self._encryptors[job.job_id] = enc
        return enc

    def prepare_encryption(self, job: JobView) -> None:
        """Start computing the masks of this job's next upload in the background.

        Idempotent while a computation is pending. Only the one background thread ever
        uses the job's encryptor, so its worker pipes are never shared between threads.
        """
        if job.job_id in self._masks:
            return
        if self._mask_thread is None:
            self._mask_thread = ThreadPoolExecutor(1, thread_name_prefix="trapdoor-masks")
        self._masks[job.job_id] = self._mask_thread.submit(self._compute_masks, job)

    def _compute_masks(self, job: JobView) -> tuple[EncryptionMasks, float]:
        start = time.perf_counter()
        masks = self.encryptor(job).precompute(job.packing.num_plaintexts, self.rng)
        return masks, time.perf_counter() - start

    def _take_masks(self, job: JobView) -> tuple[EncryptionMasks, float]:
        """The prepared masks (waiting for them if still running), or fresh ones now."""
        self.prepare_encryption(job)
        return self._masks.pop(job.job_id).result()

    def forget_job(self, job_id: str) -> None:
        """Drop the job's encryptor (its tables are large) once the job is over."""
        pending = self._masks.pop(job_id, None)
        if pending is not None and not pending.cancel():
            with contextlib.suppress(Exception):  # let it finish with the encryptor first
                pending.result()
        enc = self._encryptors.pop(job_id, None)
        if enc is not None:
            enc.close()

    def close(self) -> None:
        for job_id in list(self._masks) + list(self._encryptors):
            self.forget_job(job_id)
        if self._mask_thread is not None:
            self._mask_thread.shutdown(wait=True)
            self._mask_thread = None

    def train_and_upload(
        self,
        job: JobView,
        round_number: int,
        weights: npt.ArrayLike,
        X: np.ndarray,
        y: np.ndarray,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train from ``W_t``, upload ``Enc(w_i Δ_i)``; returns (signed receipt, metrics)."""
        subject = self.identity.subject_id
        index = job.index_of(subject)
        w_i = job.weights[subject]
        timings: dict[str, float] = {}
        self.prepare_encryption(job)  # exponentiations overlap the training below

        start = time.perf_counter()
        fit = local_fit(
            job.model,
            np.asarray(weights, dtype=np.float64),
            X,
            y,
            job.training,
            participant_rng(job.seed, index, round_number),
        )
        timings["train_s"] = time.perf_counter() - start

        start = time.perf_counter()
        plaintexts, clip = encode_vector(
            fit.update, job.packing, clip_bound=job.clip_bound, scale=w_i
        )
        timings["encode_s"] = time.perf_counter() - start

        start = time.perf_counter()
        masks, timings["masks_s"] = self._take_masks(job)
        timings["masks_wait_s"] = time.perf_counter() - start
        vector = masks.encrypt(plaintexts)
        frame = encode_frame(vector, {"job_id": job.job_id, "round": round_number})
        timings["encrypt_s"] = time.perf_counter() - start  # what is left after training

        start = time.perf_counter()
        receipt: dict[str, Any] = self._ps(job.ps_url).post_bytes(
            f"/v1/jobs/{job.job_id}/rounds/{round_number}/uploads", frame
        )
        timings["upload_s"] = time.perf_counter() - start
        if self.precompute_next and round_number + 1 < job.rounds_total:
            self.prepare_encryption(job)  # overlaps waiting for this round's release

        metrics = {
            "round": round_number,
            "train_loss": float(fit.metrics.get("train_loss", float("nan"))),
            "steps": int(fit.metrics.get("steps", 0)),
            "num_examples": int(fit.num_examples),
            "weight": w_i,
            "clip": {
                "clipped": int(clip.clipped),
                "max_abs": float(clip.max_abs),
                "clip_bound": float(clip.clip_bound),
            },
            "timings": timings,
            "bytes_up": len(frame),
        }
        return receipt, metrics

    def wait_for_release(
        self,
        ps_url: str,
        job_id: str,
        round_number: int,
        timeout: float,
        *,
        poll_seconds: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll the round until it is released; :class:`ClientError` if it fails or times out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.round_status(ps_url, job_id, round_number)
            except ServiceError as exc:
                if exc.status not in (0, 404, 502, 503):
                    raise
                status = {"status": "unknown"}
            if status.get("status") == "released":
                return status
            if status.get("status") == "failed":
                raise ClientError(f"round {round_number} of {job_id} failed")
            if time.monotonic() >= deadline:
                raise ClientError(f"round {round_number} of {job_id} not released in time")
            if should_stop is not None and should_stop():
                raise ClientError("stopped")
            self.sleep(poll_seconds)

    def download_bundle(self, ps_url: str, job_id: str, round_number: int) -> dict[str, Any]:
        """The raw release bundle (403 for a non-contributor, 409 before release)."""
        bundle: dict[str, Any] = self._ps(ps_url).get_json(
            f"/v1/jobs/{job_id}/rounds/{round_number}/model"
        )
        return bundle

    def open_bundle(self, job: JobView, bundle: dict[str, Any]) -> npt.NDArray[np.float64]:
        """Unwrap ``K`` with our own key, open ``W + R``, subtract ``R``, decode."""
        plaintexts = open_release(
            self.identity.secret_key,
            job_id=str(bundle["job_id"]),
            round_number=int(bundle["round"]),
            sealed_model=bundle["sealed_model"],
            wrapped_key=bundle["wrapped_key"],
            blind=blind_from_text(str(bundle["blind"]), job.packing.modulus),
        )
        return decode_vector(plaintexts, job.packing)

    def download_model(
        self, ps_url: str, job_id: str, round_number: int
    ) -> npt.NDArray[np.float64]:
        """``W_{t+1}`` released at the end of round ``t`` (contributors of ``t`` only)."""
        job = self.fetch_job(ps_url, job_id)
        bundle = self.download_bundle(ps_url, job_id, round_number)
        self.last_download_bytes = len(json.dumps(bundle))
        return self.open_bundle(job, bundle)

    last_download_bytes: int = 0
