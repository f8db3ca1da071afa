"""Test support for the KGC: a clock, subjects with their keys, PS-style release requests.

Used by the KGC's unit and API tests, and usable by anyone who needs a real KGC in a
test (the parameter server's or the participant's end-to-end tests). Everything here
does the real crypto; nothing is mocked. The PS side is built exactly as
``param_server.domain`` builds it: receipts signed by the PS, and a
``request_signature`` over the frame header without that field (``sha256`` included).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bcp import PublicKey, PublicParams, RandomSource, SecretKey
from common.blocks import BlockLayout, EncryptedVector, JobKey
from common.clock import ManualClock as FakeClock
from common.signing import generate_signing_key, public_key_hex, sign_json
from common.wire import decode_frame, encode_frame, to_obj
from kgc.domain import token_challenge

__all__ = [
    "FakeClock",
    "TestSubject",
    "encrypt_plaintexts",
    "receipt_for",
    "release_frame",
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

    def challenge(self, now: float, nonce: str) -> dict[str, Any]:
        """The body of ``POST /v1/tokens``, signed with this subject's key."""
        timestamp = int(now)
        signed = token_challenge(self.subject_id, timestamp, nonce)
        return {
            "subject_id": self.subject_id,
            "timestamp": timestamp,
            "nonce": nonce,
            "signature": sign_json(self.signing_key, signed),
        }


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


def receipt_for(
    ps_key: Ed25519PrivateKey,
    job_id: str,
    round_number: int,
    subject_id: str,
    *,
    sha256: str = "0" * 64,
    accepted_at: int = 1_700_000_000,
) -> dict[str, Any]:
    """An upload receipt as the parameter server signs it."""
    receipt = {
        "job_id": job_id,
        "round": round_number,
        "subject_id": subject_id,
        "sha256": sha256,
        "accepted_at": accepted_at,
    }
    return {"receipt": receipt, "signature": sign_json(ps_key, receipt)}


def release_frame(
    ps_key: Ed25519PrivateKey,
    vector: EncryptedVector,
    *,
    job_id: str,
    round_number: int,
    contributors: Sequence[str],
    receipts: Sequence[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A signed ``Enc(W + R)`` release request; receipts default to valid ones."""
    if receipts is None:
        receipts = [receipt_for(ps_key, job_id, round_number, c) for c in contributors]
    header: dict[str, Any] = {
        "job_id": job_id,
        "round": round_number,
        "contributors": list(contributors),
        "receipts": list(receipts),
        **(extra or {}),
    }
    signed_header = decode_frame(encode_frame(vector, header)).header
    return encode_frame(vector, {**header, "request_signature": sign_json(ps_key, signed_header)})
