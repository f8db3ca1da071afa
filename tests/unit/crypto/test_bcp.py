"""Tests for trapdoor.crypto.bcp: the scalar BCP double-trapdoor scheme.

Known-answer tests use tiny hand-picked safe primes and values computed with plain Python
``pow`` (not the module under test); the master decryption is checked against an
independent implementation of the lambda formula of DESIGN.md section 2.
"""

from __future__ import annotations

import math
import random

import gmpy2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import (
    Ciphertext,
    InvalidElementError,
    MasterKey,
    PublicKey,
    PublicParams,
    SecretKey,
    choose_generator,
    generate_params,
    generate_safe_prime,
)

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)

# --------------------------------------------------------------------------- helpers


class FixedRng:
    """Hands out pre-chosen values from ``randrange``, checking each lies in the asked range."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def randrange(self, start: int, stop: int) -> int:
        assert self.values, "FixedRng exhausted"
        value = self.values.pop(0)
        assert start <= value < stop, f"{value} not in [{start}, {stop})"
        return value


class RngExhaustedError(Exception):
    """Raised by LimitedRng: the code under test drew far more randomness than it should."""


class LimitedRng:
    """A seeded ``random.Random`` that gives up after ``limit`` draws (turns hangs into errors)."""

    def __init__(self, seed: int, limit: int) -> None:
        self._rng = random.Random(seed)
        self.left = limit

    def randrange(self, start: int, stop: int) -> int:
        if self.left <= 0:
            raise RngExhaustedError
        self.left -= 1
        return self._rng.randrange(start, stop)


def is_safe_prime(p: int) -> bool:
    return p > 5 and bool(gmpy2.is_prime(p, 50)) and bool(gmpy2.is_prime((p - 1) // 2, 50))


def ref_L(x: int, n: int) -> int:
    assert x % n == 1, "L is only defined on 1 mod N"
    return (x - 1) // n


def assert_generator_ok(p: int, q: int, g: int) -> None:
    """The DESIGN conditions on g: a square mod N^2, g^(p'q') = 1 + kN, k != 0, gcd(k, N) = 1."""
    n = p * q
    n2 = n * n
    lam = ((p - 1) // 2) * ((q - 1) // 2)
    assert 1 < g < n2 and math.gcd(g, n) == 1
    # g = alpha^2 mod N^2 implies g is a quadratic residue modulo p and modulo q.
    assert gmpy2.legendre(g % p, p) == 1
    assert gmpy2.legendre(g % q, q) == 1
    u = pow(g, lam, n2)
    assert u % n == 1
    k = (u - 1) // n
    assert k != 0 and math.gcd(k, n) == 1


def ref_master_decrypt(master: MasterKey, c: Ciphertext) -> int:
    """DESIGN.md section 2, literally, with Python ints and lambda = p'q' (no CRT)."""
    p, q = int(master.p), int(master.q)
    n = p * q
    n2 = n * n
    g, h, A, B = int(master.params.g), int(c.public_key.h), int(c.A), int(c.B)
    lam = ((p - 1) // 2) * ((q - 1) // 2)
    k = ref_L(pow(g, lam, n2), n)
    k_inv = pow(k, -1, n)
    a_mod_n = ref_L(pow(h, lam, n2), n) * k_inv % n
    r_mod_n = ref_L(pow(A, lam, n2), n) * k_inv % n
    return (ref_L(pow(B, lam, n2), n) - k * a_mod_n * r_mod_n) * pow(lam, -1, n) % n


def keypair(params: PublicParams, seed: int) -> tuple[PublicKey, SecretKey]:
    return params.keygen(random.Random(seed))


# --------------------------------------------------------------------------- known answers
#
# p = 59 = 2*29 + 1 and q = 83 = 2*41 + 1 are safe primes with gcd(lambda, N) = 1.
# (p = 23, q = 47 is *not* usable: q' = 23 = p, so lambda = 11*23 is not invertible mod N.)

KP, KQ = 59, 83
KN = KP * KQ  # 4897
KN2 = KN * KN  # 23980609
KLAM = 29 * 41  # 1189
K_ALPHA = 1234
K_G = 1522756  # 1234^2 mod N^2
K_K = 4663  # L(g^lambda mod N^2)
K_A_SECRET = 7777777
K_H = 13013966  # g^a mod N^2
K_R, K_M = 3141592, 2024
K_CA, K_CB = 227437, 19848492  # g^r, h^r (1 + mN)
K_R2, K_M2 = 271828, 4000
K_CA2, K_CB2 = 5541739, 4104413


@pytest.fixture(scope="module")
def kat() -> tuple[PublicParams, MasterKey, PublicKey, SecretKey]:
    params = PublicParams(KN, K_G)
    master = MasterKey(params, KP, KQ)
    pk, sk = params.keygen(FixedRng([K_A_SECRET]))
    return params, master, pk, sk


def test_kat_parameters_by_hand() -> None:
    assert is_safe_prime(KP) and is_safe_prime(KQ)
    assert KN == 4897 and KN2 == 23980609
    assert math.gcd(KLAM, KN) == 1
    assert K_ALPHA**2 % KN2 == K_G
    assert pow(K_G, KLAM, KN2) == 22834712 == 1 + K_K * KN
    assert math.gcd(K_K, KN) == 1
    assert_generator_ok(KP, KQ, K_G)


def test_kat_choose_generator_returns_alpha_squared() -> None:
    rng = FixedRng([K_ALPHA])
    assert choose_generator(gmpy2.mpz(KP), gmpy2.mpz(KQ), rng) == K_G
    assert rng.values == []


def test_kat_choose_generator_skips_every_bad_candidate() -> None:
    z_to_n = pow(2, KN, KN2)  # alpha = z^N: g^lambda = 1 exactly, so k = 0
    assert pow(z_to_n * z_to_n % KN2, KLAM, KN2) == 1
    candidates = [
        KP,  # not invertible mod N
        2 * KQ,  # not invertible mod N
        KN2 - 1,  # g = 1
        z_to_n,  # k = 0
        K_ALPHA,  # good
    ]
    rng = FixedRng(candidates)
    assert choose_generator(gmpy2.mpz(KP), gmpy2.mpz(KQ), rng) == K_G
    assert rng.values == [], "every bad candidate must be drawn and skipped"


def test_kat_keygen(kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey]) -> None:
    _params, master, pk, sk = kat
    assert pk.h == K_H == pow(K_G, K_A_SECRET, KN2)
    assert sk.a == K_A_SECRET
    assert master.lam == KLAM
    assert master.secret_exponent(pk) == K_A_SECRET % KN == 1341


def test_kat_encrypt_and_both_decryptions(
    kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey],
) -> None:
    _params, master, pk, sk = kat
    c = pk.encrypt(K_M, FixedRng([K_R]))
    assert (c.A, c.B) == (K_CA, K_CB)
    # The formulas by hand.
    assert pow(K_G, K_R, KN2) == K_CA
    assert pow(K_H, K_R, KN2) * (1 + K_M * KN) % KN2 == K_CB
    assert ref_L(K_CB * pow(K_CA, -K_A_SECRET, KN2) % KN2, KN) == K_M
    # And by the module: secret key, master key (CRT) and the lambda reference.
    assert sk.decrypt(c) == K_M
    assert master.decrypt(c) == K_M
    assert ref_master_decrypt(master, c) == K_M
    # r mod N from A through the master key.
    assert master.exponent_from_class(master.class_of(c.A)) == K_R % KN == 2615
    # The same ciphertext parsed from outside (validated path).
    parsed = Ciphertext(pk, K_CA, K_CB)
    assert parsed == c and sk.decrypt(parsed) == K_M


def test_kat_homomorphism(kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey]) -> None:
    _params, master, pk, sk = kat
    c1 = pk.encrypt(K_M, FixedRng([K_R]))
    c2 = pk.encrypt(K_M2, FixedRng([K_R2]))
    assert (c2.A, c2.B) == (K_CA2, K_CB2)
    total = c1 + c2
    assert (total.A, total.B) == (23645121, 11273794)
    assert sk.decrypt(total) == master.decrypt(total) == (K_M + K_M2) % KN == 1127
    tripled = c1 * 3
    assert (pow(K_CA, 3, KN2), pow(K_CB, 3, KN2)) == (tripled.A, tripled.B)
    assert sk.decrypt(tripled) == 3 * K_M % KN
    negated = -1 * c1
    assert pow(K_CA, -1, KN2) == negated.A
    assert sk.decrypt(negated) == master.decrypt(negated) == KN - K_M


def test_kat_plaintext_reduced_mod_n(
    kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey],
) -> None:
    _params, master, pk, sk = kat
    for m in (0, KN - 1, KN, KN + 5, -1, -KN - 3):
        c = pk.encrypt(m, FixedRng([K_R]))
        assert sk.decrypt(c) == master.decrypt(c) == m % KN


def test_kat_every_plaintext_via_lambda_reference(
    kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey],
) -> None:
    """Exhaustive over a stride of Z_N with the tiny parameters: CRT == lambda formula."""
    _params, master, pk, sk = kat
    rng = random.Random(59)
    for m in range(0, KN, 37):
        c = pk.encrypt(m, rng)
        assert master.decrypt(c) == ref_master_decrypt(master, c) == sk.decrypt(c) == m


# --------------------------------------------------------------------------- CRT vs lambda


def test_master_decrypt_matches_lambda_reference(
    small_params: tuple[PublicParams, MasterKey],
) -> None:
    params, master = small_params
    n = int(params.n)
    rng = random.Random(7)
    keys = [params.keygen(rng) for _ in range(8)]
    specials = [0, 1, n - 1, n // 2]
    for i in range(160):
        pk, sk = keys[i % len(keys)]
        m = specials[i] if i < len(specials) else rng.randrange(n)
        c = pk.encrypt(m, rng)
        if i % 5 == 0:  # homomorphic combinations too
            c = c + pk.encrypt(i, rng) * -3
            m = (m - 3 * i) % n
        assert master.decrypt(c) == ref_master_decrypt(master, c) == sk.decrypt(c) == m


def test_master_decrypt_matches_lambda_reference_1024(
    params_1024: tuple[PublicParams, MasterKey],
) -> None:
    params, master = params_1024
    n = int(params.n)
    rng = random.Random(11)
    for _ in range(4):
        pk, sk = params.keygen(rng)
        for m in (0, n - 1, rng.randrange(n)):
            c = pk.encrypt(m, rng)
            assert master.decrypt(c) == ref_master_decrypt(master, c) == sk.decrypt(c) == m


def test_class_of_matches_lambda(small_params: tuple[PublicParams, MasterKey]) -> None:
    """[[x]] by CRT is L(x^(2 lambda)) / (2 lambda) for any unit (lambda suffices for squares)."""
    _params, master = small_params
    p, q = int(master.p), int(master.q)
    n, n2 = p * q, p * q * p * q
    lam = ((p - 1) // 2) * ((q - 1) // 2)
    rng = random.Random(3)
    xs: list[int] = []
    while len(xs) < 30:
        x = rng.randrange(2, n2)
        if math.gcd(x, n) == 1:
            xs.append(x)
    classes = master.classes_of([gmpy2.mpz(x) for x in xs])
    for x, c in zip(xs, classes, strict=True):
        assert master.class_of(x) == c
        assert c == ref_L(pow(x, 2 * lam, n2), n) * pow(2 * lam, -1, n) % n
        square = x * x % n2
        assert master.class_of(square) == ref_L(pow(square, lam, n2), n) * pow(lam, -1, n) % n
    # (1 + N)^c has class c.
    for c in (0, 1, 12345, n - 1):
        assert master.class_of(pow(1 + n, c, n2)) == c


# --------------------------------------------------------------------------- properties


@HYP
@given(seed=SEEDS, m=st.integers(min_value=-(2**300), max_value=2**300))
def test_round_trip(small_params: tuple[PublicParams, MasterKey], seed: int, m: int) -> None:
    params, master = small_params
    pk, sk = keypair(params, seed)
    c = pk.encrypt(m, random.Random(seed + 1))
    assert sk.decrypt(c) == m % params.n
    assert master.decrypt(c) == m % params.n


@HYP
@given(seed=SEEDS, ms=st.lists(st.integers(min_value=0, max_value=2**260), min_size=2, max_size=6))
def test_addition(small_params: tuple[PublicParams, MasterKey], seed: int, ms: list[int]) -> None:
    params, master = small_params
    pk, sk = keypair(params, seed)
    rng = random.Random(seed)
    cs = [pk.encrypt(m, rng) for m in ms]
    total = cs[0]
    for c in cs[1:]:
        total = total + c
    assert sk.decrypt(total) == master.decrypt(total) == sum(ms) % params.n


@HYP
@given(
    seed=SEEDS,
    m=st.integers(min_value=0, max_value=2**256),
    k=st.one_of(
        st.sampled_from([0, 1, -1, 2, -2]),
        st.integers(min_value=-(2**300), max_value=2**300),
    ),
)
def test_scalar_multiplication(
    small_params: tuple[PublicParams, MasterKey], seed: int, m: int, k: int
) -> None:
    params, master = small_params
    pk, sk = keypair(params, seed)
    c = pk.encrypt(m, random.Random(seed))
    expected = k * m % params.n
    for product in (c * k, k * c, c * gmpy2.mpz(k)):
        assert sk.decrypt(product) == master.decrypt(product) == expected


@HYP
@given(seed=SEEDS, m1=st.integers(min_value=0), m2=st.integers(min_value=0), k=st.integers())
def test_master_equals_secret_key_decryption(
    small_params: tuple[PublicParams, MasterKey], seed: int, m1: int, m2: int, k: int
) -> None:
    params, master = small_params
    pk, sk = keypair(params, seed)
    rng = random.Random(seed)
    c = pk.encrypt(m1, rng) * k + pk.encrypt(m2, rng)
    assert master.decrypt(c) == sk.decrypt(c) == (k * m1 + m2) % params.n


@HYP
@given(seed1=SEEDS, seed2=SEEDS, m=st.integers(min_value=0, max_value=2**250))
def test_secret_key_refuses_other_keys_ciphertexts(
    small_params: tuple[PublicParams, MasterKey], seed1: int, seed2: int, m: int
) -> None:
    params, master = small_params
    pk1, _sk1 = keypair(params, seed1)
    pk2, sk2 = keypair(params, seed2)
    if pk1 == pk2:
        return
    c = pk1.encrypt(m, random.Random(seed1))
    with pytest.raises(ValueError):
        sk2.decrypt(c)
    # Relabelling the ciphertext as if under pk2 does not fool sk2 either.
    with pytest.raises(InvalidElementError):
        sk2.decrypt(Ciphertext(pk2, c.A, c.B))
    with pytest.raises(ValueError):
        c + pk2.encrypt(m, random.Random(seed2))
    # The master key opens both.
    assert master.decrypt(c) == m


def test_master_key_refuses_other_parameters(
    small_params: tuple[PublicParams, MasterKey],
    kat: tuple[PublicParams, MasterKey, PublicKey, SecretKey],
) -> None:
    _params, master = small_params
    _, _, kat_pk, _ = kat
    with pytest.raises(ValueError):
        master.decrypt(kat_pk.encrypt(5, random.Random(0)))


def test_scalar_must_be_an_integer(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, _ = small_params
    pk, _ = keypair(params, 1)
    c = pk.encrypt(1, random.Random(1))
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError):
            c * bad  # type: ignore[operator]


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("bits", [8, 9, 10, 11, 12, 13, 14, 16, 17, 24, 31, 32, 48, 64, 100, 128])
def test_generate_safe_prime_exact_bits(bits: int) -> None:
    p = generate_safe_prime(bits, LimitedRng(bits, 500))
    assert p.bit_length() == bits
    assert is_safe_prime(int(p))
    assert p >> (bits - 2) == 0b11, "top two bits set so that p*q has exactly 2*bits bits"


def test_generate_safe_prime_15_bits_terminates() -> None:
    p = generate_safe_prime(15, LimitedRng(15, 500))
    assert p.bit_length() == 15 and is_safe_prime(int(p))


def test_generate_safe_prime_rejects_tiny_sizes() -> None:
    with pytest.raises(ValueError):
        generate_safe_prime(7, random.Random(0))


def test_generate_safe_prime_reports_progress() -> None:
    calls: list[int] = []
    p = generate_safe_prime(512, random.Random(5), calls.append)
    assert is_safe_prime(int(p))
    assert calls == [1024 * i for i in range(1, len(calls) + 1)]
    assert calls, "seed 5 needs more than 1024 candidates at 512 bits"


@pytest.mark.parametrize("bits", [18, 32, 64, 130])
def test_generate_params_small(bits: int) -> None:
    params, master = generate_params(bits, LimitedRng(bits, 1000))
    p, q = int(master.p), int(master.q)
    assert params.bits == bits and p * q == params.n and p != q
    assert is_safe_prime(p) and is_safe_prime(q)
    assert p.bit_length() == q.bit_length() == bits // 2
    assert_generator_ok(p, q, int(params.g))


def test_generate_params_is_deterministic_for_a_seed() -> None:
    assert generate_params(64, random.Random(9)) == generate_params(64, random.Random(9))
    assert generate_params(64, random.Random(9))[0] != generate_params(64, random.Random(10))[0]


@pytest.mark.parametrize("bits", [0, 14, 15, 17, 1023])
def test_generate_params_rejects_bad_sizes(bits: int) -> None:
    with pytest.raises(ValueError):
        generate_params(bits, random.Random(0))


def test_generate_params_16_bits_terminates_or_refuses() -> None:
    try:
        params, master = generate_params(16, LimitedRng(16, 500))
    except ValueError:
        return
    assert params.bits == 16 and master.p != master.q


def test_params_1024_fixture(params_1024: tuple[PublicParams, MasterKey]) -> None:
    params, master = params_1024
    p, q = int(master.p), int(master.q)
    assert params.bits == 1024 and p * q == params.n
    assert p.bit_length() == q.bit_length() == 512
    assert is_safe_prime(p) and is_safe_prime(q)
    assert_generator_ok(p, q, int(params.g))


def test_small_params_fixture(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, master = small_params
    p, q = int(master.p), int(master.q)
    assert is_safe_prime(p) and is_safe_prime(q)
    assert math.gcd(master.lam, params.n) == 1
    assert_generator_ok(p, q, int(params.g))


def test_round_trip_1024(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> None:
    params, master = params_1024
    n = int(params.n)
    pk, sk = params.keygen(rng)
    assert 1 <= sk.a < params.nsquare // 2
    for m in (0, 1, 2**512 + 12345, n - 1):
        c = pk.encrypt(m, rng)
        assert sk.decrypt(c) == master.decrypt(c) == m
    c = pk.encrypt(100, rng) + pk.encrypt(23, rng) * -2
    assert sk.decrypt(c) == master.decrypt(c) == 54


# --------------------------------------------------------------------------- validation


def test_check_element_rejects(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, master = small_params
    n, n2, p, q = params.n, params.nsquare, master.p, master.q
    bad = [0, n2, n2 + 1, 2 * n2, n, 2 * n, p, q, 3 * p, q * q, -1, -5, -(n2 - 1)]
    for value in bad:
        with pytest.raises(InvalidElementError):
            params.check_element(value)
        with pytest.raises(InvalidElementError):
            params.check_element(gmpy2.mpz(value))
    for value in (True, False, 3.0, float(n + 1), "5", b"\x05", None, [3], gmpy2.mpfr(3)):
        with pytest.raises(InvalidElementError):
            params.check_element(value)  # type: ignore[arg-type]
    assert issubclass(InvalidElementError, ValueError)


def test_check_element_accepts_units(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, _ = small_params
    for value in (1, 2, params.n + 1, params.nsquare - 1, int(params.g)):
        checked = params.check_element(value)
        assert checked == value and isinstance(checked, type(gmpy2.mpz(0)))


def test_check_public_value(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, master = small_params
    for value in (1, gmpy2.mpz(1), 0, params.n, master.p, params.nsquare, True):
        with pytest.raises(InvalidElementError):
            params.check_public_value(value)
    assert params.check_public_value(params.g) == params.g


def test_constructors_validate(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, master = small_params
    n, g = params.n, params.g
    for bad_g in (1, 0, master.p, params.nsquare):
        with pytest.raises(InvalidElementError):
            PublicParams(n, bad_g)
    for bad_n in (14, 4, 2 * n):
        with pytest.raises(InvalidElementError):
            PublicParams(bad_n, 7)
    for bad_h in (1, 0, n, master.q, -int(g)):
        with pytest.raises(InvalidElementError):
            PublicKey(params, bad_h)
    pk, sk = keypair(params, 4)
    for bad_a, bad_b in ((0, 5), (5, 0), (n, 5), (5, params.nsquare), (master.p, 2), (-3, 5)):
        with pytest.raises(InvalidElementError):
            Ciphertext(pk, bad_a, bad_b)
    with pytest.raises(ValueError):
        SecretKey(pk, sk.a + 1)
    with pytest.raises(ValueError):
        SecretKey(pk, 0)
    with pytest.raises(ValueError):
        MasterKey(params, master.p, master.q + 2)


def test_keys_repr_never_contains_secrets(small_params: tuple[PublicParams, MasterKey]) -> None:
    params, master = small_params
    pk, sk = keypair(params, 12)
    secrets = {
        "a": int(sk.a),
        "p": int(master.p),
        "q": int(master.q),
        "lambda": int(master.lam),
    }
    texts = [repr(sk), str(sk), f"{sk}", repr((pk, sk)), repr(master), str(master), repr([master])]
    for text in texts:
        for name, value in secrets.items():
            for form in (str(value), format(value, "x"), format(value, "X")):
                assert form not in text, f"{name} leaks in {text!r}"
    assert "SecretKey" in repr(sk) and "MasterKey" in repr(master)


@HYP
@given(seed=st.integers(min_value=0, max_value=2**32), m=st.integers(min_value=0))
def test_crt_encryption_is_the_same_ciphertext(
    small_params: tuple[PublicParams, MasterKey], seed: int, m: int
) -> None:
    """The master key's CRT shortcut computes exactly what the public key computes."""
    params, master = small_params
    pk, sk = params.keygen(random.Random(seed))
    shortcut = master.encrypt_for(pk, m, random.Random(seed + 1))
    direct = pk.encrypt(m, random.Random(seed + 1))
    assert (shortcut.A, shortcut.B) == (direct.A, direct.B)
    assert sk.decrypt(shortcut) == m % params.n


def test_crt_encryption_refuses_other_parameters(
    small_params: tuple[PublicParams, MasterKey], params_1024: tuple[PublicParams, MasterKey]
) -> None:
    other_pk, _ = params_1024[0].keygen(random.Random(1))
    with pytest.raises(ValueError, match="different parameters"):
        small_params[1].encrypt_for(other_pk, 1, random.Random(2))


def test_crt_encryption_at_2048_bits(rng: random.Random) -> None:
    from trapdoor.crypto.demo_params import load_demo_master_key

    master = load_demo_master_key(2048)
    pk, sk = master.params.keygen(rng)
    state = rng.getstate()
    shortcut = master.encrypt_for(pk, 12345, rng)
    rng.setstate(state)
    assert shortcut.B == pk.encrypt(12345, rng).B
    assert sk.decrypt(shortcut) == 12345
