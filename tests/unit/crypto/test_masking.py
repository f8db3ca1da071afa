"""Tests for trapdoor.crypto.masking: the ring, fixed-point ring encoding, seeds, mask keys, masks.

Known answers come from outside the module under test: RFC 7539's ChaCha20 test vector,
an RFC 5869 HKDF written here with ``hmac``, and sums recomputed with Python integers.
The BCP tests use the shipped 1024-bit demo parameters (loaded, not generated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import random
import warnings
from typing import Any

import gmpy2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey, PublicParams
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.encoding import EncodingError, EncodingOverflowError
from trapdoor.crypto.masking import (
    MASK_PURPOSE,
    MaskContext,
    RingSpec,
    add_into,
    choose_ring,
    decode_ring,
    derive_mask,
    draw_seed,
    encode_ring,
    encrypt_seed,
    expand_mask,
    mask_key,
    mask_vector,
    open_seed,
    open_seeds,
    ring_sum,
    seed_to_int,
    unmask,
    vector_from_bytes,
    vector_to_bytes,
)

HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIGEST = "ab" * 32
SPEC32 = RingSpec(bits=32, frac_bits=16)
SPEC64 = RingSpec(bits=64, frac_bits=40)
SPECS = st.sampled_from([SPEC32, SPEC64, RingSpec(32, 0), RingSpec(64, 20)])


def context(**changes: Any) -> MaskContext:
    base = MaskContext(
        job_id="job-1",
        job_terms_sha256=DIGEST,
        round=3,
        run=0,
        attempt=0,
        signer="alice",
        length=8,
        ring_bits=32,
    )
    return dataclasses.replace(base, **changes)


def ref_hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with an absent salt (HashLen zero bytes), written independently."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def random_ring_vector(rnd: random.Random, spec: RingSpec, d: int) -> np.ndarray:
    return np.array([rnd.randrange(spec.modulus) for _ in range(d)], dtype=spec.dtype)


@pytest.fixture(scope="module")
def demo() -> tuple[PublicParams, MasterKey]:
    master = load_demo_master_key(1024)
    return master.params, master


# --------------------------------------------------------------------------- RingSpec


def test_ring_spec_properties() -> None:
    assert SPEC32.modulus == 2**32 and SPEC32.dtype is np.uint32 and SPEC32.byte_width == 4
    assert SPEC64.modulus == 2**64 and SPEC64.dtype is np.uint64 and SPEC64.byte_width == 8
    assert SPEC32.wire_dtype == np.dtype("<u4") and SPEC64.wire_dtype == np.dtype("<u8")


@pytest.mark.parametrize("spec", [SPEC32, SPEC64, RingSpec(32, 0), RingSpec(64, 62)])
def test_ring_spec_json_round_trip(spec: RingSpec) -> None:
    obj = json.loads(json.dumps(spec.to_json()))
    assert obj == {"bits": spec.bits, "frac_bits": spec.frac_bits}
    assert RingSpec.from_json(obj) == spec


@pytest.mark.parametrize(
    ("bits", "frac_bits"),
    [(16, 8), (128, 8), (True, 0), ("32", 8), (32.0, 8), (32, -1), (32, 31), (64, 63), (32, True)],
)
def test_ring_spec_rejects_bad_fields(bits: Any, frac_bits: Any) -> None:
    with pytest.raises(EncodingError):
        RingSpec(bits=bits, frac_bits=frac_bits)


@pytest.mark.parametrize(
    "obj",
    [
        [32, 16],
        {"bits": 32},
        {"bits": 32, "frac_bits": 16, "extra": 1},
        {"bits": True, "frac_bits": 16},
        {"bits": 32, "frac_bits": 16.0},
        {"bits": "32", "frac_bits": 16},
        {"bits": 48, "frac_bits": 16},
    ],
)
def test_ring_spec_from_json_is_strict(obj: Any) -> None:
    with pytest.raises(EncodingError):
        RingSpec.from_json(obj)


# --------------------------------------------------------------------------- choose_ring


def ring_for(model: float, clip: float, f: int, k: int, t: int) -> RingSpec:
    return choose_ring(model_bound=model, clip_bound=clip, frac_bits=f, participants=k, rounds=t)


def test_choose_ring_typical_job_fits_32_bits() -> None:
    assert ring_for(4.0, 1.0, 20, 10, 100) == RingSpec(32, 20)
    assert ring_for(4.0, 1.0, 28, 10, 100) == RingSpec(32, 28)  # 5·2^28 + 1000 < 2^31
    assert ring_for(4.0, 1.0, 29, 10, 100) == RingSpec(64, 29)  # 5·2^29 >= 2^31


def test_choose_ring_threshold_at_2_31_goes_to_64() -> None:
    # (B + c)·2^0 + K·T = 2^31 - 100 + 100 = 2^31 exactly: not < 2^31.
    assert ring_for(2**30, 2**30 - 100, 0, 10, 10).bits == 64
    assert ring_for(2**30, 2**30 - 100, 0, 9, 11).bits == 32  # 2^31 - 1
    # With fractional bits: (0.5 + 0.25)·2^29 + T = 3·2^27 + T.
    assert ring_for(0.5, 0.25, 29, 1, 2**31 - 3 * 2**27).bits == 64
    assert ring_for(0.5, 0.25, 29, 1, 2**31 - 3 * 2**27 - 1).bits == 32


def test_choose_ring_decides_in_exact_arithmetic() -> None:
    # 1 - 2^-30 + (2^31 - 1) is below 2^31, but float64 rounds that sum up to 2^31.
    assert (0.5 + (0.5 - 2**-30)) + (2**31 - 1) == 2.0**31
    assert ring_for(0.5, 0.5 - 2**-30, 0, 2**31 - 1, 1).bits == 32


def test_choose_ring_threshold_at_2_63_raises() -> None:
    assert ring_for(2**61, 2**61, 0, 1, 1).bits == 64  # 2^62 + 1
    assert ring_for(2**62, 2**62 - 2**10, 0, 2**10 - 1, 1).bits == 64  # 2^63 - 1
    with pytest.raises(EncodingError, match="2\\^63"):
        ring_for(2**62, 2**62 - 2**10, 0, 2**10, 1)  # 2^63 exactly
    with pytest.raises(EncodingError):
        ring_for(1e30, 1.0, 20, 10, 10)


def test_choose_ring_respects_frac_bits_of_the_smaller_ring() -> None:
    # Tiny bounds fit below 2^31 numerically, but 31 fractional bits do not fit a 32-bit ring.
    assert ring_for(2**-10, 2**-10, 31, 1, 1) == RingSpec(64, 31)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_bound": float("nan")},
        {"model_bound": 0.0},
        {"clip_bound": -1.0},
        {"clip_bound": float("inf")},
        {"model_bound": True},
        {"frac_bits": -1},
        {"frac_bits": 63},
        {"participants": 0},
        {"rounds": 0},
        {"rounds": True},
        {"participants": 2.0},
    ],
)
def test_choose_ring_rejects_bad_inputs(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "model_bound": 1.0,
        "clip_bound": 1.0,
        "frac_bits": 16,
        "participants": 3,
        "rounds": 10,
    }
    with pytest.raises(EncodingError):
        choose_ring(**{**args, **kwargs})


# --------------------------------------------------------------------------- encode/decode


def test_encode_ring_known_answers() -> None:
    spec = RingSpec(32, 1)
    out = encode_ring(np.array([1.5, -1.5]), spec)
    assert out.dtype == np.uint32
    assert out.tolist() == [3, 2**32 - 3]
    assert encode_ring([1.5, -1.5], RingSpec(64, 1)).tolist() == [3, 2**64 - 3]
    # Ties to even, signed zero, integers in, the extremes of k-1 bits.
    assert encode_ring([0.5, 2.5, -0.5, -0.0, 0.0], RingSpec(32, 0)).tolist() == [0, 2, 0, 0, 0]
    assert encode_ring(np.array([7, -7], dtype=np.int64), RingSpec(32, 2)).tolist() == [
        28,
        2**32 - 28,
    ]
    assert encode_ring([2**31 - 1, -(2**31 - 1)], RingSpec(32, 0)).tolist() == [
        2**31 - 1,
        2**31 + 1,
    ]
    assert encode_ring([2.0**62, -(2.0**62)], RingSpec(64, 0)).tolist() == [2**62, 2**63 + 2**62]
    assert encode_ring(np.zeros(0), SPEC32).shape == (0,)


def test_decode_ring_known_answers() -> None:
    spec = RingSpec(32, 1)
    got = decode_ring(np.array([3, 2**32 - 3, 2**31, 2**31 - 1], dtype=np.uint32), spec)
    assert got.dtype == np.float64
    assert got.tolist() == [1.5, -1.5, -(2.0**30), (2**31 - 1) / 2]
    got64 = decode_ring(np.array([3, 2**64 - 3, 2**63], dtype=np.uint64), RingSpec(64, 1))
    assert got64.tolist() == [1.5, -1.5, -(2.0**62)]


@pytest.mark.parametrize(
    ("values", "spec"),
    [
        ([2.0**31], RingSpec(32, 0)),
        ([-(2.0**31)], RingSpec(32, 0)),  # needs 32 bits of magnitude: refused, not wrapped
        ([2.0**63], RingSpec(64, 0)),
        ([-(2.0**63)], RingSpec(64, 0)),
        ([0.0, 1.0, 2.0], RingSpec(32, 30)),  # 2·2^30 = 2^31
        ([1e308], RingSpec(64, 62)),  # ldexp overflows to inf
    ],
)
def test_encode_ring_refuses_values_that_do_not_fit(values: list[float], spec: RingSpec) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning leaks out either
        with pytest.raises(EncodingOverflowError, match="do not fit"):
            encode_ring(values, spec)


@pytest.mark.parametrize(
    "values",
    [[float("nan")], [1.0, float("inf")], [float("-inf")], [[1.0, 2.0]], ["a", "b"], 1.0],
)
def test_encode_ring_refuses_bad_input(values: Any) -> None:
    with pytest.raises(EncodingError):
        encode_ring(values, SPEC32)


@pytest.mark.parametrize(
    "encoded",
    [
        np.array([1, 2], dtype=np.uint64),
        np.array([1, 2], dtype=np.int32),
        np.array([[1, 2]], dtype=np.uint32),
        [1, 2],
    ],
)
def test_decode_ring_refuses_wrong_type(encoded: Any) -> None:
    with pytest.raises(EncodingError):
        decode_ring(encoded, SPEC32)


@HYP
@given(
    spec=SPECS,
    data=st.data(),
)
def test_encode_decode_round_trip_within_half_a_unit(spec: RingSpec, data: Any) -> None:
    f = spec.frac_bits
    bound = 2.0 ** (min(spec.bits, 53) - 2 - f)  # |x|·2^f < 2^52: exact in float64
    xs = data.draw(st.lists(st.floats(min_value=-bound, max_value=bound), min_size=0, max_size=40))
    x = np.array(xs, dtype=np.float64)
    encoded = encode_ring(x, spec)
    assert encoded.dtype == spec.dtype
    back = decode_ring(encoded, spec)
    assert np.all(np.abs(back - x) <= 2.0 ** -(f + 1))
    # A decoded value is on the grid, so it encodes to itself.
    assert np.array_equal(encode_ring(back, spec), encoded)


@HYP
@given(xs=st.lists(st.floats(min_value=-(2.0**62), max_value=2.0**62), max_size=40))
def test_round_trip_beyond_2_53_has_only_float64_relative_error(xs: list[float]) -> None:
    spec = RingSpec(64, 0)
    x = np.array(xs, dtype=np.float64)
    back = decode_ring(encode_ring(x, spec), spec)
    assert np.all(np.abs(back - x) <= 0.5 + np.abs(x) * 2.0**-52)


# --------------------------------------------------------------------------- ring arithmetic


@HYP
@given(
    spec=SPECS,
    k=st.integers(min_value=1, max_value=8),
    d=st.integers(min_value=0, max_value=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_masked_sum_minus_mask_sum_is_sum_of_encodings(
    spec: RingSpec, k: int, d: int, seed: int
) -> None:
    rnd = random.Random(seed)
    encodings = [random_ring_vector(rnd, spec, d) for _ in range(k)]
    masks = [random_ring_vector(rnd, spec, d) for _ in range(k)]
    uploads = [mask_vector(e, m) for e, m in zip(encodings, masks, strict=True)]
    total = ring_sum(uploads, spec, d)
    mask_sum = ring_sum(masks, spec, d)
    result = unmask(total, mask_sum)
    expected = [sum(int(e[j]) for e in encodings) % spec.modulus for j in range(d)]
    assert result.dtype == spec.dtype
    assert result.tolist() == expected
    # The PS's incremental aggregation gives the same total.
    running = np.zeros(d, dtype=spec.dtype)
    for y in uploads:
        assert add_into(running, y) is running
    assert np.array_equal(running, total)


@HYP
@given(
    spec=st.sampled_from([SPEC32, SPEC64]),
    k=st.integers(min_value=1, max_value=6),
    d=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_masked_aggregate_decodes_to_the_real_sum(
    spec: RingSpec, k: int, d: int, seed: int
) -> None:
    rnd = np.random.default_rng(seed)
    updates = [rnd.uniform(-1.0, 1.0, size=d) for _ in range(k)]
    masks = [
        rnd.integers(0, np.iinfo(spec.dtype).max, size=d, dtype=spec.dtype, endpoint=True)
        for _ in range(k)
    ]
    uploads = [mask_vector(encode_ring(u, spec), m) for u, m in zip(updates, masks, strict=True)]
    total = decode_ring(unmask(ring_sum(uploads, spec, d), ring_sum(masks, spec, d)), spec)
    assert np.all(np.abs(total - np.sum(updates, axis=0)) <= k * 2.0 ** -(spec.frac_bits + 1))


@pytest.mark.parametrize("spec", [SPEC32, SPEC64])
def test_wrap_around_is_exact(spec: RingSpec) -> None:
    top = spec.modulus - 1
    a = np.array([top, top, 5], dtype=spec.dtype)
    b = np.array([1, top, spec.modulus - 5], dtype=spec.dtype)
    assert mask_vector(a, b).tolist() == [0, top - 1, 0]
    assert unmask(
        np.array([0, 1], dtype=spec.dtype), np.array([1, top], dtype=spec.dtype)
    ).tolist() == [
        top,
        2,
    ]
    assert ring_sum([a, a, a], spec, 3).tolist() == [(3 * int(v)) % spec.modulus for v in a]
    # Signed view: -1 + -1 = -2, across the wrap.
    minus_one = encode_ring([-1.0], spec)
    assert decode_ring(ring_sum([minus_one, minus_one], spec, 1), spec).tolist() == [-2.0]


def test_ring_sum_of_nothing_is_zero() -> None:
    assert ring_sum([], SPEC64, 4).tolist() == [0, 0, 0, 0]
    assert ring_sum([], SPEC32, 4).dtype == np.uint32


def test_ring_ops_refuse_mismatched_operands() -> None:
    u32 = np.zeros(3, dtype=np.uint32)
    with pytest.raises(ValueError, match="uint32 but mask is uint64"):
        mask_vector(u32, np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="3 elements but"):
        add_into(u32, np.zeros(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="uint32 or uint64"):
        unmask(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        mask_vector(np.zeros((1, 3), dtype=np.uint32), np.zeros((1, 3), dtype=np.uint32))
    with pytest.raises(ValueError, match="1-D"):
        unmask([1, 2], [1, 2])  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="dtype uint64"):
        ring_sum([u32], SPEC64, 3)
    with pytest.raises(EncodingError, match="4 elements"):
        ring_sum([u32], SPEC32, 4)
    with pytest.raises(ValueError):
        ring_sum([], SPEC32, -1)
    assert u32.tolist() == [0, 0, 0]  # a refused add_into changed nothing


# --------------------------------------------------------------------------- wire


def test_vector_bytes_known_answers() -> None:
    v32 = np.array([1, 2**32 - 1, 0x01020304], dtype=np.uint32)
    assert vector_to_bytes(v32, SPEC32) == bytes.fromhex("01000000ffffffff04030201")
    v64 = np.array([0x0102030405060708], dtype=np.uint64)
    assert vector_to_bytes(v64, SPEC64) == bytes.fromhex("0807060504030201")
    back = vector_from_bytes(bytes.fromhex("01000000ffffffff04030201"), SPEC32, 3)
    assert back.tolist() == v32.tolist()
    assert back.dtype == np.uint32 and back.flags.writeable
    assert vector_to_bytes(np.zeros(0, dtype=np.uint64), SPEC64) == b""


@HYP
@given(spec=SPECS, d=st.integers(min_value=0, max_value=50), seed=st.integers(0, 2**32 - 1))
def test_vector_bytes_round_trip(spec: RingSpec, d: int, seed: int) -> None:
    v = random_ring_vector(random.Random(seed), spec, d)
    data = vector_to_bytes(v, spec)
    assert len(data) == d * spec.bits // 8
    assert np.array_equal(vector_from_bytes(data, spec, d), v)
    assert np.array_equal(vector_from_bytes(memoryview(data), spec, d), v)


def test_vector_from_bytes_checks_length() -> None:
    with pytest.raises(ValueError, match=r"expected 12 bytes \(3 elements of 32 bits\), got 11"):
        vector_from_bytes(bytes(11), SPEC32, 3)
    with pytest.raises(ValueError, match="expected 16 bytes"):
        vector_from_bytes(bytes(12), SPEC64, 2)  # whole 32-bit elements, wrong ring
    with pytest.raises(ValueError, match="expected 0 bytes"):
        vector_from_bytes(b"\x00", SPEC32, 0)
    with pytest.raises(ValueError):
        vector_from_bytes(b"", SPEC32, -1)
    with pytest.raises(EncodingError):
        vector_to_bytes(np.zeros(2, dtype=np.uint64), SPEC32)


# --------------------------------------------------------------------------- seeds


def test_draw_seed() -> None:
    a, b = draw_seed(), draw_seed()
    assert isinstance(a, bytes) and len(a) == 32 and a != b
    assert draw_seed(lambda n: bytes(range(n))) == bytes(range(32))
    with pytest.raises(ValueError):
        draw_seed(lambda n: bytes(n - 1))


def test_seed_to_int() -> None:
    assert seed_to_int(bytes(31) + b"\x01") == 1
    assert seed_to_int(b"\x01" + bytes(31)) == 2**248
    assert seed_to_int(b"\xff" * 32) == 2**256 - 1
    with pytest.raises(ValueError):
        seed_to_int(bytes(33))
    with pytest.raises(ValueError):
        seed_to_int("00" * 32)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mask keys


def test_context_info_is_canonical_json() -> None:
    ctx = context()
    expected = (
        '{"attempt":0,"job_id":"job-1","job_terms_sha256":"' + DIGEST + '","length":8,'
        '"purpose":"trapdoor/mask/v1","ring_bits":32,"round":3,"run":0,"signer":"alice"}'
    ).encode()
    assert ctx.info() == expected
    assert json.loads(ctx.info())["purpose"] == MASK_PURPOSE


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": ""},
        {"signer": ""},
        {"job_id": 7},
        {"job_terms_sha256": DIGEST.upper()},
        {"job_terms_sha256": DIGEST[:-1]},
        {"round": -1},
        {"round": True},
        {"attempt": 1.0},
        {"run": -1},
        {"run": False},
        {"length": 2**63},
        {"ring_bits": 16},
        {"ring_bits": True},
    ],
)
def test_context_rejects_bad_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        context(**changes)


def test_mask_key_matches_rfc5869_reference() -> None:
    n = 2**1023 + 12345  # only its byte length (128) matters
    ctx = context()
    value = 0xC0FFEE
    key = mask_key(value, n, ctx)
    assert len(key) == 32
    assert key == ref_hkdf_sha256(value.to_bytes(128, "big"), ctx.info(), 32)
    assert mask_key(value, n, ctx) == key  # deterministic
    assert mask_key(gmpy2.mpz(value), gmpy2.mpz(n), ctx) == key


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "job-2"},
        {"job_terms_sha256": "cd" * 32},
        {"round": 4},
        {"attempt": 1},
        {"run": 1},
        {"signer": "bob"},
        {"length": 9},
        {"ring_bits": 64},
    ],
)
def test_every_context_field_changes_the_key(changes: dict[str, Any]) -> None:
    n = 2**1023 + 1
    assert mask_key(42, n, context(**changes)) != mask_key(42, n, context())


def test_value_and_width_change_the_key() -> None:
    n = 2**1023 + 1
    ctx = context()
    assert mask_key(42, n, ctx) != mask_key(43, n, ctx)
    assert mask_key(0, n, ctx) != mask_key(n - 1, n, ctx)
    # The width is that of N, so the same value under a wider N is another key.
    assert mask_key(42, n, ctx) != mask_key(42, 2**1031 + 1, ctx)


# --------------------------------------------------------------------------- masks


def test_expand_mask_matches_chacha20_test_vector() -> None:
    # RFC 7539 A.1, test vector #1: key 0^32, nonce 0^12, counter 0.
    block = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    m32 = expand_mask(bytes(32), RingSpec(32, 16), 16)
    assert m32.tolist() == [int.from_bytes(block[i : i + 4], "little") for i in range(0, 64, 4)]
    m64 = expand_mask(bytes(32), RingSpec(64, 16), 8)
    assert m64.tolist() == [int.from_bytes(block[i : i + 8], "little") for i in range(0, 64, 8)]


@pytest.mark.parametrize("spec", [SPEC32, SPEC64])
def test_expand_mask_shape_determinism_and_key_separation(spec: RingSpec) -> None:
    key = hashlib.sha256(b"k1").digest()
    mask = expand_mask(key, spec, 1000)
    assert mask.shape == (1000,) and mask.dtype == spec.dtype and mask.flags.writeable
    assert np.array_equal(expand_mask(key, spec, 1000), mask)
    assert np.array_equal(expand_mask(key, spec, 10), mask[:10])  # one keystream, a prefix
    other = expand_mask(hashlib.sha256(b"k2").digest(), spec, 1000)
    assert np.count_nonzero(other == mask) < 5
    assert len(vector_to_bytes(mask, spec)) == 1000 * spec.bits // 8
    assert expand_mask(key, spec, 0).shape == (0,)


def test_expand_mask_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        expand_mask(bytes(16), SPEC32, 4)
    with pytest.raises(ValueError):
        expand_mask(bytes(32), SPEC32, -1)
    with pytest.raises(ValueError):
        expand_mask(bytes(32), SPEC32, 2**40)  # more than one ChaCha20 keystream


def test_derive_mask_binds_d_and_k_from_the_context() -> None:
    n = 2**1023 + 1
    ctx = context(length=5, ring_bits=64)
    mask = derive_mask(7, n, ctx, SPEC64)
    assert np.array_equal(mask, expand_mask(mask_key(7, n, ctx), SPEC64, 5))
    with pytest.raises(ValueError, match="64-bit ring"):
        derive_mask(7, n, ctx, SPEC32)


# --------------------------------------------------------------------------- with BCP


def test_seed_survives_bcp_and_both_sides_derive_the_same_key(
    demo: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = demo
    job_public, job_secret = params.keygen(rng)
    seed = draw_seed(rng.randbytes)
    c = encrypt_seed(job_public, seed, rng)
    value = open_seed(master, job_public, c)
    assert value == seed_to_int(seed) == job_secret.decrypt(c)
    ctx = context()
    assert mask_key(value, int(params.n), ctx) == mask_key(seed_to_int(seed), int(params.n), ctx)


def test_a_masked_round_end_to_end(
    demo: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = demo
    n = int(params.n)
    job_public, _ = params.keygen(rng)
    spec = choose_ring(model_bound=4.0, clip_bound=1.0, frac_bits=20, participants=3, rounds=5)
    d = 17
    npr = np.random.default_rng(7)
    uploads, ciphertexts, contexts, updates = [], [], [], []
    for signer in ("alice", "bob", "carol"):  # each contributor, on its own machine
        ctx = context(signer=signer, length=d, ring_bits=spec.bits)
        seed = draw_seed(rng.randbytes)
        update = npr.uniform(-1.0, 1.0, size=d)
        mask = derive_mask(seed_to_int(seed), n, ctx, spec)
        uploads.append(vector_to_bytes(mask_vector(encode_ring(update, spec), mask), spec))
        ciphertexts.append(encrypt_seed(job_public, seed, rng))
        contexts.append(ctx)
        updates.append(update)
    # The PS adds uploads it cannot read.
    z = ring_sum([vector_from_bytes(y, spec, d) for y in uploads], spec, d)
    # The KGC never sees an upload: it derives the mask sum from the seeds alone.
    mask_sum = ring_sum(
        [
            derive_mask(open_seed(master, job_public, c), n, ctx, spec)
            for c, ctx in zip(ciphertexts, contexts, strict=True)
        ],
        spec,
        d,
    )
    model = decode_ring(unmask(z, mask_sum), spec)
    assert np.all(np.abs(model - np.sum(updates, axis=0)) <= 3 * 2.0**-21)
    assert not np.allclose(decode_ring(z, spec), model)  # masked, the sum is noise


def test_tampered_seed_ciphertext_gives_another_key_and_no_error(
    demo: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = demo
    n, n2 = int(params.n), int(params.nsquare)
    job_public, _ = params.keygen(rng)
    seed = draw_seed(rng.randbytes)
    s = seed_to_int(seed)
    c = encrypt_seed(job_public, seed, rng)
    ctx = context()
    honest = mask_key(s, n, ctx)
    # δ that keep s + δ below 2^256, push it past 2^256 (not a seed any more), and past N.
    for delta in (1, 2**255, 2**256, n - s - 1, n - s, n - 1):
        tampered = Ciphertext(job_public, c.A, c.B * (1 + delta * n) % n2)
        value = open_seed(master, job_public, tampered)
        assert value == (s + delta) % n
        key = mask_key(value, n, ctx)
        assert len(key) == 32 and key != honest
        assert derive_mask(value, n, ctx, SPEC32).shape == (ctx.length,)


def test_open_seeds_batches_exactly_what_open_seed_does(
    demo: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = demo
    job_public, _ = params.keygen(rng)
    other_public, _ = params.keygen(rng)
    seeds = [draw_seed(rng.randbytes) for _ in range(4)]
    cts = [encrypt_seed(job_public, s, rng) for s in seeds]
    cts.append(encrypt_seed(other_public, seeds[0], rng))  # names another key
    values = open_seeds(master, job_public, cts)
    assert values[:4] == [seed_to_int(s) for s in seeds]
    assert values == [open_seed(master, job_public, c) for c in cts]
    assert open_seeds(master, job_public, []) == []


def test_open_seed_decrypts_under_the_job_key_not_the_named_one(
    demo: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = demo
    job_public, _ = params.keygen(rng)
    other_public, _ = params.keygen(rng)
    seed = draw_seed(rng.randbytes)
    foreign = encrypt_seed(other_public, seed, rng)
    assert master.decrypt(foreign) == seed_to_int(seed)  # what a naive KGC would return
    assert open_seed(master, job_public, foreign) != seed_to_int(seed)


def test_seed_functions_refuse_mismatched_or_small_parameters(
    demo: tuple[PublicParams, MasterKey],
    small_params: tuple[PublicParams, MasterKey],
    rng: random.Random,
) -> None:
    small, small_master = small_params
    small_public: PublicKey = small.keygen(rng)[0]
    with pytest.raises(ValueError, match="more than 256 bits"):
        encrypt_seed(small_public, draw_seed(rng.randbytes), rng)
    job_public, _ = demo[0].keygen(rng)
    c = encrypt_seed(job_public, draw_seed(rng.randbytes), rng)
    with pytest.raises(ValueError, match="different parameters"):
        open_seed(small_master, job_public, c)
