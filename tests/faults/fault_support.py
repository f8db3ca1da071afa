"""What the fault tests share: a job the test plays over real HTTP, and its plaintext answer.

The test itself is every participant (as in tests/e2e/test_hostile_inputs.py): it picks
each update ``Δ_i``, encodes it with the job's public weight ``w_i``, encrypts it under the
job key and uploads it with a KGC token. So the released model can be checked exactly
against ``W_0 + Σ w_i Δ_i`` over the round's contributors, whatever faults happened.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trapdoor.crypto.blocks import EncryptedVector, VectorEncryptor
from trapdoor.crypto.encoding import encode_vector
from trapdoor.crypto.signing import b64encode
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.participant.client import JobView, ParticipantClient, PreparedUpload
from trapdoor.protocol.common import vector_sha256
from trapdoor.service.http import ServiceClient, ServiceError

LAYERS = [64, 8, 10]  # 610 weights: a small model keeps 1024-bit encryption cheap
ENCODING = {"frac_bits": 20, "slot_bits": 29, "slot_bound": 64.0, "clip_bound": 16.0, "width": 16}


def enrol_clients(
    cluster: LocalCluster, count: int, *, prefix: str = "p"
) -> list[ParticipantClient]:
    """``count`` participants enrolled at the cluster's KGC (keys made here, seeded)."""
    enrolments = [cluster.enrol(f"{prefix}-{i}", "participant") for i in range(count)]
    return [
        ParticipantClient.enrol(cluster.kgc_url, e["subject_id"], e["code"], rng=random.Random(i))
        for i, e in enumerate(enrolments)
    ]


@dataclass
class PlayedJob:
    """One job on the PS whose participants the test plays; remembers accepted updates."""

    ps_url: str
    job_id: str
    clients: list[ParticipantClient]
    view: JobView
    w0: npt.NDArray[np.float64]
    accepted: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)
    #: (round, participant) -> the ciphertext it committed to.
    committed: dict[tuple[int, int], EncryptedVector] = field(default_factory=dict)
    #: Payload SHA-256 -> its encryption randomness (uploads prove knowledge of it).
    randomness: dict[str, list[Any]] = field(default_factory=dict)
    _encryptor: VectorEncryptor | None = None

    @property
    def subjects(self) -> list[str]:
        return [c.identity.subject_id for c in self.clients]

    def delta(self, i: int) -> npt.NDArray[np.float64]:
        """Participant ``i``'s update: small and deterministic, well inside the clip bound."""
        return np.random.default_rng(1000 + i).normal(0.0, 0.05, self.view.packing.length)

    def encrypt(self, i: int) -> EncryptedVector:
        """``Enc(w_i Δ_i)`` with fresh randomness; one shared encryptor (tables)."""
        if self._encryptor is None:
            self._encryptor = VectorEncryptor(self.view.job_key, workers=1, window=4)
        weight = self.view.weights[self.subjects[i]]
        encoded, _ = encode_vector(
            self.delta(i), self.view.packing, clip_bound=self.view.clip_bound, scale=weight
        )
        vector, randomness = self._encryptor.encrypt_with_randomness(
            encoded, random.Random(random.getrandbits(64))
        )
        self.randomness[vector_sha256(vector)] = randomness
        return vector

    def commit(self, i: int, *, round_number: int = 0) -> None:
        """Participant ``i`` encrypts its update and commits to it."""
        vector = self.encrypt(i)
        self.committed[(round_number, i)] = vector
        self.clients[i].commit(
            self.view, PreparedUpload(round_number, vector, vector_sha256(vector), {})
        )

    def frame(self, i: int, *, round_number: int = 0, fresh: bool = False) -> bytes:
        """The committed upload of ``i`` (``fresh``: a new ciphertext) under the closed set."""
        closed = self.clients[i].closed_set(self.view, round_number)
        vector = self.encrypt(i) if fresh else self.committed[(round_number, i)]
        return self.clients[i].upload_frame(
            self.view, round_number, vector, closed, self.randomness[vector_sha256(vector)]
        )

    def audit(self, participants: Sequence[int], *, t: int = 0) -> None:
        """Once the round is aggregated, ``participants`` recompute and sign it (threads)."""
        self.wait_status(["closed"], t=t, timeout=120)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: self.clients[i].audit(self.view, t), participants))

    def play(self, participants: Sequence[int], *, t: int = 0) -> None:
        """``participants`` commit; once the set is closed they upload and audit."""
        for i in participants:
            self.commit(i, round_number=t)
        self.wait_status(["committed"], t=t, timeout=120)
        for i in participants:
            self.upload(i, round_number=t)
        self.audit(participants, t=t)

    def as_participant(self, i: int, *, timeout: float = 120.0) -> ServiceClient:
        token = functools.partial(self.clients[i].ps_token, self.ps_url)
        return ServiceClient(self.ps_url, token, timeout=timeout)

    def upload(self, i: int, data: bytes | None = None, *, round_number: int = 0) -> dict[str, Any]:
        """Upload (a fresh frame by default); an acknowledged upload is remembered."""
        frame = data if data is not None else self.frame(i, round_number=round_number)
        receipt: dict[str, Any] = self.as_participant(i).post_bytes(
            f"/v1/jobs/{self.job_id}/rounds/{round_number}/uploads", frame
        )
        self.accepted[i] = self.delta(i)
        return receipt

    def round(self, t: int = 0) -> dict[str, Any]:
        status: dict[str, Any] = self.as_participant(0).get_json(
            f"/v1/jobs/{self.job_id}/rounds/{t}"
        )
        return status

    def wait_status(self, wanted: Sequence[str], *, t: int = 0, timeout: float = 60) -> str:
        """Poll the round until its status is one of ``wanted``; the status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = str(self.round(t)["status"])
            except ServiceError as exc:
                if exc.status not in (0, 502, 503):
                    raise
                status = "unreachable"
            if status in wanted:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"round {t} of {self.job_id} is {status}, not {wanted}")
            time.sleep(0.25)

    def expected(self, contributors: Sequence[int]) -> npt.NDArray[np.float64]:
        """Plaintext FedAvg step: ``W_0 + Σ w_i Δ_i`` over ``contributors``."""
        total = np.array(self.w0, dtype=np.float64)
        for i in contributors:
            total = total + self.view.weights[self.subjects[i]] * self.delta(i)
        return total

    def check_model(
        self, contributors: Sequence[int], *, openers: Sequence[int] | None = None, t: int = 0
    ) -> None:
        """Contributors (``openers``, default all) open ``W_1``: the plaintext answer.

        Each term is rounded to ``2^-frac_bits`` once, so the tolerance grows with them.
        """
        want = self.expected(contributors)
        atol = (len(contributors) + 1) * 2.0 ** -int(ENCODING["frac_bits"])
        for i in contributors if openers is None else openers:
            got = self.clients[i].download_model(self.ps_url, self.job_id, t)
            np.testing.assert_allclose(got, want, rtol=0, atol=atol)

    def close(self) -> None:
        """Drop the encryptor (the clients may serve other jobs)."""
        if self._encryptor is not None:
            self._encryptor.close()
            self._encryptor = None


def create_job(
    cluster: LocalCluster,
    clients: list[ParticipantClient],
    job_id: str,
    *,
    quorum: int,
    deadline: float = 3600,
    policy: str = "stay-open",
    rounds: int = 1,
) -> PlayedJob:
    """Create a job (unequal sample counts, so the weights differ) and fetch its view."""
    model = MLP(LAYERS)
    w0 = model.init_parameters(np.random.default_rng(7))
    cluster.ps_operator(timeout=300).post_json(
        "/v1/jobs",
        {
            "job_id": job_id,
            "model": model.spec(),
            "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
            "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 32},
            "participants": [
                {"subject_id": c.identity.subject_id, "num_samples": 100 + 10 * i}
                for i, c in enumerate(clients)
            ],
            "quorum": quorum,
            "rounds": rounds,
            "round_deadline_seconds": deadline,
            "below_quorum_policy": policy,
            "aggregation": "bcp",
            "encoding": ENCODING,
        },
    )
    view = clients[0].fetch_job(cluster.ps_url, job_id)
    return PlayedJob(cluster.ps_url, job_id, clients, view, np.asarray(w0, dtype=np.float64))
