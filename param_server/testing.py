"""Test support: an in-process KGC that does the real crypto, a clock, participants.

Used by the parameter server's unit and API tests (and usable by anyone testing against
the PS without a KGC process). :class:`FakeKgc` implements
:class:`~param_server.kgc_gateway.KgcGateway` by calling the same
:mod:`common.protocol` checks as the real KGC (requested and signed job terms, the PS's
request signature, the release schedule, contributors, quorum, every contributor's
upload statement), plus frame validity and idempotent releases. It seals with
:func:`common.release.seal_release` under a master key, so a contributor really opens
its bundle with :func:`common.release.open_release`. Participants' tokens name the PS's
subject id as their audience and their uploads carry statements built with
:func:`common.protocol.build_upload_statement`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.bcp import MasterKey, PublicKey, SecretKey
from common.blocks import JobKey, VectorEncryptor, generate_job_key
from common.clock import ManualClock as FakeClock
from common.db import make_engine
from common.encoding import PackingLayout, decode_vector, encode_vector
from common.protocol import (
    JobTerms,
    ProtocolError,
    build_upload_statement,
    check_job_view,
    check_release_request,
    check_requested_terms,
    sha256_hex,
    sign_job_terms,
    verify_job_terms,
    verify_release_signature,
)
from common.release import blind_from_text, open_release, seal_release
from common.signing import (
    b64encode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
)
from common.wire import WireError, decode_frame, encode_frame, from_obj, to_obj
from param_server.domain import ParameterServer
from param_server.kgc_gateway import KgcError, KgcInfo
from param_server.models import metadata

__all__ = [
    "PS_SUBJECT_ID",
    "FakeClock",
    "FakeKgc",
    "PsWorld",
    "TestParticipant",
    "encode_weights",
    "job_key_of",
    "job_terms_of",
    "make_definition",
    "make_participants",
    "make_world",
    "open_model",
    "upload_frame",
]


#: The subject id the test world gives its PS (its tokens' audience).
PS_SUBJECT_ID = "ps-test"
#: The KGC's bound on a job key's width (kgc.domain.MAX_WIDTH).
KGC_MAX_WIDTH = 1024
#: How the KGC answers a refused release (docs/PROTOCOL.md).
_RELEASE_STATUS = {
    "round-out-of-range": 409,
    "out-of-schedule": 409,
    "bad-request-signature": 403,
    "bad-statement-signature": 403,
    "bad-field": 400,
}


@dataclass
class _FakeJob:
    terms: JobTerms
    #: round -> (payload digest, contributors, bundle)
    releases: dict[int, tuple[str, list[str], dict[str, Any]]] = field(default_factory=dict)


class FakeKgc:
    """In-process KGC: KGC-signed job terms, and releases sealed for the contributors only.

    Every check is the shared one the real KGC runs (:mod:`common.protocol`):
    :func:`~common.protocol.check_requested_terms` and
    :func:`~common.protocol.sign_job_terms` for a job,
    :func:`~common.protocol.verify_release_signature` and
    :func:`~common.protocol.check_release_request` (with the job's release schedule) for a
    release. ``participants`` are the enrolled participants' BCP keys and
    ``signing_keys`` their certified Ed25519 keys (hex); ``ps_subject_id`` is the PS the
    jobs are signed for. Set ``failure`` to a :class:`KgcError` to make every call raise
    it (an unreachable or refusing KGC); ``release_calls`` counts release requests,
    ``release_frames`` keeps each request and ``release_headers`` each decodable header.
    """

    def __init__(
        self,
        master_key: MasterKey,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        rng: random.Random | None = None,
        participants: Mapping[str, PublicKey] | None = None,
        signing_keys: Mapping[str, str] | None = None,
        ps_verify_key: Ed25519PublicKey | None = None,
        ps_subject_id: str = PS_SUBJECT_ID,
    ) -> None:
        self.master_key = master_key
        self.signing_key = signing_key or generate_signing_key()
        self.rng = rng or random.Random(0)
        self.participants: dict[str, PublicKey] = dict(participants or {})
        self.signing_keys: dict[str, str] = dict(signing_keys or {})
        self.ps_verify_key = ps_verify_key
        self.ps_subject_id = ps_subject_id
        self.jobs: dict[str, _FakeJob] = {}
        self.failure: KgcError | None = None
        self.release_calls = 0
        self.release_frames: list[bytes] = []
        self.release_headers: list[dict[str, Any]] = []

    def _maybe_fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    def info(self) -> KgcInfo:
        return KgcInfo(self.master_key.params, self.signing_key.public_key(), demo=True)

    def enrol(self, participant: TestParticipant) -> None:
        """Register a participant's BCP and Ed25519 keys (an enrolment, minus the HTTP)."""
        self.participants[participant.subject_id] = participant.public_key
        self.signing_keys[participant.subject_id] = public_key_hex(participant.signing_key)

    def create_job(
        self, job_id: str, terms: Mapping[str, Any], *, param_server: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/jobs``: check the requested terms, make the job key, sign the terms."""
        self._maybe_fail()
        if job_id in self.jobs:
            raise KgcError(409, "job-exists", f"job {job_id} exists")
        try:
            requested = check_requested_terms(dict(terms))
        except ProtocolError as exc:
            raise KgcError(422, exc.code, exc.message) from None
        if requested["job_id"] != job_id:
            raise KgcError(422, "job-mismatch", "the terms are for another job")
        unknown = sorted(
            s
            for s in requested["participants"]
            if s not in self.participants or s not in self.signing_keys
        )
        if unknown:
            raise KgcError(422, "unknown-participant", f"unknown participants {unknown}")
        if not 1 <= requested["width"] <= KGC_MAX_WIDTH:
            raise KgcError(422, "invalid-width", f"width must be 1 to {KGC_MAX_WIDTH}")
        params = self.master_key.params
        job_key = generate_job_key(params, requested["width"], self.rng)
        signed, signature = sign_job_terms(
            self.signing_key,
            requested,
            param_server=param_server or self.ps_subject_id,
            signing_keys=self.signing_keys,
            job_key=to_obj(job_key),
        )
        job_terms = verify_job_terms(self.signing_key.public_key(), signed, signature, params)
        self.jobs[job_id] = _FakeJob(job_terms)
        return {
            "job_id": job_id,
            "job_key": to_obj(job_key),
            "job_terms": signed,
            "job_terms_signature": signature,
        }

    def release(self, frame: bytes) -> dict[str, Any]:
        """``POST /v1/jobs/<id>/releases``: the KGC's checks, then seal for the contributors."""
        self.release_calls += 1
        self.release_frames.append(frame)
        self._maybe_fail()
        try:
            parsed = decode_frame(frame)
        except WireError as exc:
            raise KgcError(400, "bad-frame", str(exc)) from None
        header = dict(parsed.header)
        self.release_headers.append(header)
        job = self.jobs.get(str(header.get("job_id")))
        if job is None:
            raise KgcError(404, "job-not-found", "no such job")
        terms = job.terms
        digest = str(header.get("sha256"))
        try:
            if self.ps_verify_key is None:
                raise ProtocolError("bad-request-signature", "no PS key registered")
            t = verify_release_signature(header, self.ps_verify_key)
            stored = job.releases.get(t)
            if stored is not None:
                if (stored[0], stored[1]) == (digest, header.get("contributors")):
                    return stored[2]  # the same request again: the same bundle
                raise KgcError(409, "already-released", f"round {t} was released already")
            _, contributors = check_release_request(header, terms, next_round=len(job.releases))
        except ProtocolError as exc:
            raise KgcError(_RELEASE_STATUS.get(exc.code, 422), exc.code, exc.message) from None
        if (header.get("num_plaintexts"), header.get("width")) != (
            terms.num_plaintexts,
            terms.width,
        ):
            raise KgcError(422, "wrong-shape", "the frame does not have the job's shape")
        try:
            vector = parsed.vector(terms.job_key)
        except ValueError as exc:
            raise KgcError(422, "invalid-ciphertext", str(exc)) from None
        bundle = seal_release(
            self.master_key,
            vector,
            {c: self.participants[c] for c in contributors},
            job_id=terms.job_id,
            round_number=t,
            rng=self.rng,
        )
        bundle["kgc_signature"] = sign_json(self.signing_key, bundle)
        job.releases[t] = (digest, contributors, bundle)
        return bundle


@dataclass
class TestParticipant:
    """A data owner: subject id, sample count, its BCP key pair and its Ed25519 key."""

    __test__ = False  # not a pytest test class

    subject_id: str
    num_samples: int
    public_key: PublicKey
    secret_key: SecretKey
    #: The key the KGC certified: it signs this participant's upload statements.
    signing_key: Ed25519PrivateKey = field(default_factory=generate_signing_key, repr=False)

    @classmethod
    def make(
        cls, subject_id: str, num_samples: int, master_key: MasterKey, rng: Any
    ) -> TestParticipant:
        public, secret = master_key.params.keygen(rng)
        return cls(subject_id, num_samples, public, secret)

    def token(
        self,
        kgc: FakeKgc,
        now: float,
        *,
        role: str = "participant",
        ttl: int = 300,
        audience: str | None = None,
        issuer: str = "kgc",
    ) -> str:
        """A token from ``kgc`` for ``audience`` (default: the PS the KGC signs jobs for)."""
        return issue_token(
            kgc.signing_key,
            subject=self.subject_id,
            role=role,
            now=now,
            ttl_seconds=ttl,
            token_id=f"{self.subject_id}-{next(_TOKEN_IDS)}",
            audience=kgc.ps_subject_id if audience is None else audience,
            issuer=issuer,
        )

    def frame(
        self,
        job: Mapping[str, Any],
        terms: JobTerms,
        round_number: int,
        update: npt.ArrayLike,
        encryptor: VectorEncryptor,
        rng: Any,
    ) -> bytes:
        """This participant's upload frame (:func:`upload_frame`)."""
        return upload_frame(
            job,
            self.subject_id,
            round_number,
            update,
            encryptor,
            rng,
            signing_key=self.signing_key,
            terms=terms,
        )


_TOKEN_IDS = itertools.count()


def encode_weights(values: npt.ArrayLike) -> str:
    """``initial_weights`` as the definition carries them: base64url float64 LE."""
    return b64encode(np.asarray(values, dtype="<f8").tobytes())


def make_definition(
    job_id: str,
    participants: Sequence[TestParticipant],
    initial_weights: npt.ArrayLike,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid job definition (small encoding width, for tests)."""
    definition: dict[str, Any] = {
        "job_id": job_id,
        "model": {"kind": "mlp", "layer_sizes": [4, 3]},
        "initial_weights": encode_weights(initial_weights),
        "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 8, "seed": 7},
        "participants": [
            {"subject_id": p.subject_id, "num_samples": p.num_samples} for p in participants
        ],
        "quorum": 2,
        "rounds": 2,
        "round_deadline_seconds": 600,
        "below_quorum_policy": "stay-open",
        "encoding": {
            "frac_bits": 20,
            "slot_bits": 29,
            "slot_bound": 64.0,
            "clip_bound": 16.0,
            "width": 4,
        },
    }
    definition.update(overrides)
    return definition


def upload_frame(
    job: Mapping[str, Any],
    subject_id: str,
    round_number: int,
    update: npt.ArrayLike,
    encryptor: VectorEncryptor,
    rng: Any,
    *,
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
) -> bytes:
    """What a participant uploads: ``Enc(w_i Δ_i)`` framed for this job and round.

    ``job`` is the PS's job view (``GET /v1/jobs/<id>``) and ``terms`` its checked
    KGC-signed terms (:func:`job_terms_of`); the header carries the statement
    (:func:`common.protocol.build_upload_statement`) signed with ``signing_key``.
    """
    packing = PackingLayout.from_json(job["packing"])
    clip = float(job["definition"]["encoding"]["clip_bound"])
    plaintexts, _ = encode_vector(
        update, packing, clip_bound=clip, scale=job["weights"][subject_id]
    )
    vector = encryptor.encrypt(plaintexts, rng)
    statement = build_upload_statement(
        signing_key,
        terms,
        round_number=round_number,
        subject_id=subject_id,
        payload_sha256=sha256_hex(vector.to_bytes()),
    )
    return encode_frame(
        vector, {"job_id": job["job_id"], "round": round_number, "statement": statement}
    )


def job_terms_of(
    job: Mapping[str, Any], info: KgcInfo, *, param_server: str | None = PS_SUBJECT_ID
) -> JobTerms:
    """A participant's check of a served job (:func:`common.protocol.check_job_view`).

    Quorum is not held to the client's default minimum (test jobs use quorum 2);
    ``param_server=None`` skips the server check.
    """
    return check_job_view(
        job, info.verify_key, info.params, min_quorum=1, param_server=param_server
    )


def job_key_of(job: Mapping[str, Any]) -> JobKey:
    """The job key from the PS's job view."""
    key = from_obj(job["job_key"])
    if not isinstance(key, JobKey):
        raise ValueError("job_key is not a bcp-job-key")
    return key


def open_model(
    job: Mapping[str, Any], participant: TestParticipant, download: Mapping[str, Any]
) -> npt.NDArray[np.float64]:
    """A contributor's side of the release: unwrap, open, subtract ``R``, decode."""
    packing = PackingLayout.from_json(job["packing"])
    plaintexts = open_release(
        participant.secret_key,
        job_id=str(download["job_id"]),
        round_number=int(download["round"]),
        sealed_model=download["sealed_model"],
        wrapped_key=download["wrapped_key"],
        blind=blind_from_text(str(download["blind"]), packing.modulus),
    )
    return decode_vector(plaintexts, packing)


def make_participants(
    master_key: MasterKey, count: int = 4, seed: int = 5
) -> list[TestParticipant]:
    """``count`` data owners ``p1 ..`` with ``100 * i`` samples and their own BCP keys."""
    rng = random.Random(seed)
    return [TestParticipant.make(f"p{i}", 100 * i, master_key, rng) for i in range(1, count + 1)]


@dataclass
class PsWorld:
    """A parameter server (subject :data:`PS_SUBJECT_ID`) over a fresh database, its fake
    KGC, clock and participants."""

    ps: ParameterServer
    kgc: FakeKgc
    clock: FakeClock
    engine: Engine
    sessions: sessionmaker[Session]
    ps_key: Ed25519PrivateKey
    participants: list[TestParticipant]

    def close(self) -> None:
        self.ps.close()
        self.engine.dispose()


def make_world(
    master_key: MasterKey,
    participants: list[TestParticipant],
    database_url: str,
    *,
    create_schema: bool = True,
    chunk_elements: int = 3,
) -> PsWorld:
    """Everything a PS test needs; small tables (window 4) and small chunks."""
    ps_key = generate_signing_key()
    kgc = FakeKgc(
        master_key,
        rng=random.Random(2),
        participants={p.subject_id: p.public_key for p in participants},
        signing_keys={p.subject_id: public_key_hex(p.signing_key) for p in participants},
        ps_verify_key=ps_key.public_key(),
        ps_subject_id=PS_SUBJECT_ID,
    )
    engine = make_engine(database_url)
    if create_schema:
        metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    clock = FakeClock()
    ps = ParameterServer(
        sessions,
        kgc,
        ps_key,
        clock=clock,
        rng=random.Random(3),
        chunk_elements=chunk_elements,
        subject_id=PS_SUBJECT_ID,
    )
    return PsWorld(ps, kgc, clock, engine, sessions, ps_key, participants)
