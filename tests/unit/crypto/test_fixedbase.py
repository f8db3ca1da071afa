"""Tests for trapdoor.crypto.fixedbase: signed-window digits, fixed-base exponentiation."""

from __future__ import annotations

import random
from functools import cache

import gmpy2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.fixedbase import FixedBaseTable, signed_digits

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WINDOWS = list(range(2, 10))

# A 512-bit odd modulus and a unit base; exponents of EXP_BITS bits (not a multiple of most
# windows, so the top window is partial).
_R = random.Random(2024)
MODULUS = gmpy2.mpz(_R.getrandbits(512) | (1 << 511) | 1)
BASE = gmpy2.mpz(_R.randrange(2, int(MODULUS)))
while gmpy2.gcd(BASE, MODULUS) != 1:
    BASE += 1
EXP_BITS = 301


@cache
def table(window: int) -> FixedBaseTable:
    return FixedBaseTable(BASE, MODULUS, EXP_BITS, window)


def reconstruct(digits: list[int], window: int) -> int:
    return sum(d << (window * i) for i, d in enumerate(digits))


@pytest.mark.parametrize("window", WINDOWS)
@HYP
@given(exponent=st.integers(min_value=0, max_value=2**EXP_BITS - 1))
@example(exponent=0)
@example(exponent=1)
@example(exponent=2)
@example(exponent=2**EXP_BITS - 1)
@example(exponent=2 ** (EXP_BITS - 1))
@example(exponent=(2**EXP_BITS - 1) // 3)  # alternating bits
def test_pow_matches_powmod(window: int, exponent: int) -> None:
    assert table(window).pow(exponent) == gmpy2.powmod(BASE, exponent, MODULUS)


@pytest.mark.parametrize("window", WINDOWS)
def test_pow_every_top_digit(window: int) -> None:
    """Digits equal to 2^(w-1) (the positive edge) and to 2^w - 1 (recoded to -1) everywhere."""
    t = table(window)
    half, radix = 1 << (window - 1), 1 << window
    edge = sum(half << (window * i) for i in range(EXP_BITS // window))
    ones = sum((radix - 1) << (window * i) for i in range(EXP_BITS // window))
    for e in (edge, ones, edge + 1, ones - 1):
        assert e < 2**EXP_BITS
        assert t.pow(e) == gmpy2.powmod(BASE, e, MODULUS)
    assert isinstance(t.pow(5), type(gmpy2.mpz(0)))


def test_pow_with_bcp_sized_modulus(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, _ = small_params
    bits = int((params.nsquare // 4).bit_length())
    t = FixedBaseTable(params.g, params.nsquare, bits, 7)
    rng = random.Random(1)
    top = int(params.nsquare // 4)
    for e in [0, 1, top - 1] + [rng.randrange(top) for _ in range(20)]:
        assert t.pow(e) == gmpy2.powmod(params.g, e, params.nsquare)


@pytest.mark.parametrize("window", WINDOWS)
def test_too_large_exponent_raises(window: int) -> None:
    t = table(window)
    capacity = t.count * window  # bits of all windows together
    for e in (2**capacity, 2 ** (capacity + 5) + 3, 2 ** (capacity + 100)):
        with pytest.raises(ValueError):
            t.pow(e)
    # Just below capacity, a top digit above 2^(w-1) would need one more window.
    with pytest.raises(ValueError):
        t.pow(2**capacity - 1)
    with pytest.raises(ValueError):
        t.pow(-1)


@pytest.mark.parametrize("window", [1, 0, 13, -3])
def test_window_out_of_range(window: int) -> None:
    with pytest.raises(ValueError):
        FixedBaseTable(3, 101, 16, window)


@HYP
@given(
    window=st.integers(min_value=1, max_value=12),
    exponent=st.one_of(st.integers(min_value=0, max_value=2**400), st.sampled_from([0, 1, 2, 3])),
)
def test_signed_digits_reconstruct(window: int, exponent: int) -> None:
    count = -(-max(exponent.bit_length(), 1) // window) + 1
    digits = signed_digits(exponent, window, count)
    assert len(digits) == count
    assert reconstruct(digits, window) == exponent
    half = 1 << (window - 1)
    assert all(-half < d <= half for d in digits), digits
    assert all(isinstance(d, int) for d in digits)


@pytest.mark.parametrize(
    ("exponent", "window", "expected"),
    [
        (0, 3, [0, 0]),
        (4, 3, [4, 0]),  # 4 = 2^(w-1) stays positive
        (5, 3, [-3, 1]),  # 5 = -3 + 8
        (7, 3, [-1, 1]),
        (8, 3, [0, 1]),
        (255, 4, [-1, 0, 1]),  # 255 = -1 + 0*16 + 1*256
        (0b1010_0110, 4, [6, -6, 1]),  # 166 = 6 - 6*16 + 256
    ],
)
def test_signed_digits_known(exponent: int, window: int, expected: list[int]) -> None:
    assert signed_digits(exponent, window, len(expected)) == expected


@HYP
@given(
    window=st.integers(min_value=2, max_value=9),
    exponent=st.integers(min_value=1, max_value=2**200),
)
def test_signed_digits_too_few_raises(window: int, exponent: int) -> None:
    # The minimal number of signed digits for exponent.
    count = 1
    while True:
        try:
            digits = signed_digits(exponent, window, count)
            break
        except ValueError:
            count += 1
    assert reconstruct(digits, window) == exponent
    assert count <= -(-exponent.bit_length() // window) + 1
    with pytest.raises(ValueError):
        signed_digits(exponent, window, count - 1)


def test_signed_digits_rejects_negative() -> None:
    with pytest.raises(ValueError):
        signed_digits(-5, 4, 4)


def test_approx_bytes() -> None:
    t = table(7)
    assert t.approx_bytes == t.count * ((1 << 6) + 1) * 64
