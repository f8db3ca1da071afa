"""What the parameter server's domain tests share: a job as its participants see it.

1024-bit parameters, a 300-value model (9 packed plaintexts, 3 blocks of width 4), four
participants ``p1 .. p4`` with weights 0.1 .. 0.4 (:class:`trapdoor.ps.testing.PsWorld`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from trapdoor.crypto.blocks import EncryptedVector, VectorEncryptor
from trapdoor.protocol.commitment import verify_closed_set
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    PsWorld,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    open_model,
    play_round,
)
from trapdoor.service.errors import TrapdoorError, http_status

LENGTH = 300
TOLERANCE = 2.0**-18
Deltas = dict[str, npt.NDArray[np.float64]]


def refused(status: int, code: str, call: Any, *args: Any) -> None:
    """``call(*args)`` is refused with ``code``, of the kind the API answers ``status`` for."""
    with pytest.raises(TrapdoorError) as err:
        call(*args)
    assert (http_status(err.value), err.value.code) == (status, code), err.value.message


def initial_w(seed: int = 11) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0.0, 0.5, LENGTH)


def deltas_for(participants: list[TestParticipant], seed: int) -> Deltas:
    rng = np.random.default_rng(seed)
    return {p.subject_id: rng.normal(0.0, 0.2, LENGTH) for p in participants}


class Scenario:
    """A job as the participants see it, with their shared encryptor for uploads."""

    def __init__(self, world: PsWorld, job_id: str = "job-a", **overrides: Any) -> None:
        self.world = world
        self.ps = world.ps
        self.job_id = job_id
        self.w0 = initial_w()
        self.view = world.ps.create_job(
            make_definition(job_id, world.participants, self.w0, **overrides)
        )
        # What every participant checks before it encrypts anything.
        self.terms = job_terms_of(self.view, world.kgc.info(), param_server=PS_SUBJECT_ID)
        self.encryptor = VectorEncryptor(job_key_of(self.view), window=4)
        self.rng = random.Random(99)

    def p(self, subject: str) -> TestParticipant:
        return next(p for p in self.world.participants if p.subject_id == subject)

    def vectors(self, deltas: Deltas) -> dict[str, EncryptedVector]:
        return {
            s: self.p(s).encrypt(self.view, d, self.encryptor, self.rng) for s, d in deltas.items()
        }

    def commit(self, t: int, vectors: dict[str, EncryptedVector]) -> None:
        for s, v in vectors.items():
            self.p(s).commit(self.ps, self.terms, t, v)

    def upload(self, t: int, vectors: dict[str, EncryptedVector]) -> None:
        for s, v in vectors.items():
            self.p(s).upload(self.ps, self.terms, t, v)

    def audit(self, t: int, subjects: list[str]) -> None:
        for s in subjects:
            self.p(s).audit(self.ps, self.terms, t)

    def play(self, t: int, deltas: Deltas, *, audit: bool = True) -> dict[str, EncryptedVector]:
        """Every participant in ``deltas`` commits, uploads and (``audit``) audits."""
        vectors = self.vectors(deltas)
        play_round(
            self.ps, self.terms, t, [(self.p(s), v) for s, v in vectors.items()], audit=audit
        )
        return vectors

    def closed_digest(self, t: int) -> str:
        return verify_closed_set(
            self.ps.closed_set(self.job_id, t)["closed_set"], self.terms, round_number=t
        ).digest

    def expected(self, w: npt.NDArray[np.float64], deltas: Deltas) -> npt.NDArray[np.float64]:
        weights = self.view["weights"]
        return w + sum(weights[s] * d for s, d in deltas.items())

    def model_of(self, p: TestParticipant, t: int) -> npt.NDArray[np.float64]:
        return open_model(self.view, p, self.ps.download(self.job_id, t, p.subject_id))

    def assert_models(self, t: int, expected: npt.NDArray[np.float64], subjects: list[str]) -> None:
        for s in subjects:
            assert np.max(np.abs(self.model_of(self.p(s), t) - expected)) < TOLERANCE, s
