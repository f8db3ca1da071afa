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

Everything signed is canonical JSON (:func:`trapdoor.crypto.signing.canonical_json`) with a
``purpose`` tag and the KGC key id, so a signature made for one step is never valid for
another. Pure: no Flask, no database.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.bcp import PublicParams
from trapdoor.crypto.blocks import (
    EncryptedVector,
    JobKey,
    element_bytes,
    elements_to_bytes,
    trivial_encryption,
)
from trapdoor.crypto.encoding import PackingLayout, encode_vector
from trapdoor.crypto.pok import RandomnessProof, verify_randomness, verify_release_chain
from trapdoor.crypto.signing import (
    SignatureError,
    b64decode,
    canonical_json,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import MAX_HEADER_BYTES, from_obj

__all__ = [
    "AGGREGATIONS",
    "AUDIT_PURPOSE",
    "CLOSED_SET_PURPOSE",
    "COMMITMENT_PURPOSE",
    "DEFAULT_MIN_QUORUM",
    "JOB_TERMS_PURPOSE",
    "KGC_AUDIENCE",
    "MAX_ATTEMPT",
    "MAX_ROUND",
    "MAX_RUN",
    "TOKEN_PURPOSE",
    "UNDECODABLE_PURPOSE",
    "UPLOAD_PURPOSE",
    "AuditDigests",
    "ClosedSet",
    "JobTerms",
    "ProtocolError",
    "ReleaseCheck",
    "ReleaseSchedule",
    "ReleasedRound",
    "UndecodedRelease",
    "build_audit_statement",
    "build_closed_set",
    "build_commitment",
    "build_undecodable_statement",
    "build_upload_statement",
    "check_job_view",
    "check_release_request",
    "check_requested_terms",
    "contributors_sha256",
    "digest_equal",
    "initial_ciphertext",
    "initial_ciphertext_sha256",
    "initial_plaintexts",
    "initial_state_digest",
    "initial_weights_of",
    "is_json_int",
    "json_sha256",
    "kgc_key_id",
    "pok_context",
    "release_contributors",
    "release_header_limit",
    "release_request_header",
    "release_round",
    "release_schedule",
    "repeats_release",
    "request_run",
    "requested_terms",
    "sha256_hex",
    "sign_job_terms",
    "token_challenge",
    "token_request",
    "vector_sha256",
    "verify_audit_statement",
    "verify_closed_set",
    "verify_commitment",
    "verify_job_terms",
    "verify_release_signature",
    "verify_undecodable_statement",
    "verify_upload_statement",
]

JOB_TERMS_PURPOSE = "trapdoor/job-terms/v3"
COMMITMENT_PURPOSE = "trapdoor/commitment/v2"
CLOSED_SET_PURPOSE = "trapdoor/closed-set/v2"
UPLOAD_PURPOSE = "trapdoor/upload-statement/v3"
AUDIT_PURPOSE = "trapdoor/audit/v2"
UNDECODABLE_PURPOSE = "trapdoor/undecodable/v1"
TOKEN_PURPOSE = "token"
#: The audience of a token meant for the KGC itself; a PS's audience is its subject id.
KGC_AUDIENCE = "kgc"
#: A participant refuses a job whose quorum is below this, unless configured otherwise:
#: with fewer contributors, differencing released models reveals too little noise.
DEFAULT_MIN_QUORUM = 3
#: Round numbers are bounded everywhere (URLs, statements, the KGC's schedule).
MAX_ROUND = 2**31 - 1
#: A release request's header carries, per participant, a signed commitment (in the closed
#: set), upload statement with its randomness proof, and audit: about 5.5 KiB at a 2048-bit
#: N with long ids, 9 KiB at 4096 bits; this much is allowed.
RELEASE_HEADER_BYTES_PER_PARTICIPANT = 12 * 1024
#: Attempts of one round (a re-aggregation after a contributor failed to audit) are bounded.
MAX_ATTEMPT = 1000
#: A round runs once, and at most once more after a release that did not decode (run 1).
MAX_RUN = 1

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
    "initial_ciphertext_sha256",
    "aggregation",
)
#: How a job aggregates (DESIGN §2.2): packed BCP ciphertexts, or masked ring vectors.
AGGREGATIONS = ("bcp", "masked")


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


def is_json_int(value: object) -> bool:
    """A JSON integer: an ``int`` but not a ``bool`` (``true`` is never a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(value: object, low: int, high: int) -> bool:
    """``value`` is an integer (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def vector_sha256(vector: EncryptedVector) -> str:
    """SHA-256 of a ciphertext vector's payload bytes (what every vector digest names)."""
    return sha256_hex(vector.to_bytes())


def initial_weights_of(definition: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    """``W_0`` of a job definition (little-endian float64, base64url)."""
    raw = b64decode(str(definition["initial_weights"]))
    if len(raw) % 8:
        raise ValueError("initial_weights is not a whole number of float64 values")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


def initial_plaintexts(packing: PackingLayout, initial_weights: npt.ArrayLike) -> list[Any]:
    """``W_0`` encoded: at most half a slot, leaving the other half for the updates' sum."""
    plaintexts, _ = encode_vector(initial_weights, packing, clip_bound=packing.slot_bound / 2)
    return plaintexts


def initial_ciphertext(
    job_key: JobKey, packing: PackingLayout, initial_weights: npt.ArrayLike
) -> EncryptedVector:
    """``Enc(W_0)``: the trivial (randomness-free) encryption of the encoded initial model.

    ``W_0`` is public, so encrypting it with randomness hides nothing; the trivial form is
    one multiplication per element, and every participant recomputes the same bytes, so
    its digest is signed into the job terms and anchors the chain of audited aggregates.
    """
    return trivial_encryption(job_key, initial_plaintexts(packing, initial_weights))


def initial_ciphertext_sha256(
    params: PublicParams, width: int, packing: PackingLayout, initial_weights: npt.ArrayLike
) -> str:
    """The digest of :func:`initial_ciphertext` before any job key exists.

    A trivial encryption (``A = 1``, ``B_j = 1 + m_j N``) does not depend on the key's
    components, only on ``N`` and the width, so the PS can put this digest in the terms it
    asks the KGC to sign, and the KGC draws the job key afterwards.
    """
    n = params.n
    plaintexts = initial_plaintexts(packing, initial_weights)
    elements: list[int] = []
    for start in range(0, len(plaintexts), width):
        elements.append(1)
        elements.extend(int(1 + (int(m) % n) * n) for m in plaintexts[start : start + width])
    return sha256_hex(elements_to_bytes(elements, element_bytes(params)))


def initial_state_digest(
    job_key: JobKey, definition: Mapping[str, Any], packing: Mapping[str, Any], *, aggregation: str
) -> str:
    """The digest a participant recomputes for ``initial_ciphertext_sha256``: of
    ``Enc(W_0)`` for a bcp job, of ``Z_0 = encode(W_0)`` for a masked one."""
    weights = initial_weights_of(definition)
    if aggregation == "masked":
        from trapdoor.protocol.masked import MaskedLayout, initial_state_sha256

        return initial_state_sha256(MaskedLayout.from_json(packing), weights)
    return vector_sha256(
        initial_ciphertext(job_key, PackingLayout.from_json(dict(packing)), weights)
    )


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
    #: SHA-256 of the trivial encryption of ``W_0`` (:func:`initial_ciphertext`): the
    #: base of round 0, where the chain of audited aggregates starts.
    initial_ciphertext_sha256: str
    #: The PS's certified Ed25519 key (hex): closed commitment sets verify under it.
    param_server_key: str
    job_key: JobKey
    #: ``"bcp"`` or ``"masked"``; for masked jobs ``packing_sha256`` is the digest of the
    #: :class:`trapdoor.protocol.masked.MaskedLayout` and ``initial_ciphertext_sha256`` that
    #: of ``Z_0`` (:func:`trapdoor.protocol.masked.initial_state_sha256`).
    aggregation: str
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
    initial_ciphertext_sha256: str,
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
        "initial_ciphertext_sha256": initial_ciphertext_sha256,
        "aggregation": str(definition.get("aggregation", "bcp")),
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
        if not is_json_int(terms[name]) or terms[name] < 1:
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
    if terms["aggregation"] not in AGGREGATIONS:
        raise ProtocolError("bad-terms", f"aggregation must be one of {AGGREGATIONS}")
    return dict(terms)


def sign_job_terms(
    kgc_key: Ed25519PrivateKey,
    requested: Mapping[str, Any],
    *,
    param_server: str,
    param_server_key: str,
    signing_keys: Mapping[str, str],
    job_key: Mapping[str, Any],
) -> tuple[dict[str, Any], str]:
    """The KGC's signed terms: the request plus the PS and its key, the participants' keys,
    and the job key."""
    terms = check_requested_terms(dict(requested))
    signed = {
        **terms,
        "purpose": JOB_TERMS_PURPOSE,
        "kgc_key_id": kgc_key_id(kgc_key),
        "param_server": param_server,
        "param_server_key": param_server_key,
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
    param_server_key = signed.get("param_server_key")
    try:
        public_key_from_hex(param_server_key)
    except (TypeError, ValueError):
        raise ProtocolError("bad-job-terms", "param_server_key must be an Ed25519 key") from None
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
        initial_ciphertext_sha256=str(requested["initial_ciphertext_sha256"]),
        param_server_key=str(param_server_key),
        job_key=job_key,
        aggregation=str(requested["aggregation"]),
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
            initial_ciphertext_sha256=initial_state_digest(
                terms.job_key, definition, packing, aggregation=terms.aggregation
            ),
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


# --------------------------------------------------------------------------- participant-signed


def _statement_base(
    terms: JobTerms, purpose: str, round_number: int, subject_id: str, run: int = 0
) -> dict[str, Any]:
    """The fields every participant-signed message of a round starts with.

    ``run`` is 0, or 1 for the single re-run of a round whose release did not decode: a
    message of one run is never valid in the other.
    """
    return {
        "purpose": purpose,
        "kgc_key_id": str(terms.raw["kgc_key_id"]),
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": int(round_number),
        "run": int(run),
        "subject_id": subject_id,
        "audience": terms.param_server,
    }


def pok_context(terms: JobTerms, round_number: int, closed_set_sha256: str) -> bytes:
    """What binds the round's randomness proofs (:mod:`trapdoor.crypto.pok`): the job terms, the
    round and the closed commitment set, fixed only after every upload was committed."""
    return f"trapdoor/pok/v1|{terms.digest}|{int(round_number)}|{closed_set_sha256}".encode()


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and not value.strip("0123456789abcdef")


def _verify_participant_signed(
    signed: object,
    field: str,
    terms: JobTerms,
    purpose: str,
    *,
    round_number: int,
    subject_id: str | None,
    digests: Sequence[str],
    integers: Sequence[str] = (),
    objects: Sequence[str] = (),
    run: int = 0,
) -> dict[str, Any]:
    """Check one participant-signed ``{field: body, "signature"}`` message; return the body.

    The key is the one the KGC certified and wrote into the terms, so the PS, the KGC and
    any participant check it offline and identically. ``digests`` are the body's other
    fields (64 lowercase hex characters each), ``integers`` its non-negative counters.
    """
    what = field.replace("_", " ")
    if not isinstance(signed, dict) or not isinstance(signed.get(field), dict):
        raise ProtocolError(f"bad-{field}", f'a signed {what} is {{"{field}", "signature"}}')
    body: dict[str, Any] = signed[field]
    subject = body.get("subject_id")
    key_hex = terms.signing_keys.get(subject) if isinstance(subject, str) else None
    if key_hex is None:
        raise ProtocolError("not-a-participant", f"the {what}'s signer is not a participant")
    try:
        verify_json(public_key_from_hex(key_hex), body, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            f"bad-{field}-signature", f"the {what} is not signed by its participant"
        ) from None
    expected = _statement_base(terms, purpose, round_number, str(subject), run)
    if subject_id is not None and subject != subject_id:
        raise ProtocolError(f"{field}-mismatch", f"the {what} is signed by another participant")
    if set(body) != {*expected, *digests, *integers, *objects} or any(
        body.get(k) != v or (k in ("round", "run") and not is_json_int(body.get(k)))
        for k, v in expected.items()
    ):
        raise ProtocolError(
            f"{field}-mismatch", f"the {what} is for another job, round, run, signer or audience"
        )
    for name in digests:
        if not _is_digest(body.get(name)):
            raise ProtocolError(f"bad-{field}", f"{name} must be 64 lowercase hex characters")
    for name in integers:
        if not _in_range(body.get(name), 0, MAX_ATTEMPT):
            raise ProtocolError(f"bad-{field}", f"{name} must be an integer in [0, {MAX_ATTEMPT}]")
    return body


# --------------------------------------------------------------------------- commitments


def build_commitment(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed promise of the ciphertext it will upload this round.

    Sent before any upload of the round is visible to anyone: once the PS closes the set
    of commitments, no contributor can choose its ciphertext after seeing another's, so
    none can craft one that cancels an honest upload out of the aggregate.
    """
    body = {
        **_statement_base(terms, COMMITMENT_PURPOSE, round_number, subject_id, run),
        "payload_sha256": payload_sha256,
    }
    return {"commitment": body, "signature": sign_json(signing_key, body)}


def verify_commitment(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """Check a signed commitment for ``round_number`` (``run``) of the job; its body."""
    return _verify_participant_signed(
        signed,
        "commitment",
        terms,
        COMMITMENT_PURPOSE,
        round_number=round_number,
        subject_id=subject_id,
        digests=("payload_sha256",),
        run=run,
    )


@dataclass(frozen=True)
class ClosedSet:
    """A round's closed commitment set, verified: who may upload, and which payload."""

    round: int
    run: int
    #: subject id -> the payload SHA-256 it committed to
    payloads: Mapping[str, str]
    #: SHA-256 of the signed set body: what upload and audit statements name.
    digest: str
    raw: Mapping[str, Any]


def build_closed_set(
    ps_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    commitments: Sequence[Mapping[str, Any]],
    closed_at: int,
    run: int = 0,
) -> dict[str, Any]:
    """The PS's signed, final list of a round's commitments (sorted by subject id)."""
    ordered = sorted(
        (dict(c) for c in commitments), key=lambda c: str(c["commitment"]["subject_id"])
    )
    body = {
        "purpose": CLOSED_SET_PURPOSE,
        "kgc_key_id": str(terms.raw["kgc_key_id"]),
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": int(round_number),
        "run": int(run),
        "param_server": terms.param_server,
        "commitments": ordered,
        "closed_at": int(closed_at),
    }
    return {"closed_set": body, "signature": sign_json(ps_key, body)}


def verify_closed_set(
    signed: object, terms: JobTerms, *, round_number: int, run: int = 0
) -> ClosedSet:
    """Check a closed set: the PS's key from the terms, every commitment, the quorum.

    One set per round is all a PS can sign that a contributor and the KGC both accept:
    upload and audit statements name its digest, and the KGC requires them all to agree.
    """
    if not isinstance(signed, dict) or not isinstance(signed.get("closed_set"), dict):
        raise ProtocolError("bad-closed-set", 'a closed set is {"closed_set", "signature"}')
    body: dict[str, Any] = signed["closed_set"]
    try:
        verify_json(public_key_from_hex(terms.param_server_key), body, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            "bad-closed-set-signature", "the closed set is not signed by the job's server"
        ) from None
    expected = {
        "purpose": CLOSED_SET_PURPOSE,
        "kgc_key_id": terms.raw["kgc_key_id"],
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": round_number,
        "run": run,
        "param_server": terms.param_server,
    }
    if (
        set(body) != {*expected, "commitments", "closed_at"}
        or any(body.get(k) != v for k, v in expected.items())
        or not is_json_int(body.get("round"))
        or not is_json_int(body.get("run"))
        or not is_json_int(body.get("closed_at"))
        or not isinstance(body.get("commitments"), list)
    ):
        raise ProtocolError(
            "closed-set-mismatch", "the closed set is for another job, round or run"
        )
    payloads: dict[str, str] = {}
    for commitment in body["commitments"]:
        checked = verify_commitment(commitment, terms, round_number=round_number, run=run)
        subject = str(checked["subject_id"])
        if subject in payloads:
            raise ProtocolError("duplicate-commitment", f"{subject} committed twice")
        payloads[subject] = str(checked["payload_sha256"])
    if list(payloads) != sorted(payloads):
        raise ProtocolError("bad-closed-set", "commitments must be sorted by subject id")
    if len(payloads) < terms.quorum:
        raise ProtocolError(
            "below-quorum", f"{len(payloads)} commitments, the quorum is {terms.quorum}"
        )
    return ClosedSet(round_number, run, payloads, json_sha256(body), signed)


# --------------------------------------------------------------------------- uploads


def build_upload_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    closed_set_sha256: str,
    randomness_proof: Mapping[str, Any],
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed statement: this payload is its upload under this closed set.

    ``randomness_proof`` (:func:`trapdoor.crypto.pok.prove_randomness` under :func:`pok_context`)
    shows the signer knows the upload's encryption randomness, so nobody can pass off a
    re-randomised copy of someone else's (earlier) upload as its own.
    """
    body = {
        **_statement_base(terms, UPLOAD_PURPOSE, round_number, subject_id, run),
        "payload_sha256": payload_sha256,
        "closed_set_sha256": closed_set_sha256,
        "randomness_proof": dict(randomness_proof),
    }
    return {"statement": body, "signature": sign_json(signing_key, body)}


def verify_upload_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    payload_sha256: str | None = None,
    closed_set_sha256: str | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """Check a contributor's upload statement against the job terms; return its body."""
    body = _verify_participant_signed(
        signed,
        "statement",
        terms,
        UPLOAD_PURPOSE,
        round_number=round_number,
        subject_id=subject_id,
        digests=("payload_sha256", "closed_set_sha256"),
        objects=("randomness_proof",),
        run=run,
    )
    try:
        RandomnessProof.from_obj(body["randomness_proof"])
    except ValueError as exc:
        raise ProtocolError("bad-statement", f"randomness_proof: {exc}") from None
    if payload_sha256 is not None and not digest_equal(body["payload_sha256"], payload_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another payload")
    if closed_set_sha256 is not None and body["closed_set_sha256"] != closed_set_sha256:
        raise ProtocolError("statement-mismatch", "the statement names another closed set")
    return body


# --------------------------------------------------------------------------- audits


def contributors_sha256(contributors: Sequence[str]) -> str:
    """The digest of a contributor set (order does not matter)."""
    return json_sha256(sorted(contributors))


@dataclass(frozen=True)
class AuditDigests:
    """What a contributor checked and signs about one attempt at a round's aggregate.

    ``base`` is ``Enc(W_t)``, ``aggregate`` is ``Agg = Enc(W_t) · Π U_k`` over exactly the
    ``contributors``, ``release`` is ``F = Agg · (1 + R N)`` (what the KGC opens) and
    ``blind`` is ``R``; all are SHA-256 of their payload bytes.
    """

    attempt: int
    closed_set_sha256: str
    contributors_sha256: str
    base_sha256: str
    aggregate_sha256: str
    release_sha256: str
    blind_sha256: str

    def fields(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "closed_set_sha256": self.closed_set_sha256,
            "contributors_sha256": self.contributors_sha256,
            "base_sha256": self.base_sha256,
            "aggregate_sha256": self.aggregate_sha256,
            "release_sha256": self.release_sha256,
            "blind_sha256": self.blind_sha256,
        }


_AUDIT_DIGESTS = (
    "closed_set_sha256",
    "contributors_sha256",
    "base_sha256",
    "aggregate_sha256",
    "release_sha256",
    "blind_sha256",
)


def build_audit_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    digests: AuditDigests,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signature that it recomputed this attempt's aggregate and blind."""
    body = {
        **_statement_base(terms, AUDIT_PURPOSE, round_number, subject_id, run),
        **digests.fields(),
    }
    return {"audit": body, "signature": sign_json(signing_key, body)}


def verify_audit_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None = None,
    run: int = 0,
) -> tuple[dict[str, Any], AuditDigests]:
    """Check a signed audit statement; return its body and the digests it vouches for."""
    body = _verify_participant_signed(
        signed,
        "audit",
        terms,
        AUDIT_PURPOSE,
        round_number=round_number,
        subject_id=subject_id,
        digests=_AUDIT_DIGESTS,
        integers=("attempt",),
        run=run,
    )
    return body, AuditDigests(**{k: body[k] for k in ("attempt", *_AUDIT_DIGESTS)})


# --------------------------------------------------------------------------- undecodable


def build_undecodable_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str,
    bundle_sha256: str,
) -> dict[str, Any]:
    """A contributor's signed report that the release it opened does not decode.

    It names the bundle (:func:`trapdoor.protocol.bundle.bundle_sha256`): the KGC allows round
    ``t``'s one re-run only with such a report from every contributor of that bundle.
    """
    body = {
        **_statement_base(terms, UNDECODABLE_PURPOSE, round_number, subject_id, run),
        "bundle_sha256": bundle_sha256,
    }
    return {"undecodable": body, "signature": sign_json(signing_key, body)}


def verify_undecodable_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str | None = None,
    bundle_sha256: str | None = None,
) -> dict[str, Any]:
    """Check an ``undecodable`` report (for ``bundle_sha256`` when given); its body."""
    body = _verify_participant_signed(
        signed,
        "undecodable",
        terms,
        UNDECODABLE_PURPOSE,
        round_number=round_number,
        subject_id=subject_id,
        digests=("bundle_sha256",),
        run=run,
    )
    if bundle_sha256 is not None and not digest_equal(body["bundle_sha256"], bundle_sha256):
        raise ProtocolError("undecodable-mismatch", "the report names another release")
    return body


# --------------------------------------------------------------------------- releases


def release_header_limit(participants: int) -> int:
    """The header cap of a release request for a job of ``participants`` (sized to it)."""
    return MAX_HEADER_BYTES + RELEASE_HEADER_BYTES_PER_PARTICIPANT * max(participants, 0)


def release_request_header(
    *,
    job_id: str,
    round_number: int,
    attempt: int,
    closed_set: Mapping[str, Any],
    statements: Sequence[Mapping[str, Any]],
    audits: Sequence[Mapping[str, Any]],
    run: int = 0,
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What a PS puts in the header of a release request frame (it signs it whole).

    ``undecodable`` is empty for run 0; for run 1 it is every run-0 contributor's report
    that run 0's release did not decode.
    """
    contributors = [str(s["statement"]["subject_id"]) for s in statements]
    return {
        "job_id": job_id,
        "round": int(round_number),
        "run": int(run),
        "undecodable": [dict(u) for u in undecodable],
        "attempt": int(attempt),
        "contributors": contributors,
        "closed_set": dict(closed_set),
        "statements": [dict(s) for s in statements],
        "audits": [dict(a) for a in audits],
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


@dataclass(frozen=True)
class ReleaseCheck:
    """A release request that passed every check: what the KGC may open, and for whom."""

    round: int
    run: int
    contributors: tuple[str, ...]
    digests: AuditDigests


@dataclass(frozen=True)
class UndecodedRelease:
    """The KGC's record of the run-0 release a run-1 request would re-run."""

    round: int
    contributors: tuple[str, ...]
    bundle_sha256: str


@dataclass(frozen=True)
class ReleasedRound:
    """What the KGC keeps of one release to schedule the next (newest decides)."""

    round: int
    run: int
    contributors: tuple[str, ...]
    #: the audited ``Agg`` (before the blind): the next round's base
    aggregate_sha256: str
    #: the opened vector's ``A`` components: the next release grows from them
    a_components: Sequence[int]
    #: :func:`trapdoor.protocol.bundle.bundle_sha256` of its bundle (what reports name)
    bundle_sha256: str


@dataclass(frozen=True)
class ReleaseSchedule:
    """Where a release request must continue the job's chain (see :func:`release_schedule`)."""

    next_round: int
    base_sha256: str
    #: None: ``Enc(W_0)``'s, all 1
    previous_a: Sequence[int] | None
    undecoded: UndecodedRelease | None = None


def release_schedule(terms: JobTerms, newest: Sequence[ReleasedRound], run: int) -> ReleaseSchedule:
    """What a request for ``run`` may release, given the job's releases newest first
    (the newest two are enough; the KGC and its test fake both call this).

    Round ``t``'s base is the aggregate (before its blind) that round ``t - 1``'s release
    was audited for; round 0's is the signed ``Enc(W_0)``. Run 0 continues the newest
    release. Run 1 re-runs the newest release, if that is a run 0, from the base that
    run 0 started from and for exactly its contributors (:func:`check_release_request`).
    """

    def after(previous: ReleasedRound | None, next_round: int) -> ReleaseSchedule:
        if previous is None:
            return ReleaseSchedule(next_round, terms.initial_ciphertext_sha256, None)
        return ReleaseSchedule(next_round, previous.aggregate_sha256, previous.a_components)

    latest = newest[0] if newest else None
    if run == 0 or latest is None:
        return after(latest, latest.round + 1 if latest else 0)
    before = newest[1] if len(newest) > 1 and newest[1].round < latest.round else None
    schedule = after(before, latest.round)
    if latest.run != 0:
        return schedule  # re-run already: check_release_request refuses another
    undecoded = UndecodedRelease(latest.round, latest.contributors, latest.bundle_sha256)
    return replace(schedule, undecoded=undecoded)


def repeats_release(
    header: Mapping[str, Any],
    payload_sha256: str,
    *,
    released_payload_sha256: str,
    released_contributors: Sequence[str],
    released_attempt: int | None,
) -> bool:
    """Whether a request for an already released (round, run) is that release's request
    again (a retry): the same frame ``F``, contributor set and attempt. The bundle is bound
    to them, so answering any other request with it would mislabel it."""
    contributors = header.get("contributors")
    return (
        isinstance(contributors, list)
        and all(isinstance(c, str) for c in contributors)
        and payload_sha256 == released_payload_sha256
        and sorted(contributors) == sorted(released_contributors)
        and is_json_int(header.get("attempt"))
        and header.get("attempt") == released_attempt
    )


def request_run(header: Mapping[str, Any]) -> int:
    """The run a release request names (0, or 1 for a re-run); ``bad-field`` otherwise."""
    run = header.get("run")
    if not isinstance(run, int) or not _in_range(run, 0, MAX_RUN):
        raise ProtocolError("bad-field", f"run must be an integer in [0, {MAX_RUN}]")
    return run


def _one_per_contributor(
    signed_list: object, contributors: Sequence[str], what: str, verify: Any
) -> dict[str, Any]:
    """Verify one message per contributor (any order); return them by subject id."""
    if not isinstance(signed_list, list) or len(signed_list) != len(contributors):
        raise ProtocolError(f"{what}-mismatch", f"one {what} per contributor is needed")
    by_subject: dict[str, Any] = {}
    for signed in signed_list:
        checked = verify(signed)
        body = checked[0] if isinstance(checked, tuple) else checked
        subject = str(body["subject_id"])
        if subject not in contributors or subject in by_subject:
            raise ProtocolError(
                f"{what}-mismatch", f"{what}s and contributors do not match one to one"
            )
        by_subject[subject] = checked
    return by_subject


def check_release_request(
    header: Mapping[str, Any],
    terms: JobTerms,
    *,
    next_round: int,
    base_sha256: str,
    payload_sha256: str,
    previous_a: Sequence[int],
    current_a: Sequence[int],
    undecoded: UndecodedRelease | None = None,
) -> ReleaseCheck:
    """The KGC's checks of a release request before it opens anything.

    Schedule: round ``t`` only for ``0 <= t < rounds``, in order, once (``next_round`` is
    the number of rounds already released; the caller answers a repeat of a released
    round before calling this). Contributors: distinct participants, at least the quorum,
    all in the one PS-signed closed commitment set. Per contributor: an upload statement
    for its committed payload under that set, and an audit statement; every audit names
    the same attempt, set, contributors, ``base_sha256`` (the KGC's latest release's
    aggregate, or ``Enc(W_0)`` from the terms) and ``payload_sha256`` (the frame it is
    asked to open) as ``F``.

    Re-run (``run`` 1): allowed only when ``undecoded`` is the job's latest release,
    of this round and run 0, and then only for exactly its contributor set, with its
    ``undecodable`` report from each of them; the caller gives the base and ``A`` that
    run 0 started from. So one base gives at most two releases, both over one set.
    """
    round_number = release_round(header, terms, next_round=next_round)
    run = request_run(header)
    attempt = header.get("attempt")
    if not isinstance(attempt, int) or not _in_range(attempt, 0, MAX_ATTEMPT):
        raise ProtocolError("bad-field", f"attempt must be an integer in [0, {MAX_ATTEMPT}]")
    contributors = release_contributors(header, terms)
    _check_rerun(header, terms, round_number, run, contributors, undecoded)
    closed = verify_closed_set(header.get("closed_set"), terms, round_number=round_number, run=run)
    uncommitted = sorted(set(contributors) - set(closed.payloads))
    if uncommitted:
        raise ProtocolError(
            "not-committed", "contributors without a commitment: " + ", ".join(uncommitted[:10])
        )
    statements = _one_per_contributor(
        header.get("statements"),
        contributors,
        "statement",
        lambda signed: verify_upload_statement(
            signed,
            terms,
            round_number=round_number,
            payload_sha256=closed.payloads.get(_signer(signed, "statement"), ""),
            closed_set_sha256=closed.digest,
            run=run,
        ),
    )
    audits = _one_per_contributor(
        header.get("audits"),
        contributors,
        "audit",
        lambda signed: verify_audit_statement(signed, terms, round_number=round_number, run=run),
    )
    expected = AuditDigests(
        attempt=attempt,
        closed_set_sha256=closed.digest,
        contributors_sha256=contributors_sha256(contributors),
        base_sha256=base_sha256,
        aggregate_sha256=next(iter(audits.values()))[1].aggregate_sha256,
        release_sha256=payload_sha256,
        blind_sha256=next(iter(audits.values()))[1].blind_sha256,
    )
    for subject, (_, digests) in sorted(audits.items()):
        if digests != expected:
            differing = sorted(k for k, v in digests.fields().items() if expected.fields()[k] != v)
            raise ProtocolError(
                "audit-mismatch",
                f"{subject}'s audit differs from the request in: " + ", ".join(differing),
            )
    _check_a_chain(
        terms,
        round_number,
        closed.digest,
        [statements[s] for s in sorted(statements)],
        previous_a,
        current_a,
    )
    return ReleaseCheck(round_number, run, tuple(contributors), expected)


def release_round(header: Mapping[str, Any], terms: JobTerms, *, next_round: int) -> int:
    """The round a release request (of either mode) is for, if the KGC's schedule allows it:
    this job, ``0 <= t < rounds`` (409 ``round-out-of-range``), exactly the next unreleased
    round (409 ``out-of-schedule``)."""
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
    return round_number


def release_contributors(header: Mapping[str, Any], terms: JobTerms) -> list[str]:
    """The contributors a release request (of either mode) names: distinct participants
    of the job, at least the quorum."""
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
    return contributors


def _check_rerun(
    header: Mapping[str, Any],
    terms: JobTerms,
    round_number: int,
    run: int,
    contributors: Sequence[str],
    undecoded: UndecodedRelease | None,
) -> None:
    """Run 0 carries no reports; run 1 re-runs exactly the undecoded release's set."""
    reports = header.get("undecodable")
    if not isinstance(reports, list):
        raise ProtocolError("bad-field", "undecodable must be a list")
    if run == 0:
        if reports:
            raise ProtocolError("undecodable-mismatch", "run 0 carries no undecodable reports")
        return
    if undecoded is None or undecoded.round != round_number:
        raise ProtocolError(
            "out-of-schedule", f"round {round_number} has no undecoded release to re-run"
        )
    if sorted(contributors) != sorted(undecoded.contributors):
        raise ProtocolError(
            "rerun-set-mismatch",
            "a re-run must have exactly the contributors of the release it replaces",
        )
    _one_per_contributor(
        reports,
        undecoded.contributors,
        "undecodable",
        lambda signed: verify_undecodable_statement(
            signed,
            terms,
            round_number=round_number,
            run=0,
            bundle_sha256=undecoded.bundle_sha256,
        ),
    )


def _check_a_chain(
    terms: JobTerms,
    round_number: int,
    closed_set_sha256: str,
    statements: Sequence[Mapping[str, Any]],
    previous_a: Sequence[int],
    current_a: Sequence[int],
) -> None:
    """Every contributor's randomness proof, and ``A(F_t) = A(F_{t-1}) · Π_k A_k``.

    The KGC has only each upload's batched ``A*``: the proofs show their senders know the
    randomness, and the chain shows that the vector it opens holds those uploads and no
    other ciphertext (the trivial blind keeps ``A``; ``Enc(W_0)`` has ``A = 1``).
    """
    params = terms.job_key.params
    context = pok_context(terms, round_number, closed_set_sha256)
    a_stars = []
    for body in statements:
        proof = RandomnessProof.from_obj(body["randomness_proof"])
        try:
            verify_randomness(
                params, proof, context, str(body["subject_id"]), blocks=len(current_a)
            )
        except ValueError as exc:
            raise ProtocolError("bad-randomness-proof", f"{body['subject_id']}: {exc}") from None
        a_stars.append(proof.a_star)
    try:
        verify_release_chain(params, previous_a, current_a, a_stars, context)
    except ValueError as exc:
        raise ProtocolError("broken-a-chain", str(exc)) from None


def _signer(signed: object, field: str) -> str:
    """The subject id a signed message claims (checked by its verify function)."""
    if isinstance(signed, dict) and isinstance(signed.get(field), dict):
        return str(signed[field].get("subject_id"))
    return ""
