"""Tests for trapdoor.crypto.wire: the JSON kinds (DESIGN.md section 7) and vector frames."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey, PublicParams, SecretKey
from trapdoor.crypto.blocks import (
    EncryptedVector,
    JobKey,
    VectorEncryptor,
    decrypt_vector,
    element_bytes,
    generate_job_key,
)
from trapdoor.crypto.masking import RingSpec, vector_from_bytes
from trapdoor.crypto.wire import (
    FRAME_MAGIC,
    MAX_HEADER_BYTES,
    RING_FRAME_KIND,
    VectorFrame,
    WireError,
    decode_frame,
    dumps,
    encode_frame,
    encode_payload_frame,
    encode_ring_frame,
    from_hex,
    from_obj,
    loads,
    to_hex,
    to_obj,
)

Params = tuple[PublicParams, MasterKey]
HEX = re.compile(r"\A[0-9a-f]+\Z")
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hx(value: int) -> str:
    return format(int(value), "x")


@pytest.fixture(scope="module")
def objects(small_params: Params) -> dict[str, Any]:
    params, master = small_params
    rng = random.Random(77)
    pk, sk = params.keygen(rng)
    return {
        "params": params,
        "master": master,
        "pk": pk,
        "sk": sk,
        "ct": pk.encrypt(12345, rng),
        "job_key": generate_job_key(params, 3, rng),
    }


# --------------------------------------------------------------------------- JSON shapes


def test_hex_helpers() -> None:
    assert to_hex(0) == "0" and to_hex(255) == "ff" and to_hex(2**64) == "1" + "0" * 16
    with pytest.raises(WireError):
        to_hex(-1)
    assert from_hex("ff") == 255 and from_hex("FF") == 255 and from_hex("0xff") == 255
    for bad in ("", "0x", "g1", "-1", " ff", "ff ", "1_0", 255, None, ["ff"], "f" * 4097):
        with pytest.raises(WireError):
            from_hex(bad)


def test_params_shape(objects: dict[str, Any]) -> None:
    params = objects["params"]
    obj = json.loads(dumps(params))
    assert obj == {"kind": "bcp-params", "n": hx(params.n), "g": hx(params.g)}


def test_public_key_shape(objects: dict[str, Any]) -> None:
    params, pk = objects["params"], objects["pk"]
    obj = json.loads(dumps(pk))
    assert obj == {"kind": "bcp-public-key", "n": hx(params.n), "g": hx(params.g), "h": hx(pk.h)}


def test_secret_key_shape(objects: dict[str, Any]) -> None:
    params, sk = objects["params"], objects["sk"]
    obj = json.loads(dumps(sk))
    assert obj == {
        "kind": "bcp-secret-key",
        "n": hx(params.n),
        "g": hx(params.g),
        "h": hx(sk.public_key.h),
        "a": hx(sk.a),
    }


def test_master_key_shape(objects: dict[str, Any]) -> None:
    params, master = objects["params"], objects["master"]
    obj = json.loads(dumps(master))
    assert obj == {
        "kind": "bcp-master-key",
        "n": hx(params.n),
        "g": hx(params.g),
        "p": hx(master.p),
        "q": hx(master.q),
    }


def test_ciphertext_shape(objects: dict[str, Any]) -> None:
    params, ct = objects["params"], objects["ct"]
    obj = json.loads(dumps(ct))
    assert obj == {
        "kind": "bcp-ciphertext",
        "n": hx(params.n),
        "g": hx(params.g),
        "h": hx(ct.public_key.h),
        "A": hx(ct.A),
        "B": hx(ct.B),
    }


def test_job_key_shape(objects: dict[str, Any]) -> None:
    params, job_key = objects["params"], objects["job_key"]
    obj = json.loads(dumps(job_key))
    assert obj == {
        "kind": "bcp-job-key",
        "n": hx(params.n),
        "g": hx(params.g),
        "hs": [hx(h) for h in job_key.hs],
    }


def test_exact_text_for_tiny_params() -> None:
    """The exact bytes for the known-answer parameters (N = 59 * 83, g = 1234^2)."""
    params = PublicParams(4897, 1522756)
    pk = PublicKey(params, 13013966)
    ct = Ciphertext(pk, 227437, 19848492)
    assert dumps(params) == '{"kind":"bcp-params","n":"1321","g":"173c44"}'
    assert dumps(pk) == '{"kind":"bcp-public-key","n":"1321","g":"173c44","h":"c693ce"}'
    assert dumps(ct) == (
        '{"kind":"bcp-ciphertext","n":"1321","g":"173c44","h":"c693ce","A":"3786d","B":"12edd2c"}'
    )
    assert dumps(MasterKey(params, 59, 83)).endswith('"p":"3b","q":"53"}')


@pytest.mark.parametrize("name", ["params", "master", "pk", "sk", "ct", "job_key"])
def test_all_values_lowercase_hex(objects: dict[str, Any], name: str) -> None:
    obj = json.loads(dumps(objects[name]))
    assert obj["kind"].startswith("bcp-")
    for key, value in obj.items():
        if key == "kind":
            continue
        for item in value if isinstance(value, list) else [value]:
            assert isinstance(item, str) and HEX.match(item), (key, item)
            assert not item.startswith("0") or item == "0"


@pytest.mark.parametrize("name", ["params", "master", "pk", "sk", "ct", "job_key"])
def test_round_trip(objects: dict[str, Any], name: str) -> None:
    value = objects[name]
    text = dumps(value)
    back = loads(text)
    assert type(back) is type(value)
    assert back == value
    assert loads(text.encode()) == value
    assert from_obj(to_obj(value)) == value
    assert dumps(back) == text


def test_round_trip_decrypts(objects: dict[str, Any]) -> None:
    ct = loads(dumps(objects["ct"]))
    sk = loads(dumps(objects["sk"]))
    master = loads(dumps(objects["master"]))
    assert isinstance(ct, Ciphertext) and isinstance(sk, SecretKey)
    assert isinstance(master, MasterKey)
    assert sk.decrypt(ct) == master.decrypt(ct) == 12345


def test_to_obj_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        to_obj(5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JSON rejection


def _ct_obj(objects: dict[str, Any], **changes: Any) -> str:
    obj = json.loads(dumps(objects["ct"]))
    obj.update(changes)
    return json.dumps(obj)


def test_loads_rejects_bad_ciphertext_elements(objects: dict[str, Any]) -> None:
    params, master = objects["params"], objects["master"]
    bad_values = [0, params.nsquare, params.nsquare + 1, params.n, master.p, 3 * master.q]
    for field in ("A", "B", "h"):
        for bad in bad_values:
            with pytest.raises(ValueError):
                loads(_ct_obj(objects, **{field: hx(bad)}))
    with pytest.raises(ValueError):
        loads(_ct_obj(objects, h="1"))
    # h = 1 as a public key, and as a job key component.
    with pytest.raises(ValueError):
        loads(
            json.dumps({"kind": "bcp-public-key", "n": hx(params.n), "g": hx(params.g), "h": "1"})
        )
    job = json.loads(dumps(objects["job_key"]))
    for bad in ("1", "0", hx(params.nsquare), hx(master.p), job["hs"][0]):
        broken = dict(job, hs=[job["hs"][0], bad])
        with pytest.raises(ValueError):
            loads(json.dumps(broken))


def test_loads_rejects_bad_params_and_keys(objects: dict[str, Any]) -> None:
    params, master, sk = objects["params"], objects["master"], objects["sk"]
    base = {"n": hx(params.n), "g": hx(params.g)}
    for g in ("1", "0", hx(params.nsquare), hx(master.p)):
        with pytest.raises(ValueError):
            loads(json.dumps({"kind": "bcp-params", "n": base["n"], "g": g}))
    with pytest.raises(ValueError):
        loads(json.dumps({"kind": "bcp-params", "n": hx(params.n * 2), "g": base["g"]}))
    wrong_a = json.loads(dumps(sk))
    wrong_a["a"] = hx(sk.a + 1)
    with pytest.raises(ValueError):
        loads(json.dumps(wrong_a))
    wrong_p = json.loads(dumps(master))
    wrong_p["p"] = hx(master.p + 2)
    with pytest.raises(ValueError):
        loads(json.dumps(wrong_p))


def test_loads_rejects_trivial_master_key_factors(objects: dict[str, Any]) -> None:
    obj = json.loads(dumps(objects["master"]))
    n = obj["n"]
    for p, q in (("1", n), (n, "1")):
        with pytest.raises(ValueError):
            loads(json.dumps(dict(obj, p=p, q=q)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not json",
        "[]",
        "null",
        '"bcp-params"',
        "42",
        b"\xff\xfe\x00",
        '{"kind":"bcp-params"}',
    ],
)
def test_loads_rejects_malformed(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_loads_rejects_unknown_kind_missing_fields_and_non_hex(objects: dict[str, Any]) -> None:
    good = json.loads(dumps(objects["ct"]))
    for kind in ("bcp-vector", "BCP-CIPHERTEXT", "", None, 3, ["bcp-ciphertext"]):
        with pytest.raises(WireError):
            loads(json.dumps(dict(good, kind=kind)))
    without_kind = {k: v for k, v in good.items() if k != "kind"}
    with pytest.raises(WireError):
        loads(json.dumps(without_kind))
    for field in ("n", "g", "h", "A", "B"):
        with pytest.raises(WireError, match="missing"):
            loads(json.dumps({k: v for k, v in good.items() if k != field}))
    for field in ("n", "g", "h", "A", "B"):
        for bad in ("xyz", "", "-1", 12345, None, [good[field]], {"hex": good[field]}, "1.5"):
            with pytest.raises(WireError):
                loads(json.dumps(dict(good, **{field: bad})))
    job = json.loads(dumps(objects["job_key"]))
    for hs in ([], None, "ab", [12], ["zz"]):
        with pytest.raises(WireError):
            loads(json.dumps(dict(job, hs=hs)))


def test_loads_deeply_nested_raises_value_error() -> None:
    with pytest.raises(ValueError):
        loads("[" * 100_000)


# --------------------------------------------------------------------------- frames


@pytest.fixture(scope="module")
def framed(objects: dict[str, Any]) -> Iterator[tuple[JobKey, EncryptedVector]]:
    job_key = objects["job_key"]
    with VectorEncryptor(job_key) as enc:
        yield job_key, enc.encrypt([1, 2, 3, 4, 5, 6, 7], random.Random(5))


def build_frame(
    header: dict[str, Any],
    payload: bytes,
    *,
    magic: bytes = FRAME_MAGIC,
    version: int = 1,
    head: bytes | None = None,
    head_len: int | None = None,
) -> bytes:
    head = json.dumps(header).encode() if head is None else head
    length = len(head) if head_len is None else head_len
    return struct.pack(">4sBI", magic, version, length) + head + payload


def header_for(vector: EncryptedVector, **changes: Any) -> dict[str, Any]:
    payload = vector.to_bytes()
    header = {
        "kind": "bcp-vector",
        "width": vector.layout.width,
        "num_plaintexts": vector.layout.num_plaintexts,
        "num_elements": vector.layout.num_elements,
        "element_bytes": element_bytes(vector.job_key.params),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    header.update(changes)
    return header


def test_frame_round_trip(framed: tuple[JobKey, EncryptedVector], objects: dict[str, Any]) -> None:
    job_key, vector = framed
    data = encode_frame(vector, {"job": "job-7", "round": 3, "participant": "p1"})
    assert data[:4] == b"TDFL" and data[4] == 1
    frame = decode_frame(data)
    assert isinstance(frame, VectorFrame)
    assert frame.header["job"] == "job-7" and frame.header["round"] == 3
    assert frame.header["participant"] == "p1"
    assert frame.header == header_for(vector, job="job-7", round=3, participant="p1")
    assert frame.payload == vector.to_bytes()
    assert data.endswith(frame.payload)
    back = frame.vector(job_key)
    assert back == vector
    assert decrypt_vector(objects["master"], back) == [1, 2, 3, 4, 5, 6, 7]
    assert decode_frame(encode_frame(vector)).vector(job_key) == vector
    assert decode_frame(data, max_bytes=len(data)).vector(job_key) == vector
    # The frame's own fields win over extra header fields of the same name.
    spoofed = decode_frame(encode_frame(vector, {"kind": "x", "width": 99, "sha256": "0"}))
    assert spoofed.vector(job_key) == vector


def test_hand_built_frame_decodes(framed: tuple[JobKey, EncryptedVector]) -> None:
    job_key, vector = framed
    frame = decode_frame(build_frame(header_for(vector), vector.to_bytes()))
    assert frame.vector(job_key) == vector


def test_frame_rejects_bad_prefix(framed: tuple[JobKey, EncryptedVector]) -> None:
    _, vector = framed
    payload = vector.to_bytes()
    header = header_for(vector)
    for data in (
        build_frame(header, payload, magic=b"TDFM"),
        build_frame(header, payload, magic=b"\x00\x00\x00\x00"),
        build_frame(header, payload, version=0),
        build_frame(header, payload, version=2),
        build_frame(header, payload, version=255),
        b"",
        b"TDFL",
        b"TDFL\x01\x00\x00",
    ):
        with pytest.raises(WireError):
            decode_frame(data)
    data = encode_frame(vector)
    with pytest.raises(WireError):
        decode_frame(data, max_bytes=len(data) - 1)


def test_frame_rejects_header_length_out_of_range(framed: tuple[JobKey, EncryptedVector]) -> None:
    _, vector = framed
    payload = vector.to_bytes()
    header = header_for(vector)
    head_size = len(json.dumps(header).encode())
    total = head_size + len(payload)
    for head_len in (total + 1, 2**32 - 1, MAX_HEADER_BYTES + 1):
        with pytest.raises(WireError, match="header length"):
            decode_frame(build_frame(header, payload, head_len=head_len))
    # A real header just over the limit.
    big = dict(header, pad="x" * MAX_HEADER_BYTES)
    big_head = json.dumps(big).encode()
    assert len(big_head) > MAX_HEADER_BYTES
    with pytest.raises(WireError, match="header length"):
        decode_frame(build_frame(big, payload, head=big_head))
    # Header lengths that split the JSON: invalid JSON.
    for head_len in (0, 1, head_size - 1, head_size + 1):
        with pytest.raises(WireError):
            decode_frame(build_frame(header, payload, head_len=head_len))


def test_frame_rejects_bad_header_json(framed: tuple[JobKey, EncryptedVector]) -> None:
    _, vector = framed
    payload = vector.to_bytes()
    heads = (b"{", b"\xff\xfe", b"[]", b"null", b'"bcp-vector"', b'{"kind":"bcp-scalar"}', b"{}")
    for head in heads:
        with pytest.raises(WireError):
            decode_frame(build_frame({}, payload, head=head))


def test_frame_rejects_truncated_or_altered_payload(framed: tuple[JobKey, EncryptedVector]) -> None:
    job_key, vector = framed
    data = encode_frame(vector, {"round": 1})
    for cut in (1, 2, element_bytes(job_key.params), len(vector.to_bytes())):
        with pytest.raises(WireError, match="digest"):
            decode_frame(data[:-cut])
    with pytest.raises(WireError, match="digest"):
        decode_frame(data + b"\x00")
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(WireError, match="digest"):
        decode_frame(bytes(flipped))
    # A truncated payload with a matching digest is caught against the layout.
    short = vector.to_bytes()[: -element_bytes(job_key.params)]
    header = header_for(vector, sha256=hashlib.sha256(short).hexdigest())
    frame = decode_frame(build_frame(header, short))
    with pytest.raises(WireError, match="payload length"):
        frame.vector(job_key)


@pytest.mark.parametrize(
    "changes",
    [
        {"element_bytes": 1},
        {"element_bytes": "64"},
        {"element_bytes": None},
        {"width": 2},
        {"width": 4},
        {"width": "3"},
        {"num_elements": 9},
        {"num_elements": 11},
        {"num_elements": None},
        {"num_plaintexts": 0},
        {"num_plaintexts": -7},
        {"num_plaintexts": "7"},
        {"num_plaintexts": 7.0},
        {"num_plaintexts": True},
        {"num_plaintexts": 8},
        {"num_plaintexts": 6},
    ],
)
def test_frame_rejects_header_not_matching_job_key(
    framed: tuple[JobKey, EncryptedVector], changes: dict[str, Any]
) -> None:
    job_key, vector = framed
    frame = decode_frame(build_frame(header_for(vector, **changes), vector.to_bytes()))
    with pytest.raises(WireError):
        frame.vector(job_key)


def test_frame_rejects_other_job_key(
    framed: tuple[JobKey, EncryptedVector], objects: dict[str, Any], params_1024: Params
) -> None:
    job_key, vector = framed
    frame = decode_frame(encode_frame(vector))
    narrower = JobKey(job_key.params, job_key.hs[:2])
    with pytest.raises(WireError, match="width"):
        frame.vector(narrower)
    bigger_params, _ = params_1024
    with pytest.raises(WireError, match="element_bytes"):
        frame.vector(generate_job_key(bigger_params, 3, random.Random(0)))


def test_frame_rejects_invalid_elements(
    framed: tuple[JobKey, EncryptedVector], objects: dict[str, Any]
) -> None:
    job_key, vector = framed
    width = element_bytes(job_key.params)
    master = objects["master"]
    for bad in (0, int(job_key.params.nsquare), int(master.p), 256**width - 1):
        payload = bad.to_bytes(width, "big") + vector.to_bytes()[width:]
        frame = decode_frame(
            build_frame(header_for(vector, sha256=hashlib.sha256(payload).hexdigest()), payload)
        )
        with pytest.raises(ValueError):
            frame.vector(job_key)


def test_frame_deeply_nested_header_raises_value_error() -> None:
    head = b"[" * 50_000
    with pytest.raises(ValueError):
        decode_frame(build_frame({}, b"", head=head))


def _check_decode(data: bytes, job_key: JobKey) -> None:
    try:
        frame = decode_frame(data)
    except ValueError:
        return
    assert isinstance(frame, VectorFrame)
    with contextlib.suppress(ValueError):
        frame.vector(job_key)


@HYP
@given(data=st.binary(max_size=400))
def test_decode_arbitrary_bytes_only_raises_value_error(
    framed: tuple[JobKey, EncryptedVector], data: bytes
) -> None:
    job_key, _ = framed
    _check_decode(data, job_key)
    _check_decode(FRAME_MAGIC + b"\x01" + data, job_key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(
        st.sampled_from(
            ["kind", "width", "num_plaintexts", "num_elements", "element_bytes", "sha256", "x"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=False),
            st.text(max_size=8),
            st.just("bcp-vector"),
            st.lists(st.integers(), max_size=3),
        ),
    ),
    payload=st.binary(max_size=200),
    keep_digest=st.booleans(),
)
def test_decode_structured_garbage_only_raises_value_error(
    framed: tuple[JobKey, EncryptedVector],
    header: dict[str, Any],
    payload: bytes,
    keep_digest: bool,
) -> None:
    job_key, _ = framed
    if keep_digest:
        header = dict(header, kind="bcp-vector", sha256=hashlib.sha256(payload).hexdigest())
    _check_decode(build_frame(header, payload), job_key)


@HYP
@given(
    position=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=10_000),
)
def test_decode_mutated_frames_only_raises_value_error(
    framed: tuple[JobKey, EncryptedVector], position: int, byte: int, cut: int
) -> None:
    job_key, vector = framed
    data = bytearray(encode_frame(vector, {"round": 2}))
    data[position % len(data)] = byte
    _check_decode(bytes(data[: len(data) - cut % len(data)]), job_key)
    _check_decode(bytes(data), job_key)


def test_a_payload_framed_as_stored_is_the_vector_framed(
    framed: tuple[JobKey, EncryptedVector], objects: dict[str, Any]
) -> None:
    """The PS re-serves stored uploads without parsing them: the same bytes either way."""
    _, vector = framed
    width = element_bytes(vector.job_key.params)
    header = {"job_id": "job-7", "round": 3}
    assert encode_payload_frame(vector.to_bytes(), vector.layout, width, header) == encode_frame(
        vector, header
    )
    with pytest.raises(WireError):
        encode_payload_frame(vector.to_bytes()[:-1], vector.layout, width)


# --------------------------------------------------------------------------- ring frames


def _ring_payload(bits: int, values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}{'I' if bits == 32 else 'Q'}", *values)


RING_VALUES = [0, 1, 2**31, 2**32 - 1, 123_456_789]


def test_ring_frame_round_trip() -> None:
    payload = _ring_payload(32, RING_VALUES)
    data = encode_ring_frame(
        payload, bits=32, num_elements=5, extra_header={"job_id": "j", "round": 2}
    )
    assert data[:4] == b"TDFL" and data[4] == 1 and data.endswith(payload)
    frame = decode_frame(data, kind=RING_FRAME_KIND)
    assert RING_FRAME_KIND == "ring-vector"
    assert frame.header == {
        "kind": "ring-vector",
        "bits": 32,
        "num_elements": 5,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "job_id": "j",
        "round": 2,
    }
    assert frame.payload == payload
    assert list(struct.unpack("<5I", frame.payload)) == RING_VALUES
    # The exact bytes: prefix, sorted compact header, payload.
    head = json.dumps(frame.header, separators=(",", ":"), sort_keys=True).encode()
    assert data == struct.pack(">4sBI", b"TDFL", 1, len(head)) + head + payload
    # The frame's own fields win over extra header fields of the same name.
    spoofed = decode_frame(
        encode_ring_frame(
            payload, bits=32, num_elements=5, extra_header={"kind": "bcp-vector", "bits": 64}
        ),
        kind="ring-vector",
    )
    assert (spoofed.header["kind"], spoofed.header["bits"]) == ("ring-vector", 32)
    # An empty vector and a 64-bit one frame too.
    assert (
        decode_frame(encode_ring_frame(b"", bits=64, num_elements=0), kind="ring-vector").payload
        == b""
    )
    wide = _ring_payload(64, [2**64 - 1, 5])
    frame64 = decode_frame(encode_ring_frame(wide, bits=64, num_elements=2), kind="ring-vector")
    assert frame64.payload == wide and frame64.header["bits"] == 64


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from([32, 64]),
    data=st.data(),
)
def test_ring_frame_round_trip_property(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(min_value=0, max_value=2**bits - 1), max_size=40))
    payload = _ring_payload(bits, values)
    frame = decode_frame(
        encode_ring_frame(payload, bits=bits, num_elements=len(values)), kind="ring-vector"
    )
    assert frame.payload == payload
    assert frame.header["num_elements"] == len(values) and frame.header["bits"] == bits


def test_ring_and_bcp_frames_do_not_cross(framed: tuple[JobKey, EncryptedVector]) -> None:
    _, vector = framed
    ring = encode_ring_frame(_ring_payload(32, RING_VALUES), bits=32, num_elements=5)
    with pytest.raises(WireError, match="bcp-vector"):
        decode_frame(ring)
    with pytest.raises(WireError, match="bcp-vector"):
        decode_frame(ring, kind="bcp-vector")
    with pytest.raises(WireError, match="ring-vector"):
        decode_frame(encode_frame(vector), kind="ring-vector")
    with pytest.raises(WireError):
        decode_frame(ring, kind="other")


@pytest.mark.parametrize(
    ("bits", "num_elements", "size"),
    [(32, 5, 19), (32, 5, 21), (32, 5, 40), (64, 5, 20), (64, 2, 15), (32, 0, 4), (32, 1, 0)],
)
def test_ring_frame_refuses_a_payload_of_the_wrong_length(
    bits: int, num_elements: int, size: int
) -> None:
    with pytest.raises(WireError, match="payload length"):
        encode_ring_frame(bytes(size), bits=bits, num_elements=num_elements)


def test_ring_frame_refuses_a_payload_not_matching_its_digest() -> None:
    payload = _ring_payload(32, RING_VALUES)
    data = encode_ring_frame(payload, bits=32, num_elements=5, extra_header={"round": 1})
    for cut in (1, 4, len(payload)):
        with pytest.raises(WireError, match="digest"):
            decode_frame(data[:-cut], kind="ring-vector")
    with pytest.raises(WireError, match="digest"):
        decode_frame(data + b"\x00\x00\x00\x00", kind="ring-vector")
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    with pytest.raises(WireError, match="digest"):
        decode_frame(bytes(flipped), kind="ring-vector")
    header = json.loads(data[9 : len(data) - len(payload)])
    for digest in ("00" * 32, hashlib.sha256(payload).hexdigest().upper(), None):
        with pytest.raises(WireError, match="digest"):
            decode_frame(build_frame({**header, "sha256": digest}, payload), kind="ring-vector")


def test_ring_frame_length_is_checked_against_the_layout_by_the_reader() -> None:
    """``decode_frame`` checks the digest only; a payload whose length disagrees with its
    header's ``bits·num_elements`` is refused when read as the job's ring vector."""
    short = _ring_payload(32, RING_VALUES[:4])
    header = {
        "kind": "ring-vector",
        "bits": 32,
        "num_elements": 5,
        "sha256": hashlib.sha256(short).hexdigest(),
    }
    frame = decode_frame(build_frame(header, short), kind="ring-vector")
    with pytest.raises(ValueError, match="expected 20 bytes"):
        vector_from_bytes(frame.payload, RingSpec(bits=32, frac_bits=20), 5)
    assert (
        vector_from_bytes(frame.payload, RingSpec(bits=32, frac_bits=20), 4).tolist()
        == (RING_VALUES[:4])
    )
