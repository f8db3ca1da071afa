"""Audits (trapdoor.protocol.audit): the one computation of a round's ``Agg`` and ``F``, as
the PS and every auditor make it, what it refuses, and the signed audit statement.

The uploads are real encryptions under a real (small) job key, so the checks decrypt
``F`` with the master key: ``W + ΣΔ + R``. The attacks are the ones the commit–audit
protocol exists for: a colluder whose upload is not what it committed (a ciphertext that
cancels an honest one), a PS that swaps the base, drops a contributor or opens something
else than what every contributor audited.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_support import PARTICIPANTS, THREE, Params, World, refused, resigned

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import (
    EncryptedVector,
    VectorEncryptor,
    add_plaintexts,
    decrypt_vector,
    generate_job_key,
)
from trapdoor.crypto.encoding import PackingLayout, decode_vector, encode_vector
from trapdoor.crypto.pok import RandomnessProof, batched_a, prove_randomness
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.audit import (
    AUDIT_PURPOSE,
    AuditedRound,
    audit_round,
    build_audit_statement,
    contributors_sha256,
    verify_audit_statement,
)
from trapdoor.protocol.bundle import blind_sha256
from trapdoor.protocol.commitment import (
    ClosedSet,
    build_closed_set,
    build_commitment,
    pok_context,
    verify_closed_set,
)
from trapdoor.protocol.common import MAX_ATTEMPT, ProtocolError, vector_sha256
from trapdoor.protocol.job import (
    JobTerms,
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_plaintexts,
    requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.release_request import (
    ReleaseCheck,
    check_release_request,
    release_request_header,
)
from trapdoor.protocol.upload import build_upload_statement

LENGTH = 20  # three plaintexts at 256 bits: two blocks of width 2, the last one ragged
WIDTH = 2
CLIP = 1.0


@dataclass
class Job:
    """A signed job, its participants' keys and encryptor, and W_0.

    ``randomness`` remembers each upload's encryption randomness (by ``vector_sha256``):
    what its sender, and only its sender, can prove knowledge of.
    """

    params: PublicParams
    master: MasterKey
    terms: JobTerms
    ps: Ed25519PrivateKey
    keys: dict[str, Ed25519PrivateKey]
    layout: PackingLayout
    w0: npt.NDArray[np.float64]
    encryptor: VectorEncryptor
    randomness: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.params.n)

    @property
    def num_blocks(self) -> int:
        return self.base0().layout.num_blocks

    def initial_a(self) -> list[int]:
        """The A components of Enc(W_0) (trivial): what round 0's chain starts from."""
        return [1] * self.num_blocks

    def kgc_check0(self, header: dict[str, Any], opened: EncryptedVector) -> ReleaseCheck:
        """The KGC's check of a round-0 request to open ``opened``: from ``Enc(W_0)``."""
        return check_release_request(
            header,
            self.terms,
            next_round=0,
            base_sha256=self.terms.initial_ciphertext_sha256,
            payload_sha256=vector_sha256(opened),
            previous_a=self.initial_a(),
            current_a=opened.a_components(),
        )

    def base0(self) -> EncryptedVector:
        return initial_ciphertext(self.terms.job_key, self.layout, self.w0)

    def delta(self, subject: str, round_number: int = 0) -> npt.NDArray[np.float64]:
        rng = np.random.default_rng([PARTICIPANTS.index(subject), round_number])
        return np.clip(rng.normal(0.0, 0.5, LENGTH), -CLIP, CLIP)

    def encoded(self, subject: str, round_number: int = 0) -> list[int]:
        plaintexts, _ = encode_vector(
            self.delta(subject, round_number), self.layout, clip_bound=CLIP
        )
        return [int(m) for m in plaintexts]

    def upload(self, subject: str, round_number: int = 0, seed: int = 0) -> EncryptedVector:
        rng = random.Random(f"{subject}/{round_number}/{seed}")
        vector, randomness = self.encryptor.encrypt_with_randomness(
            self.encoded(subject, round_number), rng
        )
        self.randomness[vector_sha256(vector)] = [int(r) for r in randomness]
        return vector

    def zero(self, seed: int) -> tuple[EncryptedVector, list[int]]:
        """A fresh encryption of zero and its randomness (what a re-randomiser knows)."""
        vector, randomness = self.encryptor.encrypt_with_randomness(
            [0] * self.layout.num_plaintexts, random.Random(f"zero/{seed}")
        )
        return vector, [int(r) for r in randomness]

    def proof(
        self, round_number: int, closed_digest: str, subject: str, upload: EncryptedVector
    ) -> dict[str, Any]:
        """The upload's randomness proof, from its remembered randomness.

        A vector with no known randomness (a crafted one) gets made-up randomness: its
        proof is not about the upload's A components.
        """
        digest = vector_sha256(upload)
        randomness = self.randomness.get(digest, [1] * self.num_blocks)
        return prove_randomness(
            self.params,
            randomness,
            pok_context(self.terms, round_number, closed_digest),
            subject,
            random.Random(f"proof/{subject}/{round_number}/{digest}"),
        ).to_obj()

    def closed_set(
        self, round_number: int, payloads: dict[str, str], closed_at: int = 1000
    ) -> dict[str, Any]:
        commitments = [
            build_commitment(
                self.keys[s],
                self.terms,
                round_number=round_number,
                subject_id=s,
                payload_sha256=digest,
            )
            for s, digest in payloads.items()
        ]
        return build_closed_set(
            self.ps,
            self.terms,
            round_number=round_number,
            commitments=commitments,
            closed_at=closed_at,
        )

    def closed(self, round_number: int, uploads: dict[str, EncryptedVector]) -> ClosedSet:
        signed = self.closed_set(round_number, {s: vector_sha256(u) for s, u in uploads.items()})
        return verify_closed_set(signed, self.terms, round_number=round_number)

    def blind(self, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(self.n) for _ in range(self.layout.num_plaintexts)]


@pytest.fixture(scope="module")
def job(small_params: Params) -> Iterator[Job]:
    params, master = small_params
    kgc, ps = generate_signing_key(), generate_signing_key()
    keys = {s: generate_signing_key() for s in PARTICIPANTS}
    layout = PackingLayout(modulus=int(params.n), length=LENGTH)
    w0 = np.linspace(-2.0, 2.0, LENGTH)
    definition = {
        "job_id": "job-1",
        "model": {"kind": "mlp", "layers": [4, 5]},
        "initial_weights": b64encode(w0.astype("<f8").tobytes()),
        "training": {"learning_rate": 0.1},
        "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
        "quorum": 3,
        "rounds": 3,
    }
    requested = requested_terms(
        job_id="job-1",
        definition=definition,
        packing=layout.to_json(),
        weights={s: 0.25 for s in PARTICIPANTS},
        width=WIDTH,
        num_plaintexts=layout.num_plaintexts,
        initial_ciphertext_sha256=initial_ciphertext_sha256(params, WIDTH, layout, w0),
    )
    job_key = generate_job_key(params, WIDTH, random.Random(11))
    signed, signature = sign_job_terms(
        kgc,
        requested,
        param_server="sub-ps",
        param_server_key=public_key_hex(ps),
        signing_keys={s: public_key_hex(k) for s, k in keys.items()},
        job_key=to_obj(job_key),
    )
    terms = verify_job_terms(kgc.public_key(), signed, signature, params)
    with VectorEncryptor(job_key, workers=1) as encryptor:
        yield Job(params, master, terms, ps, keys, layout, w0, encryptor)


@pytest.fixture(scope="module")
def uploads(job: Job) -> dict[str, EncryptedVector]:
    """Round 0's honest uploads of all four participants."""
    return {s: job.upload(s) for s in PARTICIPANTS}


def a_elements(vector: EncryptedVector) -> list[int]:
    return [int(vector.elements[offset]) for offset, _ in vector.layout.block_offsets()]


def audit0(job: Job, uploads: dict[str, EncryptedVector], **kw: Any) -> AuditedRound:
    """Round 0, attempt 0, over ``uploads`` (all committed), base Enc(W_0), blind R_0."""
    closed = kw.pop("closed", None) or job.closed(0, uploads)
    return audit_round(
        job.terms,
        closed,
        attempt=kw.pop("attempt", 0),
        base=kw.pop("base", job.base0()),
        uploads=uploads,
        blind=kw.pop("blind", job.blind()),
        **kw,
    )


# --------------------------------------------------------------------------- audits


def test_an_audit_returns_the_digests_it_vouches_for(world: World) -> None:
    digests = world.digests("cc" * 32, THREE, attempt=7)
    signed = world.audit("sub-b", 1, digests)
    body = verify_audit_statement(signed, world.terms, round_number=1, subject_id="sub-b")
    assert body.digests == digests
    assert {k: body.to_json()[k] for k in digests.fields()} == digests.fields()
    assert body.purpose == AUDIT_PURPOSE


@pytest.mark.parametrize("attempt", [-1, MAX_ATTEMPT + 1, True, "0", 1.0, None])
def test_an_audit_with_a_bad_attempt_is_refused(world: World, attempt: object) -> None:
    body = {**world.audit("sub-a", 0, world.digests("cc" * 32, THREE))["audit"]}
    body["attempt"] = attempt
    refused(
        "bad-audit",
        lambda: verify_audit_statement(
            resigned("audit", body, world.keys["sub-a"]), world.terms, round_number=0
        ),
    )


def test_the_last_attempt_is_accepted(world: World) -> None:
    signed = world.audit("sub-a", 0, world.digests("cc" * 32, THREE, attempt=MAX_ATTEMPT))
    assert verify_audit_statement(signed, world.terms, round_number=0).attempt == MAX_ATTEMPT


# --------------------------------------------------------------------------- the computation


def test_agg_and_f_are_the_base_times_the_uploads_then_blinded(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    three = {s: uploads[s] for s in ("sub-c", "sub-a", "sub-b")}  # any order
    closed = job.closed(0, three)
    blind = job.blind(5)
    base = job.base0()
    audited = audit0(job, three, closed=closed, blind=blind)
    assert audited.contributors == tuple(THREE)
    assert audited.aggregate == EncryptedVector.sum([base, *(uploads[s] for s in THREE)])
    assert audited.release == add_plaintexts(audited.aggregate, blind)
    assert a_elements(audited.release) == a_elements(audited.aggregate)

    n = job.n
    w = [int(m) for m in initial_plaintexts(job.layout, job.w0)]
    summed = [(w[i] + sum(job.encoded(s)[i] for s in THREE)) % n for i in range(len(w))]
    assert decrypt_vector(job.master, audited.aggregate) == summed
    assert decrypt_vector(job.master, audited.release) == [
        (m + r) % n for m, r in zip(summed, blind, strict=True)
    ]
    expected = job.w0 + sum(job.delta(s) for s in THREE)
    decoded = decode_vector(decrypt_vector(job.master, audited.aggregate), job.layout)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=4 * 2.0**-job.layout.frac_bits)

    digests = audited.digests
    assert digests.attempt == 0
    assert digests.closed_set_sha256 == closed.digest
    assert digests.contributors_sha256 == contributors_sha256(THREE)
    assert digests.base_sha256 == vector_sha256(base) == job.terms.initial_ciphertext_sha256
    assert digests.aggregate_sha256 == vector_sha256(audited.aggregate)
    assert digests.release_sha256 == vector_sha256(audited.release)
    assert digests.blind_sha256 == blind_sha256(blind, n)


def test_every_auditor_gets_the_same_digests(job: Job, uploads: dict[str, EncryptedVector]) -> None:
    three = {s: uploads[s] for s in THREE}
    closed = job.closed(0, three)
    by_ps = audit0(job, three, closed=closed)
    for subject in THREE:
        assert audit0(job, three, closed=closed, subject_id=subject) == by_ps


def test_a_later_attempt_runs_over_part_of_the_closed_set(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """sub-c committed and uploaded but did not audit: attempt 1 drops it, with a fresh R."""
    closed = job.closed(0, uploads)
    assert len(closed.payloads) == 4
    first = audit0(job, uploads, closed=closed)
    kept = {s: uploads[s] for s in ("sub-a", "sub-b", "sub-d")}
    second = audit0(job, kept, closed=closed, attempt=1, blind=job.blind(1))
    assert second.contributors == ("sub-a", "sub-b", "sub-d")
    assert second.digests.attempt == 1
    assert second.digests.closed_set_sha256 == first.digests.closed_set_sha256
    assert second.digests.contributors_sha256 != first.digests.contributors_sha256
    assert second.digests.aggregate_sha256 != first.digests.aggregate_sha256
    assert second.digests.blind_sha256 != first.digests.blind_sha256


def test_a_later_round_may_start_from_any_base(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """From round 1 on the base is chained by the KGC (previous release), not by the terms."""
    three = {s: uploads[s] for s in THREE}
    previous = audit0(job, three)
    round1 = {s: job.upload(s, 1) for s in THREE}
    audited = audit_round(
        job.terms,
        job.closed(1, round1),
        attempt=0,
        base=previous.aggregate,
        uploads=round1,
        blind=job.blind(2),
    )
    assert audited.digests.base_sha256 == previous.digests.aggregate_sha256
    expected = job.w0 + sum(job.delta(s) + job.delta(s, 1) for s in THREE)
    decoded = decode_vector(decrypt_vector(job.master, audited.aggregate), job.layout)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=8 * 2.0**-job.layout.frac_bits)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(min_value=0, max_value=2**32), edge=st.sampled_from([None, 0, -1]))
def test_f_decrypts_to_agg_plus_r_for_any_blind(
    job: Job, uploads: dict[str, EncryptedVector], seed: int, edge: int | None
) -> None:
    blind = job.blind(seed)
    if edge is not None:
        blind = [edge % job.n] * len(blind)  # 0 and N - 1 are in range
    three = {s: uploads[s] for s in THREE}
    audited = audit0(job, three, blind=blind)
    opened = decrypt_vector(job.master, audited.release)
    plain = decrypt_vector(job.master, audited.aggregate)
    assert opened == [(m + r) % job.n for m, r in zip(plain, blind, strict=True)]


# --------------------------------------------------------------------------- refusals


def test_an_upload_that_differs_from_its_commitment_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    three = {s: uploads[s] for s in THREE}
    closed = job.closed(0, three)
    # the same plaintexts under other randomness: another ciphertext, another digest
    reencrypted = {**three, "sub-b": job.upload("sub-b", seed=1)}
    refused("upload-mismatch", lambda: audit0(job, reencrypted, closed=closed))
    # another participant's upload relabelled
    relabelled = {**three, "sub-b": uploads["sub-d"]}
    refused("upload-mismatch", lambda: audit0(job, relabelled, closed=closed))


def test_a_contributor_without_a_commitment_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    closed = job.closed(0, {s: uploads[s] for s in THREE})
    refused("not-committed", lambda: audit0(job, uploads, closed=closed))


def test_fewer_uploads_than_the_quorum_are_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    closed = job.closed(0, uploads)
    for subjects in (["sub-a", "sub-b"], ["sub-d"], []):
        two = {s: uploads[s] for s in subjects}
        refused("below-quorum", lambda u=two: audit0(job, u, closed=closed))


def test_an_auditor_that_is_not_included_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """sub-d was dropped from this attempt (or never committed): it does not sign it."""
    three = {s: uploads[s] for s in THREE}
    closed = job.closed(0, uploads)
    for subject in ("sub-d", "sub-x"):
        refused(
            "not-included",
            lambda s=subject: audit0(job, three, closed=closed, subject_id=s),
        )


def test_round_0_must_start_from_the_signed_initial_ciphertext(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    three = {s: uploads[s] for s in THREE}
    closed = job.closed(0, three)
    w = [int(m) for m in initial_plaintexts(job.layout, job.w0)]
    randomised = job.encryptor.encrypt(w, random.Random(3))  # same W_0, other bytes
    assert decrypt_vector(job.master, randomised) == w
    shifted = add_plaintexts(job.base0(), [1] + [0] * (len(w) - 1))
    for base in (randomised, shifted, uploads["sub-d"]):
        refused("base-mismatch", lambda b=base: audit0(job, three, closed=closed, base=b))


@pytest.mark.parametrize(
    "make",
    [
        lambda n, k: [0] * (k - 1),
        lambda n, k: [0] * (k + 1),
        lambda n, k: [],
        lambda n, k: [0] * (k - 1) + [n],
        lambda n, k: [-1] + [0] * (k - 1),
        lambda n, k: [n * n] * k,
    ],
    ids=["short", "long", "empty", "n", "negative", "n-squared"],
)
def test_a_blind_of_the_wrong_length_or_out_of_range_is_refused(
    job: Job, uploads: dict[str, EncryptedVector], make: Callable[[int, int], list[int]]
) -> None:
    three = {s: uploads[s] for s in THREE}
    blind = make(job.n, job.layout.num_plaintexts)
    refused("bad-blind", lambda: audit0(job, three, blind=blind))


# --------------------------------------------------------------------------- attacks


def inverse(vector: EncryptedVector) -> EncryptedVector:
    """``U^-1`` element-wise: encrypts ``-m`` (what a canceller multiplies in)."""
    n2 = vector.job_key.params.nsquare
    elements = tuple(gmpy2.invert(x, n2) for x in vector.elements)
    return EncryptedVector(vector.job_key, vector.layout, elements)


def test_a_cancelling_ciphertext_is_refused(job: Job, uploads: dict[str, EncryptedVector]) -> None:
    """A colluder (sub-c) that saw sub-b's upload sends ``U_c · U_b^-1`` instead of ``U_c``.

    Accepted, it would take sub-b's update out of the aggregate (so two releases would
    differ by sub-b's update alone). It was not what sub-c committed before any upload was
    visible, so every auditor refuses the attempt.
    """
    three = {s: uploads[s] for s in THREE}
    closed = job.closed(0, three)
    crafted = uploads["sub-c"] + inverse(uploads["sub-b"])
    n = job.n
    cancelled = EncryptedVector.sum([job.base0(), uploads["sub-a"], uploads["sub-b"], crafted])
    w = [int(m) for m in initial_plaintexts(job.layout, job.w0)]
    without_b = [
        (w[i] + job.encoded("sub-a")[i] + job.encoded("sub-c")[i]) % n for i in range(len(w))
    ]
    assert decrypt_vector(job.master, cancelled) == without_b  # the threat is real
    for subject in (None, "sub-a", "sub-b"):
        refused(
            "upload-mismatch",
            lambda s=subject: audit0(job, {**three, "sub-c": crafted}, closed=closed, subject_id=s),
        )


# --------------------------------------------------------------------------- with the KGC's check


def release_header(
    job: Job,
    round_number: int,
    closed_signed: dict[str, Any],
    uploads: dict[str, EncryptedVector],
    audited: AuditedRound,
    *,
    statements_under: str | None = None,
    proofs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The PS's release request; ``proofs`` replaces some contributors' randomness proofs."""
    closed = verify_closed_set(closed_signed, job.terms, round_number=round_number)
    under = statements_under or closed.digest
    subjects = sorted(uploads)
    statements = [
        build_upload_statement(
            job.keys[s],
            job.terms,
            round_number=round_number,
            subject_id=s,
            payload_sha256=vector_sha256(uploads[s]),
            closed_set_sha256=under,
            randomness_proof=(proofs or {}).get(s) or job.proof(round_number, under, s, uploads[s]),
        )
        for s in subjects
    ]
    audits = [
        build_audit_statement(
            job.keys[s],
            job.terms,
            round_number=round_number,
            subject_id=s,
            digests=audited.digests,
        )
        for s in subjects
    ]
    return release_request_header(
        job_id=job.terms.job_id,
        round_number=round_number,
        attempt=audited.digests.attempt,
        closed_set=closed_signed,
        statements=statements,
        audits=audits,
    )


def test_the_kgc_accepts_exactly_what_every_contributor_audited(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    three = {s: uploads[s] for s in THREE}
    signed = job.closed_set(0, {s: vector_sha256(u) for s, u in three.items()})
    closed = verify_closed_set(signed, job.terms, round_number=0)
    audited = audit0(job, three, closed=closed)
    header = release_header(job, 0, signed, three, audited)
    check = job.kgc_check0(header, audited.release)
    assert check.round == 0 and check.contributors == tuple(THREE)
    assert check.digests == audited.digests

    # a PS that asks to open something else than the audited F: an individual upload,
    # blinded like F, or F under another R
    for other in (
        add_plaintexts(uploads["sub-a"], job.blind()),
        add_plaintexts(audited.aggregate, job.blind(9)),
        audited.aggregate,
    ):
        with pytest.raises(ProtocolError) as info:
            job.kgc_check0(header, other)
        assert info.value.code == "audit-mismatch"

    # round 1 must continue from round 0's audited aggregate, not from another base
    round1 = {s: job.upload(s, 1) for s in THREE}
    signed1 = job.closed_set(1, {s: vector_sha256(u) for s, u in round1.items()})
    closed1 = verify_closed_set(signed1, job.terms, round_number=1)
    for base, ok in ((audited.aggregate, True), (job.base0(), False)):
        audited1 = audit_round(
            job.terms, closed1, attempt=0, base=base, uploads=round1, blind=job.blind(4)
        )
        header1 = release_header(job, 1, signed1, round1, audited1)

        def check1(h: dict[str, Any] = header1, a: AuditedRound = audited1) -> object:
            return check_release_request(
                h,
                job.terms,
                next_round=1,
                base_sha256=audited.digests.aggregate_sha256,
                payload_sha256=vector_sha256(a.release),
                previous_a=audited.release.a_components(),
                current_a=a.release.a_components(),
            )

        if ok:
            assert check1() is not None
        else:
            refused("audit-mismatch", check1)


def test_a_second_closed_set_with_a_crafted_commitment_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """The PS re-closes the set so the canceller's crafted upload matches a commitment.

    The auditors of the new set would accept it, but the honest contributors uploaded under
    the first set and their statements name its digest: the KGC refuses the request.
    """
    three = {s: uploads[s] for s in THREE}
    first = job.closed_set(0, {s: vector_sha256(u) for s, u in three.items()})
    first_digest = verify_closed_set(first, job.terms, round_number=0).digest
    crafted = {**three, "sub-c": uploads["sub-c"] + inverse(uploads["sub-b"])}
    second = job.closed_set(0, {s: vector_sha256(u) for s, u in crafted.items()}, closed_at=2000)
    closed2 = verify_closed_set(second, job.terms, round_number=0)
    audited = audit0(job, crafted, closed=closed2)  # consistent with the second set
    header = release_header(job, 0, second, crafted, audited, statements_under=first_digest)
    refused(
        "statement-mismatch",
        lambda: job.kgc_check0(header, audited.release),
    )


def released_round0(job: Job, uploads: dict[str, EncryptedVector]) -> AuditedRound:
    """Round 0 over sub-a, sub-b and sub-c, checked by the KGC: its F is the chain's start."""
    three = {s: uploads[s] for s in THREE}
    signed = job.closed_set(0, {s: vector_sha256(u) for s, u in three.items()})
    audited = audit0(job, three, closed=verify_closed_set(signed, job.terms, round_number=0))
    job.kgc_check0(release_header(job, 0, signed, three, audited), audited.release)
    return audited


def test_a_rerandomised_copy_of_an_earlier_upload_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """A colluding quorum (sub-b, sub-c, sub-d, with the PS) replays sub-a's round-0 upload.

    sub-d uploads ``U_a · Enc(0)`` in round 1: new bytes, so it commits, uploads and audits
    like any other upload, and two releases would then differ by sub-a's update alone. But
    sub-d knows only the zero's randomness, not sub-a's: it cannot prove knowledge of its
    upload's randomness, and the KGC refuses.
    """
    round0 = released_round0(job, uploads)
    zero, zero_randomness = job.zero(1)
    copy = uploads["sub-a"] + zero
    assert decrypt_vector(job.master, copy) == job.encoded("sub-a")  # the threat is real
    round1 = {
        "sub-b": job.upload("sub-b", 1),
        "sub-c": job.upload("sub-c", 1),
        "sub-d": copy,
    }
    signed = job.closed_set(1, {s: vector_sha256(u) for s, u in round1.items()})
    closed = verify_closed_set(signed, job.terms, round_number=1)
    audited = audit_round(  # every auditor of the colluding quorum accepts it
        job.terms, closed, attempt=0, base=round0.aggregate, uploads=round1, blind=job.blind(6)
    )
    assert audited.contributors == ("sub-b", "sub-c", "sub-d")
    context = pok_context(job.terms, 1, closed.digest)
    known = prove_randomness(
        job.params, zero_randomness, context, "sub-d", random.Random("colluder")
    )
    # the proof from what sub-d knows, but about its upload's A components: it cannot verify
    claimed = RandomnessProof(batched_a(job.params, copy.a_components(), context), known.t, known.z)

    def check(proof: RandomnessProof) -> object:
        header = release_header(job, 1, signed, round1, audited, proofs={"sub-d": proof.to_obj()})
        return check_release_request(
            header,
            job.terms,
            next_round=1,
            base_sha256=round0.digests.aggregate_sha256,
            payload_sha256=vector_sha256(audited.release),
            previous_a=round0.release.a_components(),
            current_a=audited.release.a_components(),
        )

    refused("bad-randomness-proof", lambda: check(claimed))
    # a valid proof of the zero alone leaves sub-a's A components unaccounted for
    refused("broken-a-chain", lambda: check(known))


def test_opening_a_vector_off_the_a_chain_is_refused(
    job: Job, uploads: dict[str, EncryptedVector]
) -> None:
    """The PS asks to open ``F · Enc(0)``, with every audit re-signed to name it as F.

    It decrypts to the same ``W + ΣΔ + R``, but its A components are not the previous
    release's times the proven uploads: the KGC refuses it (and would refuse anything
    else the PS multiplied in, such as a replayed upload).
    """
    three = {s: uploads[s] for s in THREE}
    signed = job.closed_set(0, {s: vector_sha256(u) for s, u in three.items()})
    audited = audit0(job, three, closed=verify_closed_set(signed, job.terms, round_number=0))
    zero, _ = job.zero(2)
    other = audited.release + zero
    assert decrypt_vector(job.master, other) == decrypt_vector(job.master, audited.release)
    renamed = dataclasses.replace(
        audited,
        release=other,
        digests=dataclasses.replace(audited.digests, release_sha256=vector_sha256(other)),
    )
    header = release_header(job, 0, signed, three, renamed)
    refused(
        "broken-a-chain",
        lambda: job.kgc_check0(header, other),
    )
