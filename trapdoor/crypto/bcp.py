"""Bresson–Catalano–Pointcheval (BCP) double-trapdoor encryption.

An ElGamal-type, additively homomorphic scheme over ``Z*_{N^2}`` (Asiacrypt 2003) with
two ways to decrypt: with a key pair's own secret exponent ``a``, or with the
factorisation of ``N`` (the *master key*) for any public key made under the same
``(N, g)``. That second trapdoor is what lets the key generation center keep one
master key and no per-job secret.

This module is the raw, scalar layer: one plaintext in ``Z_N`` per ciphertext. Vectors
use :mod:`trapdoor.crypto.blocks`, which shares randomness across a job key vector.

Every group element that comes from outside goes through :meth:`PublicParams.check_element`
(or :meth:`PublicParams.check_public_value` for keys) before it is used.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import gmpy2
from gmpy2 import mpz

__all__ = [
    "Ciphertext",
    "InvalidElementError",
    "MasterKey",
    "PublicKey",
    "PublicParams",
    "RandomSource",
    "SecretKey",
    "generate_params",
    "generate_safe_prime",
]


class RandomSource(Protocol):
    """What the scheme needs from a random generator.

    ``secrets.SystemRandom()`` in production; ``random.Random(seed)`` in tests, so that
    known-answer tests are deterministic. Randomness is always passed in.
    """

    def randrange(self, start: int, stop: int) -> int: ...


class InvalidElementError(ValueError):
    """A value received from outside is not a valid element of ``Z*_{N^2}``."""


def _default_rng() -> RandomSource:
    return secrets.SystemRandom()


def _L(x: mpz, n: mpz) -> mpz:
    """Paillier's ``L(x) = (x - 1) / n`` for ``x = 1 mod n``."""
    return (x - 1) // n


# ---------------------------------------------------------------------------
# Parameters and the master key
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PublicParams:
    """The public ``(N, g)`` every key of one deployment lives under."""

    n: mpz
    g: mpz
    nsquare: mpz = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", mpz(self.n))
        object.__setattr__(self, "g", mpz(self.g))
        object.__setattr__(self, "nsquare", self.n * self.n)
        if self.n < 15 or self.n % 2 == 0:
            raise InvalidElementError("N must be an odd composite")
        self.check_public_value(self.g, what="g")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicParams) and self.n == other.n and self.g == other.g

    def __hash__(self) -> int:
        return hash((int(self.n), int(self.g)))

    @property
    def bits(self) -> int:
        """Bit length of ``N``."""
        return int(self.n.bit_length())

    def check_element(self, x: int, *, what: str = "element") -> mpz:
        """Return ``x`` as an mpz if it lies in ``Z*_{N^2}``, else raise.

        Received ciphertext components are checked here before anything is stored or
        computed: ``0 < x < N^2`` and ``gcd(x, N) = 1``.
        """
        if isinstance(x, bool) or not isinstance(x, int | type(mpz(0))):
            raise InvalidElementError(f"{what} must be an integer")
        value = mpz(x)
        if not 0 < value < self.nsquare:
            raise InvalidElementError(f"{what} is outside the range (0, N^2)")
        if gmpy2.gcd(value, self.n) != 1:
            raise InvalidElementError(f"{what} is not invertible modulo N^2")
        return value

    def check_public_value(self, x: int, *, what: str = "public key") -> mpz:
        """Like :meth:`check_element`, and also refuse 1 (a key or base with no secret)."""
        value = self.check_element(x, what=what)
        if value == 1:
            raise InvalidElementError(f"{what} must not be 1")
        return value

    def keygen(self, rng: RandomSource | None = None) -> tuple[PublicKey, SecretKey]:
        """Draw a key pair: secret ``a`` uniform in ``[1, N^2/2)``, public ``h = g^a``."""
        rng = rng or _default_rng()
        a = mpz(rng.randrange(1, int(self.nsquare // 2)))
        public = PublicKey(self, gmpy2.powmod(self.g, a, self.nsquare))
        return public, SecretKey(public, a)

    def random_exponent(self, rng: RandomSource) -> mpz:
        """Encryption randomness ``r`` uniform in ``[1, N^2/4)``."""
        return mpz(rng.randrange(1, int(self.nsquare // 4)))


@dataclass(frozen=True, eq=False)
class MasterKey:
    """The factorisation of ``N``: opens any ciphertext under any key made from ``(N, g)``.

    Decryption uses the *class* of an element, ``[[x]] in Z_N`` with
    ``x = (1+N)^[[x]] * z^N``. It is a homomorphism to ``(Z_N, +)`` and for an encryption
    ``A = g^r, B = h^r (1+mN)`` under ``h = g^a`` gives ``[[B]] = a r [[g]] + m`` and
    ``[[A]] = r [[g]]``, ``[[h]] = a [[g]]``, so ``m = [[B]] - [[h]] [[A]] / [[g]]``.
    The class is computed by CRT, modulo ``p^2`` and ``q^2`` with exponents ``p-1`` and
    ``q-1`` (as in Paillier's CRT decryption), about four times cheaper than raising to
    ``lambda = p'q'`` modulo ``N^2`` and the same result (see the known-answer tests).
    """

    params: PublicParams
    p: mpz
    q: mpz
    _crt: _ClassCRT = field(init=False, repr=False)
    _inv_class_g: mpz = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p, q = mpz(self.p), mpz(self.q)
        if p * q != self.params.n:
            raise ValueError("p * q does not equal N")
        if p == q or not (gmpy2.is_prime(p) and gmpy2.is_prime(q)):
            raise ValueError("the master key must be two distinct primes")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "_crt", _ClassCRT(p, q))
        object.__setattr__(
            self, "_inv_class_g", gmpy2.invert(self.class_of(self.params.g), self.params.n)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterKey) and (self.params, self.p, self.q) == (
            other.params,
            other.p,
            other.q,
        )

    def __hash__(self) -> int:
        return hash((self.params, int(self.p)))

    def __repr__(self) -> str:  # never print the factors
        return f"MasterKey(bits={self.params.bits})"

    @property
    def lam(self) -> mpz:
        """``lambda = p'q'`` (the order-killing exponent in the BCP paper)."""
        return ((self.p - 1) // 2) * ((self.q - 1) // 2)

    def class_of(self, x: int) -> mpz:
        """``[[x]]``: the discrete log of ``x``'s ``(1+N)``-component, in ``Z_N``."""
        return self._crt.class_of(mpz(x))

    def classes_of(self, xs: list[mpz]) -> list[mpz]:
        """Classes of many elements; the exponentiations run in C without the GIL."""
        return self._crt.classes_of(xs)

    def secret_exponent(self, public_key: PublicKey) -> mpz:
        """``a mod N`` for any key ``h = g^a`` under these parameters."""
        return self.class_of(public_key.h) * self._inv_class_g % self.params.n

    def exponent_from_class(self, class_value: mpz) -> mpz:
        """``[[x]] / [[g]] mod N``: the exponent of ``x`` in base ``g`` modulo ``N``."""
        return class_value * self._inv_class_g % self.params.n

    def encrypt_for(self, public_key: PublicKey, m: int, rng: RandomSource) -> Ciphertext:
        """Exactly ``public_key.encrypt(m, rng)``, computed by CRT: about 4x cheaper.

        Only the holder of the factorisation can take this shortcut: the exponent reduces
        modulo ``p(p-1)`` and ``q(q-1)`` and the halves modulo ``p^2`` and ``q^2`` join by
        CRT, so both exponentiations run on half-size numbers with half-size exponents.
        The KGC uses it for the per-contributor key encapsulations of a release.
        """
        params = self.params
        if public_key.params != params:
            raise ValueError("public key is under different parameters")
        r = params.random_exponent(rng)
        n2 = params.nsquare
        A = self._crt.power(params.g, r)
        B = self._crt.power(public_key.h, r) * (1 + (mpz(m) % params.n) * params.n) % n2
        return Ciphertext(public_key, A, B, _trusted=True)

    def decrypt(self, c: Ciphertext) -> int:
        """Open a ciphertext under any key made from these parameters; result in ``[0, N)``."""
        if c.public_key.params != self.params:
            raise ValueError("ciphertext is under different parameters")
        a_mod_n = self.secret_exponent(c.public_key)
        class_a, class_b = self.classes_of([c.A, c.B])
        return int((class_b - a_mod_n * class_a) % self.params.n)


class _ClassCRT:
    """Computes ``[[x]] mod N`` from ``x^(p-1) mod p^2`` and ``x^(q-1) mod q^2``.

    With ``x = (1+N)^c z^N``: ``x^(p-1) = 1 + c (p-1) q p  (mod p^2)``, so
    ``c = L_p(x^(p-1) mod p^2) / ((p-1) q)  (mod p)``, and likewise modulo ``q``.
    """

    def __init__(self, p: mpz, q: mpz) -> None:
        self.p, self.q = p, q
        self.p2, self.q2 = p * p, q * q
        self.n = p * q
        self.hp = gmpy2.invert((p - 1) * q % p, p)
        self.hq = gmpy2.invert((q - 1) * p % q, q)
        self.q_inv_p = gmpy2.invert(q, p)
        self.phi_p2, self.phi_q2 = p * (p - 1), q * (q - 1)
        self.q2_inv_p2 = gmpy2.invert(self.q2, self.p2)

    def power(self, x: mpz, e: mpz) -> mpz:
        """``x^e mod N^2`` for a unit ``x``, by CRT over ``p^2`` and ``q^2``."""
        xp = gmpy2.powmod(x % self.p2, e % self.phi_p2, self.p2)
        xq = gmpy2.powmod(x % self.q2, e % self.phi_q2, self.q2)
        return xq + self.q2 * ((xp - xq) * self.q2_inv_p2 % self.p2)

    def _combine(self, xp: mpz, xq: mpz) -> mpz:
        cp = _L(xp, self.p) * self.hp % self.p
        cq = _L(xq, self.q) * self.hq % self.q
        return cq + self.q * ((cp - cq) * self.q_inv_p % self.p)

    def class_of(self, x: mpz) -> mpz:
        return self._combine(
            gmpy2.powmod(x % self.p2, self.p - 1, self.p2),
            gmpy2.powmod(x % self.q2, self.q - 1, self.q2),
        )

    def classes_of(self, xs: list[mpz]) -> list[mpz]:
        xps = gmpy2.powmod_base_list([x % self.p2 for x in xs], self.p - 1, self.p2)
        xqs = gmpy2.powmod_base_list([x % self.q2 for x in xs], self.q - 1, self.q2)
        return [self._combine(a, b) for a, b in zip(xps, xqs, strict=True)]


# ---------------------------------------------------------------------------
# Key pairs and ciphertexts
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PublicKey:
    """``h = g^a mod N^2`` under some :class:`PublicParams`."""

    params: PublicParams
    h: mpz

    def __post_init__(self) -> None:
        object.__setattr__(self, "h", self.params.check_public_value(self.h))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.params, self.h) == (other.params, other.h)

    def __hash__(self) -> int:
        return hash((self.params, int(self.h)))

    def encrypt(self, m: int, rng: RandomSource | None = None) -> Ciphertext:
        """Encrypt ``m mod N``: ``A = g^r``, ``B = h^r (1 + mN)``."""
        params = self.params
        r = params.random_exponent(rng or _default_rng())
        n2 = params.nsquare
        A = gmpy2.powmod(params.g, r, n2)
        B = gmpy2.powmod(self.h, r, n2) * (1 + (mpz(m) % params.n) * params.n) % n2
        return Ciphertext(self, A, B, _trusted=True)


@dataclass(frozen=True, eq=False)
class SecretKey:
    """The secret exponent ``a`` of one key pair."""

    public_key: PublicKey
    a: mpz

    def __post_init__(self) -> None:
        a = mpz(self.a)
        params = self.public_key.params
        if not 0 < a < params.nsquare:
            raise ValueError("secret exponent out of range")
        if gmpy2.powmod(params.g, a, params.nsquare) != self.public_key.h:
            raise ValueError("secret exponent does not match the public key")
        object.__setattr__(self, "a", a)

    def __repr__(self) -> str:  # never print the secret
        return f"SecretKey(bits={self.public_key.params.bits})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and (self.public_key, self.a) == (
            other.public_key,
            other.a,
        )

    def __hash__(self) -> int:
        return hash(self.public_key)

    def decrypt(self, c: Ciphertext) -> int:
        """``m = L(B * A^(-a) mod N^2)``, in ``[0, N)``."""
        if c.public_key != self.public_key:
            raise ValueError("ciphertext is under a different key")
        params = self.public_key.params
        n2 = params.nsquare
        u = c.B * gmpy2.powmod(c.A, -self.a, n2) % n2
        if u % params.n != 1:
            raise InvalidElementError("ciphertext does not decrypt under this key")
        return int(_L(u, params.n))


@dataclass(frozen=True, eq=False)
class Ciphertext:
    """``(A, B)`` under a named public key; ``+`` and ``* k`` are the homomorphism."""

    public_key: PublicKey
    A: mpz
    B: mpz
    _trusted: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._trusted:
            params = self.public_key.params
            object.__setattr__(self, "A", params.check_element(self.A, what="A"))
            object.__setattr__(self, "B", params.check_element(self.B, what="B"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ciphertext) and (self.public_key, self.A, self.B) == (
            other.public_key,
            other.A,
            other.B,
        )

    def __hash__(self) -> int:
        return hash((self.public_key, int(self.A), int(self.B)))

    def __add__(self, other: Ciphertext) -> Ciphertext:
        if not isinstance(other, Ciphertext):
            return NotImplemented
        if other.public_key != self.public_key:
            raise ValueError("cannot add ciphertexts under different keys")
        n2 = self.public_key.params.nsquare
        return Ciphertext(
            self.public_key, self.A * other.A % n2, self.B * other.B % n2, _trusted=True
        )

    def __mul__(self, k: int) -> Ciphertext:
        if isinstance(k, bool) or not isinstance(k, int | type(mpz(0))):
            return NotImplemented
        n2 = self.public_key.params.nsquare
        e = mpz(k)  # a negative scalar inverts: elements are units, so that always works
        return Ciphertext(
            self.public_key,
            gmpy2.powmod(self.A, e, n2),
            gmpy2.powmod(self.B, e, n2),
            _trusted=True,
        )

    __rmul__ = __mul__


# ---------------------------------------------------------------------------
# Parameter generation
# ---------------------------------------------------------------------------


def _primorial(limit: int) -> mpz:
    product, p = mpz(1), mpz(2)
    while p < limit:
        product *= p
        p = gmpy2.next_prime(p)
    return product


_SIEVE_LIMIT = 20_000
_SIEVE = _primorial(_SIEVE_LIMIT)


def generate_safe_prime(
    bits: int, rng: RandomSource, progress: Callable[[int], None] | None = None
) -> mpz:
    """A random safe prime ``p = 2p' + 1`` of exactly ``bits`` bits.

    Candidates ``p'`` are ``5 mod 6`` (so neither ``p'`` nor ``2p'+1`` is divisible by 2
    or 3), then sieved by one gcd against a primorial before any probabilistic test.
    ``progress`` is called with the number of candidates tried so far, for long runs.
    """
    if bits < 8:
        raise ValueError("safe primes need at least 8 bits")
    tries = 0
    while True:
        # The top two bits of p are set, so the product of two such primes has 2*bits bits.
        half = mpz(rng.randrange(3 * 2 ** (bits - 3), 2 ** (bits - 1)))
        half += (5 - half % 6) % 6
        for _ in range(4096):
            tries += 1
            prime = 2 * half + 1
            if prime.bit_length() != bits:
                break
            sieved_out = half > _SIEVE_LIMIT and gmpy2.gcd(half * prime, _SIEVE) != 1
            if not sieved_out and _is_safe_prime_pair(half, prime):
                return prime
            half += 6
            if progress is not None and tries % 1024 == 0:
                progress(tries)


def _is_safe_prime_pair(half: mpz, prime: mpz) -> bool:
    # A base-2 Fermat test on p is cheap and rejects almost everything left.
    if gmpy2.powmod(2, prime - 1, prime) != 1:
        return False
    return bool(gmpy2.is_prime(half, 40)) and bool(gmpy2.is_prime(prime, 40))


def choose_generator(p: mpz, q: mpz, rng: RandomSource) -> mpz:
    """``g = alpha^2 mod N^2`` with ``g^(p'q') = 1 + kN``, ``k != 0``, ``gcd(k, N) = 1``."""
    n = p * q
    n2 = n * n
    lam = ((p - 1) // 2) * ((q - 1) // 2)
    while True:
        alpha = mpz(rng.randrange(2, int(n2)))
        if gmpy2.gcd(alpha, n) != 1:
            continue
        g = alpha * alpha % n2
        if g == 1:
            continue
        u = gmpy2.powmod(g, lam, n2)
        if u % n != 1:
            continue
        k = _L(u, n)
        if k != 0 and gmpy2.gcd(k, n) == 1:
            return g


def generate_params(
    bits: int = 2048,
    rng: RandomSource | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[PublicParams, MasterKey]:
    """Fresh BCP parameters: ``N = pq`` of ``bits`` bits with safe primes ``p, q``.

    Takes about a second at 1024 bits and tens of seconds at 2048 on a laptop core:
    never call it for 2048 bits in a unit test.
    """
    if bits < 18 or bits % 2:
        # Below 18 bits there are not two distinct safe primes with the top bits set.
        raise ValueError("bits must be an even number >= 18")
    rng = rng or _default_rng()
    p = generate_safe_prime(bits // 2, rng, progress)
    q = generate_safe_prime(bits // 2, rng, progress)
    while q == p:
        q = generate_safe_prime(bits // 2, rng, progress)
    g = choose_generator(p, q, rng)
    params = PublicParams(p * q, g)
    return params, MasterKey(params, p, q)
