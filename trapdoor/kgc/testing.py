"""Test support for the KGC: a clock, subjects with their keys, signed protocol messages.

Used by the KGC's unit and API tests, and usable by anyone who needs a real KGC in a
test (the parameter server's or the participant's end-to-end tests). Everything here
does the real crypto; nothing is mocked, and every message is built with the shared
:mod:`trapdoor.protocol` functions, exactly as the services build them: token challenges
(:func:`~trapdoor.protocol.token.token_request`), requested job terms
(:func:`~trapdoor.protocol.job.requested_terms`, with the digest of a real ``Enc(W_0)``),
and one round of the round protocol v2 (docs/PROTOCOL.md) as an honest PS plays
it (:func:`play_round`): tiny real uploads, the contributors' commitments, the PS-signed
closed set, upload statements naming it, a real :func:`~trapdoor.protocol.audit.audit_round`
and every contributor's audit of its digests. :meth:`RoundPlay.frame` turns that into the
PS's release request (:func:`~trapdoor.protocol.release_request.release_request_header`
plus a ``request_signature`` over the whole frame header without that field, ``sha256``
included); its keyword arguments replace any piece, so a test plays a dishonest PS::

    play = play_round(terms, ps_key, signers, rng)           # round 0, from Enc(W_0)
    kgc.release(ps_id, job_id, play.frame())                 # honest
    play.frame(audits=play.audits[:-1])                      # an audit missing
    play.frame(audits=play.audits_with(release_sha256=x))    # audits for another F
    later = play_round(terms, ps_key, signers, rng, after=play)   # round 1, from Agg_0
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.bcp import PublicKey, PublicParams, RandomSource, SecretKey
from trapdoor.crypto.blocks import BlockLayout, EncryptedVector, JobKey
from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.masking import encrypt_seed
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex, sign_json
from trapdoor.crypto.wire import decode_frame, encode_frame, to_obj
from trapdoor.protocol.audit import (
    AuditDigests,
    AuditedRound,
    audit_round,
    build_audit_statement,
    build_undecodable_statement,
)
from trapdoor.protocol.bundle import ReleaseBinding, bundle_sha256
from trapdoor.protocol.commitment import (
    build_closed_set,
    build_commitment,
    pok_context,
    verify_closed_set,
)
from trapdoor.protocol.common import MAX_ATTEMPT, vector_sha256
from trapdoor.protocol.job import (
    JobTerms,
    MaskedLayout,
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_plaintexts,
    initial_state_sha256,
    masked_layout,
    requested_terms,
)
from trapdoor.protocol.release_request import masked_release_request_header, release_request_header
from trapdoor.protocol.token import KGC_AUDIENCE, token_request
from trapdoor.protocol.upload import (
    build_masked_upload_statement,
    build_upload_statement,
    seed_sha256,
    seed_to_obj,
)
from trapdoor.service.clock import ManualClock as FakeClock

__all__ = [
    "FakeClock",
    "MaskedUpload",
    "Refusal",
    "RoundPlay",
    "TestSubject",
    "audit_for",
    "dishonest_requests",
    "encrypt_plaintexts",
    "initial_base",
    "initial_model",
    "job_request",
    "masked_job_request",
    "masked_release_request",
    "masked_test_layout",
    "masked_upload",
    "packing_for",
    "play_round",
    "release_frame",
    "statement_for",
    "undecodable_reports",
]


@dataclass
class TestSubject:
    """A subject's own keys: Ed25519 always, a BCP key pair for participants."""

    __test__ = False  # not a pytest test class

    role: str
    signing_key: Ed25519PrivateKey
    public_key: PublicKey | None = None
    secret_key: SecretKey | None = None
    subject_id: str = ""

    @classmethod
    def participant(cls, params: PublicParams, rng: RandomSource) -> TestSubject:
        public, secret = params.keygen(rng)
        return cls("participant", generate_signing_key(), public, secret)

    @classmethod
    def param_server(cls) -> TestSubject:
        return cls("param_server", generate_signing_key())

    def completion(self, code: str) -> dict[str, Any]:
        """The body of ``POST /v1/enrolments/<id>/complete``."""
        body: dict[str, Any] = {"code": code, "signing_key": public_key_hex(self.signing_key)}
        if self.public_key is not None:
            body["bcp_public_key"] = to_obj(self.public_key)
        return body

    def challenge(self, now: float, nonce: str, audience: str = KGC_AUDIENCE) -> dict[str, Any]:
        """The body of ``POST /v1/tokens`` for ``audience``, signed with this subject's key."""
        return token_request(self.signing_key, self.subject_id, int(now), nonce, audience)


def encrypt_plaintexts(
    job_key: JobKey, plaintexts: Sequence[int], rng: random.Random
) -> EncryptedVector:
    """Block encryption with one fresh ``r`` per block (plain powmods: tiny test vectors)."""
    return encrypt_with_randomness(job_key, plaintexts, rng)[0]


def encrypt_with_randomness(
    job_key: JobKey, plaintexts: Sequence[int], rng: random.Random
) -> tuple[EncryptedVector, list[Any]]:
    """:func:`encrypt_plaintexts`, also returning each block's ``r`` (for its proof)."""
    params = job_key.params
    randomness = []
    n, n2 = params.n, params.nsquare
    layout = BlockLayout(len(plaintexts), job_key.width)
    elements: list[int] = []
    position = 0
    for size in layout.block_sizes():
        r = params.random_exponent(rng)
        randomness.append(r)
        elements.append(int(gmpy2.powmod(params.g, r, n2)))
        for j in range(size):
            m = gmpy2.mpz(plaintexts[position]) % n
            elements.append(int(gmpy2.powmod(job_key.hs[j], r, n2) * (1 + m * n) % n2))
            position += 1
    vector = EncryptedVector(job_key, layout, tuple(gmpy2.mpz(e) for e in elements))
    return vector, randomness


# ---------------------------------------------------------------- job terms


def packing_for(params: PublicParams, num_plaintexts: int) -> PackingLayout:
    """A real packing that fills exactly ``num_plaintexts`` plaintexts under ``params``."""
    slots = PackingLayout(params.n, 0).slots_per_plaintext
    return PackingLayout(params.n, num_plaintexts * slots)


def _initial_weights(length: int) -> npt.NDArray[np.float64]:
    """``W_0`` of every test job: fixed, so its ciphertext can be recomputed from the terms."""
    return np.linspace(-1.0, 1.0, length)


def initial_model(terms: JobTerms) -> list[int]:
    """The plaintexts of ``W_0`` for a job made with :func:`job_request`."""
    packing = packing_for(terms.job_key.params, terms.num_plaintexts)
    return [int(m) for m in initial_plaintexts(packing, _initial_weights(packing.length))]


def initial_base(terms: JobTerms) -> EncryptedVector:
    """``Enc(W_0)`` of a job made with :func:`job_request`: its digest is in the terms."""
    packing = packing_for(terms.job_key.params, terms.num_plaintexts)
    return initial_ciphertext(terms.job_key, packing, _initial_weights(packing.length))


def job_request(
    job_id: str,
    participants: Sequence[str],
    *,
    params: PublicParams,
    quorum: int,
    rounds: int = 3,
    width: int = 3,
    num_plaintexts: int = 5,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/jobs``: ``{"job_id", "terms": requested_terms(...)}``.

    The definition's model is a stand-in (the KGC only sees digests), but the packing
    and ``W_0`` are real, so ``initial_ciphertext_sha256`` names :func:`initial_base`.
    """
    packing = packing_for(params, num_plaintexts)
    initial_weights = _initial_weights(packing.length)
    definition = {
        "job_id": job_id,
        "model": {"kind": "test", "num_plaintexts": num_plaintexts},
        "initial_weights": b64encode(initial_weights.astype("<f8").tobytes()),
        "participants": [{"subject_id": p, "num_samples": 1} for p in participants],
        "quorum": quorum,
        "rounds": rounds,
    }
    terms = requested_terms(
        job_id=job_id,
        definition=definition,
        packing=packing.to_json(),
        weights=weights or {p: 1 / len(participants) for p in participants},
        width=width,
        num_plaintexts=num_plaintexts,
        initial_ciphertext_sha256=initial_ciphertext_sha256(
            params, width, packing, initial_weights
        ),
    )
    return {"job_id": job_id, "terms": terms.to_json()}


def masked_test_layout(participants: int, *, rounds: int = 3, length: int = 6) -> MaskedLayout:
    """The layout of every masked test job (default bounds, ``frac_bits`` 20)."""
    return masked_layout(
        length=length,
        frac_bits=20,
        model_bound=32.0,
        clip_bound=16.0,
        participants=participants,
        rounds=rounds,
    )


def masked_job_request(
    job_id: str,
    participants: Sequence[str],
    *,
    quorum: int,
    rounds: int = 3,
    length: int = 6,
    width: int = 1,
) -> dict[str, Any]:
    """The body of ``POST /v1/jobs`` for a masked job (docs/PROTOCOL.md, "Masked mode"):
    the layout of :func:`masked_test_layout` as its packing and ``Z_0 = encode(W_0)``'s
    digest as ``initial_ciphertext_sha256``. ``width`` other than 1 is for refusals."""
    layout = masked_test_layout(len(participants), rounds=rounds, length=length)
    initial_weights = _initial_weights(length)
    definition = {
        "job_id": job_id,
        "aggregation": "masked",
        "model": {"kind": "test", "length": length},
        "initial_weights": b64encode(initial_weights.astype("<f8").tobytes()),
        "participants": [{"subject_id": p, "num_samples": 1} for p in participants],
        "quorum": quorum,
        "rounds": rounds,
        "encoding": {"frac_bits": 20, "clip_bound": 16.0, "model_bound": 32.0},
    }
    terms = requested_terms(
        job_id=job_id,
        definition=definition,
        packing=layout.to_json(),
        weights={p: 1 / len(participants) for p in participants},
        width=width,
        num_plaintexts=length,
        initial_ciphertext_sha256=initial_state_sha256(layout, initial_weights),
    )
    return {"job_id": job_id, "terms": terms.to_json()}


@dataclass(frozen=True)
class MaskedUpload:
    """One contributor's masked upload as the PS holds it: what the KGC sees of it (the
    statement and the seed ciphertext) and the seed itself (the contributor's secret)."""

    subject_id: str
    seed: bytes
    seed_obj: dict[str, str]
    payload_sha256: str
    statement: dict[str, Any]

    def entry(self) -> dict[str, Any]:
        """``{"statement", "seed"}``: this upload in a masked release request."""
        return {"statement": self.statement, "seed": self.seed_obj}


def masked_upload(
    subject: TestSubject,
    terms: JobTerms,
    round_number: int,
    rng: random.Random,
    *,
    run: int = 0,
    seed_obj: Mapping[str, str] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> MaskedUpload:
    """``subject``'s upload of a round: a fresh seed encrypted under the job key's first
    component and its signed statement (the ``y`` is a stand-in: the KGC sees only its
    digest, here of random bytes). ``seed_obj`` makes the statement name another seed
    ciphertext, and ``signing_key`` forges the statement."""
    seed = rng.randbytes(32)
    ciphertext = encrypt_seed(terms.job_key.component(0), seed, rng)
    obj = dict(seed_to_obj(ciphertext) if seed_obj is None else seed_obj)
    payload = hashlib.sha256(rng.randbytes(32)).hexdigest()
    statement = build_masked_upload_statement(
        subject.signing_key if signing_key is None else signing_key,
        terms,
        round_number=round_number,
        subject_id=subject.subject_id,
        payload_sha256=payload,
        seed_sha256=seed_sha256(obj),
        run=run,
    )
    return MaskedUpload(subject.subject_id, seed, obj, payload, statement)


def masked_release_request(
    ps_key: Ed25519PrivateKey,
    terms: JobTerms,
    layout: MaskedLayout,
    round_number: int,
    uploads: Sequence[MaskedUpload | Mapping[str, Any]],
    *,
    run: int = 0,
    undecodable: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A PS-signed masked release request: :func:`masked_release_request_header`, then
    ``extra`` (to tamper with a field before signing), signed whole as
    ``request_signature``. ``uploads`` are :class:`MaskedUpload` or raw entries."""
    entries = [u.entry() if isinstance(u, MaskedUpload) else dict(u) for u in uploads]
    header: dict[str, Any] = {
        **masked_release_request_header(
            job_id=terms.job_id,
            round_number=round_number,
            run=run,
            layout=layout,
            uploads=entries,
            undecodable=undecodable,
        ),
        **(extra or {}),
    }
    return {**header, "request_signature": sign_json(ps_key, header)}


# ---------------------------------------------------------------- signed round messages


def statement_for(
    subject: TestSubject,
    terms: JobTerms,
    round_number: int,
    *,
    payload_sha256: str,
    closed_set_sha256: str,
    randomness: Sequence[int] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    subject_id: str | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """``subject``'s signed upload statement for ``round_number`` of the job ``terms`` fix.

    It proves knowledge of ``randomness`` (``None``: of made-up randomness, a proof that
    does not verify). ``signing_key`` and ``subject_id`` let a test forge one (another
    signer, another name).
    """
    sid = subject.subject_id if subject_id is None else subject_id
    blocks = BlockLayout(terms.num_plaintexts, terms.width).num_blocks
    proof = prove_randomness(
        terms.job_key.params,
        [1] * blocks if randomness is None else randomness,
        pok_context(terms, round_number, closed_set_sha256),
        sid,
        random.Random(round_number),
    )
    return build_upload_statement(
        subject.signing_key if signing_key is None else signing_key,
        terms,
        round_number=round_number,
        subject_id=sid,
        payload_sha256=payload_sha256,
        closed_set_sha256=closed_set_sha256,
        randomness_proof=proof.to_obj(),
        run=run,
    )


def audit_for(
    subject: TestSubject,
    terms: JobTerms,
    round_number: int,
    digests: AuditDigests,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """``subject``'s signed audit of ``digests`` (``signing_key`` forges one)."""
    return build_audit_statement(
        subject.signing_key if signing_key is None else signing_key,
        terms,
        round_number=round_number,
        subject_id=subject.subject_id,
        digests=digests,
        run=run,
    )


def undecodable_reports(
    terms: JobTerms, bundle: Mapping[str, Any], signers: Sequence[TestSubject]
) -> list[dict[str, Any]]:
    """Each signer's report that the release ``bundle`` (as the KGC answered it) does
    not decode: what allows the bundle's round one re-run."""
    binding = ReleaseBinding.from_fields(bundle)
    digest = bundle_sha256(binding, bundle["sealed_model"])
    return [
        build_undecodable_statement(
            s.signing_key,
            terms,
            round_number=binding.round,
            run=binding.run,
            subject_id=s.subject_id,
            bundle_sha256=digest,
        )
        for s in signers
    ]


def release_frame(
    ps_key: Ed25519PrivateKey,
    vector: EncryptedVector,
    *,
    job_id: str,
    round_number: int,
    attempt: int,
    closed_set: Mapping[str, Any],
    statements: Sequence[Mapping[str, Any]],
    audits: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
    run: int = 0,
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """A PS-signed release request for ``vector`` (``F``).

    The header is :func:`trapdoor.protocol.release_request.release_request_header`
    (contributors in the statements' order), then ``extra`` (to tamper with a field before
    signing), then the frame's own fields; ``request_signature`` covers all of it.
    """
    header: dict[str, Any] = {
        **release_request_header(
            job_id=job_id,
            round_number=round_number,
            attempt=attempt,
            closed_set=closed_set,
            statements=statements,
            audits=audits,
            run=run,
            undecodable=undecodable,
        ),
        **(extra or {}),
    }
    signed_header = decode_frame(encode_frame(vector, header), max_header_bytes=None).header
    return encode_frame(vector, {**header, "request_signature": sign_json(ps_key, signed_header)})


# ---------------------------------------------------------------- one round, played


@dataclass(frozen=True)
class RoundPlay:
    """One attempt at a round as an honest PS holds it when it asks for the release.

    Built by :func:`play_round`. ``model`` is what the aggregate decrypts to (``W_t`` plus
    the uploads, mod N), so a test can check what a contributor opens.
    """

    terms: JobTerms
    ps_key: Ed25519PrivateKey
    round: int
    attempt: int
    signers: tuple[TestSubject, ...]
    uploads: Mapping[str, EncryptedVector]
    #: Each upload's block randomness (its sender proves knowledge of it).
    randomness: Mapping[str, list[Any]]
    commitments: tuple[dict[str, Any], ...]
    closed_set: dict[str, Any]
    statements: tuple[dict[str, Any], ...]
    audits: tuple[dict[str, Any], ...]
    blind: tuple[int, ...]
    audited: AuditedRound
    model: tuple[int, ...]
    #: The play whose aggregate is this one's base (None: the signed ``Enc(W_0)``).
    previous: RoundPlay | None = None
    #: 0, or 1 for a re-run, which carries the run-0 contributors' reports
    run: int = 0
    undecodable: tuple[dict[str, Any], ...] = ()

    @property
    def digests(self) -> AuditDigests:
        return self.audited.digests

    @property
    def ids(self) -> list[str]:
        return [s.subject_id for s in self.signers]

    def statement(self, subject: TestSubject, **changes: Any) -> dict[str, Any]:
        """``subject``'s upload statement of this play; ``changes`` override any argument
        of :func:`statement_for` (``round_number``, ``terms``, ``closed_set_sha256``...)."""
        payload = self.uploads.get(subject.subject_id)
        args: dict[str, Any] = {
            "terms": self.terms,
            "round_number": self.round,
            "payload_sha256": "0" * 64 if payload is None else vector_sha256(payload),
            "closed_set_sha256": self.digests.closed_set_sha256,
            "randomness": self.randomness.get(subject.subject_id),
            "run": self.run,
            **changes,
        }
        return statement_for(subject, **args)

    def audits_with(self, **changes: Any) -> list[dict[str, Any]]:
        """Every signer's audit of this play's digests with ``changes`` (``release_sha256``,
        ``base_sha256``, ``attempt``...): what contributors fooled by the PS would sign."""
        digests = replace(self.digests, **changes)
        return [audit_for(s, self.terms, self.round, digests, run=self.run) for s in self.signers]

    def closed_set_of(
        self, subjects: Sequence[str], *, ps_key: Ed25519PrivateKey | None = None
    ) -> dict[str, Any]:
        """Another closed set of this round: only ``subjects``' commitments, signed by
        ``ps_key`` (default: the PS's)."""
        return build_closed_set(
            self.ps_key if ps_key is None else ps_key,
            self.terms,
            round_number=self.round,
            commitments=[c for c in self.commitments if c["commitment"]["subject_id"] in subjects],
            closed_at=int(self.closed_set["closed_set"]["closed_at"]),
            run=self.run,
        )

    def frame(
        self,
        *,
        ps_key: Ed25519PrivateKey | None = None,
        vector: EncryptedVector | None = None,
        job_id: str | None = None,
        attempt: int | None = None,
        closed_set: Mapping[str, Any] | None = None,
        statements: Sequence[Mapping[str, Any]] | None = None,
        audits: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The PS's release request for this play; each argument replaces one piece
        (``vector`` the frame ``F``, ``extra`` any header field) to play a dishonest PS."""
        return release_frame(
            self.ps_key if ps_key is None else ps_key,
            self.audited.release if vector is None else vector,
            job_id=self.terms.job_id if job_id is None else job_id,
            round_number=self.round,
            attempt=self.attempt if attempt is None else attempt,
            closed_set=self.closed_set if closed_set is None else closed_set,
            statements=self.statements if statements is None else statements,
            audits=self.audits if audits is None else audits,
            extra=extra,
            run=self.run,
            undecodable=self.undecodable,
        )


def play_round(
    terms: JobTerms,
    ps_key: Ed25519PrivateKey,
    signers: Sequence[TestSubject],
    rng: random.Random,
    *,
    after: RoundPlay | None = None,
    round_number: int | None = None,
    attempt: int = 0,
    run: int = 0,
    undecodable: Sequence[dict[str, Any]] = (),
) -> RoundPlay:
    """An honest round: ``signers`` upload tiny random ciphertexts and audit the aggregate.

    The base is ``after``'s aggregate (the previous round, as released) or, without it,
    the signed ``Enc(W_0)``; the round is the one after ``after`` (or 0) unless
    ``round_number`` says otherwise; ``run`` 1 with the run-0 contributors'
    ``undecodable`` reports is a re-run of that round. ``ps_key`` must be the key the KGC
    certified for the job's PS (``terms.param_server_key``) for the closed set to verify.
    """
    if round_number is None:
        round_number = 0 if after is None else after.round + 1
    if after is None:
        base, base_model = initial_base(terms), tuple(initial_model(terms))
    else:
        base, base_model = after.audited.aggregate, after.model
    n = int(terms.job_key.params.n)
    size = terms.num_plaintexts
    plain = {s.subject_id: [rng.randrange(n) for _ in range(size)] for s in signers}
    encrypted = {sid: encrypt_with_randomness(terms.job_key, p, rng) for sid, p in plain.items()}
    uploads = {sid: vector for sid, (vector, _) in encrypted.items()}
    commitments = tuple(
        build_commitment(
            s.signing_key,
            terms,
            round_number=round_number,
            subject_id=s.subject_id,
            payload_sha256=vector_sha256(uploads[s.subject_id]),
            run=run,
        )
        for s in signers
    )
    closed_set = build_closed_set(
        ps_key,
        terms,
        round_number=round_number,
        commitments=commitments,
        closed_at=1_700_000_000,
        run=run,
    )
    closed = verify_closed_set(closed_set, terms, round_number=round_number, run=run)
    blind = tuple(rng.randrange(n) for _ in range(size))
    audited = audit_round(terms, closed, attempt=attempt, base=base, uploads=uploads, blind=blind)
    model = tuple((m + sum(p[i] for p in plain.values())) % n for i, m in enumerate(base_model))
    play = RoundPlay(
        terms=terms,
        ps_key=ps_key,
        round=round_number,
        attempt=attempt,
        signers=tuple(signers),
        uploads=uploads,
        randomness={sid: r for sid, (_, r) in encrypted.items()},
        commitments=commitments,
        closed_set=closed_set,
        statements=(),
        audits=(),
        blind=blind,
        audited=audited,
        model=model,
        previous=after,
        run=run,
        undecodable=tuple(undecodable),
    )
    return replace(
        play,
        statements=tuple(play.statement(s) for s in signers),
        audits=tuple(play.audits_with()),
    )


# ---------------------------------------------------------------- a dishonest PS


@dataclass(frozen=True)
class Refusal:
    """A release request the KGC must refuse, and the status and code it must answer."""

    what: str
    frame: bytes
    status: int
    code: str


def _with_elements(vector: EncryptedVector, changes: Mapping[int, int]) -> EncryptedVector:
    """``vector`` with some elements replaced, unchecked (to offer non-group elements)."""
    elements = list(vector.elements)
    for index, value in changes.items():
        elements[index] = gmpy2.mpz(value)
    return EncryptedVector(vector.job_key, vector.layout, tuple(elements), _trusted=True)


def dishonest_requests(
    play: RoundPlay, *, spare: TestSubject, outsider: TestSubject, rng: random.Random
) -> list[Refusal]:
    """What a dishonest PS could send instead of ``play.frame()``, one piece changed each.

    ``play`` needs at least two signers and as many as the quorum; ``spare`` is another
    participant of the job (not a signer), ``outsider`` an enrolled non-participant. The
    schedule (other rounds, replays across rounds) is left to the tests: it depends on
    what the KGC released before.
    """
    terms, t = play.terms, play.round
    a, b = play.signers[:2]
    rogue = generate_signing_key()
    stmt = play.statement
    wide = play_round(
        terms, play.ps_key, [*play.signers, spare], rng, after=play.previous, round_number=t
    )
    forged_commitment = build_commitment(
        rogue, terms, round_number=t, subject_id=b.subject_id, payload_sha256="0" * 64
    )
    other_digest = "ab" * 32
    release = play.audited.release
    n = int(terms.job_key.params.n)
    narrow_key = JobKey(terms.job_key.params, terms.job_key.hs[:2])
    shapes = {
        "a frame of another width": EncryptedVector(
            narrow_key, BlockLayout(2, 2), tuple(release.elements[:3]), _trusted=True
        ),
        "a frame of fewer plaintexts": EncryptedVector(
            terms.job_key, BlockLayout(1, terms.width), tuple(release.elements[:2]), _trusted=True
        ),
    }
    elements = {
        "an element sharing a factor with N": _with_elements(release, {1: 3 * n}),
        "a zero element": _with_elements(release, {0: 0}),
    }

    def audited_frame(vector: EncryptedVector) -> bytes:
        """``vector`` sent as ``F`` with audits naming it (the contributors were fooled)."""
        return play.frame(
            vector=vector, audits=play.audits_with(release_sha256=vector_sha256(vector))
        )

    pair = {"contributors": [a.subject_id, b.subject_id]}
    cases: list[tuple[str, bytes, int, str]] = [
        # The request itself.
        ("a request signed by another key", play.frame(ps_key=rogue), 403, "bad-request-signature"),
        ("a request for another job", play.frame(job_id="job-other"), 422, "job-mismatch"),
        ("a negative round", play.frame(extra={"round": -1}), 400, "bad-field"),
        ("a round as text", play.frame(extra={"round": str(t)}), 400, "bad-field"),
        ("a boolean round", play.frame(extra={"round": True}), 400, "bad-field"),
        ("an attempt as text", play.frame(extra={"attempt": "0"}), 400, "bad-field"),
        ("a negative attempt", play.frame(attempt=-1), 400, "bad-field"),
        ("attempt beyond the bound", play.frame(attempt=MAX_ATTEMPT + 1), 400, "bad-field"),
        ("contributors as text", play.frame(extra={"contributors": "a,b"}), 400, "bad-field"),
        ("not a frame", b"TDFL garbage", 400, "bad-frame"),
        # The closed commitment set.
        (
            "a closed set signed by another key",
            play.frame(closed_set=play.closed_set_of(play.ids, ps_key=rogue)),
            403,
            "bad-closed-set-signature",
        ),
        (
            "a closed set signed by a participant",
            play.frame(closed_set=play.closed_set_of(play.ids, ps_key=a.signing_key)),
            403,
            "bad-closed-set-signature",
        ),
        (
            "a closed set of another round",
            play.frame(
                closed_set=build_closed_set(
                    play.ps_key,
                    terms,
                    round_number=t + 1,
                    commitments=play.commitments,
                    closed_at=0,
                )
            ),
            422,
            "closed-set-mismatch",
        ),
        (
            "a closed set with a forged commitment",
            play.frame(
                closed_set=build_closed_set(
                    play.ps_key,
                    terms,
                    round_number=t,
                    commitments=[play.commitments[0], forged_commitment],
                    closed_at=0,
                )
            ),
            403,
            "bad-commitment-signature",
        ),
        ("no closed set", play.frame(extra={"closed_set": "x"}), 422, "bad-closed-set"),
        (
            "a contributor not in the closed set",
            wide.frame(closed_set=wide.closed_set_of(wide.ids[:-1])),
            422,
            "not-committed",
        ),
        # Upload statements.
        *(
            (
                f"a statement signed by {who}",
                play.frame(statements=[stmt(a), stmt(b, signing_key=key)]),
                403,
                "bad-statement-signature",
            )
            for who, key in (
                ("the PS", play.ps_key),
                ("another participant", a.signing_key),
                ("a stranger", rogue),
            )
        ),
        *(
            (
                f"a statement {what}",
                play.frame(statements=[stmt(a), stmt(b, **change)]),
                422,
                "statement-mismatch",
            )
            for what, change in (
                ("for another round", {"round_number": t + 1}),
                ("naming another closed set", {"closed_set_sha256": other_digest}),
                (
                    "naming another payload",
                    {"payload_sha256": stmt(a)["statement"]["payload_sha256"]},
                ),
                ("of another job", {"terms": replace(terms, job_id="job-other")}),
                ("for another PS", {"terms": replace(terms, param_server="sub-another-ps")}),
                ("under other terms", {"terms": replace(terms, digest=other_digest)}),
            )
        ),
        (
            "another participant's statement relabelled",
            play.frame(statements=[stmt(a), stmt(spare)], extra=pair),
            422,
            "statement-mismatch",
        ),
        (
            "a statement missing",
            play.frame(statements=[stmt(a)], extra=pair),
            422,
            "statement-mismatch",
        ),
        ("statements not a list", play.frame(extra={"statements": {}}), 422, "statement-mismatch"),
        (
            "statements not signed",
            play.frame(extra={"statements": ["s", "t"]}),
            422,
            "bad-statement",
        ),
        # Contributors.
        (
            "an outsider",
            play.frame(statements=[stmt(a), stmt(outsider)]),
            422,
            "not-a-participant",
        ),
        (
            "a contributor twice",
            play.frame(statements=[stmt(a), stmt(a)]),
            422,
            "duplicate-contributor",
        ),
        (
            "below the quorum",
            play.frame(statements=[stmt(s) for s in play.signers[: terms.quorum - 1]]),
            422,
            "below-quorum",
        ),
        # Audits.
        ("an audit missing", play.frame(audits=play.audits[:-1]), 422, "audit-mismatch"),
        ("no audits", play.frame(audits=[]), 422, "audit-mismatch"),
        ("audits not a list", play.frame(extra={"audits": {}}), 422, "audit-mismatch"),
        ("audits not signed", play.frame(extra={"audits": ["x", "y"]}), 422, "bad-audit"),
        *(
            (
                f"an audit signed by {who}",
                play.frame(
                    audits=[
                        play.audits[0],
                        audit_for(b, terms, t, play.digests, signing_key=key),
                        *play.audits[2:],
                    ]
                ),
                403,
                "bad-audit-signature",
            )
            for who, key in (("the PS", play.ps_key), ("another participant", a.signing_key))
        ),
        (
            "audits for another F",
            play.frame(audits=play.audits_with(release_sha256=other_digest)),
            422,
            "audit-mismatch",
        ),
        (
            "the unblinded aggregate instead of the audited F",
            play.frame(vector=play.audited.aggregate),
            422,
            "audit-mismatch",
        ),
        (
            "audits from another base",
            play.frame(audits=play.audits_with(base_sha256=vector_sha256(release))),
            422,
            "audit-mismatch",
        ),
        (
            "audits of another attempt",
            play.frame(audits=play.audits_with(attempt=play.attempt + 1)),
            422,
            "audit-mismatch",
        ),
        (
            "a request for another attempt",
            play.frame(attempt=play.attempt + 1),
            422,
            "audit-mismatch",
        ),
        (
            "contributors that audited different blinds",
            play.frame(audits=[play.audits_with(blind_sha256=other_digest)[0], *play.audits[1:]]),
            422,
            "audit-mismatch",
        ),
        (
            "an audit of another round",
            play.frame(audits=[audit_for(a, terms, t + 1, play.digests), *play.audits[1:]]),
            422,
            "audit-mismatch",
        ),
        # The frame, audited as such: still not the job's shape, or not group elements.
        *((what, audited_frame(v), 422, "wrong-shape") for what, v in shapes.items()),
        *((what, audited_frame(v), 422, "invalid-element") for what, v in elements.items()),
    ]
    return [Refusal(*case) for case in cases]
