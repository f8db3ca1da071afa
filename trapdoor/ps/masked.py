"""The parameter server's side of the ``masked`` aggregation mode (docs/PROTOCOL.md).

A masked round has no commitments, closed set or audits: ``open`` (uploads) -> ``closed``
(``Z_{t+1} = Z_t + Σ y_i mod 2^k`` stored, release requested) -> ``released``. The PS
never sees a seed or a mask; it adds the contributors' ``y`` with wrap-around arithmetic
and forwards their signed statements and seed ciphertexts to the KGC, which seals the
mask sum ``D_t`` to the contributors. The step modules (:mod:`trapdoor.ps.uploads`,
:mod:`trapdoor.ps.rounds`, :mod:`trapdoor.ps.release`, ...) dispatch here by the job's
aggregation and do the database work, so a round's state changes keep the same
transactions, locks, leases and retries as the bcp mode (:mod:`trapdoor.ps.bcp`).

Pure: no Flask, no database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.masking import add_into, vector_from_bytes, vector_to_bytes
from trapdoor.crypto.signing import sign_json
from trapdoor.crypto.wire import RING_FRAME_KIND, WireError, decode_frame
from trapdoor.protocol.bundle import MaskedReleaseBinding, bundle_sha256
from trapdoor.protocol.commitment import Signed
from trapdoor.protocol.common import ProtocolError, is_json_int
from trapdoor.protocol.job import JobTerms, MaskedLayout
from trapdoor.protocol.release_request import masked_release_request_header
from trapdoor.protocol.upload import (
    MaskedUploadStatement,
    seed_from_obj,
    seed_sha256,
    seed_to_obj,
    verify_masked_upload_statement,
)
from trapdoor.ps.checks import max_frame_bytes, refusal
from trapdoor.service.errors import BadRequestError, ForbiddenError, InvalidError, TooLargeError

__all__ = [
    "CheckedUpload",
    "MaskedJob",
    "add_uploads",
    "bundle_digest",
    "check_upload",
    "download_view",
    "expected_binding",
    "release_body",
    "upload_seed",
]

#: The fields of a stored masked bundle that every contributor gets (plus its own key).
_BUNDLE_VIEW_FIELDS = ("sealed_mask", "wrapped_keys_sha256", "release_signature")


@dataclass(frozen=True)
class MaskedJob:
    """What a masked job's messages are checked against; immutable once the job exists."""

    terms: JobTerms
    layout: MaskedLayout
    participants: frozenset[str]

    @property
    def max_frame_bytes(self) -> int:
        """The largest well-formed upload: a full header and exactly one ``y``."""
        return max_frame_bytes(self.layout.payload_bytes)


@dataclass(frozen=True)
class CheckedUpload:
    """A masked upload that passed every check that needs no database."""

    #: SHA-256 of ``y`` (the frame's payload), as the statement signs it
    digest: str
    #: the statement as the contributor signed it
    statement: Signed[MaskedUploadStatement]
    #: SHA-256 of the seed ciphertext ``{"A", "B"}`` (canonical hex)
    seed_sha256: str


def _signer(signed: object) -> object:
    if isinstance(signed, dict) and isinstance(signed.get("statement"), dict):
        return signed["statement"].get("subject_id")
    return None


def check_upload(
    job: MaskedJob, *, job_id: str, t: int, run: int, subject_id: str, data: bytes
) -> CheckedUpload:
    """Frame, header, shape, seed, then the statement (docs/PROTOCOL.md, "Masked mode").

    Too large (``too-large``) over the frame size; a bad request (``malformed-frame``)
    for anything that is not a ``ring-vector`` frame with a matching digest (a bcp frame
    included); invalid: ``frame-mismatch`` (another job or round), ``wrong-shape`` (other
    ring or length), ``bad-seed`` (not ``{"A", "B"}`` canonical hex in ``Z*_{N^2}``); the
    statement as :func:`trapdoor.protocol.upload.verify_masked_upload_statement` says
    (forbidden for a signature or a statement of another participant, invalid otherwise).
    """
    if len(data) > job.max_frame_bytes:
        raise TooLargeError("too-large", "upload is larger than this job's model")
    try:
        frame = decode_frame(data, kind=RING_FRAME_KIND, max_bytes=job.max_frame_bytes)
    except WireError as exc:
        raise BadRequestError("malformed-frame", str(exc)) from None
    header = frame.header
    round_number = header.get("round")
    if header.get("job_id") != job_id or not is_json_int(round_number) or round_number != t:
        raise InvalidError("frame-mismatch", "frame header is for another job or round")
    layout = job.layout
    bits, count = header.get("bits"), header.get("num_elements")
    if (
        not is_json_int(bits)
        or not is_json_int(count)
        or (bits, count) != (layout.ring.bits, layout.length)
        or len(frame.payload) != layout.payload_bytes
    ):
        raise InvalidError(
            "wrong-shape",
            f"expected {layout.length} elements of {layout.ring.bits} bits",
        )
    seed_obj = header.get("seed")
    try:
        seed = seed_from_obj(seed_obj, job.terms.job_key)
    except ProtocolError as exc:
        raise InvalidError(exc.code, exc.message) from None
    seed_digest = seed_sha256(seed_to_obj(seed))
    digest = str(header["sha256"])
    signed = header.get("statement")
    try:
        body = verify_masked_upload_statement(
            signed,
            job.terms,
            round_number=t,
            run=run,
            subject_id=subject_id,
            payload_sha256=digest,
            seed_sha256=seed_digest,
        )
    except ProtocolError as exc:
        if exc.code == "statement-mismatch" and _signer(signed) != subject_id:
            # A participant's honestly signed statement, sent by someone else.
            raise ForbiddenError(exc.code, exc.message) from None
        raise refusal(exc) from None
    assert isinstance(signed, dict)  # verified above
    return CheckedUpload(digest, Signed(body, signed["signature"]), seed_digest)


def add_uploads(layout: MaskedLayout, base: bytes, uploads: Iterable[bytes]) -> bytes:
    """``Z_{t+1} = Z_t + Σ y_i mod 2^k`` from stored bytes (``Z_t``, the upload frames)."""
    total = vector_from_bytes(base, layout.ring, layout.length)
    for data in uploads:
        frame = decode_frame(data, kind=RING_FRAME_KIND, max_header_bytes=None)
        add_into(total, vector_from_bytes(frame.payload, layout.ring, layout.length))
    return vector_to_bytes(total, layout.ring)


def upload_seed(data: bytes) -> dict[str, Any]:
    """The seed ciphertext of a stored upload frame (checked when it was accepted)."""
    seed = decode_frame(data, kind=RING_FRAME_KIND, max_header_bytes=None).header["seed"]
    return dict(seed)


def release_body(
    signing_key: Ed25519PrivateKey,
    *,
    job_id: str,
    round_number: int,
    run: int,
    layout: MaskedLayout,
    uploads: Sequence[Mapping[str, Any]],
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """The JSON body of a masked release request, signed whole (``request_signature``)."""
    header = masked_release_request_header(
        job_id=job_id,
        round_number=round_number,
        run=run,
        layout=layout,
        uploads=uploads,
        undecodable=undecodable,
    )
    signed = {**header, "request_signature": sign_json(signing_key, header)}
    return json.dumps(signed, separators=(",", ":"), sort_keys=True).encode()


def expected_binding(
    terms: JobTerms, round_number: int, run: int, payloads: Mapping[str, str]
) -> MaskedReleaseBinding:
    """What the KGC must seal round ``round_number``'s mask sum to: these ``y`` digests."""
    return MaskedReleaseBinding(
        job_id=terms.job_id,
        job_terms_sha256=terms.digest,
        round=round_number,
        run=run,
        uploads=dict(sorted(payloads.items())),
    )


def bundle_digest(bundle: Mapping[str, Any]) -> str:
    """:func:`trapdoor.protocol.bundle.bundle_sha256` of a masked bundle (what reports name)."""
    return bundle_sha256(MaskedReleaseBinding.from_fields(bundle), bundle["sealed_mask"])


def download_view(bundle: Mapping[str, Any], subject_id: str) -> dict[str, Any] | None:
    """A contributor's view of a masked bundle: everything but the others' wrapped keys.

    None if ``subject_id`` has no wrapped key (it did not contribute).
    """
    wrapped = (bundle.get("wrapped_keys") or {}).get(subject_id)
    if wrapped is None:
        return None
    return {
        **MaskedReleaseBinding.from_fields(bundle).fields(),
        **{name: bundle[name] for name in _BUNDLE_VIEW_FIELDS},
        "wrapped_key": wrapped,
    }
