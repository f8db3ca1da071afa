"""What the protocol tests share: a KGC-signed bcp job (:class:`World`) and its messages.

Four participants and a quorum of three leave room for a contributor outside the closed
set and for an attempt that drops one.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import BlockLayout, generate_job_key
from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex, sign_json
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.audit import (
    AuditDigests,
    build_audit_statement,
    build_undecodable_statement,
    contributors_sha256,
)
from trapdoor.protocol.commitment import (
    ClosedSet,
    build_closed_set,
    build_commitment,
    pok_context,
    verify_closed_set,
)
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.job import (
    initial_ciphertext_sha256,
    requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.release_request import (
    ReleaseCheck,
    UndecodedRelease,
    check_release_request,
    release_request_header,
)
from trapdoor.protocol.upload import build_upload_statement

#: Four participants and a quorum of three: room for a contributor outside the closed set
#: and for an attempt that drops one.
PARTICIPANTS = ["sub-a", "sub-b", "sub-c", "sub-d"]
THREE = PARTICIPANTS[:3]
PS = "sub-ps"
BASE = "ba" * 32
RELEASE = "f0" * 32
AGGREGATE = "a9" * 32
BLIND = "b1" * 32
BUNDLE = "bd" * 32  # run 0's bundle, as the KGC and every contributor name it
HYP = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
Params = tuple[PublicParams, MasterKey]


def payload(subject: str, round_number: int = 0) -> str:
    """A stand-in payload digest, distinct per subject and round."""
    return hashlib.sha256(f"{subject}/{round_number}".encode()).hexdigest()


class World:
    """A KGC key, a job signed for PS (and its key), its view, and the participants' keys."""

    def __init__(
        self,
        params: PublicParams,
        *,
        quorum: int = 3,
        rounds: int = 4,
        initial_digest: str | None = None,
    ) -> None:
        rng = random.Random(7)
        self.params = params
        self.kgc = generate_signing_key()
        self.ps = generate_signing_key()
        self.keys = {s: generate_signing_key() for s in PARTICIPANTS}
        self.initial_weights = np.array([0.5, -1.25, 0.0, 3.0, -0.125])
        self.definition: dict[str, Any] = {
            "job_id": "job-1",
            "model": {"kind": "mlp", "layers": [2, 3]},
            "initial_weights": b64encode(self.initial_weights.astype("<f8").tobytes()),
            "training": {"learning_rate": 0.1},
            "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
            "quorum": quorum,
            "rounds": rounds,
        }
        self.layout = PackingLayout(modulus=int(params.n), length=5)
        self.packing = self.layout.to_json()
        self.weights = {s: 1 / len(PARTICIPANTS) for s in PARTICIPANTS}
        if initial_digest is None:
            initial_digest = initial_ciphertext_sha256(params, 2, self.layout, self.initial_weights)
        requested = requested_terms(
            job_id="job-1",
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=2,
            num_plaintexts=self.layout.num_plaintexts,
            initial_ciphertext_sha256=initial_digest,
        )
        self.job_key = to_obj(generate_job_key(params, 2, rng))
        self.signed, self.signature = sign_job_terms(
            self.kgc,
            requested,
            param_server=PS,
            param_server_key=public_key_hex(self.ps),
            signing_keys={s: public_key_hex(k) for s, k in self.keys.items()},
            job_key=self.job_key,
        )
        self.terms = verify_job_terms(self.kgc.public_key(), self.signed, self.signature, params)
        self.blocks = BlockLayout(self.terms.num_plaintexts, self.terms.width).num_blocks

    def randomness(self, subject: str, round_number: int) -> list[Any]:
        """The (made-up) block randomness of ``subject``'s round upload: ``A_b = g^{r_b}``."""
        rng = random.Random(f"{subject}/{round_number}")
        return [self.params.random_exponent(rng) for _ in range(self.blocks)]

    def a_of(self, subjects: list[str], round_number: int) -> list[Any]:
        """The ``A`` components of a released vector holding these subjects' uploads."""
        n2 = self.params.nsquare
        return [
            pow(
                int(self.params.g),
                sum(int(self.randomness(s, round_number)[b]) for s in subjects),
                int(n2),
            )
            for b in range(self.blocks)
        ]

    def view(self) -> dict[str, Any]:
        return {
            "job_id": "job-1",
            "definition": copy.deepcopy(self.definition),
            "packing": dict(self.packing),
            "weights": dict(self.weights),
            "job_key": copy.deepcopy(self.job_key),
            "job_terms": copy.deepcopy(self.signed),
            "job_terms_signature": self.signature,
        }

    # participant-signed messages

    def commitment(self, subject: str, round_number: int = 0, **kw: Any) -> dict[str, Any]:
        return build_commitment(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            payload_sha256=kw.pop("digest", payload(subject, round_number)),
            run=kw.pop("run", 0),
        )

    def closed_set(
        self,
        round_number: int = 0,
        subjects: list[str] = THREE,
        *,
        commitments: list[dict[str, Any]] | None = None,
        key: Any = None,
        closed_at: int = 1000,
        run: int = 0,
    ) -> dict[str, Any]:
        if commitments is None:
            commitments = [self.commitment(s, round_number, run=run) for s in subjects]
        return build_closed_set(
            key or self.ps,
            self.terms,
            round_number=round_number,
            commitments=commitments,
            closed_at=closed_at,
            run=run,
        )

    def closed(self, signed: dict[str, Any], round_number: int = 0, run: int = 0) -> ClosedSet:
        return verify_closed_set(signed, self.terms, round_number=round_number, run=run)

    def statement(
        self, subject: str, round_number: int = 0, *, closed: str = "cc" * 32, **kw: Any
    ) -> dict[str, Any]:
        return build_upload_statement(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            payload_sha256=kw.pop("digest", payload(subject, round_number)),
            closed_set_sha256=closed,
            randomness_proof=prove_randomness(
                self.params,
                self.randomness(subject, round_number),
                pok_context(self.terms, round_number, closed),
                subject,
                random.Random(0),
            ).to_obj(),
            run=kw.pop("run", 0),
        )

    def digests(
        self, closed: str, subjects: list[str], *, attempt: int = 0, **kw: str
    ) -> AuditDigests:
        return AuditDigests(
            attempt=attempt,
            closed_set_sha256=closed,
            contributors_sha256=contributors_sha256(subjects),
            base_sha256=kw.get("base", BASE),
            aggregate_sha256=kw.get("aggregate", AGGREGATE),
            release_sha256=kw.get("release", RELEASE),
            blind_sha256=kw.get("blind", BLIND),
        )

    def audit(
        self, subject: str, round_number: int, digests: AuditDigests, **kw: Any
    ) -> dict[str, Any]:
        return build_audit_statement(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            digests=digests,
            run=kw.pop("run", 0),
        )

    def undecodable(
        self, subject: str, round_number: int, bundle: str = BUNDLE, **kw: Any
    ) -> dict[str, Any]:
        return build_undecodable_statement(
            kw.pop("key", self.keys[subject]),
            self.terms,
            round_number=round_number,
            run=kw.pop("run", 0),
            subject_id=subject,
            bundle_sha256=bundle,
        )

    def release_header(
        self,
        round_number: int,
        subjects: list[str],
        *,
        committed: list[str] | None = None,
        attempt: int = 0,
        ps_key: Any = None,
        run: int = 0,
        undecodable: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An honest request: closed set, statements and audits of ``subjects``, signed.

        A re-run (``run`` 1) carries every subject's report on run 0's bundle unless
        ``undecodable`` says otherwise.
        """
        closed_signed = self.closed_set(round_number, committed or subjects, run=run)
        closed = self.closed(closed_signed, round_number, run)
        digests = self.digests(closed.digest, subjects, attempt=attempt)
        if undecodable is None:
            undecodable = [self.undecodable(s, round_number) for s in subjects] if run else []
        header = release_request_header(
            job_id="job-1",
            round_number=round_number,
            attempt=attempt,
            closed_set=closed_signed,
            statements=[
                self.statement(s, round_number, closed=closed.digest, run=run) for s in subjects
            ],
            audits=[self.audit(s, round_number, digests, run=run) for s in subjects],
            run=run,
            undecodable=undecodable,
        )
        return {**header, "request_signature": sign_json(ps_key or self.ps, header)}


def refused(code: str, call: Callable[[], object]) -> ProtocolError:
    """``call()`` raises :class:`ProtocolError` with ``code``; the error, for more checks."""
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code == code, info.value.message
    return info.value


def check(
    world: World,
    header: dict[str, Any],
    next_round: int,
    undecoded: UndecodedRelease | None = None,
    **kw: str,
) -> ReleaseCheck:
    """The KGC's check; the vector it opens holds exactly the listed contributors' ``A``."""
    contributors = header.get("contributors")
    holds = [str(c) for c in contributors] if isinstance(contributors, list) else []
    round_number = header.get("round") if isinstance(header.get("round"), int) else 0
    return check_release_request(
        header,
        world.terms,
        next_round=next_round,
        base_sha256=kw.get("base", BASE),
        payload_sha256=kw.get("payload", RELEASE),
        previous_a=[1] * world.blocks,
        current_a=world.a_of(holds, int(round_number)),
        undecoded=undecoded,
    )


def resigned(field: str, body: dict[str, Any], key: Any) -> dict[str, Any]:
    """``body`` signed again with ``key``: a tampered message that still has a signature."""
    return {field: body, "signature": sign_json(key, body)}
