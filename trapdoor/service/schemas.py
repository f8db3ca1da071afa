"""The JSON shapes more than one service's OpenAPI document names, as typed bodies.

The error body, the health answer, the constrained strings of the wire (hex integers,
digests, keys, signatures, base64url), the wire objects of :mod:`trapdoor.crypto.wire`,
and the signed protocol messages that travel between services (round statements, the
closed commitment set, the KGC-signed job terms, certificates and receipts, release
bindings). Each mirrors what the code builds (the ``to_json``/``to_obj`` of its module,
named in each docstring); :mod:`trapdoor.service.openapi` makes JSON Schema of them, and
``tests/api/test_openapi_schemas.py`` validates the services' real answers against it.
Where :mod:`trapdoor.protocol` has the message as a dataclass whose fields are its JSON
(certificates, receipts, commitments, upload, audit and undecodable statements), that
dataclass is the schema, in the envelope it travels in (``{"commitment", "signature"}``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from trapdoor.crypto.signing import ROLES
from trapdoor.protocol.audit import AuditStatement, UndecodableStatement
from trapdoor.protocol.commitment import Commitment
from trapdoor.protocol.common import MAX_ATTEMPT, MAX_ROUND, MAX_RUN
from trapdoor.protocol.enrolment import Certificate
from trapdoor.protocol.job import AGGREGATIONS
from trapdoor.protocol.metrics import MetricsReport
from trapdoor.protocol.receipt import Receipt
from trapdoor.protocol.upload import MaskedUploadStatement
from trapdoor.service.openapi import Constraint, open_object

__all__ = [
    "Aggregation",
    "Attempt",
    "AuditLogEntry",
    "AuditLogExport",
    "Base64Url",
    "BcpCiphertext",
    "BcpJobKey",
    "BcpParams",
    "BcpPublicKey",
    "ClosedSetBody",
    "Count",
    "Ed25519Hex",
    "Error",
    "Float64Base64",
    "Health",
    "HexInt",
    "JobId",
    "KeyId",
    "MaskedLayoutJson",
    "MaskedReleaseFields",
    "OpenApiDocument",
    "Positive",
    "ReleaseBindingFields",
    "RequestedTerms",
    "Role",
    "Round",
    "Run",
    "Sealed",
    "SeedObject",
    "Sha256Hex",
    "Signature",
    "SignedAudit",
    "SignedCertificate",
    "SignedClosedSet",
    "SignedCommitment",
    "SignedJobTerms",
    "SignedMaskedUploadStatement",
    "SignedMetricsReport",
    "SignedReceipt",
    "SignedUndecodable",
    "SubjectId",
    "WrappedKey",
]

# ---------------------------------------------------------------- constrained scalars

#: A group element or big number: lowercase hex, no prefix (``trapdoor.crypto.wire.to_hex``).
HexInt = Annotated[str, Constraint(pattern="^[0-9a-f]+$")]
#: SHA-256, 64 lowercase hex characters.
Sha256Hex = Annotated[str, Constraint(pattern="^[0-9a-f]{64}$")]
#: An Ed25519 public key, 64 lowercase hex characters.
Ed25519Hex = Annotated[str, Constraint(pattern="^[0-9a-f]{64}$")]
#: The KGC signing key's id (``trapdoor.protocol.common.kgc_key_id``): 32 hex characters.
KeyId = Annotated[str, Constraint(pattern="^[0-9a-f]{32}$")]
#: Bytes as base64url without padding (``trapdoor.crypto.signing.b64encode``).
Base64Url = Annotated[str, Constraint(pattern="^[A-Za-z0-9_-]*$")]
#: A detached Ed25519 signature over canonical JSON: 64 bytes, base64url.
Signature = Annotated[str, Constraint(pattern="^[A-Za-z0-9_-]{86}$")]
#: float64 little-endian values, base64url: a whole number of 8-byte values (24 bytes are
#: 32 characters; 8 and 16 bytes left over are 11 and 22).
Float64Base64 = Annotated[
    str,
    Constraint(
        min_length=11,
        pattern="^(?:[A-Za-z0-9_-]{32})*(?:[A-Za-z0-9_-]{11}|[A-Za-z0-9_-]{22})?$",
    ),
]
#: A subject id as the parameter server takes it in a job definition (the KGC's are
#: ``sub-`` and 16 hex characters).
SubjectId = Annotated[str, Constraint(pattern="^[A-Za-z0-9._:@-]{1,128}$")]
#: A job id: 1-64 of ``A-Z a-z 0-9 . _ -``, starting alphanumeric.
JobId = Annotated[str, Constraint(pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Round = Annotated[int, Constraint(minimum=0, maximum=MAX_ROUND)]
Run = Annotated[int, Constraint(minimum=0, maximum=MAX_RUN)]
Attempt = Annotated[int, Constraint(minimum=0, maximum=MAX_ATTEMPT)]
Count = Annotated[int, Constraint(minimum=0)]
Positive = Annotated[int, Constraint(minimum=1)]
Role = Annotated[str, Constraint(enum=ROLES)]
Aggregation = Annotated[str, Constraint(enum=AGGREGATIONS)]


# ---------------------------------------------------------------- every service


class Error(TypedDict):
    """Every refusal (``trapdoor.service.web.register_error_handlers``)."""

    error: Annotated[str, Constraint(min_length=1)]
    message: str


@open_object
class Health(TypedDict):
    """``GET /healthz``: liveness, the service's name and what it checks (its database)."""

    status: Literal["ok"]
    service: str


class OpenApiDocument(TypedDict):
    """``GET /openapi.json``: this document."""

    openapi: str
    info: dict[str, str]
    paths: dict[str, Any]
    components: dict[str, Any]


# ---------------------------------------------------------------- wire objects


class BcpParams(TypedDict):
    """Public BCP parameters (``trapdoor.crypto.wire.to_obj``)."""

    kind: Literal["bcp-params"]
    n: HexInt
    g: HexInt


class BcpPublicKey(TypedDict):
    """A participant's BCP public key (``trapdoor.crypto.wire.to_obj``)."""

    kind: Literal["bcp-public-key"]
    n: HexInt
    g: HexInt
    h: HexInt


class BcpCiphertext(TypedDict):
    """One BCP ciphertext under a public key (``trapdoor.crypto.wire.to_obj``)."""

    kind: Literal["bcp-ciphertext"]
    n: HexInt
    g: HexInt
    h: HexInt
    A: HexInt
    B: HexInt


class BcpJobKey(TypedDict):
    """A job key: one public component per slot of a block (``trapdoor.crypto.wire.to_obj``)."""

    kind: Literal["bcp-job-key"]
    n: HexInt
    g: HexInt
    hs: list[HexInt]


class Sealed(TypedDict):
    """AES-256-GCM ciphertext (``trapdoor.crypto.sealing.seal_bytes``)."""

    alg: Literal["A256GCM"]
    nonce: Base64Url
    ct: Base64Url


class WrappedKey(Sealed):
    """A data key sealed to one participant's BCP key (``crypto.sealing.wrap_data_key``)."""

    kem: BcpCiphertext


class SeedObject(TypedDict):
    """A masked upload's seed, BCP-encrypted under the job key (``trapdoor.protocol.upload``)."""

    A: HexInt
    B: HexInt


class MaskedLayoutJson(TypedDict):
    """A masked job's ring layout (``trapdoor.protocol.job.MaskedLayout.to_json``)."""

    kind: Literal["ring"]
    bits: Literal[32, 64]
    frac_bits: Count
    length: Positive
    model_bound: float
    clip_bound: float


# ---------------------------------------------------------------- signed messages


class SignedCertificate(TypedDict):
    """A certificate and the KGC's signature over it (``trapdoor.protocol.enrolment``)."""

    certificate: Certificate
    signature: Signature


class SignedReceipt(TypedDict):
    """The PS's signed word that it stored an upload (``trapdoor.protocol.receipt``)."""

    receipt: Receipt
    signature: Signature


class SignedCommitment(TypedDict):
    """A contributor's signed promise of the payload it will upload."""

    commitment: Commitment
    signature: Signature


class ClosedSetBody(TypedDict):
    """A round's final commitments, signed by the PS (``trapdoor.protocol.commitment``)."""

    purpose: str
    kgc_key_id: KeyId
    job_id: JobId
    job_terms_sha256: Sha256Hex
    round: Round
    run: Run
    param_server: SubjectId
    commitments: list[SignedCommitment]
    closed_at: int


class SignedClosedSet(TypedDict):
    """A closed commitment set and the PS's signature."""

    closed_set: ClosedSetBody
    signature: Signature


class SignedMaskedUploadStatement(TypedDict):
    """What a masked upload is, signed by its contributor."""

    statement: MaskedUploadStatement
    signature: Signature


class SignedAudit(TypedDict):
    """The digests of one attempt a contributor recomputed, signed by it."""

    audit: AuditStatement
    signature: Signature


class SignedMetricsReport(TypedDict):
    """A contributor's signed evaluation of a released model (jobs with share_metrics)."""

    metrics_report: MetricsReport
    signature: Signature


class SignedUndecodable(TypedDict):
    """A contributor's signed report that the release bundle it names does not decode."""

    undecodable: UndecodableStatement
    signature: Signature


# ---------------------------------------------------------------- job terms


class RequestedTerms(TypedDict):
    """The terms a PS asks the KGC to sign (``trapdoor.protocol.job.requested_terms``)."""

    job_id: JobId
    participants: Annotated[list[SubjectId], Constraint(min_items=1)]
    #: public weight of each participant, in (0, 1]
    weights: dict[str, Annotated[float, Constraint(exclusive_minimum=0, maximum=1)]]
    quorum: Positive
    rounds: Annotated[int, Constraint(minimum=1, maximum=MAX_ROUND)]
    width: Positive
    num_plaintexts: Positive
    definition_sha256: Sha256Hex
    packing_sha256: Sha256Hex
    model_sha256: Sha256Hex
    initial_model_sha256: Sha256Hex
    initial_ciphertext_sha256: Sha256Hex
    aggregation: Aggregation


class SignedJobTerms(RequestedTerms):
    """The terms the KGC signed (``trapdoor.protocol.job.sign_job_terms``)."""

    purpose: str
    kgc_key_id: KeyId
    param_server: SubjectId
    param_server_key: Ed25519Hex
    signing_keys: dict[str, Ed25519Hex]
    job_key: BcpJobKey


# ---------------------------------------------------------------- release bindings


class ReleaseBindingFields(TypedDict):
    """What a bcp release is sealed to (``trapdoor.protocol.bundle.ReleaseBinding.fields``)."""

    job_id: JobId
    round: Round
    run: Run
    attempt: Attempt
    base_sha256: Sha256Hex
    contributors_sha256: Sha256Hex
    blind_sha256: Sha256Hex


class MaskedReleaseFields(TypedDict):
    """What a masked release is sealed to and what it signs
    (``trapdoor.protocol.bundle.MaskedReleaseBinding``, ``seal_mask_sum``)."""

    aggregation: Literal["masked"]
    job_id: JobId
    job_terms_sha256: Sha256Hex
    round: Round
    run: Run
    #: each contributor's upload, by the SHA-256 of its ``y``
    uploads: dict[str, Sha256Hex]
    sealed_mask: Sealed
    wrapped_keys_sha256: dict[str, Sha256Hex]
    release_signature: Signature


# ---------------------------------------------------------------- audit log


class AuditLogEntry(TypedDict):
    """One row of a service's audit log (``trapdoor.service.audit_log``)."""

    seq: Annotated[int, Constraint(minimum=1)]
    at: float
    event: str
    subject: str | None
    detail: dict[str, Any]
    prev_sha256: Sha256Hex
    sha256: Sha256Hex
    signature: Signature


class AuditLogExport(TypedDict):
    """``GET /v1/audit-log`` (operator): every row, oldest first, and the key that
    verifies them (``trapdoor kgc audit-log verify``)."""

    entries: list[AuditLogEntry]
    verify_key: Ed25519Hex
