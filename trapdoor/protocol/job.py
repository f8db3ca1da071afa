"""Job terms: what the KGC signs about a job, and a participant's check of the job it is served.

Built by the PS (:func:`requested_terms`, for a validated job definition), checked and
signed by the KGC (:func:`check_requested_terms`, :func:`sign_job_terms`: the request plus
the PS and its certified key, the participants' keys and the job key), and verified by
every participant (:func:`verify_job_terms`, :func:`check_job_view`) against the KGC key
it pinned at enrolment, *before* it encrypts anything: the job the PS serves must hash to
the signed digests of the definition, the model spec, the initial model and the packing.

The terms also fix where the chain of released models starts: the digest of ``Enc(W_0)``
(:func:`initial_ciphertext`) for a ``bcp`` job, of ``Z_0 = encode(W_0)``
(:func:`initial_state`) for a ``masked`` one, whose ring layout (:class:`MaskedLayout`) is
served as the job's packing and signed by its digest. Pure: no Flask, no database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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
from trapdoor.crypto.encoding import EncodingError, PackingLayout, check_json_keys, encode_vector
from trapdoor.crypto.masking import RingSpec, RingVector, choose_ring, encode_ring, vector_to_bytes
from trapdoor.crypto.signing import (
    SignatureError,
    b64decode,
    public_key_from_hex,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import from_obj
from trapdoor.protocol.common import (
    MAX_ROUND,
    ProtocolError,
    is_digest,
    is_json_int,
    json_sha256,
    kgc_key_id,
    sha256_hex,
    vector_sha256,
)

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "DEFAULT_MIN_QUORUM",
    "ENCODING_DEFAULTS",
    "EXACT_FLOAT_BITS",
    "JOB_TERMS_PURPOSE",
    "MASKED_ENCODING_DEFAULTS",
    "MASKED_LAYOUT_KIND",
    "JobTerms",
    "MaskedLayout",
    "RequestedTerms",
    "check_job_view",
    "check_requested_terms",
    "initial_ciphertext",
    "initial_ciphertext_sha256",
    "initial_plaintexts",
    "initial_state",
    "initial_state_digest",
    "initial_state_sha256",
    "initial_weights_of",
    "masked_layout",
    "requested_terms",
    "sign_job_terms",
    "verify_job_terms",
]

JOB_TERMS_PURPOSE = "trapdoor/job-terms/v3"
#: A participant refuses a job whose quorum is below this, unless configured otherwise:
#: with fewer contributors, differencing released models reveals too little noise.
DEFAULT_MIN_QUORUM = 3
#: How a job aggregates (DESIGN §2.2): packed BCP ciphertexts, or masked ring vectors.
AGGREGATIONS = ("bcp", "masked")
#: The aggregation of a definition that names none (docs/PROTOCOL.md, "Masked mode").
DEFAULT_AGGREGATION = "masked"
ENCODING_DEFAULTS: dict[str, Any] = {
    "frac_bits": 20,
    "slot_bits": 29,
    "slot_bound": 64.0,
    "clip_bound": 16.0,
    "width": 16,
}
#: A masked job's ``encoding`` (docs/PROTOCOL.md, "Masked mode"): the bcp packing fields
#: (``slot_bits``, ``slot_bound``, ``width``) mean nothing there and are refused.
MASKED_ENCODING_DEFAULTS: dict[str, Any] = {
    "frac_bits": 20,
    "clip_bound": 16.0,
    "model_bound": 32.0,
}
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
#: The ``kind`` of a masked job's layout (what it serves as its ``packing``).
MASKED_LAYOUT_KIND = "ring"
#: Released models are kept as float64 by participants and re-encoded each round, which is
#: exact only while every fixed-point value is below 2^53 in magnitude; keep a bit spare.
EXACT_FLOAT_BITS = 52
_LAYOUT_KEYS = frozenset({"kind", "bits", "frac_bits", "length", "model_bound", "clip_bound"})


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
    #: :class:`trapdoor.protocol.job.MaskedLayout` and ``initial_ciphertext_sha256`` that
    #: of ``Z_0`` (:func:`trapdoor.protocol.job.initial_state_sha256`).
    aggregation: str
    #: SHA-256 of the signed terms (canonical JSON): what every later statement names.
    digest: str
    raw: Mapping[str, Any]


# ---------------------------------------------------------------- requested, signed, verified


@dataclass(frozen=True)
class RequestedTerms:
    """The terms a PS asks the KGC to sign (:data:`_REQUESTED_FIELDS`, in that order).

    Typed so the KGC and every participant read fields, not keys; :meth:`to_json` is the
    object the PS sends and the KGC signs into the terms, so its key order and values are
    exactly what the builder wrote (weights keep their JSON numbers as sent).
    """

    job_id: str
    participants: tuple[str, ...]
    weights: Mapping[str, float]
    quorum: int
    rounds: int
    width: int
    num_plaintexts: int
    definition_sha256: str
    packing_sha256: str
    model_sha256: str
    initial_model_sha256: str
    initial_ciphertext_sha256: str
    aggregation: str

    def to_json(self) -> dict[str, Any]:
        """The request as JSON, in field order (what the KGC's stored terms start with)."""
        body: dict[str, Any] = {name: getattr(self, name) for name in _REQUESTED_FIELDS}
        body["participants"] = list(self.participants)
        body["weights"] = dict(self.weights)
        return body

    @classmethod
    def from_json(cls, terms: object) -> RequestedTerms:
        """Shape and meaning of a terms request (the KGC calls this before signing).

        ``bad-terms``, ``duplicate-participant`` or ``invalid-quorum``, checked in that
        order of fields, so a request refused before it was typed is refused alike.
        """
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
            raise ProtocolError(
                "invalid-quorum", "quorum must be between 1 and the participant count"
            )
        if terms["rounds"] > MAX_ROUND:
            raise ProtocolError("bad-terms", f"rounds must be at most {MAX_ROUND}")
        for name in _REQUESTED_FIELDS:
            if name.endswith("_sha256") and not is_digest(terms[name]):
                raise ProtocolError("bad-terms", f"{name} must be 64 lowercase hex characters")
        if not isinstance(terms["job_id"], str):
            raise ProtocolError("bad-terms", "job_id must be a string")
        if terms["aggregation"] not in AGGREGATIONS:
            raise ProtocolError("bad-terms", f"aggregation must be one of {AGGREGATIONS}")
        values: dict[str, Any] = {name: terms[name] for name in _REQUESTED_FIELDS}
        return cls(**{**values, "participants": tuple(participants), "weights": dict(weights)})


def requested_terms(
    *,
    job_id: str,
    definition: Mapping[str, Any],
    packing: Mapping[str, Any],
    weights: Mapping[str, float],
    width: int,
    num_plaintexts: int,
    initial_ciphertext_sha256: str,
) -> RequestedTerms:
    """The terms a PS asks the KGC to sign for a validated, normalised job definition."""
    participants = tuple(str(p["subject_id"]) for p in definition["participants"])
    return RequestedTerms(
        job_id=job_id,
        participants=participants,
        weights={s: float(weights[s]) for s in participants},
        quorum=int(definition["quorum"]),
        rounds=int(definition["rounds"]),
        width=int(width),
        num_plaintexts=int(num_plaintexts),
        definition_sha256=json_sha256(dict(definition)),
        packing_sha256=json_sha256(dict(packing)),
        model_sha256=json_sha256(definition["model"]),
        initial_model_sha256=sha256_hex(b64decode(str(definition["initial_weights"]))),
        initial_ciphertext_sha256=initial_ciphertext_sha256,
        aggregation=str(definition.get("aggregation", "bcp")),
    )


def check_requested_terms(terms: object) -> RequestedTerms:
    """Shape and meaning of a terms request (:meth:`RequestedTerms.from_json`)."""
    return RequestedTerms.from_json(terms)


def sign_job_terms(
    kgc_key: Ed25519PrivateKey,
    requested: RequestedTerms,
    *,
    param_server: str,
    param_server_key: str,
    signing_keys: Mapping[str, str],
    job_key: Mapping[str, Any],
) -> tuple[dict[str, Any], str]:
    """The KGC's signed terms: the request plus the PS and its key, the participants' keys,
    and the job key."""
    terms = RequestedTerms.from_json(requested.to_json())
    signed = {
        **terms.to_json(),
        "purpose": JOB_TERMS_PURPOSE,
        "kgc_key_id": kgc_key_id(kgc_key),
        "param_server": param_server,
        "param_server_key": param_server_key,
        "signing_keys": {s: signing_keys[s] for s in terms.participants},
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
        if not isinstance(keys, dict) or sorted(keys) != sorted(requested.participants):
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
    if job_key.width != requested.width:
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
        job_id=requested.job_id,
        param_server=param_server,
        participants=requested.participants,
        signing_keys=dict(keys),
        weights={str(k): float(v) for k, v in requested.weights.items()},
        quorum=requested.quorum,
        rounds=requested.rounds,
        width=requested.width,
        num_plaintexts=requested.num_plaintexts,
        definition_sha256=requested.definition_sha256,
        packing_sha256=requested.packing_sha256,
        model_sha256=requested.model_sha256,
        initial_model_sha256=requested.initial_model_sha256,
        initial_ciphertext_sha256=requested.initial_ciphertext_sha256,
        param_server_key=str(param_server_key),
        job_key=job_key,
        aggregation=requested.aggregation,
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
    served_json = served.to_json()
    mismatched = sorted(n for n in _REQUESTED_FIELDS if served_json[n] != terms.raw[n])
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


# --------------------------------------------------------------------------- the start of the chain


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
        return initial_state_sha256(MaskedLayout.from_json(packing), weights)
    return vector_sha256(
        initial_ciphertext(job_key, PackingLayout.from_json(dict(packing)), weights)
    )


# --------------------------------------------------------------------------- masked layout


@dataclass(frozen=True)
class MaskedLayout:
    """What a masked job's vectors are: the ring, fixed point, length and bounds.

    ``model_bound`` is ``B_W``: every contributor checks ``|W_t| <= B_W`` each round and
    stops otherwise, which with ``clip_bound`` is what the ring size was chosen for
    (:func:`trapdoor.crypto.masking.choose_ring`). Served as the job's ``packing`` and signed into
    the terms by its digest.
    """

    ring: RingSpec
    length: int
    model_bound: float
    clip_bound: float

    @property
    def payload_bytes(self) -> int:
        """Bytes of one ``y`` (and of ``Z``, and of the sealed ``D``)."""
        return self.length * self.ring.byte_width

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MASKED_LAYOUT_KIND,
            "bits": self.ring.bits,
            "frac_bits": self.ring.frac_bits,
            "length": self.length,
            "model_bound": self.model_bound,
            "clip_bound": self.clip_bound,
        }

    @classmethod
    def from_json(cls, obj: object) -> MaskedLayout:
        """Inverse of :meth:`to_json`; strict (exact keys and types)."""
        if not isinstance(obj, dict):
            raise EncodingError("a masked layout is an object")
        check_json_keys(obj, _LAYOUT_KEYS, "masked layout")
        if obj["kind"] != MASKED_LAYOUT_KIND:
            raise EncodingError(f"a masked layout has kind {MASKED_LAYOUT_KIND!r}")
        for name in ("bits", "frac_bits", "length"):
            if not is_json_int(obj[name]):
                raise EncodingError(f"{name} must be a JSON integer")
        for name in ("model_bound", "clip_bound"):
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EncodingError(f"{name} must be a number")
            if not (math.isfinite(value) and value > 0):
                raise EncodingError(f"{name} must be finite and > 0")
        if obj["length"] < 1:
            raise EncodingError("length must be at least 1")
        layout = cls(
            ring=RingSpec(bits=obj["bits"], frac_bits=obj["frac_bits"]),
            length=int(obj["length"]),
            model_bound=float(obj["model_bound"]),
            clip_bound=float(obj["clip_bound"]),
        )
        layout.check_fits(participants=1, rounds=1)
        return layout

    def check_fits(self, *, participants: int, rounds: int) -> None:
        """Refuse a layout whose ring is smaller than its bounds need for ``participants``
        and ``rounds`` (:func:`trapdoor.crypto.masking.choose_ring`), or that float64 cannot hold.

        A participant calls it with the signed terms' counts: a PS that serves a ring too
        small for the bounds would let an in-range sum wrap and decode to a wrong model
        that still passes the bound check.
        """
        needed = masked_layout(
            length=self.length,
            frac_bits=self.ring.frac_bits,
            model_bound=self.model_bound,
            clip_bound=self.clip_bound,
            participants=participants,
            rounds=rounds,
        )
        if needed.ring.bits > self.ring.bits:
            raise EncodingError(
                f"a {self.ring.bits}-bit ring cannot hold these bounds: "
                f"{needed.ring.bits} bits are needed"
            )


def masked_layout(
    *,
    length: int,
    frac_bits: int,
    model_bound: float,
    clip_bound: float,
    participants: int,
    rounds: int,
) -> MaskedLayout:
    """The layout of a new masked job: the smallest ring its bounds can never wrap in.

    Raises :class:`EncodingError` when even 64 bits do not fit, or when a model value
    could not round-trip exactly through float64 (participants keep models as float64).
    """
    if not is_json_int(length) or length < 1:
        raise EncodingError("length must be an integer >= 1")
    ring = choose_ring(
        model_bound=model_bound,
        clip_bound=clip_bound,
        frac_bits=frac_bits,
        participants=participants,
        rounds=rounds,
    )
    if (model_bound + clip_bound) * 2.0**frac_bits >= 2.0**EXACT_FLOAT_BITS:
        raise EncodingError(
            f"(model_bound + clip_bound)·2^frac_bits must stay below 2^{EXACT_FLOAT_BITS} "
            "so that models round-trip exactly through float64"
        )
    return MaskedLayout(ring, int(length), float(model_bound), float(clip_bound))


def initial_state(layout: MaskedLayout, initial_weights: npt.ArrayLike) -> RingVector:
    """``Z_0 = E_0 = encode(W_0)``: ``W_0`` is public, so the first masked model is bare."""
    weights = np.asarray(initial_weights, dtype=np.float64)
    if weights.shape != (layout.length,):
        raise EncodingError(f"W_0 must have {layout.length} values, got {weights.shape}")
    if float(np.abs(weights).max(initial=0.0)) > layout.model_bound:
        raise EncodingError(f"W_0 exceeds the model bound ±{layout.model_bound}")
    return encode_ring(weights, layout.ring)


def initial_state_sha256(layout: MaskedLayout, initial_weights: npt.ArrayLike) -> str:
    """Digest of ``Z_0``'s bytes (signed into the terms as ``initial_ciphertext_sha256``)."""
    return sha256_hex(vector_to_bytes(initial_state(layout, initial_weights), layout.ring))
