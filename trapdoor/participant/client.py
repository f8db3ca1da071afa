"""The participant client library: enrol, get tokens, train, encrypt, upload, download.

This is the participant node without the web layer, usable from a script or a notebook::

    client = ParticipantClient.enrol(kgc_url, subject_id, code, rng=secrets.SystemRandom())
    job = client.fetch_job(ps_url, "digits-1")  # refused unless the KGC signed it
    receipt, metrics = client.contribute(job, 0, job.initial_weights, X, y)
    client.wait_for_release(ps_url, job.job_id, 0, timeout=600)
    w1 = client.download_model(ps_url, job.job_id, 0, job.initial_weights)

It follows docs/PROTOCOL.md: keys are generated here and only
their public halves leave (certified by the KGC, whose verification key is pinned at
enrolment); every job is checked against the KGC-signed terms
(:func:`trapdoor.protocol.job.check_job_view`) before anything is encrypted for it; tokens name
their audience (the KGC, or one parameter server's subject id) and are never sent to
another service; each upload carries a statement signed with this participant's certified
key. The update is scaled by the public weight ``w_i``, clipped (the clip is reported),
and then, by the job's aggregation mode, either masked with a fresh seed that is
encrypted under the job key (``masked``: one upload, and the release is the round's mask
sum, so ``download_model`` needs our ``W_t``) or packed and encrypted under the job key
(``bcp``: commit, upload, audit); the release is opened with this participant's own BCP
secret key.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.bcp import Ciphertext, PublicKey, PublicParams, RandomSource, SecretKey
from trapdoor.crypto.blocks import EncryptedVector, EncryptionMasks, JobKey, VectorEncryptor
from trapdoor.crypto.encoding import (
    ClipReport,
    EncodingError,
    PackingLayout,
    decode_vector,
    encode_vector,
)
from trapdoor.crypto.masking import (
    derive_mask,
    draw_seed,
    mask_vector,
    seed_to_int,
    vector_to_bytes,
)
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.sealing import SealError, open_with_passphrase, seal_with_passphrase
from trapdoor.crypto.signing import (
    b64decode,
    generate_signing_key,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_from_hex,
    public_key_hex,
)
from trapdoor.crypto.wire import (
    decode_frame,
    encode_frame,
    encode_ring_frame,
    from_obj,
    to_obj,
)
from trapdoor.ml.models import Model, model_from_spec
from trapdoor.ml.spec import training_spec
from trapdoor.ml.training import FitResult, TrainingConfig, local_fit, participant_rng
from trapdoor.participant.app import (
    AppResultError,
    NumPyApp,
    checked_evaluate,
    checked_fit,
    round_config,
)
from trapdoor.protocol.audit import (
    AuditDigests,
    AuditedRound,
    audit_round,
    build_audit_statement,
    build_undecodable_statement,
)
from trapdoor.protocol.bundle import (
    MaskedReleaseBinding,
    ReleaseBinding,
    blind_from_text,
    bundle_sha256,
    listed_uploads,
    next_model,
    open_mask_sum,
    open_release,
    verify_release_statement,
)
from trapdoor.protocol.commitment import ClosedSet, build_commitment, pok_context, verify_closed_set
from trapdoor.protocol.common import MAX_RUN, ProtocolError, vector_sha256
from trapdoor.protocol.enrolment import verify_certificate
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM, JobTerms, MaskedLayout, check_job_view
from trapdoor.protocol.metrics import build_metrics_report
from trapdoor.protocol.token import KGC_AUDIENCE, token_request
from trapdoor.protocol.upload import (
    build_masked_upload_statement,
    build_upload_statement,
    encode_update,
    mask_context,
    seed_sha256,
    seed_to_obj,
)
from trapdoor.service.http import ServiceClient, ServiceError

__all__ = [
    "DEFAULT_MIN_QUORUM",
    "ClientError",
    "Identity",
    "JobView",
    "KgcInfo",
    "ParticipantClient",
    "UndecodableReleaseError",
    "decode_weights",
    "fetch_kgc_info",
    "fetch_kgc_params",
]

Clock = Callable[[], float]

#: A cached token is renewed this many seconds before it expires (clock skew, slow calls).
TOKEN_MARGIN_SECONDS = 30.0


class ClientError(RuntimeError):
    """The protocol cannot go on (job refused, round failed, timed out, job malformed).

    ``code`` is a stable machine code: ``job-refused`` when a job fails the checks of
    :func:`trapdoor.protocol.job.check_job_view` (the reason's own code is ``reason``),
    ``bad-certificate``, ``bad-kgc-info``, ``kgc-key-changed``, ``bad-ps-info``,
    ``ps-subject-conflict``, ``bad-job``, ``not-a-participant``, or ``client-error``.
    """

    def __init__(self, message: str, code: str = "client-error", reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        #: For ``job-refused``: the :class:`~trapdoor.protocol.common.ProtocolError` code.
        self.reason = reason


class UndecodableReleaseError(ClientError):
    """A release opened (it is the one the KGC sealed for us) but does not decode.

    Someone uploaded an encryption of out-of-range values. :meth:`ParticipantClient.
    report_undecodable` tells the PS, naming the bundle; when every contributor does,
    the round runs once more (run 1) from ``W_t``, and after that the job fails.
    """

    def __init__(
        self, message: str, binding: ReleaseBinding | MaskedReleaseBinding, bundle_sha256: str
    ):
        super().__init__(message, "undecodable-release")
        self.binding = binding
        self.bundle_sha256 = bundle_sha256


# --------------------------------------------------------------------------- the KGC


@dataclass(frozen=True)
class KgcInfo:
    """What ``GET <kgc>/v1/info`` publishes: the BCP parameters and the KGC's Ed25519 key."""

    params: PublicParams
    verify_key: str  # raw Ed25519 public key, lowercase hex

    @classmethod
    def parse(cls, info: object) -> KgcInfo:
        if not isinstance(info, dict):
            raise ClientError("KGC /v1/info is not an object", "bad-kgc-info")
        try:
            params = from_obj(info.get("params"))
        except ValueError:
            params = None
        if not isinstance(params, PublicParams):
            raise ClientError("KGC /v1/info has no bcp-params", "bad-kgc-info")
        key = info.get("verify_key")
        try:
            public_key_from_hex(key)
        except ValueError:
            raise ClientError("KGC /v1/info has no Ed25519 verify_key", "bad-kgc-info") from None
        assert isinstance(key, str)
        return cls(params, key.lower())


def fetch_kgc_info(kgc_url: str, *, timeout: float = 60.0) -> KgcInfo:
    """The deployment's BCP parameters and the KGC's verification key (``GET /v1/info``)."""
    return KgcInfo.parse(ServiceClient(kgc_url, timeout=timeout).get_json("/v1/info", auth=False))


def fetch_kgc_params(kgc_url: str) -> PublicParams:
    """The deployment's BCP parameters from ``GET /v1/info`` of the KGC."""
    return fetch_kgc_info(kgc_url).params


# --------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """Who this participant is: subject id, Ed25519 signing key, BCP key pair, pinned KGC.

    ``kgc_verify_key`` is the KGC's Ed25519 key (hex), pinned at enrolment once the
    certificate verified under it: every job's terms must be signed by it. Only
    :meth:`to_sealed` serialises the identity, so the secrets never sit on disk in the
    clear.
    """

    subject_id: str
    signing_key: Ed25519PrivateKey
    secret_key: SecretKey
    certificate: dict[str, Any] | None = None
    certificate_signature: str | None = None
    kgc_url: str = ""
    kgc_verify_key: str | None = None

    @classmethod
    def generate(cls, subject_id: str, params: PublicParams, rng: RandomSource) -> Identity:
        """Fresh keys made locally: the KGC only ever sees the public halves."""
        _, secret = params.keygen(rng)
        return cls(subject_id, generate_signing_key(), secret)

    @property
    def public_key(self) -> PublicKey:
        return self.secret_key.public_key

    @property
    def params(self) -> PublicParams:
        """The BCP parameters this identity's key pair lives under (the KGC's)."""
        return self.secret_key.public_key.params

    @property
    def signing_key_hex(self) -> str:
        return public_key_hex(self.signing_key)

    def __repr__(self) -> str:  # never print a secret
        return f"Identity(subject_id={self.subject_id!r})"

    def check_certificate(self, kgc_verify_key: str) -> None:
        """The certificate is signed by ``kgc_verify_key`` and certifies *our* keys.

        :class:`ClientError` (``bad-certificate``) otherwise: a KGC (or a man in the
        middle) that certified other keys, or signed with another key, is not trusted.
        """
        try:
            verify_certificate(
                kgc_verify_key,
                self.certificate,
                self.certificate_signature,
                subject_id=self.subject_id,
                role="participant",
                signing_key=self.signing_key_hex,
                bcp_public_key=to_obj(self.public_key),
            )
        except ProtocolError as exc:
            raise ClientError(exc.message, "bad-certificate") from None

    def pin_kgc(self, info: KgcInfo) -> None:
        """Pin the KGC's key after checking it against the certificate and our parameters.

        Called at enrolment, and once for an identity sealed before keys were pinned
        (see :meth:`ParticipantClient.ensure_kgc_pinned`). A key already pinned never
        changes: another one is :class:`ClientError` (``kgc-key-changed``).
        """
        if info.params != self.params:
            raise ClientError(
                "the KGC's parameters differ from those of this participant's key",
                "bad-kgc-info",
            )
        if self.kgc_verify_key is not None and self.kgc_verify_key != info.verify_key:
            raise ClientError("the KGC's verify_key differs from the pinned one", "kgc-key-changed")
        self.check_certificate(info.verify_key)
        self.kgc_verify_key = info.verify_key

    def to_sealed(self, passphrase: str | bytes) -> dict[str, Any]:
        """The identity sealed at rest (scrypt + AES-GCM), the pinned KGC key included."""
        plain = {
            "subject_id": self.subject_id,
            "signing_key": private_key_to_bytes(self.signing_key).hex(),
            "bcp_secret_key": to_obj(self.secret_key),
            "certificate": self.certificate,
            "certificate_signature": self.certificate_signature,
            "kgc_url": self.kgc_url,
            "kgc_verify_key": self.kgc_verify_key,
        }
        return seal_with_passphrase(json.dumps(plain, sort_keys=True).encode(), passphrase)

    @classmethod
    def from_sealed(cls, sealed: Any, passphrase: str | bytes) -> Identity:
        """Open a sealed identity; :class:`SealError` on a wrong passphrase or bad data.

        An identity sealed before the KGC key was pinned (older node databases) opens
        with ``kgc_verify_key = None``; :meth:`ParticipantClient.ensure_kgc_pinned` then
        fetches the key once, checks the certificate under it and pins it (the node
        stores it sealed again, see :func:`trapdoor.participant.node.load_identity`).
        """
        raw = open_with_passphrase(sealed, passphrase)
        try:
            obj = json.loads(raw)
            secret = from_obj(obj["bcp_secret_key"])
            if not isinstance(secret, SecretKey):
                raise SealError("sealed identity holds no BCP secret key")
            pinned = obj.get("kgc_verify_key")
            if pinned is not None:
                public_key_from_hex(pinned)
            return cls(
                subject_id=str(obj["subject_id"]),
                signing_key=private_key_from_bytes(bytes.fromhex(obj["signing_key"])),
                secret_key=secret,
                certificate=obj.get("certificate"),
                certificate_signature=obj.get("certificate_signature"),
                kgc_url=str(obj.get("kgc_url") or ""),
                kgc_verify_key=str(pinned).lower() if pinned is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SealError):
                raise
            raise SealError("sealed identity is malformed") from None


def decode_weights(text: str) -> npt.NDArray[np.float64]:
    """``initial_weights`` of a job definition: base64url of float64 little-endian."""
    return np.frombuffer(b64decode(text), dtype="<f8").astype(np.float64)


# --------------------------------------------------------------------------- job view


@dataclass
class JobView:
    """The PS's job view (``GET /v1/jobs/<id>``), checked against the KGC-signed terms.

    ``terms`` are the verified :class:`~trapdoor.protocol.job.JobTerms`; the job key, the
    participants, their weights and the number of rounds come from them, never from the
    PS's unsigned fields. The definition, packing and initial weights are the served ones,
    which :func:`~trapdoor.protocol.job.check_job_view` matched to the signed digests.
    """

    ps_url: str
    raw: dict[str, Any]
    terms: JobTerms
    job_key: JobKey
    #: the bcp mode's packing (None for a masked job)
    packing: PackingLayout | None
    #: the masked mode's ring layout (None for a bcp job)
    layout: MaskedLayout | None
    model: Model
    training: TrainingConfig
    seed: int
    participants: list[str]
    weights: dict[str, float]
    clip_bound: float
    rounds_total: int
    #: the definition's ``share_metrics``: contributors report their evaluation of each
    #: released model to the PS (:mod:`trapdoor.protocol.metrics`)
    share_metrics: bool
    initial_weights: npt.NDArray[np.float64] = field(repr=False)

    @property
    def job_id(self) -> str:
        return self.terms.job_id

    @property
    def ps_subject_id(self) -> str:
        """The parameter server the KGC signed this job for (the tokens' audience)."""
        return self.terms.param_server

    @property
    def aggregation(self) -> str:
        """``"bcp"`` or ``"masked"``, as the KGC signed it."""
        return self.terms.aggregation

    @property
    def bcp_packing(self) -> PackingLayout:
        """The packing of a bcp job (:class:`ClientError` for a masked one)."""
        if self.packing is None:
            raise ClientError(f"{self.job_id} is a masked job", "wrong-aggregation")
        return self.packing

    @property
    def masked_layout(self) -> MaskedLayout:
        """The ring layout of a masked job (:class:`ClientError` for a bcp one)."""
        if self.layout is None:
            raise ClientError(f"{self.job_id} is a bcp job", "wrong-aggregation")
        return self.layout

    @property
    def seed_plaintexts(self) -> int:
        """Plaintexts encrypted per upload: the packed model, or the masked mode's seed."""
        return 1 if self.layout is not None else self.bcp_packing.num_plaintexts

    def index_of(self, subject_id: str) -> int:
        """Participant ``i`` is the ``i``-th entry of the job's list (seeds its training)."""
        try:
            return self.participants.index(subject_id)
        except ValueError:
            raise ClientError(
                f"{subject_id} is not a participant of {self.job_id}", "not-a-participant"
            ) from None

    @classmethod
    def parse(cls, ps_url: str, raw: dict[str, Any], terms: JobTerms) -> JobView:
        """Build the view of a job whose ``raw`` view :func:`check_job_view` accepted."""
        try:
            definition = raw["definition"]
            # The PS checked it with the same function when the job was created.
            training = training_spec(definition.get("training") or {})
            masked = terms.aggregation == "masked"
            packing = None if masked else PackingLayout.from_json(raw["packing"])
            layout = MaskedLayout.from_json(raw["packing"]) if masked else None
            model = model_from_spec(definition["model"])
            initial = decode_weights(definition["initial_weights"])
            clip_bound = float(definition["encoding"]["clip_bound"])
            share_metrics = definition.get("share_metrics", False)
            if not isinstance(share_metrics, bool):
                raise TypeError("share_metrics is not a boolean")
        except (KeyError, TypeError, ValueError, EncodingError) as exc:
            raise ClientError(
                f"malformed job view: {type(exc).__name__}: {exc}", "bad-job"
            ) from None
        job_key = terms.job_key
        problems = []
        if packing is not None:
            if packing.modulus != int(job_key.params.n):
                problems.append("the packing is not modulo the KGC's N")
            if packing.num_plaintexts != terms.num_plaintexts:
                problems.append("the packing's plaintext count differs from the signed one")
        length = packing.length if packing is not None else terms.num_plaintexts
        if layout is not None:
            try:
                layout.check_fits(participants=len(terms.participants), rounds=terms.rounds)
            except EncodingError as exc:
                problems.append(f"the ring layout: {exc}")
            if job_key.width != 1:
                problems.append("a masked job's key has one component")
            if layout.length != terms.num_plaintexts:
                problems.append("the layout's length differs from the signed one")
        if length != model.num_parameters or initial.size != model.num_parameters:
            problems.append("the packing, model and initial weights differ in size")
        if problems:
            raise ClientError(
                "job refused: bad-job: " + "; ".join(problems), "job-refused", "bad-job"
            )
        return cls(
            ps_url=ps_url,
            raw=raw,
            terms=terms,
            job_key=job_key,
            packing=packing,
            layout=layout,
            model=model,
            training=training.config,
            seed=training.seed,
            participants=list(terms.participants),
            weights=dict(terms.weights),
            clip_bound=clip_bound,
            rounds_total=terms.rounds,
            share_metrics=share_metrics,
            initial_weights=initial,
        )


# --------------------------------------------------------------------------- client

#: A round's phases at the PS, in order (``failed`` ends it anywhere).
ROUND_PHASES = ("open", "committed", "closed", "released")


@dataclass
class PreparedUpload:
    """This round's encrypted update, before it is committed and uploaded."""

    round: int
    vector: EncryptedVector = field(repr=False)
    payload_sha256: str
    metrics: dict[str, Any]
    #: Each block's encryption randomness (secret, memory only): the upload proves it
    #: knows them (:mod:`trapdoor.crypto.pok`).
    randomness: Sequence[int] = field(default=(), repr=False)
    #: The round's run this update is committed in (set by :meth:`ParticipantClient.commit`).
    run: int = 0


@dataclass
class PreparedMaskedUpload:
    """This round's masked update, ready to upload in one request: the ring frame of
    ``y = encode(w·Δ) + μ``, with ``Enc(s)`` and the signed statement in its header."""

    round: int
    run: int
    frame: bytes = field(repr=False)
    payload_sha256: str
    metrics: dict[str, Any]


def _fit_metrics(
    round_number: int, fit: FitResult, weight: float, clip: ClipReport, timings: dict[str, float]
) -> dict[str, Any]:
    """What a node records about one round's local update."""
    return {
        "round": round_number,
        "train_loss": float(fit.metrics.get("train_loss", float("nan"))),
        "steps": int(fit.metrics.get("steps", 0)),
        "num_examples": int(fit.num_examples),
        "weight": weight,
        "clip": {
            "clipped": int(clip.clipped),
            "max_abs": float(clip.max_abs),
            "clip_bound": float(clip.clip_bound),
        },
        "timings": timings,
    }


def app_config(job: JobView, round_number: int, participant_index: int) -> dict[str, Any]:
    """The ``config`` an app's ``fit`` gets (its keys: :mod:`trapdoor.participant.app`)."""
    return round_config(
        job_id=job.job_id,
        round_number=round_number,
        seed=job.seed,
        participant_index=participant_index,
        training=job.training,
        model=job.model,
    )


def _default_window(job: JobView) -> int:
    """Small fixed-base tables when few exponentiations will use them (cheap to build)."""
    blocks = -(-job.seed_plaintexts // job.job_key.width)
    return 7 if blocks * max(job.rounds_total, 1) >= 64 else 4


def _base(url: str) -> str:
    return url.rstrip("/")


class ParticipantClient:
    """One participant talking to the KGC and parameter servers.

    ``rng`` draws keys and encryption randomness (pass ``secrets.SystemRandom()`` in
    production, a seeded ``random.Random`` in tests); ``clock`` gives UNIX seconds.
    ``min_quorum`` is the smallest job quorum this participant accepts
    (:data:`~trapdoor.protocol.job.DEFAULT_MIN_QUORUM`): with fewer contributors, differencing
    released models tells too much about one participant's update.

    Tokens are per audience (:meth:`token`): the KGC's, or one PS's subject id, which is
    learned from ``GET <ps>/v1/info`` unless pinned (:meth:`pin_ps`); one subject id
    belongs to one PS URL, so a token for one PS is never sent to another.

    Encryption is split in two (:class:`~trapdoor.crypto.blocks.EncryptionMasks`): the
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
        min_quorum: int = DEFAULT_MIN_QUORUM,
    ) -> None:
        if isinstance(min_quorum, bool) or not isinstance(min_quorum, int) or min_quorum < 1:
            raise ValueError("min_quorum must be a positive integer")
        self.identity = identity
        self.kgc_url = _base(kgc_url)
        self.rng: RandomSource = rng or secrets.SystemRandom()
        self.clock = clock
        self.workers = workers
        self.sleep = sleep
        self.timeout = timeout
        self.min_quorum = min_quorum
        self._kgc = ServiceClient(self.kgc_url, timeout=timeout)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        #: PS URL -> its subject id (the audience of its tokens), and back.
        self._ps_subjects: dict[str, str] = {}
        self._jobs: dict[tuple[str, str], JobView] = {}
        self.precompute_next = precompute_next
        self._encryptors: dict[str, VectorEncryptor] = {}
        self._mask_thread: ThreadPoolExecutor | None = None
        self._masks: dict[str, Future[tuple[EncryptionMasks, float]]] = {}
        #: What the last audit cost: attempt, contributors, bytes downloaded, seconds.
        self.last_audit: dict[str, Any] = {}

    # -- enrolment and the pinned KGC key

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
        min_quorum: int = DEFAULT_MIN_QUORUM,
    ) -> ParticipantClient:
        """Generate keys locally and complete the enrolment the KGC operator started.

        The KGC's ``GET /v1/info`` gives its parameters (``params``, if given, must equal
        them) and its verification key; the returned certificate must verify under that
        key and certify exactly the keys made here (:class:`ClientError`
        ``bad-certificate`` otherwise). The key is then pinned in the identity.
        """
        rng = rng or secrets.SystemRandom()
        info = fetch_kgc_info(kgc_url)
        if params is not None and params != info.params:
            raise ClientError("the KGC publishes other parameters than given", "bad-kgc-info")
        identity = Identity.generate(subject_id, info.params, rng)
        identity.kgc_url = _base(kgc_url)
        answer = ServiceClient(kgc_url).post_json(
            f"/v1/enrolments/{subject_id}/complete",
            {
                "code": code,
                "signing_key": identity.signing_key_hex,
                "bcp_public_key": to_obj(identity.public_key),
            },
            auth=False,
        )
        if not isinstance(answer, dict):
            raise ClientError("the KGC's enrolment answer is not an object", "bad-certificate")
        identity.certificate = answer.get("certificate")
        identity.certificate_signature = answer.get("signature")
        identity.pin_kgc(info)
        return cls(identity, kgc_url, rng=rng, clock=clock, workers=workers, min_quorum=min_quorum)

    def ensure_kgc_pinned(self) -> bool:
        """Pin the KGC's key of an identity sealed before keys were pinned; True if it did.

        Older node databases hold identities without ``kgc_verify_key``: the key is then
        fetched once from ``GET <kgc>/v1/info``, and pinned only if the stored certificate
        verifies under it and the parameters are those of our BCP key (trust on first
        use, bound to the certificate we already held). The caller stores the identity
        sealed again.
        """
        if self.identity.kgc_verify_key is not None:
            return False
        info = KgcInfo.parse(self._kgc.get_json("/v1/info", auth=False))
        self.identity.pin_kgc(info)
        return True

    @property
    def kgc_verify_key(self) -> str:
        """The pinned KGC key (hex), pinning it first for an older identity."""
        self.ensure_kgc_pinned()
        assert self.identity.kgc_verify_key is not None
        return self.identity.kgc_verify_key

    # -- tokens

    def token(self, audience: str = KGC_AUDIENCE) -> str:
        """A token for ``audience`` (the KGC, or a PS's subject id), cached per audience.

        The challenge is :func:`trapdoor.protocol.token.token_challenge`; a cached token is
        renewed shortly before it expires.
        """
        now = self.clock()
        cached = self._tokens.get(audience)
        if cached is not None and now < cached[1] - TOKEN_MARGIN_SECONDS:
            return cached[0]
        body = token_request(
            self.identity.signing_key,
            self.identity.subject_id,
            int(now),
            secrets.token_urlsafe(16),
            audience,
        )
        answer = self._kgc.post_json("/v1/tokens", body, auth=False)
        token = (str(answer["token"]), float(answer["expires_at"]))
        self._tokens[audience] = token
        return token[0]

    # -- parameter servers

    def pin_ps(self, ps_url: str, subject_id: str) -> None:
        """Use ``subject_id`` as the audience of ``ps_url``'s tokens (operator-pinned).

        A subject id belongs to one PS URL: :class:`ClientError` (``ps-subject-conflict``)
        if another URL already has it, so no PS gets a token meant for another one.
        """
        if not isinstance(subject_id, str) or not subject_id or subject_id == KGC_AUDIENCE:
            raise ClientError("a PS subject id must be a non-empty string", "bad-ps-info")
        url = _base(ps_url)
        with self._lock:
            for other, subject in self._ps_subjects.items():
                if subject == subject_id and other != url:
                    raise ClientError(
                        f"{url} claims the subject id of the PS at {other}", "ps-subject-conflict"
                    )
            self._ps_subjects[url] = subject_id

    def ps_subject(self, ps_url: str) -> str:
        """The PS's subject id: pinned, or learned once from ``GET <ps>/v1/info``."""
        url = _base(ps_url)
        subject = self._ps_subjects.get(url)
        if subject is None:
            info = self._http(url).get_json("/v1/info", auth=False)
            subject = info.get("subject_id") if isinstance(info, dict) else None
            if not isinstance(subject, str) or not subject:
                raise ClientError(f"{url}/v1/info names no subject_id", "bad-ps-info")
            self.pin_ps(url, subject)
        return subject

    def _http(self, base_url: str, token: Callable[[], str] | None = None) -> ServiceClient:
        """The one place HTTP clients to parameter servers are made (tests replace it)."""
        return ServiceClient(base_url, token, timeout=self.timeout)

    def _ps(self, ps_url: str) -> ServiceClient:
        """A client for ``ps_url`` whose token's audience is that PS's subject id."""
        url = _base(ps_url)
        return self._http(url, functools.partial(self.ps_token, url))

    # -- jobs

    def fetch_job(
        self,
        ps_url: str,
        job_id: str,
        *,
        refresh: bool = False,
        ps_subject_id: str | None = None,
    ) -> JobView:
        """The job, checked against the KGC-signed terms before anything is encrypted.

        ``ps_subject_id`` pins the PS's subject id (else ``GET <ps>/v1/info`` gives it);
        the signed terms must name it. Any failed check
        (:func:`trapdoor.protocol.job.check_job_view`: signature under the pinned KGC key, the
        served definition, packing, weights and job key against the signed digests, the
        PS, ``min_quorum``) is :class:`ClientError` ``job-refused``, whose ``reason`` is
        the check's code. Accepted views are cached (they never change).
        """
        url = _base(ps_url)
        if ps_subject_id is not None:
            self.pin_ps(url, ps_subject_id)
        key = (url, job_id)
        if refresh or key not in self._jobs:
            previous = self._jobs.pop(key, None)  # a refused refresh keeps no old view
            audience = self.ps_subject(url)
            raw = self._ps(url).get_json(f"/v1/jobs/{job_id}")
            if not isinstance(raw, dict):
                raise ClientError(
                    "job refused: bad-job: the job view is not an object", "job-refused", "bad-job"
                )
            terms = self._check_job(raw, audience)
            if terms.job_id != job_id:
                raise ClientError(
                    f"job refused: job-mismatch: the PS served job {terms.job_id!r}",
                    "job-refused",
                    "job-mismatch",
                )
            view = JobView.parse(url, raw, terms)
            if previous is not None and previous.terms.digest != terms.digest:
                self.forget_job(job_id)  # never encrypt under another job key's tables
            self._jobs[key] = view
            if view.aggregation == "masked" and self.precompute_next:
                # One block: cheap now, and round 0's Enc(s) is then ready however short
                # its training is.
                self.prepare_encryption(view)
        return self._jobs[key]

    def _check_job(self, raw: dict[str, Any], audience: str) -> JobTerms:
        try:
            terms = check_job_view(
                raw,
                public_key_from_hex(self.kgc_verify_key),
                self.identity.params,
                min_quorum=self.min_quorum,
                param_server=audience,
            )
        except ProtocolError as exc:
            raise ClientError(
                f"job refused: {exc.code}: {exc.message}", "job-refused", exc.code
            ) from None
        me = self.identity.subject_id
        if me in terms.signing_keys and terms.signing_keys[me] != self.identity.signing_key_hex:
            raise ClientError(
                "job refused: wrong-signing-key: the terms name another key for this participant",
                "job-refused",
                "wrong-signing-key",
            )
        return terms

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
        masks = self.encryptor(job).precompute(job.seed_plaintexts, self.rng)
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

    # -- one round: commit, upload, audit

    def upload_frame(
        self,
        job: JobView,
        round_number: int,
        vector: EncryptedVector,
        closed: ClosedSet,
        randomness: Sequence[int],
    ) -> bytes:
        """The upload frame of ``vector``: its header carries our signed upload statement.

        The statement (:func:`trapdoor.protocol.upload.build_upload_statement`) names the job
        terms,
        the round, the payload's SHA-256, the closed commitment set and the PS as audience,
        so neither the PS nor the KGC can move this upload to another round, job or server;
        it carries a proof that we know ``randomness``, each block's ``r`` (bound to the
        round and the closed set by :func:`trapdoor.protocol.commitment.pok_context`).
        """
        proof = prove_randomness(
            job.job_key.params,
            randomness,
            pok_context(job.terms, round_number, closed.digest),
            self.identity.subject_id,
            self.rng,
        )
        statement = build_upload_statement(
            self.identity.signing_key,
            job.terms,
            round_number=round_number,
            subject_id=self.identity.subject_id,
            payload_sha256=vector_sha256(vector),
            closed_set_sha256=closed.digest,
            randomness_proof=proof.to_obj(),
            run=closed.run,
        )
        return encode_frame(
            vector, {"job_id": job.job_id, "round": round_number, "statement": statement}
        )

    def ps_token(self, ps_url: str) -> str:
        """A token for the PS at ``ps_url`` only (its subject id is the audience)."""
        return self.token(self.ps_subject(ps_url))

    def prepare_update(
        self,
        job: JobView,
        round_number: int,
        weights: npt.ArrayLike,
        X: np.ndarray | None = None,
        y: np.ndarray | None = None,
        *,
        app: NumPyApp | None = None,
    ) -> PreparedUpload:
        """Train from ``W_t`` and encrypt ``w_i Δ_i``: the ciphertext this round commits to.

        Training is ``local_fit`` of the job's model on ``(X, y)``, or the user's ``app``
        (:mod:`trapdoor.participant.app`), whose result is checked first (:meth:`_train`).
        """
        job.index_of(self.identity.subject_id)  # ClientError for a non-participant
        w_i = job.weights[self.identity.subject_id]
        packing = job.bcp_packing
        timings: dict[str, float] = {}
        fit = self._train(job, round_number, weights, X, y, timings, app)

        start = time.perf_counter()
        plaintexts, clip = encode_vector(fit.update, packing, clip_bound=job.clip_bound, scale=w_i)
        timings["encode_s"] = time.perf_counter() - start

        start = time.perf_counter()
        masks, timings["masks_s"] = self._take_masks(job)
        timings["masks_wait_s"] = time.perf_counter() - start
        vector = masks.encrypt(plaintexts)
        timings["encrypt_s"] = time.perf_counter() - start  # what is left after training
        if self.precompute_next and round_number + 1 < job.rounds_total:
            self.prepare_encryption(job)  # overlaps this round's commit, audit and release
        metrics = _fit_metrics(round_number, fit, w_i, clip, timings)
        return PreparedUpload(
            round_number, vector, vector_sha256(vector), metrics, masks.randomness
        )

    def _train(
        self,
        job: JobView,
        round_number: int,
        weights: npt.ArrayLike,
        X: np.ndarray | None,
        y: np.ndarray | None,
        timings: dict[str, float],
        app: NumPyApp | None = None,
    ) -> FitResult:
        """Local training from ``W_t``; the upload's exponentiations start first, so they
        overlap it (:meth:`prepare_encryption`).

        With ``app``, its result is checked (:func:`_app_update`) before anything of it is
        encoded, so a bad result is :class:`ClientError` and nothing is uploaded.
        """
        has_data = X is not None and y is not None
        if (app is None and not has_data) or (app is not None and (X is not None or y is not None)):
            raise ClientError("train with either X and y or app=, not both or neither", "bad-app")
        self.prepare_encryption(job)
        start = time.perf_counter()
        current = np.asarray(weights, dtype=np.float64)
        index = job.index_of(self.identity.subject_id)
        if app is not None:
            try:
                fit = checked_fit(app, current, app_config(job, round_number, index))
            except AppResultError as exc:
                raise ClientError(str(exc), "bad-app-result") from None
        else:
            assert X is not None and y is not None
            fit = local_fit(
                job.model,
                current,
                X,
                y,
                job.training,
                participant_rng(job.seed, index, round_number),
            )
        timings["train_s"] = time.perf_counter() - start
        return fit

    def prepare_masked_update(
        self,
        job: JobView,
        round_number: int,
        weights: npt.ArrayLike,
        X: np.ndarray | None = None,
        y: np.ndarray | None = None,
        *,
        app: NumPyApp | None = None,
    ) -> PreparedMaskedUpload:
        """Train from ``W_t`` (``X, y`` or ``app``, as in :meth:`prepare_update`) and mask
        ``w_i Δ_i`` with a fresh seed (masked jobs).

        The seed comes from ``os.urandom`` every time (never from the injectable ``rng``,
        which tests seed), and the mask is bound to job, round, current run and signer,
        so no two uploads ever share one. ``Enc(s)``'s exponentiations ran during
        training; what is left after it is one ChaCha20 keystream, one addition, one
        multiplication and a signature (``after_training_s``).
        """
        layout = job.masked_layout
        me = self.identity.subject_id
        job.index_of(me)  # ClientError for a non-participant
        w_i = job.weights[me]
        timings: dict[str, float] = {}
        fit = self._train(job, round_number, weights, X, y, timings, app)
        run = self.current_run(job, round_number)

        start = time.perf_counter()
        encoded, clip = encode_update(fit.update, layout, w_i)
        seed = draw_seed()
        value = seed_to_int(seed)
        context = mask_context(job.terms, layout, round_number=round_number, run=run, signer=me)
        masked = mask_vector(
            encoded, derive_mask(value, int(job.job_key.params.n), context, layout.ring)
        )
        payload = vector_to_bytes(masked, layout.ring)
        masks, timings["masks_s"] = self._take_masks(job)
        a, b = masks.encrypt([value]).elements
        seed_obj = seed_to_obj(Ciphertext(job.job_key.component(0), a, b))
        payload_sha256 = hashlib.sha256(payload).hexdigest()
        statement = build_masked_upload_statement(
            self.identity.signing_key,
            job.terms,
            round_number=round_number,
            subject_id=me,
            payload_sha256=payload_sha256,
            seed_sha256=seed_sha256(seed_obj),
            run=run,
        )
        frame = encode_ring_frame(
            payload,
            bits=layout.ring.bits,
            num_elements=layout.length,
            extra_header={
                "job_id": job.job_id,
                "round": round_number,
                "statement": statement,
                "seed": seed_obj,
            },
        )
        timings["after_training_s"] = time.perf_counter() - start
        if self.precompute_next and round_number + 1 < job.rounds_total:
            self.prepare_encryption(job)
        metrics = _fit_metrics(round_number, fit, w_i, clip, timings)
        return PreparedMaskedUpload(round_number, run, frame, payload_sha256, metrics)

    def upload_masked(self, job: JobView, prepared: PreparedMaskedUpload) -> dict[str, Any]:
        """Upload a masked update (one request); the PS's signed receipt.

        :class:`ClientError` ``not-included`` when the round no longer takes uploads (it
        closed without us).
        """
        start = time.perf_counter()
        try:
            receipt: dict[str, Any] = self._ps(job.ps_url).post_bytes(
                f"/v1/jobs/{job.job_id}/rounds/{prepared.round}/uploads", prepared.frame
            )
        except ServiceError as exc:
            if exc.status == 409 and exc.code == "round-not-open":
                raise ClientError(
                    f"round {prepared.round} closed without our upload", "not-included"
                ) from None
            raise
        prepared.metrics["timings"]["upload_s"] = time.perf_counter() - start
        prepared.metrics["bytes_up"] = len(prepared.frame)
        return receipt

    def commit(self, job: JobView, prepared: PreparedUpload) -> dict[str, Any]:
        """Send our signed commitment to the ciphertext we will upload (before any upload).

        It names the round's current run (0, or 1 for a re-run after an undecodable
        release), read from the PS: a commitment for the other run is refused.
        """
        run = self.current_run(job, prepared.round)
        prepared.run = run
        signed = build_commitment(
            self.identity.signing_key,
            job.terms,
            round_number=prepared.round,
            subject_id=self.identity.subject_id,
            payload_sha256=prepared.payload_sha256,
            run=run,
        )
        answer: dict[str, Any] = self._ps(job.ps_url).post_json(
            f"/v1/jobs/{job.job_id}/rounds/{prepared.round}/commitments", signed
        )
        return answer

    def current_run(self, job: JobView, round_number: int) -> int:
        """The round's current run at the PS (0, or 1 for a re-run): what we sign for."""
        status = self.round_status(job.ps_url, job.job_id, round_number)
        run = status.get("run", 0)
        if not isinstance(run, int) or isinstance(run, bool) or not 0 <= run <= MAX_RUN:
            raise ClientError(f"the PS names run {run!r}", "bad-round-status")
        return run

    def closed_set(self, job: JobView, round_number: int, run: int = 0) -> ClosedSet:
        """The round's PS-signed closed commitment set for ``run``, verified."""
        raw = self._ps(job.ps_url).get_json(
            f"/v1/jobs/{job.job_id}/rounds/{round_number}/commitments"
        )
        try:
            return verify_closed_set(
                raw.get("closed_set") if isinstance(raw, dict) else None,
                job.terms,
                round_number=round_number,
                run=run,
            )
        except ProtocolError as exc:
            raise ClientError(f"closed set refused: {exc.code}: {exc.message}", exc.code) from None

    def upload(self, job: JobView, prepared: PreparedUpload, closed: ClosedSet) -> dict[str, Any]:
        """Upload the committed ciphertext, once the closed set holds our commitment.

        :class:`ClientError` ``not-included`` when the set closed without our commitment
        (we committed too late) or with another payload under our name.
        """
        me = self.identity.subject_id
        if closed.payloads.get(me) != prepared.payload_sha256:
            raise ClientError(
                f"round {prepared.round} closed without our commitment", "not-included"
            )
        frame = self.upload_frame(job, prepared.round, prepared.vector, closed, prepared.randomness)
        start = time.perf_counter()
        receipt: dict[str, Any] = self._ps(job.ps_url).post_bytes(
            f"/v1/jobs/{job.job_id}/rounds/{prepared.round}/uploads", frame
        )
        prepared.metrics["timings"]["upload_s"] = time.perf_counter() - start
        prepared.metrics["bytes_up"] = len(frame)
        return receipt

    def contribute(
        self,
        job: JobView,
        round_number: int,
        weights: npt.ArrayLike,
        X: np.ndarray | None = None,
        y: np.ndarray | None = None,
        *,
        app: NumPyApp | None = None,
        timeout: float = 600.0,
        poll_seconds: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train (``X, y`` or ``app``), encrypt, commit, wait for the closed set, upload;
        (receipt, metrics).

        A masked job has no commitment: train, mask and upload in one request.
        """
        if job.aggregation == "masked":
            masked = self.prepare_masked_update(job, round_number, weights, X, y, app=app)
            return self.upload_masked(job, masked), masked.metrics
        prepared = self.prepare_update(job, round_number, weights, X, y, app=app)
        self.commit(job, prepared)
        self.wait_for_round(
            job.ps_url,
            job.job_id,
            round_number,
            timeout,
            at_least="committed",
            poll_seconds=poll_seconds,
            should_stop=should_stop,
        )
        closed = self.closed_set(job, round_number, prepared.run)
        receipt = self.upload(job, prepared, closed)
        return receipt, prepared.metrics

    def recompute_round(
        self, job: JobView, round_number: int, *, own: EncryptedVector | None = None
    ) -> AuditedRound:
        """The round's current attempt recomputed from what the PS serves, checked.

        Fetches the PS's audit package, ``Enc(W_t)`` and every contributor's upload (ours
        too unless ``own`` is given), runs :func:`trapdoor.protocol.audit.audit_round` and
        compares its digests with the ones the PS announces. Anything that does not check out is
        :class:`ClientError` with the check's code. Records what it cost in
        :attr:`last_audit`.
        """
        ps = self._ps(job.ps_url)
        prefix = f"/v1/jobs/{job.job_id}/rounds/{round_number}"
        package = ps.get_json(f"{prefix}/audit")
        me = self.identity.subject_id
        start = time.perf_counter()
        try:
            run = package.get("run")
            if not isinstance(run, int) or isinstance(run, bool):
                raise ValueError("run must be an integer")
            closed = verify_closed_set(
                package.get("closed_set"), job.terms, round_number=round_number, run=run
            )
            contributors = [str(s) for s in package["contributors"]]
            attempt = int(package["attempt"])
            blind = blind_from_text(str(package["blind"]), job.bcp_packing.modulus)
        except ProtocolError as exc:
            raise ClientError(f"audit refused: {exc.code}: {exc.message}", exc.code) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClientError(f"malformed audit package: {exc}", "bad-audit-package") from None
        downloaded = 0

        def vector_at(path: str) -> EncryptedVector:
            nonlocal downloaded
            data = ps.get_bytes(path)
            downloaded += len(data)
            try:
                return decode_frame(data).vector(job.job_key)
            except ValueError as exc:
                raise ClientError(f"bad frame at {path}: {exc}", "bad-frame") from None

        base = vector_at(f"{prefix}/base")
        uploads = {
            s: own if s == me and own is not None else vector_at(f"{prefix}/uploads/{s}")
            for s in contributors
        }
        try:
            audited = audit_round(
                job.terms,
                closed,
                attempt=attempt,
                base=base,
                uploads=uploads,
                blind=blind,
                subject_id=me,
            )
        except ProtocolError as exc:
            raise ClientError(f"audit refused: {exc.code}: {exc.message}", exc.code) from None
        announced = {k: package.get(k) for k in audited.digests.fields() if k in package}
        mismatched = sorted(k for k, v in announced.items() if audited.digests.fields()[k] != v)
        if mismatched:
            raise ClientError(
                "audit refused: the PS announces other digests: " + ", ".join(mismatched),
                "audit-mismatch",
            )
        self.last_audit = {
            "attempt": attempt,
            "contributors": len(contributors),
            "bytes_down": downloaded,
            "seconds": time.perf_counter() - start,
        }
        return audited

    def audit(
        self, job: JobView, round_number: int, *, own: EncryptedVector | None = None
    ) -> AuditDigests:
        """Recompute the round's current aggregate and blind; sign them if they check out.

        :meth:`recompute_round` does the checking; only then is the audit statement signed
        and sent, so nothing is signed for a package that does not check out.
        """
        audited = self.recompute_round(job, round_number, own=own)
        signed = build_audit_statement(
            self.identity.signing_key,
            job.terms,
            round_number=round_number,
            subject_id=self.identity.subject_id,
            digests=audited.digests,
            run=audited.run,
        )
        self._ps(job.ps_url).post_json(
            f"/v1/jobs/{job.job_id}/rounds/{round_number}/audits", signed
        )
        return audited.digests

    def audit_until_released(
        self,
        job: JobView,
        round_number: int,
        timeout: float,
        *,
        own: EncryptedVector | None = None,
        poll_seconds: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Audit each attempt of the round as it comes, until the round is released.

        Returns the released round's status. :class:`ClientError` ``not-included`` when
        an attempt no longer lists us (we were dropped), or on a failed or late round.
        """
        audited: int | None = None
        while True:
            status = self.wait_for_round(
                job.ps_url,
                job.job_id,
                round_number,
                timeout,
                at_least="closed",
                poll_seconds=poll_seconds,
                should_stop=should_stop,
            )
            if status.get("status") == "released":
                return status
            attempt = status.get("attempt")
            if attempt != audited:
                try:
                    self.audit(job, round_number, own=own)
                except ServiceError as exc:
                    if exc.status == 403:
                        raise ClientError(
                            f"dropped from round {round_number}", "not-included"
                        ) from None
                    if exc.status != 409:  # 409: the attempt moved on meanwhile
                        raise
                audited = attempt
            self.sleep(poll_seconds)

    def wait_for_round(
        self,
        ps_url: str,
        job_id: str,
        round_number: int,
        timeout: float,
        *,
        at_least: str = "released",
        poll_seconds: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll the round until its phase is ``at_least`` or later; its status then.

        :class:`ClientError` if the round fails or does not get there in time.
        """
        wanted = ROUND_PHASES.index(at_least)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.round_status(ps_url, job_id, round_number)
            except ServiceError as exc:
                if exc.status not in (0, 404, 502, 503):
                    raise
                status = {"status": "unknown"}
            phase = status.get("status")
            if phase == "failed":
                raise ClientError(f"round {round_number} of {job_id} failed")
            if phase in ROUND_PHASES and ROUND_PHASES.index(phase) >= wanted:
                return status
            if time.monotonic() >= deadline:
                raise ClientError(f"round {round_number} of {job_id} not {at_least} in time")
            if should_stop is not None and should_stop():
                raise ClientError("stopped")
            self.sleep(poll_seconds)

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
        return self.wait_for_round(
            ps_url,
            job_id,
            round_number,
            timeout,
            poll_seconds=poll_seconds,
            should_stop=should_stop,
        )

    def download_bundle(self, ps_url: str, job_id: str, round_number: int) -> dict[str, Any]:
        """The raw release bundle (403 for a non-contributor, 409 before release)."""
        bundle: dict[str, Any] = self._ps(ps_url).get_json(
            f"/v1/jobs/{job_id}/rounds/{round_number}/model"
        )
        return bundle

    def open_bundle(
        self, job: JobView, bundle: dict[str, Any], round_number: int | None = None
    ) -> npt.NDArray[np.float64]:
        """Unwrap ``K`` with our own key, open ``W + R``, subtract ``R``, decode.

        The bundle's job (and round, when given) must be the ones asked for; the AES-GCM
        associated data binds the rest (attempt, base, contributor set, ``R``'s digest),
        so a bundle served under other fields or with another ``R`` does not open.
        """
        try:
            binding = ReleaseBinding.from_fields(bundle)
        except ValueError as exc:
            raise SealError(str(exc)) from None
        if binding.job_id != job.job_id or (
            round_number is not None and binding.round != round_number
        ):
            raise SealError("the bundle is for another job or round")
        plaintexts = open_release(
            self.identity.secret_key,
            binding=binding,
            sealed_model=bundle["sealed_model"],
            wrapped_key=bundle["wrapped_key"],
            blind=blind_from_text(str(bundle["blind"]), job.bcp_packing.modulus),
        )
        try:
            return decode_vector(plaintexts, job.bcp_packing)
        except EncodingError as exc:
            raise UndecodableReleaseError(
                f"round {binding.round} (run {binding.run}) does not decode: {exc}",
                binding,
                bundle_sha256(binding, bundle["sealed_model"]),
            ) from None

    def tell_participation(
        self, ps_url: str, job_id: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Tell the PS's operator that we joined ``job_id`` or declined it, and why
        (``PUT /v1/jobs/<id>/participation``; informational, nothing waits for it)."""
        answer: dict[str, Any] = self._ps(ps_url).put_json(
            f"/v1/jobs/{job_id}/participation", {"status": status, "reason": reason}
        )
        return answer

    def evaluate_model(
        self, job: JobView, round_number: int, weights: npt.ArrayLike, app: NumPyApp
    ) -> tuple[float, int, dict[str, float]]:
        """The app's ``evaluate`` of ``W_{t+1}`` (released by round ``round_number``),
        checked (:func:`~trapdoor.participant.app.checked_evaluate`); ClientError
        ``bad-app-result`` for an answer that could not be shared."""
        config = app_config(job, round_number, job.index_of(self.identity.subject_id))
        try:
            return checked_evaluate(app, np.asarray(weights, dtype=np.float64), config)
        except AppResultError as exc:
            raise ClientError(str(exc), "bad-app-result") from None

    def report_metrics(
        self,
        job: JobView,
        round_number: int,
        loss: float,
        num_examples: int,
        metrics: dict[str, float],
    ) -> dict[str, Any]:
        """Sign and send our evaluation of round ``round_number``'s released model (jobs
        with ``share_metrics`` only: it tells the PS our loss and metrics on our test rows).

        ClientError ``metrics-not-shared`` for a job that did not opt in, so a caller
        cannot disclose them by mistake.
        """
        if not job.share_metrics:
            raise ClientError(f"{job.job_id} does not share metrics", "metrics-not-shared")
        run = int(self.round_status(job.ps_url, job.job_id, round_number).get("run", 0))
        try:
            signed = build_metrics_report(
                self.identity.signing_key,
                job.terms,
                round_number=round_number,
                run=run,
                subject_id=self.identity.subject_id,
                loss=loss,
                num_examples=num_examples,
                metrics=metrics,
            )
        except ValueError as exc:
            raise ClientError(f"metrics not reported: {exc}", "bad-app-result") from None
        answer: dict[str, Any] = self._ps(job.ps_url).post_json(
            f"/v1/jobs/{job.job_id}/rounds/{round_number}/metrics", signed
        )
        return answer

    def report_undecodable(self, job: JobView, exc: UndecodableReleaseError) -> dict[str, Any]:
        """Sign and send our report that this release does not decode (names its bundle)."""
        signed = build_undecodable_statement(
            self.identity.signing_key,
            job.terms,
            round_number=exc.binding.round,
            run=exc.binding.run,
            subject_id=self.identity.subject_id,
            bundle_sha256=exc.bundle_sha256,
        )
        answer: dict[str, Any] = self._ps(job.ps_url).post_json(
            f"/v1/jobs/{job.job_id}/rounds/{exc.binding.round}/undecodable", signed
        )
        return answer

    def wait_for_rerun(
        self,
        job: JobView,
        round_number: int,
        timeout: float,
        *,
        poll_seconds: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll until round ``round_number`` is open again for its re-run (run 1).

        :class:`ClientError` if the round or job fails instead, or it does not happen in
        time (another contributor decoded the release, so there is no re-run).
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.round_status(job.ps_url, job.job_id, round_number)
            if status.get("status") == "failed":
                raise ClientError(f"round {round_number} of {job.job_id} failed")
            if status.get("run") == MAX_RUN and status.get("status") != "released":
                return status
            if time.monotonic() >= deadline:
                raise ClientError(f"round {round_number} of {job.job_id} was not re-run in time")
            if should_stop is not None and should_stop():
                raise ClientError("stopped")
            self.sleep(poll_seconds)

    def download_model(
        self,
        ps_url: str,
        job_id: str,
        round_number: int,
        current: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """``W_{t+1}`` released at the end of round ``t`` (contributors of ``t`` only).

        A masked job's release is the round's change, so ``current`` (our ``W_t``) is
        required there (:meth:`open_masked_bundle`).
        """
        job = self.fetch_job(ps_url, job_id)
        bundle = self.download_bundle(ps_url, job_id, round_number)
        self.last_download_bytes = len(json.dumps(bundle))
        if job.aggregation == "masked":
            if current is None:
                raise ClientError("a masked release needs our W_t", "missing-model")
            return self.open_masked_bundle(job, bundle, round_number, current)
        return self.open_bundle(job, bundle, round_number)

    def open_masked_bundle(
        self,
        job: JobView,
        bundle: dict[str, Any],
        round_number: int,
        current: npt.ArrayLike,
    ) -> npt.NDArray[np.float64]:
        """``W_{t+1} = decode(encode(W_t) + Σ y_i − D_t)`` from a checked masked release.

        The KGC's ``release_signature`` must verify under the pinned key over the bundle
        with our wrapped key; the bundle must be for this job terms and round and list
        us; each listed upload is downloaded and must have exactly its listed digest, so
        the PS cannot add, drop or swap anything. A model beyond the job's bound is
        :class:`UndecodableReleaseError` (reported like the bcp mode's).
        """
        layout = job.masked_layout
        me = self.identity.subject_id
        try:
            binding = verify_release_statement(
                public_key_from_hex(self.kgc_verify_key), bundle, subject_id=me
            )
        except ProtocolError as exc:
            raise ClientError(f"release refused: {exc.message}", exc.code) from None
        if (
            binding.job_id != job.job_id
            or binding.job_terms_sha256 != job.terms.digest
            or binding.round != round_number
        ):
            raise ClientError("the release is for another job or round", "bad-release")
        if me not in binding.uploads:
            raise ClientError(f"round {round_number} was released without us", "not-included")
        mask_sum = open_mask_sum(
            self.identity.secret_key, binding, bundle["sealed_mask"], bundle["wrapped_key"], layout
        )

        def fetch(subject: str) -> bytes:
            path = f"/v1/jobs/{job.job_id}/rounds/{round_number}/uploads/{subject}"
            data = self._ps(job.ps_url).get_bytes(path)
            self.last_download_bytes += len(data)
            return data

        try:
            uploads = listed_uploads(binding, layout, fetch)
        except ProtocolError as exc:
            raise ClientError(exc.message, exc.code) from None
        try:
            return next_model(layout, current, uploads, mask_sum)
        except EncodingError as exc:
            raise UndecodableReleaseError(
                f"round {binding.round} (run {binding.run}) does not decode: {exc}",
                binding,
                bundle_sha256(binding, bundle["sealed_mask"]),
            ) from None

    last_download_bytes: int = 0
