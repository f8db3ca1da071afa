"""Wire formats: single objects as JSON, ciphertext vectors as binary frames.

Single objects (a stable interop surface; integers are lowercase hex strings)::

    {"kind": "bcp-params",      "n": hex, "g": hex}
    {"kind": "bcp-public-key",  "n": hex, "g": hex, "h": hex}
    {"kind": "bcp-secret-key",  "n": hex, "g": hex, "h": hex, "a": hex}
    {"kind": "bcp-master-key",  "n": hex, "g": hex, "p": hex, "q": hex}
    {"kind": "bcp-ciphertext",  "n": hex, "g": hex, "h": hex, "A": hex, "B": hex}
    {"kind": "bcp-job-key",     "n": hex, "g": hex, "hs": [hex, ...]}

A ciphertext names the key it is under, so either trapdoor can open it. ``loads``
validates every group element (``ValueError`` otherwise) before returning anything.

Vector frame (``application/octet-stream``)::

    b"TDFL" | u8 version | u32 header length | header JSON (UTF-8) | payload

The header says what the payload is (job, round, layout, element width, SHA-256 of the
payload); the payload is fixed-width big-endian group elements (kind ``bcp-vector``), or
fixed-width little-endian ring elements of the masked mode (kind ``ring-vector``:
``bits``, ``num_elements``). Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gmpy2 import mpz

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey, PublicParams, SecretKey
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    element_bytes,
    elements_from_bytes,
)

__all__ = [
    "FRAME_MAGIC",
    "RING_FRAME_KIND",
    "VectorFrame",
    "WireError",
    "decode_frame",
    "dumps",
    "encode_frame",
    "encode_payload_frame",
    "encode_ring_frame",
    "from_hex",
    "from_obj",
    "loads",
    "to_hex",
    "to_obj",
]

_HEX = re.compile(r"\A(?:0x)?[0-9a-fA-F]{1,4096}\Z")


class WireError(ValueError):
    """Malformed wire data: wrong shape, type, kind or encoding."""


def to_hex(value: int) -> str:
    """Lowercase hex without a prefix (the project's JSON integer format)."""
    if value < 0:
        raise WireError("negative integers have no wire form")
    return format(int(value), "x")


def from_hex(text: object, *, what: str = "integer") -> mpz:
    """Parse a hex string; a bare ``0x`` prefix is tolerated for interop."""
    if not isinstance(text, str) or not _HEX.match(text):
        raise WireError(f"{what} must be a hex string")
    return mpz(text[2:] if text.startswith("0x") else text, 16)


def _fields(obj: Mapping[str, Any], names: tuple[str, ...]) -> list[mpz]:
    missing = [name for name in names if name not in obj]
    if missing:
        raise WireError(f"missing field(s): {', '.join(missing)}")
    return [from_hex(obj[name], what=name) for name in names]


WireObject = PublicParams | PublicKey | SecretKey | MasterKey | Ciphertext | JobKey


def to_obj(value: WireObject) -> dict[str, Any]:
    """The JSON-ready dict for one of the single-object kinds."""
    if isinstance(value, PublicParams):
        return {"kind": "bcp-params", "n": to_hex(value.n), "g": to_hex(value.g)}
    if isinstance(value, PublicKey):
        return {**_params_fields(value.params), "kind": "bcp-public-key", "h": to_hex(value.h)}
    if isinstance(value, SecretKey):
        pk = value.public_key
        return {
            **_params_fields(pk.params),
            "kind": "bcp-secret-key",
            "h": to_hex(pk.h),
            "a": to_hex(value.a),
        }
    if isinstance(value, MasterKey):
        return {
            **_params_fields(value.params),
            "kind": "bcp-master-key",
            "p": to_hex(value.p),
            "q": to_hex(value.q),
        }
    if isinstance(value, Ciphertext):
        pk = value.public_key
        return {
            **_params_fields(pk.params),
            "kind": "bcp-ciphertext",
            "h": to_hex(pk.h),
            "A": to_hex(value.A),
            "B": to_hex(value.B),
        }
    if isinstance(value, JobKey):
        return {
            **_params_fields(value.params),
            "kind": "bcp-job-key",
            "hs": [to_hex(h) for h in value.hs],
        }
    raise TypeError(f"no wire form for {type(value).__name__}")


def _params_fields(params: PublicParams) -> dict[str, str]:
    return {"kind": "", "n": to_hex(params.n), "g": to_hex(params.g)}


def from_obj(obj: object) -> WireObject:
    """Parse and validate a decoded JSON object of one of the single-object kinds."""
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object")
    kind = obj.get("kind")
    n, g = _fields(obj, ("n", "g"))
    params = PublicParams(n, g)
    if kind == "bcp-params":
        return params
    if kind == "bcp-public-key":
        (h,) = _fields(obj, ("h",))
        return PublicKey(params, h)
    if kind == "bcp-secret-key":
        h, a = _fields(obj, ("h", "a"))
        return SecretKey(PublicKey(params, h), a)
    if kind == "bcp-master-key":
        p, q = _fields(obj, ("p", "q"))
        return MasterKey(params, p, q)
    if kind == "bcp-ciphertext":
        h, A, B = _fields(obj, ("h", "A", "B"))
        return Ciphertext(PublicKey(params, h), A, B)
    if kind == "bcp-job-key":
        hs = obj.get("hs")
        if not isinstance(hs, list) or not hs:
            raise WireError("hs must be a non-empty list")
        return JobKey(params, tuple(from_hex(h, what="hs") for h in hs))
    raise WireError(f"unknown kind {kind!r}")


def dumps(value: WireObject) -> str:
    """Serialise one object to its JSON text."""
    return json.dumps(to_obj(value), separators=(",", ":"))


def loads(text: str | bytes) -> WireObject:
    """Parse JSON text of one of the single-object kinds; ``ValueError`` if invalid."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"not valid JSON: {type(exc).__name__}") from None
    return from_obj(obj)


# ---------------------------------------------------------------------------
# Binary frames for encrypted vectors
# ---------------------------------------------------------------------------

FRAME_MAGIC = b"TDFL"
FRAME_VERSION = 1
RING_FRAME_KIND = "ring-vector"
_PREFIX = struct.Struct(">4sBI")
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class VectorFrame:
    """A parsed frame: its header and its raw payload (elements not yet validated)."""

    header: dict[str, Any]
    payload: bytes

    def vector(self, job_key: JobKey) -> EncryptedVector:
        """Check the header against ``job_key`` and validate every element."""
        header = self.header
        width = element_bytes(job_key.params)
        if header.get("element_bytes") != width:
            raise WireError(f"element_bytes must be {width}")
        width_field = header.get("width")
        if isinstance(width_field, bool) or width_field != job_key.width:
            raise WireError(f"width must be {job_key.width}")
        num_plaintexts = header.get("num_plaintexts")
        if (
            not isinstance(num_plaintexts, int)
            or isinstance(num_plaintexts, bool)
            or num_plaintexts < 1
        ):
            raise WireError("num_plaintexts must be a positive integer")
        layout = BlockLayout(num_plaintexts, job_key.width)
        if header.get("num_elements") != layout.num_elements:
            raise WireError(f"num_elements must be {layout.num_elements}")
        if len(self.payload) != layout.num_elements * width:
            raise WireError("payload length does not match the header")
        return EncryptedVector(job_key, layout, tuple(elements_from_bytes(self.payload, width)))


def encode_frame(vector: EncryptedVector, extra_header: Mapping[str, Any] | None = None) -> bytes:
    """Frame an encrypted vector with a JSON header (job, round, ... in ``extra_header``)."""
    return encode_payload_frame(
        vector.to_bytes(), vector.layout, element_bytes(vector.job_key.params), extra_header
    )


def encode_payload_frame(
    payload: bytes,
    layout: BlockLayout,
    element_width: int,
    extra_header: Mapping[str, Any] | None = None,
) -> bytes:
    """:func:`encode_frame` of a vector's payload bytes, without parsing them.

    For a sender that serves bytes it checked when it stored them (the PS re-serving
    uploads and ``Enc(W_t)`` to auditors): converting every element to an integer and back
    would cost more than the whole request otherwise.
    """
    if len(payload) != layout.num_elements * element_width:
        raise WireError("payload length does not match the layout")
    header = dict(extra_header or {})
    header.update(
        {
            "kind": "bcp-vector",
            "width": layout.width,
            "num_plaintexts": layout.num_plaintexts,
            "num_elements": layout.num_elements,
            "element_bytes": element_width,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    )
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, len(head)) + head + payload


def encode_ring_frame(
    payload: bytes, *, bits: int, num_elements: int, extra_header: Mapping[str, Any] | None = None
) -> bytes:
    """A frame of ring elements (the masked mode's ``y``, ``Z`` or mask sum): fixed-width
    little-endian ``bits``-bit words, ``num_elements`` of them."""
    if len(payload) * 8 != bits * num_elements:
        raise WireError("payload length does not match the ring layout")
    header = dict(extra_header or {})
    header.update(
        {
            "kind": RING_FRAME_KIND,
            "bits": bits,
            "num_elements": num_elements,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    )
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, len(head)) + head + payload


def decode_frame(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_header_bytes: int | None = MAX_HEADER_BYTES,
    kind: str = "bcp-vector",
) -> VectorFrame:
    """Split a frame into header and payload, checking magic, version, sizes and digest.

    Headers are capped at ``MAX_HEADER_BYTES`` unless the caller sizes the cap to the
    message (a release request carries its contributors' evidence:
    :func:`trapdoor.protocol.release_request.release_header_limit`) or decodes a frame it
    built itself (``None``).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"frame larger than {max_bytes} bytes")
    if len(data) < _PREFIX.size:
        raise WireError("frame too short")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise WireError("not a Trapdoor FL vector frame")
    if version != FRAME_VERSION:
        raise WireError(f"unsupported frame version {version}")
    too_long = max_header_bytes is not None and head_len > max_header_bytes
    if too_long or _PREFIX.size + head_len > len(data):
        raise WireError("frame header length out of range")
    try:
        header = json.loads(data[_PREFIX.size : _PREFIX.size + head_len])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise WireError("frame header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise WireError(f"frame header must be a {kind} object")
    payload = bytes(data[_PREFIX.size + head_len :])
    if header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise WireError("payload digest does not match the header")
    return VectorFrame(header, payload)
