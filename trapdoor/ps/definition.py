"""Parse and validate a job definition (docs/PROTOCOL.md, ``POST /v1/jobs``).

Everything the operator sends is checked here, before the KGC is asked for a job key:
shape and types (a bad request, ``bad-definition``), then meaning (invalid,
``invalid-definition``), each refusal naming its field, so a refused definition costs
nothing and leaves nothing behind. That includes what the participants read back before
they train: the model spec against the model registry and its parameter count against
the initial weights, and the training settings, through the same functions the
participants call (:mod:`trapdoor.ml.spec`), so a job that is created is one every
participant can train. The normalised definition (defaults filled in) is what is stored
and what participants read back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from trapdoor.crypto.encoding import EncodingError, PackingLayout
from trapdoor.crypto.signing import b64decode
from trapdoor.ml.spec import SpecError, check_model_spec, training_spec
from trapdoor.protocol.audit import AUDIT_PURPOSE, UNDECODABLE_PURPOSE, AuditDigests
from trapdoor.protocol.commitment import CLOSED_SET_PURPOSE, COMMITMENT_PURPOSE
from trapdoor.protocol.common import MAX_ATTEMPT
from trapdoor.protocol.job import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    ENCODING_DEFAULTS,
    MASKED_ENCODING_DEFAULTS,
    MaskedLayout,
    masked_layout,
)
from trapdoor.protocol.release_request import (
    masked_release_request_header,
    release_header_limit,
    release_request_header,
)
from trapdoor.protocol.upload import MASKED_UPLOAD_PURPOSE, UPLOAD_PURPOSE
from trapdoor.service.errors import BadRequestError, InvalidError, TrapdoorError

__all__ = [
    "EncodingSettings",
    "JobDefinition",
    "MaskedEncoding",
    "masked_release_header_bytes",
    "parse_definition",
    "release_header_bytes",
]

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SUBJECT_ID_MAX = 128
SUBJECT_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
POLICIES = ("stay-open", "fail")
MAX_PARTICIPANTS = 10_000
MAX_ROUNDS = 100_000
MAX_DEADLINE_SECONDS = 30 * 24 * 3600
MAX_WIDTH = 256
DEFAULT_QUORUM = 3


def _bad(message: str) -> BadRequestError:
    return BadRequestError("bad-definition", message)


def _invalid(message: str) -> InvalidError:
    return InvalidError("invalid-definition", message)


def _spec_refusal(exc: SpecError) -> TrapdoorError:
    """A refused ``model`` or ``training`` field, answered as every other field is."""
    return _bad(str(exc)) if exc.malformed else _invalid(str(exc))


def _public_weights(participants: tuple[tuple[str, int], ...]) -> dict[str, float]:
    """FedAvg's public weights ``w_i = n_i / Σ n``."""
    total = sum(n for _, n in participants)
    return {subject: n / total for subject, n in participants}


def _int(obj: dict[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer")
    return value


def _number(obj: dict[str, Any], name: str, default: float | None = None) -> float:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a number")
    if not math.isfinite(value):
        raise _invalid(f"{name} must be finite")
    return float(value)


@dataclass(frozen=True)
class EncodingSettings:
    """Fixed point and packing of the job, and the block width ``L`` of its key."""

    frac_bits: int
    slot_bits: int
    slot_bound: float
    clip_bound: float
    width: int


@dataclass(frozen=True)
class MaskedEncoding:
    """Fixed point and bounds of a masked job (its ring is chosen from them)."""

    frac_bits: int
    clip_bound: float
    model_bound: float


@dataclass(frozen=True)
class JobDefinition:
    """A validated job definition; ``normalised`` is the JSON that is stored."""

    job_id: str
    initial_weights: npt.NDArray[np.float64]
    participants: tuple[tuple[str, int], ...]
    quorum: int
    rounds: int
    round_deadline_seconds: float
    below_quorum_policy: str
    encoding: EncodingSettings | MaskedEncoding
    normalised: dict[str, Any]
    #: ``"bcp"`` (packed BCP ciphertexts) or ``"masked"`` (seeded masks over a ring).
    aggregation: str = "bcp"
    #: A masked job's layout (ring, length, bounds): its ``packing``. None for bcp.
    layout: MaskedLayout | None = None

    @property
    def subject_ids(self) -> list[str]:
        return [subject for subject, _ in self.participants]

    @property
    def weights(self) -> dict[str, float]:
        """Public weights ``w_i = n_i / Σ n`` over the enrolled participants (FedAvg)."""
        return _public_weights(self.participants)

    @property
    def bcp_encoding(self) -> EncodingSettings:
        """The bcp encoding settings (a masked job has none: ``ValueError``)."""
        if not isinstance(self.encoding, EncodingSettings):
            raise ValueError(f"job {self.job_id!r} is {self.aggregation}: it has no bcp packing")
        return self.encoding

    def packing(self, modulus: int) -> PackingLayout:
        """The packing layout; ``max_terms`` leaves rounding slack for every contribution."""
        enc = self.bcp_encoding
        try:
            return PackingLayout(
                modulus=modulus,
                length=len(self.initial_weights),
                frac_bits=enc.frac_bits,
                slot_bits=enc.slot_bits,
                slot_bound=enc.slot_bound,
                max_terms=max(1024, 4 * len(self.participants)),
            )
        except EncodingError as exc:
            raise _invalid(f"encoding: {exc}") from None

    @property
    def model_clip_bound(self) -> float:
        """``W_0`` must fit half a slot, leaving the other half for the updates' sum."""
        return self.bcp_encoding.slot_bound / 2


def _plain_json(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as standard JSON gives it back: a copy, every number finite.

    The definition is stored, served and hashed into the KGC-signed terms: a value that
    does not survive a strict JSON round trip (NaN, infinity, a non-string key) would make
    the served job differ from the signed one, or be unreadable to a strict client.
    """
    try:
        text = json.dumps(body, allow_nan=False, ensure_ascii=False)
        copy = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise _bad("the definition must be plain JSON with finite numbers") from None
    if not isinstance(copy, dict) or copy != body:
        raise _bad("the definition must be plain JSON with finite numbers")
    return copy


def _initial_weights(text: object) -> npt.NDArray[np.float64]:
    if not isinstance(text, str):
        raise _bad("initial_weights must be base64url of float64 little-endian")
    try:
        raw = b64decode(text)
    except ValueError:
        raise _bad("initial_weights is not base64url") from None
    if not raw or len(raw) % 8:
        raise _bad("initial_weights must be a non-empty whole number of float64 values")
    weights = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(weights)):
        raise _invalid("initial_weights contains NaN or infinity")
    return weights


def _participants(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        raise _bad("participants must be a non-empty list")
    if len(value) > MAX_PARTICIPANTS:
        raise _invalid(f"at most {MAX_PARTICIPANTS} participants")
    out: list[tuple[str, int]] = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"subject_id", "num_samples"}:
            raise _bad("each participant is {'subject_id', 'num_samples'}")
        subject = entry["subject_id"]
        if not isinstance(subject, str) or not SUBJECT_ID_RE.fullmatch(subject):
            raise _bad("subject_id must be 1-128 characters of [A-Za-z0-9._:@-]")
        samples = _int(entry, "num_samples")
        if samples < 1:
            raise _invalid("num_samples must be at least 1")
        out.append((subject, samples))
    if len({subject for subject, _ in out}) != len(out):
        raise _invalid("participants must be distinct")
    participants = tuple(out)
    # The KGC signs weights in (0, 1] only: one count too small next to the others would
    # round its weight to 0.
    if not all(weight > 0 for weight in _public_weights(participants).values()):
        raise _invalid("participants: a num_samples this small next to the others weighs 0")
    return participants


def _model_and_training(body: dict[str, Any], weights: npt.NDArray[np.float64]) -> None:
    """What each participant rebuilds before it trains: the model (and its size) and
    the training settings, checked as they will read them."""
    try:
        model = check_model_spec(body["model"])
        training_spec(body["training"])
    except SpecError as exc:
        raise _spec_refusal(exc) from None
    if model.num_parameters is not None and model.num_parameters != len(weights):
        raise _invalid(
            f"initial_weights has {len(weights)} values but the {model.kind} model has "
            f"{model.num_parameters} parameters"
        )


def _encoding(value: object) -> EncodingSettings:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("encoding must be an object")
    unknown = set(value) - set(ENCODING_DEFAULTS)
    if unknown:
        raise _bad(f"unknown encoding fields: {sorted(unknown)}")
    merged = {**ENCODING_DEFAULTS, **value}
    settings = EncodingSettings(
        frac_bits=_int(merged, "frac_bits"),
        slot_bits=_int(merged, "slot_bits"),
        slot_bound=_number(merged, "slot_bound"),
        clip_bound=_number(merged, "clip_bound"),
        width=_int(merged, "width"),
    )
    if not 1 <= settings.width <= MAX_WIDTH:
        raise _invalid(f"encoding.width must be in [1, {MAX_WIDTH}]")
    if settings.clip_bound <= 0 or settings.slot_bound <= 0:
        raise _invalid("clip_bound and slot_bound must be positive")
    return settings


def _masked_encoding(value: object) -> MaskedEncoding:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("encoding must be an object")
    bcp_only = sorted(set(value) & (set(ENCODING_DEFAULTS) - set(MASKED_ENCODING_DEFAULTS)))
    if bcp_only:
        raise _bad(f"a masked job's encoding has no {bcp_only} (bcp packing fields)")
    unknown = set(value) - set(MASKED_ENCODING_DEFAULTS)
    if unknown:
        raise _bad(f"unknown encoding fields: {sorted(unknown)}")
    merged = {**MASKED_ENCODING_DEFAULTS, **value}
    settings = MaskedEncoding(
        frac_bits=_int(merged, "frac_bits"),
        clip_bound=_number(merged, "clip_bound"),
        model_bound=_number(merged, "model_bound"),
    )
    if settings.clip_bound <= 0 or settings.model_bound <= 0:
        raise _invalid("clip_bound and model_bound must be positive")
    return settings


def parse_definition(
    body: object, modulus: int, *, param_server: str | None = None
) -> JobDefinition:
    """Validate ``body`` against the job-definition schema and the KGC's modulus ``N``.

    ``param_server`` is this PS's subject id (the audience of the upload statements that
    its release requests carry).
    """
    if not isinstance(body, dict):
        raise _bad("a job definition is a JSON object")
    body = _plain_json(body)
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise _bad("job_id must be 1-64 characters of [A-Za-z0-9._-], starting alphanumeric")
    for name in ("model", "training"):
        if not isinstance(body.get(name), dict):
            raise _bad(f"{name} must be an object")
    weights = _initial_weights(body.get("initial_weights"))
    _model_and_training(body, weights)
    participants = _participants(body.get("participants"))
    quorum = _int(body, "quorum", min(DEFAULT_QUORUM, len(participants)))
    if not 1 <= quorum <= len(participants):
        raise _invalid("quorum must be between 1 and the number of participants")
    rounds = _int(body, "rounds")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise _invalid(f"rounds must be in [1, {MAX_ROUNDS}]")
    deadline = _number(body, "round_deadline_seconds", 600.0)
    if not 0 < deadline <= MAX_DEADLINE_SECONDS:
        raise _invalid(f"round_deadline_seconds must be in (0, {MAX_DEADLINE_SECONDS}]")
    policy = body.get("below_quorum_policy", "stay-open")
    if policy not in POLICIES:
        raise _bad(f"below_quorum_policy must be one of {POLICIES}")
    share_metrics = body.get("share_metrics", False)
    if not isinstance(share_metrics, bool):
        raise _bad("share_metrics must be true or false")
    aggregation = body.get("aggregation", DEFAULT_AGGREGATION)
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise _bad(f"aggregation must be one of {AGGREGATIONS}")
    encoding: EncodingSettings | MaskedEncoding
    if aggregation == "masked":
        encoding = _masked_encoding(body.get("encoding"))
        normalised_encoding: dict[str, Any] = {
            "frac_bits": encoding.frac_bits,
            "clip_bound": encoding.clip_bound,
            "model_bound": encoding.model_bound,
        }
    else:
        encoding = _encoding(body.get("encoding"))
        normalised_encoding = {
            "frac_bits": encoding.frac_bits,
            "slot_bits": encoding.slot_bits,
            "slot_bound": encoding.slot_bound,
            "clip_bound": encoding.clip_bound,
            "width": encoding.width,
        }
    known = {
        "job_id",
        "model",
        "initial_weights",
        "training",
        "participants",
        "quorum",
        "rounds",
        "round_deadline_seconds",
        "below_quorum_policy",
        "encoding",
        "aggregation",
        "share_metrics",
    }
    unknown = set(body) - known
    if unknown:
        raise _bad(f"unknown fields: {sorted(unknown)}")
    normalised = {
        **body,
        "quorum": quorum,
        "round_deadline_seconds": deadline,
        "below_quorum_policy": policy,
        "aggregation": aggregation,
        "encoding": normalised_encoding,
        "share_metrics": share_metrics,
    }
    definition = JobDefinition(
        job_id=job_id,
        initial_weights=weights,
        participants=participants,
        quorum=quorum,
        rounds=rounds,
        round_deadline_seconds=deadline,
        below_quorum_policy=str(policy),
        encoding=encoding,
        normalised=normalised,
        aggregation=aggregation,
    )
    if isinstance(encoding, MaskedEncoding):
        return _masked_definition(definition, encoding, modulus, param_server)
    layout = definition.packing(modulus)
    largest_weight = max(definition.weights.values())
    if encoding.clip_bound * largest_weight > layout.slot_bound:
        raise _invalid("clip_bound * largest weight exceeds slot_bound: one update cannot fit")
    header_limit = release_header_limit(len(participants))
    if release_header_bytes(
        job_id,
        definition.subject_ids,
        param_server=param_server,
        modulus_bits=int(modulus).bit_length(),
    ) > (header_limit):
        raise _invalid(
            f"{len(participants)} participants' commitments, statements and audits would "
            f"not fit the {header_limit}-byte header of one release request"
        )
    largest = float(np.abs(weights).max())
    if largest > definition.model_clip_bound:
        raise _invalid(
            f"initial weights must lie within ±slot_bound/2 = {definition.model_clip_bound}"
        )
    return definition


def _masked_definition(
    definition: JobDefinition,
    encoding: MaskedEncoding,
    modulus: int,
    param_server: str | None,
) -> JobDefinition:
    """A masked job's layout (:func:`trapdoor.protocol.job.masked_layout`) and its checks."""
    try:
        layout = masked_layout(
            length=len(definition.initial_weights),
            frac_bits=encoding.frac_bits,
            model_bound=encoding.model_bound,
            clip_bound=encoding.clip_bound,
            participants=len(definition.participants),
            rounds=definition.rounds,
        )
    except EncodingError as exc:
        raise _invalid(f"encoding: {exc}") from None
    largest = float(np.abs(definition.initial_weights).max())
    if largest > layout.model_bound:
        raise _invalid(f"initial weights must lie within ±model_bound = {layout.model_bound}")
    header_limit = release_header_limit(len(definition.participants))
    if (
        masked_release_header_bytes(
            definition.job_id,
            definition.subject_ids,
            param_server=param_server,
            modulus_bits=int(modulus).bit_length(),
        )
        > header_limit
    ):
        raise _invalid(
            f"{len(definition.participants)} participants' statements and seeds would not "
            f"fit the {header_limit}-byte body of one release request"
        )
    return replace(definition, layout=layout)


SIGNATURE = "A" * 86  # base64url of a 64-byte Ed25519 signature
BIG = 10**12  # a number as long as any count or timestamp in a header


@dataclass(frozen=True)
class _WorstCase:
    """The longest form each field of a release request's evidence can take."""

    job_id: str
    param_server: str | None
    digest: str = "0" * 64

    @property
    def audience(self) -> str:
        """This PS's subject id; unknown, the longest one allowed."""
        return self.param_server if self.param_server is not None else "a" * SUBJECT_ID_MAX

    def signed(self, field: str, purpose: str, subject: str, **extra: Any) -> dict[str, Any]:
        """A participant-signed message of the largest shape its fields can take."""
        body = {
            "purpose": purpose,
            "kgc_key_id": "0" * 32,
            "job_id": self.job_id,
            "job_terms_sha256": self.digest,
            "round": MAX_ROUNDS,
            "run": 1,
            "subject_id": subject,
            "audience": self.audience,
            **extra,
        }
        return {field: body, "signature": SIGNATURE}


def release_header_bytes(
    job_id: str,
    subject_ids: list[str],
    *,
    param_server: str | None = None,
    modulus_bits: int = 4096,
) -> int:
    """Worst-case size of a release request's frame header if every participant takes part.

    The header (:func:`trapdoor.protocol.release_request.release_request_header`) carries
    the closed set with every participant's signed commitment, and per contributor its
    signed upload statement and its signed audit, plus the PS's signature; the KGC refuses
    headers over :func:`trapdoor.protocol.release_request.release_header_limit`, so a job
    whose release could never be
    sent is refused up front. ``param_server`` is the messages' audience (this PS's subject
    id); unknown, the longest subject id is assumed. ``modulus_bits`` is ``N``'s length
    (each randomness proof holds two elements of ``Z*_{N^2}`` and a response).
    """
    worst = _WorstCase(job_id, param_server)
    signature, digest, big, audience = SIGNATURE, worst.digest, BIG, worst.audience
    # A randomness proof: A* and T below N^2, z at most N^2's length plus ~400 bits.
    element_hex = "f" * (2 * modulus_bits // 4)
    proof = {"a_star": element_hex, "t": element_hex, "z": "f" * ((2 * modulus_bits + 512) // 4)}
    signed = worst.signed

    closed_set = {
        "closed_set": {
            "purpose": CLOSED_SET_PURPOSE,
            "kgc_key_id": "0" * 32,
            "job_id": job_id,
            "job_terms_sha256": digest,
            "round": MAX_ROUNDS,
            "param_server": audience,
            "commitments": [
                signed("commitment", COMMITMENT_PURPOSE, s, payload_sha256=digest)
                for s in subject_ids
            ],
            "closed_at": big,
        },
        "signature": signature,
    }
    statements = [
        signed(
            "statement",
            UPLOAD_PURPOSE,
            s,
            payload_sha256=digest,
            closed_set_sha256=digest,
            randomness_proof=proof,
        )
        for s in subject_ids
    ]
    audit_digests = {
        name: digest for name in AuditDigests.__dataclass_fields__ if name != "attempt"
    }
    audits = [
        signed("audit", AUDIT_PURPOSE, s, attempt=MAX_ATTEMPT, **audit_digests) for s in subject_ids
    ]
    header = {
        **release_request_header(
            job_id=job_id,
            round_number=MAX_ROUNDS,
            attempt=MAX_ATTEMPT,
            closed_set=closed_set,
            statements=statements,
            audits=audits,
        ),
        "request_signature": signature,
        "kind": "bcp-vector",
        "width": MAX_WIDTH,
        "num_plaintexts": big,
        "num_elements": big,
        "element_bytes": big,
        "sha256": digest,
    }
    # As trapdoor.crypto.wire.encode_frame writes it (ASCII-escaped JSON).
    return len(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def masked_release_header_bytes(
    job_id: str,
    subject_ids: list[str],
    *,
    param_server: str | None = None,
    modulus_bits: int = 4096,
) -> int:
    """Worst-case size of a masked job's release request if every participant takes part.

    The body (:func:`trapdoor.protocol.release_request.masked_release_request_header`) carries per
    contributor its signed masked upload statement and its seed ciphertext (``A`` and
    ``B`` below ``N^2``), for a re-run also its signed ``undecodable`` report, plus the
    layout and the PS's signature; no commitments, closed set or audits.
    """
    worst = _WorstCase(job_id, param_server)
    digest, signed = worst.digest, worst.signed
    element_hex = "f" * (2 * modulus_bits // 4)

    layout = masked_layout(
        length=1, frac_bits=20, model_bound=1.0, clip_bound=1.0, participants=1, rounds=1
    )
    header = masked_release_request_header(
        job_id=job_id,
        round_number=MAX_ROUNDS,
        run=1,
        layout=layout,
        uploads=[
            {
                "statement": signed(
                    "statement",
                    MASKED_UPLOAD_PURPOSE,
                    s,
                    payload_sha256=digest,
                    seed_sha256=digest,
                ),
                "seed": {"A": element_hex, "B": element_hex},
            }
            for s in subject_ids
        ],
        undecodable=[
            signed("undecodable", UNDECODABLE_PURPOSE, s, bundle_sha256=digest) for s in subject_ids
        ],
    )
    # The longest layout JSON a job can have (the layout above only builds the header).
    header["layout"] = {
        **layout.to_json(),
        "bits": 64,
        "frac_bits": 62,
        "length": BIG,
        "model_bound": -1.7976931348623157e308,
        "clip_bound": -1.7976931348623157e308,
    }
    header["request_signature"] = SIGNATURE
    # As the PS sends it (trapdoor.ps.masked.release_body: compact, ASCII-escaped JSON).
    return len(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
