"""Signed protocol messages that the KGC, the PS, the client and the test fakes all share.

The parameter server is semi-trusted: it may deviate and collude with participants
(DESIGN §4). So nothing that protects a participant may rest on the PS's word. This module
holds the messages that make the PS's claims checkable, each with one pure ``build`` and
one pure ``verify`` function, so no party (and no test fake) re-implements a check:

- **job terms** (:func:`sign_job_terms`, :func:`verify_job_terms`, :func:`check_job_view`):
  the KGC signs the job key together with everything a participant relies on (the PS's
  identity, participants and their signing keys, public weights, quorum, rounds, the
  digests of the definition, the model spec, the initial model and the packing). A
  participant checks that signature against the KGC key it pinned at enrolment, and that
  the job the PS serves hashes to the signed digests, *before* it encrypts anything;
- **upload statements** (:func:`build_upload_statement`, :func:`verify_upload_statement`):
  a contributor signs (job terms digest, round, its payload digest, the PS as audience)
  with its own certified Ed25519 key. The KGC releases a round only for contributors whose
  statements verify under the keys it certified, so a PS cannot name a contributor that
  did not upload to *that* round, nor relabel an upload as another round;
- **token challenges** (:func:`token_challenge`): what a subject signs to get a token for
  one audience (the KGC, or one parameter server's subject id).

Everything signed is canonical JSON (:func:`common.signing.canonical_json`) with a
``purpose`` tag and the KGC key id, so a signature made for one step is never valid for
another. Pure: no Flask, no database.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.bcp import PublicParams
from common.blocks import JobKey
from common.signing import (
    SignatureError,
    b64decode,
    canonical_json,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
)
from common.wire import from_obj

__all__ = [
    "DEFAULT_MIN_QUORUM",
    "JOB_TERMS_PURPOSE",
    "KGC_AUDIENCE",
    "MAX_ROUND",
    "TOKEN_PURPOSE",
    "UPLOAD_PURPOSE",
    "JobTerms",
    "ProtocolError",
    "build_upload_statement",
    "check_job_view",
    "check_release_request",
    "check_requested_terms",
    "digest_equal",
    "json_sha256",
    "kgc_key_id",
    "release_request_header",
    "requested_terms",
    "sha256_hex",
    "sign_job_terms",
    "token_challenge",
    "token_request",
    "verify_job_terms",
    "verify_release_signature",
    "verify_release_statements",
    "verify_upload_statement",
]

JOB_TERMS_PURPOSE = "trapdoor/job-terms/v1"
UPLOAD_PURPOSE = "trapdoor/upload-statement/v1"
TOKEN_PURPOSE = "token"
#: The audience of a token meant for the KGC itself; a PS's audience is its subject id.
KGC_AUDIENCE = "kgc"
#: A participant refuses a job whose quorum is below this, unless configured otherwise:
#: with fewer contributors, differencing released models reveals too little noise.
DEFAULT_MIN_QUORUM = 3
#: Round numbers are bounded everywhere (URLs, statements, the KGC's schedule).
MAX_ROUND = 2**31 - 1

#: The fields the PS asks the KGC to sign (the KGC adds the rest, see :func:`sign_job_terms`).
_REQUESTED_FIELDS = (
    "job_id",
    "participants",
    "weights",
    "quorum",
    "rounds",
    "width",
    "num_plaintexts",
    "definition_sha256",
    "packing_sha256",
    "model_sha256",
    "initial_model_sha256",
)


class ProtocolError(ValueError):
    """A message is malformed or does not verify; ``code`` is a stable machine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- digests


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (what a digest field in a message means)."""
    return sha256_hex(canonical_json(obj))


def digest_equal(a: object, b: object) -> bool:
    """Constant-time comparison of two hex digests (False for anything not a string)."""
    return isinstance(a, str) and isinstance(b, str) and hmac.compare_digest(a, b)


def kgc_key_id(verify_key: Ed25519PublicKey | Ed25519PrivateKey | str) -> str:
    """A short, stable name for a KGC signing key: SHA-256 of its raw bytes, 32 hex chars."""
    raw = verify_key if isinstance(verify_key, str) else public_key_hex(verify_key)
    return sha256_hex(bytes.fromhex(raw))[:32]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- tokens


def token_challenge(subject_id: str, timestamp: int, nonce: str, audience: str) -> dict[str, Any]:
    """What a subject signs to get a token for ``audience`` (``POST /v1/tokens``)."""
    return {
        "purpose": TOKEN_PURPOSE,
        "subject_id": subject_id,
        "timestamp": timestamp,
        "nonce": nonce,
        "audience": audience,
    }


def token_request(
    signing_key: Ed25519PrivateKey, subject_id: str, timestamp: int, nonce: str, audience: str
) -> dict[str, Any]:
    """The body of ``POST /v1/tokens``: the challenge's fields and the subject's signature."""
    challenge = token_challenge(subject_id, timestamp, nonce, audience)
    body = {k: v for k, v in challenge.items() if k != "purpose"}
    return {**body, "signature": sign_json(signing_key, challenge)}


# --------------------------------------------------------------------------- job terms


@dataclass(frozen=True)
class JobTerms:
    """What the KGC signed about a job: verified, typed, and comparable to the PS's view."""

    job_id: str
    param_server: str
    participants: tuple[str, ...]
    signing_keys: Mapping[str, str]
    weights: Mapping[str, float]
    quorum: int
    rounds: int
    width: int
    num_plaintexts: int
    definition_sha256: str
    packing_sha256: str
    model_sha256: str
    initial_model_sha256: str
    job_key: JobKey
    #: SHA-256 of the signed terms (canonical JSON): what every later statement names.
    digest: str
    raw: Mapping[str, Any]


def requested_terms(
    *,
    job_id: str,
    definition: Mapping[str, Any],
    packing: Mapping[str, Any],
    weights: Mapping[str, float],
    width: int,
    num_plaintexts: int,
) -> dict[str, Any]:
    """The terms a PS asks the KGC to sign for a validated, normalised job definition."""
    participants = [str(p["subject_id"]) for p in definition["participants"]]
    return {
        "job_id": job_id,
        "participants": participants,
        "weights": {s: float(weights[s]) for s in participants},
        "quorum": int(definition["quorum"]),
        "rounds": int(definition["rounds"]),
        "width": int(width),
        "num_plaintexts": int(num_plaintexts),
        "definition_sha256": json_sha256(dict(definition)),
        "packing_sha256": json_sha256(dict(packing)),
        "model_sha256": json_sha256(definition["model"]),
        "initial_model_sha256": sha256_hex(b64decode(str(definition["initial_weights"]))),
    }


def check_requested_terms(terms: object) -> dict[str, Any]:
    """Shape and meaning of a terms request (the KGC calls this before signing)."""
    if not isinstance(terms, dict) or set(terms) != set(_REQUESTED_FIELDS):
        raise ProtocolError(
            "bad-terms", f"terms must have exactly the fields {sorted(_REQUESTED_FIELDS)}"
        )
    participants = terms["participants"]
    if (
        not isinstance(participants, list)
        or not participants
        or not all(isinstance(p, str) for p in participants)
    ):
        raise ProtocolError("bad-terms", "participants must be a non-empty list of subject ids")
    if len(set(participants)) != len(participants):
        raise ProtocolError("duplicate-participant", "participants must be distinct")
    weights = terms["weights"]
    if not isinstance(weights, dict) or sorted(weights) != sorted(participants):
        raise ProtocolError("bad-terms", "weights must name exactly the participants")
    for value in weights.values():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= 1
        ):
            raise ProtocolError("bad-terms", "each weight must be a number in (0, 1]")
    for name in ("quorum", "rounds", "width", "num_plaintexts"):
        if not _is_int(terms[name]) or terms[name] < 1:
            raise ProtocolError("bad-terms", f"{name} must be a positive integer")
    if terms["quorum"] > len(participants):
        raise ProtocolError("invalid-quorum", "quorum must be between 1 and the participant count")
    if terms["rounds"] > MAX_ROUND:
        raise ProtocolError("bad-terms", f"rounds must be at most {MAX_ROUND}")
    for name in _REQUESTED_FIELDS:
        if name.endswith("_sha256"):
            value = terms[name]
            if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
                raise ProtocolError("bad-terms", f"{name} must be 64 lowercase hex characters")
    if not isinstance(terms["job_id"], str):
        raise ProtocolError("bad-terms", "job_id must be a string")
    return dict(terms)


def sign_job_terms(
    kgc_key: Ed25519PrivateKey,
    requested: Mapping[str, Any],
    *,
    param_server: str,
    signing_keys: Mapping[str, str],
    job_key: Mapping[str, Any],
) -> tuple[dict[str, Any], str]:
    """The KGC's signed terms: the request plus the PS, the participants' keys, the job key."""
    terms = check_requested_terms(dict(requested))
    signed = {
        **terms,
        "purpose": JOB_TERMS_PURPOSE,
        "kgc_key_id": kgc_key_id(kgc_key),
        "param_server": param_server,
        "signing_keys": {s: signing_keys[s] for s in terms["participants"]},
        "job_key": dict(job_key),
    }
    return signed, sign_json(kgc_key, signed)


def verify_job_terms(
    verify_key: Ed25519PublicKey, signed: object, signature: object, params: PublicParams
) -> JobTerms:
    """Check the KGC's signature and the job key's parameters; return the typed terms."""
    if not isinstance(signed, dict):
        raise ProtocolError("bad-job-terms", "job terms must be an object")
    try:
        verify_json(verify_key, signed, signature)
    except SignatureError:
        raise ProtocolError(
            "bad-job-signature", "the job terms are not signed by the pinned KGC key"
        ) from None
    if signed.get("purpose") != JOB_TERMS_PURPOSE:
        raise ProtocolError("bad-job-terms", "signature was made for another purpose")
    if signed.get("kgc_key_id") != kgc_key_id(verify_key):
        raise ProtocolError("bad-job-terms", "terms name another KGC key")
    try:
        requested = check_requested_terms({k: signed.get(k) for k in _REQUESTED_FIELDS})
        job_key = from_obj(signed.get("job_key"))
        keys = signed.get("signing_keys")
        if not isinstance(keys, dict) or sorted(keys) != sorted(requested["participants"]):
            raise ProtocolError("bad-job-terms", "signing_keys must name every participant")
        for key in keys.values():
            public_key_from_hex(key)
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError("bad-job-terms", f"job terms are malformed: {exc}") from None
    if not isinstance(job_key, JobKey):
        raise ProtocolError("bad-job-key", "job_key is not a bcp-job-key")
    if job_key.params != params:
        raise ProtocolError("bad-job-key", "the job key is not under the KGC's parameters")
    if job_key.width != requested["width"]:
        raise ProtocolError("bad-job-key", "the job key's width differs from the terms")
    param_server = signed.get("param_server")
    if not isinstance(param_server, str):
        raise ProtocolError("bad-job-terms", "param_server must be a subject id")
    return JobTerms(
        job_id=str(requested["job_id"]),
        param_server=param_server,
        participants=tuple(requested["participants"]),
        signing_keys=dict(keys),
        weights={str(k): float(v) for k, v in requested["weights"].items()},
        quorum=int(requested["quorum"]),
        rounds=int(requested["rounds"]),
        width=int(requested["width"]),
        num_plaintexts=int(requested["num_plaintexts"]),
        definition_sha256=str(requested["definition_sha256"]),
        packing_sha256=str(requested["packing_sha256"]),
        model_sha256=str(requested["model_sha256"]),
        initial_model_sha256=str(requested["initial_model_sha256"]),
        job_key=job_key,
        digest=json_sha256(signed),
        raw=signed,
    )


def check_job_view(
    view: Mapping[str, Any],
    verify_key: Ed25519PublicKey,
    params: PublicParams,
    *,
    min_quorum: int = DEFAULT_MIN_QUORUM,
    param_server: str | None = None,
) -> JobTerms:
    """A participant's check of the job a PS serves, before it encrypts anything.

    The view must carry KGC-signed terms (``job_terms``, ``job_terms_signature``) that
    verify under the pinned KGC key, with a job key under the KGC's parameters; the
    served definition, packing, weights and job key must be exactly what was signed; the
    quorum must be at least ``min_quorum``; and, if given, the terms must name
    ``param_server`` as the job's server.
    """
    terms = verify_job_terms(
        verify_key, view.get("job_terms"), view.get("job_terms_signature"), params
    )
    definition = view.get("definition")
    packing = view.get("packing")
    if not isinstance(definition, dict) or not isinstance(packing, dict):
        raise ProtocolError("job-mismatch", "the job view has no definition or packing")
    try:
        served = requested_terms(
            job_id=str(view.get("job_id")),
            definition=definition,
            packing=packing,
            weights=dict(view.get("weights") or {}),
            width=terms.width,
            num_plaintexts=terms.num_plaintexts,
        )
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("job-mismatch", "the served job definition is malformed") from None
    mismatched = sorted(name for name in _REQUESTED_FIELDS if served[name] != terms.raw[name])
    if mismatched:
        raise ProtocolError(
            "job-mismatch",
            "the PS serves a job that differs from the KGC-signed terms in: "
            + ", ".join(mismatched),
        )
    if view.get("job_key") != terms.raw["job_key"]:
        raise ProtocolError("job-mismatch", "the served job key is not the KGC-signed one")
    if param_server is not None and terms.param_server != param_server:
        raise ProtocolError("wrong-param-server", "the job terms name another parameter server")
    if terms.quorum < min_quorum:
        raise ProtocolError(
            "quorum-too-small",
            f"the job's quorum is {terms.quorum}; this participant requires at least {min_quorum}",
        )
    return terms


# --------------------------------------------------------------------------- uploads


def build_upload_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
) -> dict[str, Any]:
    """A contributor's signed statement that this payload is its upload for this round."""
    statement = {
        "purpose": UPLOAD_PURPOSE,
        "kgc_key_id": str(terms.raw["kgc_key_id"]),
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": int(round_number),
        "subject_id": subject_id,
        "audience": terms.param_server,
        "payload_sha256": payload_sha256,
    }
    return {"statement": statement, "signature": sign_json(signing_key, statement)}


def verify_upload_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    payload_sha256: str | None = None,
) -> dict[str, Any]:
    """Check a contributor's statement against the job terms; return the statement.

    The signing key is the one the KGC certified and wrote into the terms, so the PS,
    the KGC and any participant check it offline and identically.
    """
    if not isinstance(signed, dict):
        raise ProtocolError("bad-statement", 'an upload statement is {"statement", "signature"}')
    statement = signed.get("statement")
    if not isinstance(statement, dict):
        raise ProtocolError("bad-statement", 'an upload statement is {"statement", "signature"}')
    subject = statement.get("subject_id")
    key_hex = terms.signing_keys.get(subject) if isinstance(subject, str) else None
    if key_hex is None:
        raise ProtocolError("not-a-participant", "the statement's signer is not a participant")
    try:
        verify_json(public_key_from_hex(key_hex), statement, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            "bad-statement-signature", "the upload statement is not signed by its participant"
        ) from None
    expected = {
        "purpose": UPLOAD_PURPOSE,
        "kgc_key_id": terms.raw["kgc_key_id"],
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": round_number,
        "audience": terms.param_server,
    }
    if subject_id is not None:
        expected["subject_id"] = subject_id
    if set(statement) != {*expected, "subject_id", "payload_sha256"} or any(
        statement.get(k) != v or (k == "round" and not _is_int(statement.get(k)))
        for k, v in expected.items()
    ):
        raise ProtocolError(
            "statement-mismatch",
            "the upload statement is for another job, round, signer or audience",
        )
    digest = statement.get("payload_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ProtocolError("bad-statement", "payload_sha256 must be 64 hex characters")
    if payload_sha256 is not None and not digest_equal(digest, payload_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another payload")
    return statement


def verify_release_statements(
    statements: object, terms: JobTerms, *, round_number: int, contributors: Sequence[str]
) -> list[dict[str, Any]]:
    """Exactly one valid statement per contributor, for this round (the KGC's check)."""
    if not isinstance(statements, list) or len(statements) != len(contributors):
        raise ProtocolError("statement-mismatch", "one upload statement per contributor is needed")
    seen: set[str] = set()
    checked = []
    for signed in statements:
        statement = verify_upload_statement(signed, terms, round_number=round_number)
        subject = str(statement["subject_id"])
        if subject not in contributors or subject in seen:
            raise ProtocolError(
                "statement-mismatch", "statements and contributors do not match one to one"
            )
        seen.add(subject)
        checked.append(statement)
    return checked


# --------------------------------------------------------------------------- releases


def release_request_header(
    *, job_id: str, round_number: int, statements: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What a PS puts in the header of a release request frame (it signs it whole)."""
    contributors = [str(s["statement"]["subject_id"]) for s in statements]
    return {
        "job_id": job_id,
        "round": int(round_number),
        "contributors": contributors,
        "statements": [dict(s) for s in statements],
    }


def verify_release_signature(header: Mapping[str, Any], ps_key: Ed25519PublicKey) -> int:
    """The PS's signature over a release request header; returns the round it names."""
    body = {k: v for k, v in header.items() if k != "request_signature"}
    try:
        verify_json(ps_key, body, header.get("request_signature"))
    except SignatureError:
        raise ProtocolError(
            "bad-request-signature", "the request is not signed by this job's server"
        ) from None
    round_number = header.get("round")
    if not isinstance(round_number, int) or isinstance(round_number, bool):
        raise ProtocolError("bad-field", "round must be a non-negative integer")
    if not 0 <= round_number <= MAX_ROUND:
        raise ProtocolError("bad-field", "round must be a non-negative integer")
    return round_number


def check_release_request(
    header: Mapping[str, Any], terms: JobTerms, *, next_round: int
) -> tuple[int, list[str]]:
    """The KGC's schedule, contributor, quorum and statement checks of a release request.

    ``next_round`` is the number of rounds of this job the KGC has released so far: it
    releases round ``t`` only for ``0 <= t < rounds``, in order, once (the caller answers
    a repeat of an already released round before calling this). Returns the round and
    the contributors.
    """
    if header.get("job_id") != terms.job_id:
        raise ProtocolError("job-mismatch", "the request is for another job")
    round_number = header.get("round")
    if (
        not isinstance(round_number, int)
        or isinstance(round_number, bool)
        or not 0 <= round_number < terms.rounds
    ):
        raise ProtocolError(
            "round-out-of-range", f"round must be in [0, {terms.rounds}) for this job"
        )
    if round_number != next_round:
        raise ProtocolError(
            "out-of-schedule",
            f"round {round_number} cannot be released now: the next round is {next_round}",
        )
    contributors = header.get("contributors")
    if not isinstance(contributors, list) or not all(isinstance(c, str) for c in contributors):
        raise ProtocolError("bad-field", "contributors must be a list of subject ids")
    if len(set(contributors)) != len(contributors):
        raise ProtocolError("duplicate-contributor", "contributors must be distinct")
    outsiders = sorted(set(contributors) - set(terms.participants))
    if outsiders:
        raise ProtocolError(
            "not-a-participant", "not participants of this job: " + ", ".join(outsiders[:10])
        )
    if len(contributors) < terms.quorum:
        raise ProtocolError(
            "below-quorum", f"{len(contributors)} contributors, the quorum is {terms.quorum}"
        )
    verify_release_statements(
        header.get("statements"), terms, round_number=round_number, contributors=contributors
    )
    return round_number, list(contributors)
