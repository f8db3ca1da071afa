"""Test support: an in-process KGC that does the real crypto, a clock, participants.

Used by the parameter server's unit and API tests (and usable by anyone testing against
the PS without a KGC process). :class:`FakeKgc` implements
:class:`~param_server.kgc_gateway.KgcGateway` with the checks docs/PROTOCOL.md gives the
KGC: PS request signature, receipts, quorum, frame validity, idempotent releases. It
seals with :func:`common.release.seal_release` under a master key, so a contributor
really opens its bundle with :func:`common.release.open_release`.
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
from common.release import blind_from_text, open_release, seal_release
from common.signing import (
    SignatureError,
    b64encode,
    generate_signing_key,
    issue_token,
    sign_json,
    verify_json,
)
from common.wire import decode_frame, encode_frame, from_obj, to_obj
from param_server.domain import ParameterServer
from param_server.kgc_gateway import KgcError, KgcInfo
from param_server.models import metadata

__all__ = [
    "FakeClock",
    "FakeKgc",
    "PsWorld",
    "TestParticipant",
    "encode_weights",
    "job_key_of",
    "make_definition",
    "make_participants",
    "make_world",
    "open_model",
    "upload_frame",
]


@dataclass
class _FakeJob:
    job_key: JobKey
    participants: tuple[str, ...]
    quorum: int
    releases: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)


class FakeKgc:
    """In-process KGC: job keys, and releases sealed for the contributors only.

    Set ``failure`` to a :class:`KgcError` to make every call raise it (an unreachable
    or refusing KGC); ``release_calls`` counts release requests.
    """

    def __init__(
        self,
        master_key: MasterKey,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        rng: random.Random | None = None,
        participants: Mapping[str, PublicKey] | None = None,
        ps_verify_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.master_key = master_key
        self.signing_key = signing_key or generate_signing_key()
        self.rng = rng or random.Random(0)
        self.participants: dict[str, PublicKey] = dict(participants or {})
        self.ps_verify_key = ps_verify_key
        self.jobs: dict[str, _FakeJob] = {}
        self.failure: KgcError | None = None
        self.release_calls = 0

    def _maybe_fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    def info(self) -> KgcInfo:
        return KgcInfo(self.master_key.params, self.signing_key.public_key(), demo=True)

    def create_job(
        self, job_id: str, width: int, participants: Sequence[str], quorum: int
    ) -> tuple[JobKey, str]:
        self._maybe_fail()
        if job_id in self.jobs:
            raise KgcError(409, "conflict", f"job {job_id} exists")
        unknown = sorted(set(participants) - set(self.participants))
        if unknown:
            raise KgcError(422, "unknown-participant", f"unknown participants {unknown}")
        job_key = generate_job_key(self.master_key.params, width, self.rng)
        self.jobs[job_id] = _FakeJob(job_key, tuple(participants), quorum)
        signature = sign_json(self.signing_key, {"job_id": job_id, "job_key": to_obj(job_key)})
        return job_key, signature

    def release(self, frame: bytes) -> dict[str, Any]:
        self.release_calls += 1
        self._maybe_fail()
        parsed = decode_frame(frame)
        header = dict(parsed.header)
        job = self.jobs.get(str(header.get("job_id")))
        if job is None:
            raise KgcError(404, "not-found", "no such job")
        self._check_request(header, job)
        t = int(header["round"])
        digest = str(header["sha256"])
        if t in job.releases:
            stored_digest, bundle = job.releases[t]
            if stored_digest != digest:
                raise KgcError(409, "conflict", "round already released with another payload")
            return bundle
        vector = parsed.vector(job.job_key)
        contributors = {c: self.participants[c] for c in header["contributors"]}
        bundle = seal_release(
            self.master_key,
            vector,
            contributors,
            job_id=str(header["job_id"]),
            round_number=t,
            rng=self.rng,
        )
        bundle["kgc_signature"] = sign_json(self.signing_key, bundle)
        job.releases[t] = (digest, bundle)
        return bundle

    def _check_request(self, header: dict[str, Any], job: _FakeJob) -> None:
        """What the real KGC checks (docs/PROTOCOL.md), minus the HTTP."""
        signature = header.pop("request_signature", None)
        contributors = header.get("contributors")
        receipts = header.get("receipts")
        try:
            if self.ps_verify_key is None:
                raise SignatureError("no PS key registered")
            verify_json(self.ps_verify_key, header, signature)
            if not isinstance(contributors, list) or not isinstance(receipts, list):
                raise KgcError(400, "bad-request", "contributors and receipts are lists")
            if len(set(contributors)) != len(contributors) or not set(contributors) <= set(
                job.participants
            ):
                raise KgcError(422, "invalid", "contributors are not distinct participants")
            if len(receipts) != len(contributors):
                raise KgcError(422, "invalid", "one receipt per contributor")
            for subject, signed in zip(contributors, receipts, strict=True):
                receipt = signed["receipt"]
                verify_json(self.ps_verify_key, receipt, signed["signature"])
                if (receipt["job_id"], receipt["round"], receipt["subject_id"]) != (
                    header["job_id"],
                    header["round"],
                    subject,
                ):
                    raise KgcError(422, "invalid", "receipt does not match")
        except SignatureError:
            raise KgcError(403, "forbidden", "PS signature does not verify") from None
        if len(contributors) < job.quorum:
            raise KgcError(422, "below-quorum", "fewer contributors than the quorum")


@dataclass
class TestParticipant:
    """A data owner: subject id, sample count and its own BCP key pair."""

    __test__ = False  # not a pytest test class

    subject_id: str
    num_samples: int
    public_key: PublicKey
    secret_key: SecretKey

    @classmethod
    def make(
        cls, subject_id: str, num_samples: int, master_key: MasterKey, rng: Any
    ) -> TestParticipant:
        public, secret = master_key.params.keygen(rng)
        return cls(subject_id, num_samples, public, secret)

    def token(self, kgc: FakeKgc, now: float, *, role: str = "participant", ttl: int = 300) -> str:
        return issue_token(
            kgc.signing_key,
            subject=self.subject_id,
            role=role,
            now=now,
            ttl_seconds=ttl,
            token_id=f"{self.subject_id}-{next(_TOKEN_IDS)}",
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
) -> bytes:
    """What a participant uploads: ``Enc(w_i Δ_i)`` framed for this job and round.

    ``job`` is the PS's job view (``GET /v1/jobs/<id>``).
    """
    packing = PackingLayout.from_json(job["packing"])
    clip = float(job["definition"]["encoding"]["clip_bound"])
    plaintexts, _ = encode_vector(
        update, packing, clip_bound=clip, scale=job["weights"][subject_id]
    )
    vector = encryptor.encrypt(plaintexts, rng)
    return encode_frame(vector, {"job_id": job["job_id"], "round": round_number})


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
    """A parameter server over a fresh database, its fake KGC, clock and participants."""

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
        ps_verify_key=ps_key.public_key(),
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
        window=4,
        chunk_elements=chunk_elements,
        subject_id="ps-test",
    )
    return PsWorld(ps, kgc, clock, engine, sessions, ps_key, participants)
