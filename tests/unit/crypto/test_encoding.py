"""Tests for trapdoor.crypto.encoding: fixed point, slot packing and overflow detection."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

import gmpy2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.encoding import (
    ClipReport,
    EncodingError,
    EncodingOverflowError,
    PackingLayout,
    decode_fixed,
    decode_vector,
    encode_fixed,
    encode_vector,
    pack,
    unpack,
)

HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

N64 = 2**64 - 59  # largest 64-bit prime; any odd modulus would do
N20 = 1_000_003  # 20-bit modulus


# --------------------------------------------------------------------------- helpers


def ref_pack(values: Sequence[int], layout: PackingLayout) -> list[int]:
    """Slow, obviously-correct reference: sum_j v_j * 2^(s*j) mod N per plaintext."""
    s, k, n = layout.slot_bits, layout.slots_per_plaintext, layout.modulus
    out = []
    for start in range(0, layout.num_plaintexts * k, k):
        chunk = values[start : start + k]
        out.append(sum(int(v) << (s * j) for j, v in enumerate(chunk)) % n)
    return out


def add_mod(vectors: Sequence[Sequence[int]], n: int) -> list[int]:
    """What homomorphic addition does to plaintexts: slot-free addition mod N."""
    return [sum(int(p) for p in col) % n for col in zip(*vectors, strict=True)]


@st.composite
def layouts(draw: st.DrawFn, max_length: int = 250) -> PackingLayout:
    """Random valid layouts, often with int_bound at its largest allowed value."""
    s = draw(st.integers(8, 40))
    f = draw(st.integers(0, s - 4))
    limit = 1 << (s - 2)
    max_terms = draw(st.integers(1, min(limit // 4, 4096)))
    top = limit - 1 - max_terms  # largest allowed ceil(slot_bound * 2^f)
    c = draw(st.one_of(st.just(top), st.integers(1, top)))
    bits = draw(st.integers(s + 2, 300))
    n = draw(st.integers(1 << (bits - 1), (1 << bits) - 1)) | 1
    length = draw(st.integers(0, max_length))
    return PackingLayout(
        modulus=n,
        length=length,
        frac_bits=f,
        slot_bits=s,
        slot_bound=math.ldexp(c, -f),
        max_terms=max_terms,
    )


@st.composite
def layout_and_ints(draw: st.DrawFn, bound_div: int = 1) -> tuple[PackingLayout, np.ndarray]:
    """A layout and fixed-point ints within ±int_bound // bound_div, edges included."""
    layout = draw(layouts())
    b = layout.int_bound // bound_div
    elem = st.one_of(st.sampled_from([b, -b, 0]), st.integers(-b, b))
    vals = draw(st.lists(elem, min_size=layout.length, max_size=layout.length))
    return layout, np.array(vals, dtype=np.int64)


# --------------------------------------------------------------------------- fixed point


def test_encode_fixed_known_answer() -> None:
    v, rep = encode_fixed(np.array([1.5, -0.25, 3.0, 0.125, -2.0]), frac_bits=2, clip_bound=2.0)
    assert v.dtype == np.int64
    # 0.125 * 4 = 0.5 rounds half to even -> 0; 3.0 is clipped to 2.0 -> 8.
    assert v.tolist() == [6, -1, 8, 0, -8]
    assert rep == ClipReport(clipped=1, max_abs=3.0, clip_bound=2.0)


def test_clip_is_reported() -> None:
    x = np.array([0.5, -3.0, 2.0, 10.0, -1.0])
    v, rep = encode_fixed(x, frac_bits=0, clip_bound=2.0)
    assert rep.clipped == 2  # -3 and 10; exactly 2.0 is not clipped
    assert rep.max_abs == 10.0
    assert rep.clip_bound == 2.0
    assert v.tolist() == [0, -2, 2, 2, -1]


def test_no_clip_reports_zero() -> None:
    _, rep = encode_fixed(np.array([0.1, -0.2]), frac_bits=20, clip_bound=1.0)
    assert rep.clipped == 0
    assert rep.max_abs == pytest.approx(0.2)


def test_encode_fixed_empty() -> None:
    v, rep = encode_fixed(np.zeros(0), frac_bits=20, clip_bound=1.0)
    assert v.shape == (0,)
    assert rep == ClipReport(clipped=0, max_abs=0.0, clip_bound=1.0)


@HYP
@given(
    f=st.integers(0, 30),
    bound=st.floats(1e-3, 1e6),
    data=st.data(),
)
def test_fixed_point_round_trip(f: int, bound: float, data: st.DataObject) -> None:
    xs = data.draw(st.lists(st.floats(-bound, bound), max_size=50))
    x = np.array(xs, dtype=np.float64)
    v, rep = encode_fixed(x, f, bound)
    assert rep.clipped == 0
    back = decode_fixed(v, f)
    assert back.dtype == np.float64
    assert np.all(np.abs(back - x) <= 2.0 ** -(f + 1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_fixed_rejects_non_finite(bad: float) -> None:
    with pytest.raises(EncodingError, match="NaN or infinity"):
        encode_fixed(np.array([0.0, bad]), 20, 1.0)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_encode_fixed_rejects_bad_clip_bound(bound: float) -> None:
    with pytest.raises(EncodingError, match="clip_bound"):
        encode_fixed(np.array([0.0]), 20, bound)


def test_encode_fixed_rejects_int64_overflow_and_bad_shape() -> None:
    with pytest.raises(EncodingError, match="int64"):
        encode_fixed(np.array([1.0]), 60, 8.0)
    with pytest.raises(EncodingError, match="1-D"):
        encode_fixed(np.zeros((2, 2)), 20, 1.0)
    with pytest.raises(EncodingError, match="integers"):
        decode_fixed(np.array([0.5]), 20)


# --------------------------------------------------------------------------- layout


def test_layout_derived_properties() -> None:
    n2048 = (1 << 2047) | 1
    lay = PackingLayout(modulus=n2048, length=109_386)
    assert lay.slots_per_plaintext == 2046 // 29 == 70
    assert lay.num_plaintexts == math.ceil(109_386 / 70) == 1563
    assert lay.int_bound == 64 * 2**20 + 1024
    assert lay.int_bound < 2**27


def test_layout_accepts_mpz_and_stores_int() -> None:
    lay = PackingLayout(modulus=gmpy2.mpz(N64), length=4, slot_bits=16, frac_bits=4)
    assert type(lay.modulus) is int
    assert lay.modulus == N64


@pytest.mark.parametrize("slot_bits", [7, 63, 0, -1])
def test_layout_rejects_slot_bits_out_of_range(slot_bits: int) -> None:
    with pytest.raises(EncodingError, match="slot_bits"):
        PackingLayout(modulus=N64, length=1, slot_bits=slot_bits)


def test_layout_guard_bit_boundary() -> None:
    # s=16: need ceil(slot_bound * 2^f) + max_terms < 2^14 = 16384.
    ok = PackingLayout(
        modulus=N64, length=1, frac_bits=0, slot_bits=16, slot_bound=16383 - 10, max_terms=10
    )
    assert ok.int_bound == 16383
    with pytest.raises(EncodingError, match="increase slot_bits"):
        PackingLayout(
            modulus=N64, length=1, frac_bits=0, slot_bits=16, slot_bound=16384 - 10, max_terms=10
        )
    # Non-integral slot_bound rounds up: 16372.5 -> 16373, +10 = 16383 still fine.
    assert (
        PackingLayout(
            modulus=N64, length=1, frac_bits=0, slot_bits=16, slot_bound=16372.5, max_terms=10
        ).int_bound
        == 16383
    )
    with pytest.raises(EncodingError, match="slot_bound"):
        PackingLayout(
            modulus=N64, length=1, frac_bits=0, slot_bits=16, slot_bound=16373.5, max_terms=10
        )


def test_default_layout_params_need_wide_slots() -> None:
    with pytest.raises(EncodingError, match=r"2\^\(slot_bits-2\)"):
        PackingLayout(modulus=N64, length=1, slot_bits=28)  # 2^26 + 1024 >= 2^26


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modulus": 1},
        {"modulus": 2.0**64},
        {"modulus": True},
        {"length": -1},
        {"length": 1.5},
        {"frac_bits": -1},
        {"slot_bound": 0.0},
        {"slot_bound": math.inf},
        {"slot_bound": "64"},
        {"max_terms": 0},
        {"modulus": (1 << 16) + 1, "slot_bits": 16},  # 17 bits: no room for one slot
    ],
)
def test_layout_rejects_bad_params(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "modulus": N64,
        "length": 3,
        "frac_bits": 4,
        "slot_bits": 16,
        "slot_bound": 100.0,
        "max_terms": 1,
    }
    base.update(kwargs)
    with pytest.raises(EncodingError):
        PackingLayout(**base)  # type: ignore[arg-type]


@HYP
@given(layout=layouts())
def test_layout_json_round_trip(layout: PackingLayout) -> None:
    d = json.loads(json.dumps(layout.to_json()))
    assert d["modulus"] == format(layout.modulus, "x")
    assert not d["modulus"].startswith("0x")
    assert isinstance(d["slot_bits"], int)
    again = PackingLayout.from_json(d)
    assert again == layout
    assert again.int_bound == layout.int_bound


def test_layout_json_known_answer() -> None:
    lay = PackingLayout(
        modulus=0xABCDEF01, length=5, frac_bits=3, slot_bits=8, slot_bound=1.5, max_terms=2
    )
    assert lay.to_json() == {
        "modulus": "abcdef01",
        "length": 5,
        "frac_bits": 3,
        "slot_bits": 8,
        "slot_bound": 1.5,
        "max_terms": 2,
    }
    # A JSON integer for slot_bound is fine too.
    d = {**lay.to_json(), "slot_bound": 2}
    assert PackingLayout.from_json(d).slot_bound == 2.0


@pytest.mark.parametrize(
    "patch",
    [
        {"modulus": "0xabcdef01"},
        {"modulus": "ABCDEF01"},
        {"modulus": "-abc"},
        {"modulus": 2882400001},
        {"length": "5"},
        {"slot_bits": 8.0},
        {"extra": 1},
    ],
)
def test_layout_from_json_rejects_malformed(patch: dict[str, object]) -> None:
    d: dict[str, object] = {
        "modulus": "abcdef01",
        "length": 5,
        "frac_bits": 3,
        "slot_bits": 8,
        "slot_bound": 1.5,
        "max_terms": 2,
    }
    d.update(patch)
    with pytest.raises(EncodingError):
        PackingLayout.from_json(d)


def test_layout_from_json_rejects_missing_key() -> None:
    d = PackingLayout(modulus=N64, length=1, slot_bits=16, frac_bits=4).to_json()
    del d["max_terms"]
    with pytest.raises(EncodingError, match="max_terms"):
        PackingLayout.from_json(d)


# --------------------------------------------------------------------------- packing: KATs


def test_pack_known_answer_20_bit() -> None:
    # 20-bit N, s=8 -> (20-2)//8 = 2 slots per plaintext; 3 values -> 2 plaintexts.
    lay = PackingLayout(modulus=N20, length=3, frac_bits=0, slot_bits=8, slot_bound=10, max_terms=5)
    assert (lay.slots_per_plaintext, lay.num_plaintexts, lay.int_bound) == (2, 2, 15)
    pts = pack(np.array([3, -2, 5]), lay)
    # 3 + (-2)*256 = -509 = N - 509 (mod N); second plaintext holds 5 and a zero pad slot.
    assert pts == [999_494, 5]
    assert all(isinstance(p, type(gmpy2.mpz(0))) for p in pts)
    assert unpack(pts, lay).tolist() == [3, -2, 5]
    assert unpack([999_494, 5], lay).dtype == np.int64


def test_encode_vector_known_answer_64_bit() -> None:
    # 64-bit N, s=16 -> 62//16 = 3 slots; f=4 so x -> 16x.
    lay = PackingLayout(
        modulus=N64, length=4, frac_bits=4, slot_bits=16, slot_bound=100.0, max_terms=1
    )
    assert (lay.slots_per_plaintext, lay.num_plaintexts, lay.int_bound) == (3, 2, 1601)
    pts, rep = encode_vector(np.array([1.0, -0.5, 2.0625, -3.0]), lay, clip_bound=50.0)
    # fixed point [16, -8, 33, -48]: 16 - 8*2^16 + 33*2^32, and -48 mod N.
    assert pts == [141_733_396_496, 18_446_744_073_709_551_509]
    assert rep == ClipReport(clipped=0, max_abs=3.0, clip_bound=50.0)
    assert decode_vector(pts, lay).tolist() == [1.0, -0.5, 2.0625, -3.0]


def test_encode_vector_scale_known_answer() -> None:
    lay = PackingLayout(
        modulus=N64, length=3, frac_bits=4, slot_bits=16, slot_bound=100.0, max_terms=1
    )
    pts, rep = encode_vector(np.array([1.0, -9.0, 0.25]), lay, clip_bound=4.0, scale=2.5)
    # clip first (-9 -> -4), then scale: [2.5, -10, 0.625] -> [40, -160, 10].
    assert pts == [40 - 160 * 2**16 + 10 * 2**32]
    assert rep.clipped == 1 and rep.max_abs == 9.0
    assert decode_vector(pts, lay).tolist() == [2.5, -10.0, 0.625]


# --------------------------------------------------------------------------- packing: properties


@HYP
@given(li=layout_and_ints())
def test_pack_matches_reference_and_round_trips(li: tuple[PackingLayout, np.ndarray]) -> None:
    layout, vals = li
    pts = pack(vals, layout)
    assert len(pts) == layout.num_plaintexts
    assert all(0 <= p < layout.modulus for p in pts)
    assert [int(p) for p in pts] == ref_pack(vals.tolist(), layout)
    back = unpack(pts, layout)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, vals)


@HYP
@given(data=st.data(), k=st.integers(2, 6))
def test_sum_of_packed_vectors_decodes_to_slotwise_sum(data: st.DataObject, k: int) -> None:
    layout = data.draw(layouts(max_length=80))
    b = layout.int_bound // k
    elem = st.one_of(st.sampled_from([b, -b]), st.integers(-b, b))
    vecs = [
        np.array(
            data.draw(st.lists(elem, min_size=layout.length, max_size=layout.length)),
            dtype=np.int64,
        )
        for _ in range(k)
    ]
    total = add_mod([pack(v, layout) for v in vecs], layout.modulus)
    np.testing.assert_array_equal(unpack(total, layout), np.sum(vecs, axis=0))


def test_sum_with_mixed_signs_small_modulus() -> None:
    lay = PackingLayout(
        modulus=N64, length=7, frac_bits=0, slot_bits=16, slot_bound=16000, max_terms=10
    )
    a = np.array([16000, -16000, 5, -5, 0, 1, -1])
    b = np.array([-16000, -1, -10, 7, 3, 8000, -8000])
    c = np.array([10, 16001, 4, -2, -3, 8000, -8000])
    total = add_mod([pack(a, lay), pack(b, lay), pack(c, lay)], lay.modulus)
    assert unpack(total, lay).tolist() == (a + b + c).tolist()


@HYP
@given(
    layout=layouts(max_length=60),
    weights=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
    data=st.data(),
)
def test_weighted_float_sum(
    layout: PackingLayout, weights: list[float], data: st.DataObject
) -> None:
    assume(layout.max_terms >= len(weights))
    clip = layout.slot_bound / len(weights)
    xs = [
        np.array(
            data.draw(
                st.lists(
                    st.floats(-2 * clip, 2 * clip), min_size=layout.length, max_size=layout.length
                )
            ),
            dtype=np.float64,
        )
        for _ in weights
    ]
    encoded = [
        encode_vector(x, layout, clip_bound=clip, scale=w) for x, w in zip(xs, weights, strict=True)
    ]
    for x, (_, rep) in zip(xs, encoded, strict=True):
        assert rep.clipped == int(np.count_nonzero(np.abs(x) > clip))
    total = add_mod([pts for pts, _ in encoded], layout.modulus)
    got = decode_vector(total, layout)
    want = sum(w * np.clip(x, -clip, clip) for x, w in zip(xs, weights, strict=True))
    tol = len(weights) * 2.0 ** -(layout.frac_bits + 1) + 1e-12 * layout.slot_bound
    assert np.all(np.abs(got - want) <= tol)


@HYP
@given(layout=layouts(max_length=100), data=st.data())
def test_encode_vector_round_trip(layout: PackingLayout, data: st.DataObject) -> None:
    b = layout.slot_bound
    xs = data.draw(
        st.lists(
            st.one_of(st.sampled_from([b, -b]), st.floats(-b, b)),
            min_size=layout.length,
            max_size=layout.length,
        )
    )
    x = np.array(xs, dtype=np.float64)
    pts, rep = encode_vector(x, layout, clip_bound=b)
    assert rep.clipped == 0
    got = decode_vector(pts, layout)
    assert got.dtype == np.float64
    assert np.all(np.abs(got - x) <= 2.0 ** -(layout.frac_bits + 1))


def test_empty_layout() -> None:
    lay = PackingLayout(
        modulus=N64, length=0, frac_bits=4, slot_bits=16, slot_bound=100.0, max_terms=1
    )
    assert lay.num_plaintexts == 0
    assert pack(np.zeros(0, dtype=np.int64), lay) == []
    assert unpack([], lay).shape == (0,)


# --------------------------------------------------------------------------- overflow


def small_layout(length: int = 7) -> PackingLayout:
    return PackingLayout(
        modulus=N64, length=length, frac_bits=0, slot_bits=16, slot_bound=1000, max_terms=1
    )  # int_bound 1001


def test_overflow_by_one_is_detected() -> None:
    lay = small_layout()
    a = np.array([0, 0, 0, 1001, 0, 0, 0])
    b = np.array([0, 0, 0, 1, 0, 0, 0])
    total = add_mod([pack(a, lay), pack(b, lay)], lay.modulus)
    with pytest.raises(EncodingOverflowError, match="int_bound 1001"):
        unpack(total, lay)
    with pytest.raises(EncodingOverflowError):
        decode_vector(total, lay)


def test_negative_overflow_is_detected() -> None:
    lay = small_layout()
    a = np.full(7, -1001)
    total = add_mod([pack(a, lay), pack(a, lay)], lay.modulus)
    with pytest.raises(EncodingOverflowError):
        unpack(total, lay)


def test_many_term_wraparound_is_detected() -> None:
    # 4 * 16383 ~ 2^16 would silently wrap a 16-bit slot; it must raise instead.
    lay = PackingLayout(
        modulus=N64, length=6, frac_bits=0, slot_bits=16, slot_bound=16382, max_terms=1
    )
    v = pack(np.full(6, lay.int_bound), lay)
    total = add_mod([v, v, v, v], lay.modulus)
    with pytest.raises(EncodingOverflowError):
        unpack(total, lay)


@HYP
@given(li=layout_and_ints(bound_div=2), data=st.data())
def test_any_slot_in_guard_range_is_detected(
    li: tuple[PackingLayout, np.ndarray], data: st.DataObject
) -> None:
    # Every slot below 2^(s-1) decodes exactly, so exceeding int_bound must always raise.
    layout, vals = li
    assume(layout.length > 0)
    j = data.draw(st.integers(0, layout.length - 1))
    top = (1 << (layout.slot_bits - 1)) - 1
    mag = data.draw(
        st.one_of(
            st.sampled_from([layout.int_bound + 1, top]), st.integers(layout.int_bound + 1, top)
        )
    )
    raw = vals.tolist()
    raw[j] = mag * data.draw(st.sampled_from([1, -1]))
    with pytest.raises(EncodingOverflowError):
        unpack(ref_pack(raw, layout), layout)


def test_pack_rejects_value_beyond_bound() -> None:
    lay = small_layout()
    with pytest.raises(EncodingOverflowError, match="exceeds int_bound"):
        pack(np.array([0, 0, 0, 0, 0, 0, -1002]), lay)
    assert unpack(pack(np.array([0, 0, 0, 0, 0, 0, -1001]), lay), lay)[-1] == -1001


def test_nonzero_padding_slot_is_detected() -> None:
    lay = small_layout(length=4)  # 3 slots per plaintext: last plaintext has 2 pad slots
    pts = [int(p) for p in pack(np.array([1, 2, 3, 4]), lay)]
    pts[1] = (pts[1] + (5 << 32)) % lay.modulus
    with pytest.raises(EncodingOverflowError, match="padding"):
        unpack(pts, lay)


def test_plaintext_too_large_for_slots_is_detected() -> None:
    # A value near N/2 cannot be a sum of in-bound packings.
    lay = small_layout()
    with pytest.raises(EncodingOverflowError):
        unpack([lay.modulus // 2, 0, 0], lay)


# --------------------------------------------------------------------------- bad input


def test_unpack_rejects_bad_plaintexts() -> None:
    lay = small_layout()
    good = pack(np.zeros(7, dtype=np.int64), lay)
    with pytest.raises(EncodingError, match="expected 3 plaintexts"):
        unpack(good[:2], lay)
    with pytest.raises(EncodingError, match="outside"):
        unpack([lay.modulus, 0, 0], lay)
    with pytest.raises(EncodingError, match="outside"):
        unpack([-1, 0, 0], lay)
    with pytest.raises(EncodingError, match="must be an int"):
        unpack([0.0, 0, 0], lay)  # type: ignore[list-item]


def test_pack_rejects_bad_values() -> None:
    lay = small_layout()
    with pytest.raises(EncodingError, match="7 values"):
        pack(np.zeros(6, dtype=np.int64), lay)
    with pytest.raises(EncodingError, match="7 values"):
        pack(np.zeros((7, 1), dtype=np.int64), lay)
    with pytest.raises(EncodingError, match="integers"):
        pack(np.zeros(7), lay)


def test_encode_vector_rejects_bad_input() -> None:
    lay = small_layout()
    with pytest.raises(EncodingError, match="NaN"):
        encode_vector(np.array([0, 0, 0, np.nan, 0, 0, 0]), lay, clip_bound=1.0)
    with pytest.raises(EncodingError, match="NaN or infinity"):
        encode_vector(np.array([0, 0, 0, np.inf, 0, 0, 0]), lay, clip_bound=1.0)
    with pytest.raises(EncodingError, match="expected 7"):
        encode_vector(np.zeros(8), lay, clip_bound=1.0)
    with pytest.raises(EncodingError, match="slot_bound"):
        encode_vector(np.zeros(7), lay, clip_bound=600.0, scale=2.0)
    with pytest.raises(EncodingError, match="scale"):
        encode_vector(np.zeros(7), lay, clip_bound=1.0, scale=math.nan)
    with pytest.raises(EncodingError, match="clip_bound"):
        encode_vector(np.zeros(7), lay, clip_bound=-1.0)
    with pytest.raises(EncodingError, match="numeric"):
        encode_vector(np.array(["a"] * 7), lay, clip_bound=1.0)


# --------------------------------------------------------------------------- full size


def test_2048_bit_full_model_round_trip() -> None:
    rng = random.Random(2048)
    n = rng.getrandbits(2048) | (1 << 2047) | 1
    lay = PackingLayout(modulus=n, length=109_386)
    x = np.random.default_rng(7).uniform(-1.5, 1.5, lay.length)
    x[:4] = [1.0, -1.0, 0.0, 2.0**-21]
    pts, rep = encode_vector(x, lay, clip_bound=1.0, scale=0.5)
    assert len(pts) == lay.num_plaintexts == 1563
    assert all(0 <= p < n for p in pts[:50])
    assert rep.clipped == int(np.count_nonzero(np.abs(x) > 1.0)) > 0
    got = decode_vector(pts, lay)
    want = 0.5 * np.clip(x, -1.0, 1.0)
    assert np.max(np.abs(got - want)) <= 2.0**-21
    # Two participants plus the model: the mod-N sum still decodes slot-wise.
    total = add_mod([pts, pts, pts], n)
    assert np.max(np.abs(decode_vector(total, lay) - 3 * want)) <= 3 * 2.0**-21
    fixed = unpack(pts, lay)
    np.testing.assert_array_equal(
        np.asarray(pack(fixed, lay), dtype=object), np.asarray(pts, dtype=object)
    )
