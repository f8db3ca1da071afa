"""Test support for the KGC: a clock, subjects with their keys, signed protocol messages.

Used by the KGC's unit and API tests, and usable by anyone who needs a real KGC in a
test (the parameter server's or the participant's end-to-end tests). Everything here
does the real crypto; nothing is mocked, and every message is built with the shared
:mod:`common.protocol` functions, exactly as the services build them: token challenges
(:func:`~common.protocol.token_challenge`), requested job terms
(:func:`~common.protocol.requested_terms`), participants' upload statements
(:func:`~common.protocol.build_upload_statement`) and the PS's release request
(:func:`~common.protocol.release_request_header` plus a ``request_signature`` over the
whole frame header without that field, ``sha256`` included).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bcp import PublicKey, PublicParams, RandomSource, SecretKey
from common.blocks import BlockLayout, EncryptedVector, JobKey
from common.clock import ManualClock as FakeClock
from common.protocol import (
    KGC_AUDIENCE,
    JobTerms,
    build_upload_statement,
    release_request_header,
    requested_terms,
    token_request,
)
from common.signing import b64encode, generate_signing_key, public_key_hex, sign_json
from common.wire import decode_frame, encode_frame, to_obj

__all__ = [
    "FakeClock",
    "TestSubject",
    "encrypt_plaintexts",
    "job_request",
    "release_frame",
    "statement_for",
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
    params = job_key.params
    n, n2 = params.n, params.nsquare
    layout = BlockLayout(len(plaintexts), job_key.width)
    elements: list[int] = []
    position = 0
    for size in layout.block_sizes():
        r = params.random_exponent(rng)
        elements.append(int(gmpy2.powmod(params.g, r, n2)))
        for j in range(size):
            m = gmpy2.mpz(plaintexts[position]) % n
            elements.append(int(gmpy2.powmod(job_key.hs[j], r, n2) * (1 + m * n) % n2))
            position += 1
    return EncryptedVector(job_key, layout, tuple(gmpy2.mpz(e) for e in elements))


def job_request(
    job_id: str,
    participants: Sequence[str],
    *,
    quorum: int,
    rounds: int = 3,
    width: int = 3,
    num_plaintexts: int = 5,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/jobs``: ``{"job_id", "terms": requested_terms(...)}``.

    The definition and packing are small stand-ins (the KGC only sees their digests).
    """
    definition = {
        "job_id": job_id,
        "model": {"kind": "test", "num_plaintexts": num_plaintexts},
        "initial_weights": b64encode(bytes(8 * num_plaintexts)),
        "participants": [{"subject_id": p, "num_samples": 1} for p in participants],
        "quorum": quorum,
        "rounds": rounds,
    }
    packing = {"kind": "test-packing", "length": num_plaintexts}
    terms = requested_terms(
        job_id=job_id,
        definition=definition,
        packing=packing,
        weights=weights or {p: 1 / len(participants) for p in participants},
        width=width,
        num_plaintexts=num_plaintexts,
    )
    return {"job_id": job_id, "terms": terms}


def statement_for(
    subject: TestSubject,
    terms: JobTerms,
    round_number: int,
    *,
    payload_sha256: str | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    subject_id: str | None = None,
) -> dict[str, Any]:
    """``subject``'s signed upload statement for ``round_number`` of the job ``terms`` fix.

    ``signing_key`` and ``subject_id`` let a test forge one (another signer, another name).
    """
    sid = subject.subject_id if subject_id is None else subject_id
    return build_upload_statement(
        subject.signing_key if signing_key is None else signing_key,
        terms,
        round_number=round_number,
        subject_id=sid,
        payload_sha256=payload_sha256
        or hashlib.sha256(f"{sid}/{round_number}".encode()).hexdigest(),
    )


def release_frame(
    ps_key: Ed25519PrivateKey,
    vector: EncryptedVector,
    *,
    job_id: str,
    round_number: int,
    statements: Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A PS-signed ``Enc(W + R)`` release request carrying the contributors' statements.

    The header is :func:`common.protocol.release_request_header` (contributors in the
    statements' order), then ``extra`` (to tamper with a field before signing), then the
    frame's own fields; ``request_signature`` covers all of it.
    """
    header: dict[str, Any] = {
        **release_request_header(job_id=job_id, round_number=round_number, statements=statements),
        **(extra or {}),
    }
    signed_header = decode_frame(encode_frame(vector, header)).header
    return encode_frame(vector, {**header, "request_signature": sign_json(ps_key, signed_header)})


def signed_release(
    ps_key: Ed25519PrivateKey,
    terms: JobTerms,
    vector: EncryptedVector,
    round_number: int,
    signers: Sequence[TestSubject],
    *,
    statements: Sequence[dict[str, Any]] | None = None,
    job_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A release request for ``round_number`` with ``signers``' own statements.

    ``statements`` replaces them (to offer forged or misdirected ones); ``job_id`` and
    ``extra`` tamper with the header before the PS signs it.
    """
    if statements is None:
        statements = [statement_for(s, terms, round_number) for s in signers]
    return release_frame(
        ps_key,
        vector,
        job_id=terms.job_id if job_id is None else job_id,
        round_number=round_number,
        statements=statements,
        extra=extra,
    )
