"""The parameter server's side of the ``bcp`` aggregation mode: its checks and messages.

An upload is checked against the job's terms and the round's closed set
(:func:`check_upload`, then :func:`check_randomness_proof` after the cheap replay checks);
a release request is the blinded aggregate ``F`` framed with a header the PS signs whole
(:func:`release_frame`); a contributor downloads its part of the bundle
(:func:`download_view`). :mod:`trapdoor.ps.masked` holds the same pieces of the other
mode; the step modules (:mod:`trapdoor.ps.uploads`, :mod:`trapdoor.ps.release`, ...) do
the database work for both.

Pure: no Flask, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.bcp import RandomSource
from trapdoor.crypto.blocks import BlockLayout, EncryptedVector, JobKey, element_bytes
from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.pok import verify_randomness
from trapdoor.crypto.signing import sign_json
from trapdoor.crypto.wire import WireError, decode_frame, encode_frame
from trapdoor.protocol.bundle import ReleaseBinding, bundle_sha256
from trapdoor.protocol.commitment import ClosedSet, Signed, pok_context
from trapdoor.protocol.common import ProtocolError, digest_equal, is_json_int
from trapdoor.protocol.job import JobTerms
from trapdoor.protocol.upload import UploadStatement, verify_upload_statement
from trapdoor.ps.checks import max_frame_bytes, refusal
from trapdoor.service.errors import BadRequestError, InvalidError, TooLargeError

__all__ = [
    "BcpJob",
    "bundle_digest",
    "check_randomness_proof",
    "check_upload",
    "download_view",
    "draw_blind",
    "release_frame",
]

#: The fields of a stored bcp bundle that every contributor gets (plus its key and ``R``).
_BUNDLE_VIEW_FIELDS = ("num_plaintexts", "sealed_model", "kgc_signature")


@dataclass(frozen=True)
class BcpJob:
    """What a bcp job's messages are checked against; immutable once the job exists."""

    job_key: JobKey
    packing: PackingLayout
    layout: BlockLayout
    participants: frozenset[str]
    terms: JobTerms

    @property
    def max_frame_bytes(self) -> int:
        """The largest well-formed upload: a full header and exactly the expected payload."""
        return max_frame_bytes(self.layout.num_elements * self.element_width)

    @property
    def n(self) -> int:
        return int(self.job_key.params.n)

    @property
    def element_width(self) -> int:
        return element_bytes(self.job_key.params)


def check_upload(
    job: BcpJob, job_id: str, t: int, subject_id: str, data: bytes, closed: ClosedSet
) -> tuple[str, EncryptedVector, Signed[UploadStatement]]:
    """Frame, header, statement, shape, every group element, then the commitment.

    Returns the payload's SHA-256, the checked vector and the signed statement. The
    statement (cheap) is checked before the group elements (costly); only subjects in the
    closed set get this far.
    """
    if len(data) > job.max_frame_bytes:
        raise TooLargeError("too-large", "upload is larger than this job's model")
    try:
        frame = decode_frame(data)
    except WireError as exc:
        raise BadRequestError("malformed-frame", str(exc)) from None
    header = frame.header
    round_number = header.get("round")
    if header.get("job_id") != job_id or not is_json_int(round_number) or round_number != t:
        raise InvalidError("frame-mismatch", "frame header is for another job or round")
    digest = str(header["sha256"])
    try:
        statement = verify_upload_statement(
            header.get("statement"),
            job.terms,
            round_number=t,
            subject_id=subject_id,
            payload_sha256=digest,
            closed_set_sha256=closed.digest,
            run=closed.run,
        )
    except ProtocolError as exc:
        raise refusal(exc) from None
    signed = Signed(statement, header["statement"]["signature"])
    if header.get("num_plaintexts") != job.packing.num_plaintexts:
        raise InvalidError("wrong-shape", f"expected {job.packing.num_plaintexts} plaintexts")
    try:
        vector = frame.vector(job.job_key)
    except ValueError as exc:
        raise InvalidError("invalid-ciphertext", str(exc)) from None
    if vector.layout != job.layout:
        raise InvalidError("wrong-shape", "block layout does not match the job")
    # Last, so a malformed upload is named for what is wrong with it, even when its
    # sender committed to exactly those bytes.
    if not digest_equal(digest, closed.payloads[subject_id]):
        raise InvalidError("upload-mismatch", "the payload is not the committed one")
    return digest, vector, signed


def check_randomness_proof(
    job: BcpJob,
    t: int,
    subject_id: str,
    closed: ClosedSet,
    signed: Signed[UploadStatement],
    vector: EncryptedVector,
) -> None:
    """The sender knows the upload's randomness: it is no re-randomised copy of another's.

    Checked last (two exponentiations), after the cheap replay checks.
    """
    try:
        verify_randomness(
            job.job_key.params,
            signed.message.proof(),
            pok_context(job.terms, t, closed.digest),
            subject_id,
            a_components=vector.a_components(),
            blocks=job.layout.num_blocks,
        )
    except ValueError as exc:
        raise InvalidError("bad-randomness-proof", str(exc)) from None


def draw_blind(rng: RandomSource, job: BcpJob) -> list[int]:
    """A fresh uniform ``R``: one value in ``[0, N)`` per packed plaintext."""
    return [rng.randrange(0, job.n) for _ in range(job.layout.num_plaintexts)]


def release_frame(
    signing_key: Ed25519PrivateKey, vector: EncryptedVector, header: Mapping[str, Any]
) -> bytes:
    """``F`` framed with ``request_signature`` over the full header (``sha256`` included)."""
    signed_header = decode_frame(encode_frame(vector, dict(header)), max_header_bytes=None).header
    signature = sign_json(signing_key, signed_header)
    return encode_frame(vector, {**header, "request_signature": signature})


def bundle_digest(bundle: Mapping[str, Any]) -> str:
    """:func:`trapdoor.protocol.bundle.bundle_sha256` of a bcp bundle (what reports name)."""
    return bundle_sha256(ReleaseBinding.from_fields(bundle), bundle["sealed_model"])


def download_view(bundle: Mapping[str, Any], subject_id: str, blind: str) -> dict[str, Any] | None:
    """A contributor's view of a bcp bundle: its binding, the sealed model, its own wrapped
    key and ``R`` (``blind``, as text). None if ``subject_id`` did not contribute."""
    wrapped = bundle["wrapped_keys"].get(subject_id)
    if wrapped is None:
        return None
    return {
        **ReleaseBinding.from_fields(bundle).fields(),
        **{name: bundle[name] for name in _BUNDLE_VIEW_FIELDS},
        "wrapped_key": wrapped,
        "blind": blind,
    }
