"""A batched, context-bound proof that an upload's sender knows its encryption randomness.

Every block of an uploaded vector has ``A_b = g^{r_b}``. Re-randomising someone else's
ciphertext (multiplying by an encryption of zero) keeps its plaintext and changes every
``A_b``, so without a proof a colluding quorum could upload an honest participant's
*earlier* update as "new" and audit its way to a release that reveals it. With the proof,
only whoever knows every ``r_b`` can vouch for an upload: the honest sender, once.

The proof is Schnorr's, made non-interactive (Fiat–Shamir) and batched with exponents
drawn from the round's context: ``e_b = H(context, b)`` (128 bits), and the prover shows
it knows ``r* = Σ e_b r_b`` with ``A* = Π A_b^{e_b} = g^{r*}``: commitment ``T = g^s``,
challenge ``c = H(context, subject, A*, T)`` (128 bits), response ``z = s + c r*`` over the
integers, with ``s`` 128 bits longer than ``c r*`` so that ``z`` hides ``r*`` statistically
(the group's order is unknown, so there is no reduction modulo it). The context carries
the job terms, the round and the closed commitment set, which is fixed only after every
``A_b`` is committed: the ``e_b`` cannot be known when the ``A_b`` are chosen.

Because every contributor of a round uses the same ``e_b``, the proofs also compose: the
KGC checks ``Π_k A*_k = Π_b (A_b(F_t) / A_b(F_{t-1}))^{e_b}``, i.e. that the ``A``
components of what it opens grew, since its previous release, by exactly the proven
uploads (the trivial blind keeps ``A``; ``Enc(W_0)`` has ``A = 1``).

Soundness in a group of unknown order with challenges longer than one bit rests on the
strong-RSA-type assumption usual for such proofs (docs/SECURITY.md). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
from gmpy2 import mpz

from trapdoor.crypto.bcp import InvalidElementError, PublicParams, RandomSource

__all__ = [
    "CHALLENGE_BITS",
    "RandomnessProof",
    "batch_exponents",
    "batched_a",
    "prove_randomness",
    "verify_randomness",
    "verify_release_chain",
]

#: Length of the batching exponents and of the Fiat–Shamir challenge.
CHALLENGE_BITS = 128
#: Statistical hiding of the response: ``s`` is this many bits longer than ``c r*``.
_HIDING_BITS = 128


def _hash_int(*parts: bytes) -> int:
    digest = hashlib.sha256(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()
    return int.from_bytes(digest[: CHALLENGE_BITS // 8], "big")


def batch_exponents(context: bytes, count: int) -> list[int]:
    """The round's batching exponents ``e_b = H(context, b)`` (nonzero, 128 bits)."""
    return [_hash_int(b"trapdoor/pok-e", context, b.to_bytes(4, "big")) | 1 for b in range(count)]


def batched_a(params: PublicParams, a_components: Sequence[int], context: bytes) -> mpz:
    """``A* = Π A_b^{e_b} mod N^2`` for the round's exponents."""
    n2 = params.nsquare
    exponents = batch_exponents(context, len(a_components))
    total = mpz(1)
    for a, e in zip(a_components, exponents, strict=True):
        total = total * gmpy2.powmod(mpz(a), e, n2) % n2
    return total


def _max_response_bits(params: PublicParams, blocks: int) -> int:
    """An upper bound on ``z``'s length; anything longer is refused unread."""
    r_star_bits = params.nsquare.bit_length() + CHALLENGE_BITS + blocks.bit_length()
    return r_star_bits + CHALLENGE_BITS + _HIDING_BITS + 1


def _challenge(context: bytes, subject_id: str, a_star: mpz, t: mpz) -> int:
    return _hash_int(
        b"trapdoor/pok-c",
        context,
        subject_id.encode(),
        int(a_star).to_bytes((int(a_star).bit_length() + 7) // 8 or 1, "big"),
        int(t).to_bytes((int(t).bit_length() + 7) // 8 or 1, "big"),
    )


@dataclass(frozen=True)
class RandomnessProof:
    """``(A*, T, z)``: what an upload statement carries (hex on the wire)."""

    a_star: mpz
    t: mpz
    z: mpz

    def to_obj(self) -> dict[str, str]:
        return {
            "a_star": format(self.a_star, "x"),
            "t": format(self.t, "x"),
            "z": format(self.z, "x"),
        }

    @classmethod
    def from_obj(cls, obj: Any) -> RandomnessProof:
        """Parse the wire form; ``ValueError`` for anything that is not three hex integers."""
        if not isinstance(obj, dict) or set(obj) != {"a_star", "t", "z"}:
            raise ValueError('a randomness proof is {"a_star", "t", "z"}')
        values = []
        for name in ("a_star", "t", "z"):
            text = obj[name]
            if not isinstance(text, str) or not text or len(text) > 4096:
                raise ValueError(f"{name} must be a hex string")
            try:
                values.append(mpz(text, 16))
            except ValueError:
                raise ValueError(f"{name} must be a hex string") from None
        return cls(*values)


def prove_randomness(
    params: PublicParams,
    randomness: Sequence[int],
    context: bytes,
    subject_id: str,
    rng: RandomSource,
) -> RandomnessProof:
    """Prove knowledge of every ``r_b`` behind ``A_b = g^{r_b}`` (batched, bound to context)."""
    n2 = params.nsquare
    exponents = batch_exponents(context, len(randomness))
    r_star = sum(mpz(e) * mpz(r) for e, r in zip(exponents, randomness, strict=True))
    a_star = gmpy2.powmod(params.g, r_star, n2)
    s = mpz(rng.randrange(0, 1 << (int(r_star.bit_length()) + CHALLENGE_BITS + _HIDING_BITS)))
    t = gmpy2.powmod(params.g, s, n2)
    c = _challenge(context, subject_id, a_star, t)
    return RandomnessProof(a_star, t, s + c * r_star)


def verify_randomness(
    params: PublicParams,
    proof: RandomnessProof,
    context: bytes,
    subject_id: str,
    *,
    a_components: Sequence[int] | None = None,
    blocks: int,
) -> None:
    """Check ``g^z = T · A*^c``; with ``a_components``, also that ``A*`` is their batch.

    Raises :class:`~trapdoor.crypto.bcp.InvalidElementError` on any failure.
    """
    n2 = params.nsquare
    a_star = params.check_element(proof.a_star, what="A*")
    t = params.check_element(proof.t, what="T")
    if not proof.z >= 0 or proof.z.bit_length() > _max_response_bits(params, blocks):
        raise InvalidElementError("the proof's response is out of range")
    if a_components is not None:
        if len(a_components) != blocks:
            raise InvalidElementError("the proof is for another number of blocks")
        if batched_a(params, a_components, context) != a_star:
            raise InvalidElementError("the proof is not about this upload's A components")
    c = _challenge(context, subject_id, a_star, t)
    if gmpy2.powmod(params.g, proof.z, n2) != t * gmpy2.powmod(a_star, c, n2) % n2:
        raise InvalidElementError("the proof of knowledge of the randomness does not verify")


def verify_release_chain(
    params: PublicParams,
    previous_a: Sequence[int],
    current_a: Sequence[int],
    a_stars: Sequence[int],
    context: bytes,
) -> None:
    """The ``A`` components grew since the previous release by exactly the proven uploads.

    ``Π_k A*_k = Π_b (current_b / previous_b)^{e_b}``; each ``A*_k`` must have been checked
    with :func:`verify_randomness` (without ``a_components``: the KGC has only ``A*``).
    """
    if len(previous_a) != len(current_a):
        raise InvalidElementError("the previous release has another number of blocks")
    n2 = params.nsquare
    grown = [
        mpz(c) * gmpy2.invert(mpz(p), n2) % n2 for p, c in zip(previous_a, current_a, strict=True)
    ]
    product = mpz(1)
    for a_star in a_stars:
        product = product * mpz(a_star) % n2
    if batched_a(params, grown, context) != product:
        raise InvalidElementError(
            "the released vector's A components are not the previous ones times the proven uploads"
        )
