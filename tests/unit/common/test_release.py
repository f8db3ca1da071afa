"""The release bundle bound to its audited attempt: seal at the KGC, open at a contributor.

A bundle opens only under the exact binding the KGC sealed it for (job, round, attempt,
base, contributor set, blind digest) and only with the ``R`` that binding names, so a PS
that serves it under other fields, or hands out another ``R``, gets nothing that opens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import MasterKey, PublicKey, PublicParams, SecretKey
from trapdoor.crypto.blocks import (
    EncryptedVector,
    VectorEncryptor,
    add_plaintexts,
    generate_job_key,
)
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import b64decode, b64encode
from trapdoor.protocol.bundle import (
    ReleaseBinding,
    blind_from_text,
    blind_sha256,
    blind_to_text,
    bundle_sha256,
    open_release,
    plaintexts_from_bytes,
    plaintexts_to_bytes,
    seal_release,
)
from trapdoor.protocol.messages import contributors_sha256

Params = tuple[PublicParams, MasterKey]
CONTRIBUTORS = ["sub-a", "sub-b", "sub-c"]
NUM_PLAINTEXTS = 5


@dataclasses.dataclass
class Setup:
    params: PublicParams
    master: MasterKey
    keys: dict[str, tuple[PublicKey, SecretKey]]
    aggregate: EncryptedVector
    model: list[int]
    blind: list[int]
    binding: ReleaseBinding

    @property
    def n(self) -> int:
        return int(self.params.n)

    def public_keys(self) -> dict[str, PublicKey]:
        return {s: self.keys[s][0] for s in CONTRIBUTORS}

    def seal(self, binding: ReleaseBinding | None = None, **kw: Any) -> dict[str, Any]:
        return seal_release(
            self.master,
            kw.pop("release", add_plaintexts(self.aggregate, self.blind)),
            kw.pop("contributors", self.public_keys()),
            binding=binding or self.binding,
            rng=random.Random(kw.pop("seed", 1)),
        )

    def open(self, bundle: dict[str, Any], subject: str = "sub-a", **kw: Any) -> list[int]:
        opened = open_release(
            kw.pop("secret_key", self.keys[subject][1]),
            binding=kw.pop("binding", ReleaseBinding.from_fields(bundle)),
            sealed_model=kw.pop("sealed_model", bundle["sealed_model"]),
            wrapped_key=kw.pop("wrapped_key", bundle["wrapped_keys"][subject]),
            blind=kw.pop("blind", self.blind),
        )
        return [int(v) for v in opened]


@pytest.fixture(scope="module")
def setup(small_params: Params) -> Iterator[Setup]:
    params, master = small_params
    rng = random.Random(17)
    n = int(params.n)
    keys = {s: params.keygen(rng) for s in [*CONTRIBUTORS, "sub-x"]}
    job_key = generate_job_key(params, 2, rng)
    model = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
    blind = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
    with VectorEncryptor(job_key) as encryptor:
        aggregate = encryptor.encrypt(model, rng)
    binding = ReleaseBinding(
        job_id="job-1",
        round=2,
        attempt=1,
        base_sha256="ba" * 32,
        contributors_sha256=contributors_sha256(CONTRIBUTORS),
        blind_sha256=blind_sha256(blind, n),
    )
    yield Setup(params, master, keys, aggregate, model, blind, binding)


@pytest.fixture(scope="module")
def bundle(setup: Setup) -> dict[str, Any]:
    return setup.seal()


# --------------------------------------------------------------------------- round trip


def test_every_contributor_opens_the_unblinded_model(setup: Setup, bundle: dict[str, Any]) -> None:
    assert {k: bundle[k] for k in setup.binding.fields()} == setup.binding.fields()
    assert bundle["num_plaintexts"] == NUM_PLAINTEXTS
    assert list(bundle["wrapped_keys"]) == CONTRIBUTORS
    assert ReleaseBinding.from_fields(bundle) == setup.binding
    for subject in CONTRIBUTORS:
        assert setup.open(bundle, subject) == setup.model


def test_the_sealed_model_is_w_plus_r_not_w(setup: Setup, bundle: dict[str, Any]) -> None:
    """The KGC sees (and seals) only the blinded M = W + R."""
    sealed = b64decode(bundle["sealed_model"]["ct"])
    width = (setup.n.bit_length() + 7) // 8
    assert len(sealed) == NUM_PLAINTEXTS * width + 16  # AES-GCM tag
    for m in setup.model:
        assert m.to_bytes(width, "big") not in sealed


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    job_id=st.text(min_size=1, max_size=12),
    round_number=st.integers(min_value=0, max_value=2**31 - 1),
    attempt=st.integers(min_value=0, max_value=1000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_binding_round_trips(
    setup: Setup, job_id: str, round_number: int, attempt: int, seed: int
) -> None:
    rng = random.Random(seed)
    blind = [rng.randrange(setup.n) for _ in range(NUM_PLAINTEXTS)]
    binding = ReleaseBinding(
        job_id,
        round_number,
        attempt,
        hashlib.sha256(b"base%d" % seed).hexdigest(),
        contributors_sha256(CONTRIBUTORS[:2]),
        blind_sha256(blind, setup.n),
    )
    release = add_plaintexts(setup.aggregate, blind)
    bundle = setup.seal(binding, release=release, seed=seed)
    assert ReleaseBinding.from_fields(bundle) == binding
    assert setup.open(bundle, "sub-b", blind=blind) == setup.model


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "job-2"},
        {"round": 1},
        {"round": 3},
        {"attempt": 0},
        {"attempt": 2},
        {"base_sha256": "bb" * 32},
        {"contributors_sha256": contributors_sha256(CONTRIBUTORS[:2])},
        {"contributors_sha256": contributors_sha256([*CONTRIBUTORS, "sub-x"])},
        {"blind_sha256": "b1" * 32},
    ],
    ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))!s:.8}",
)
def test_a_bundle_under_any_other_binding_does_not_open(
    setup: Setup, bundle: dict[str, Any], change: dict[str, Any]
) -> None:
    other = dataclasses.replace(setup.binding, **change)
    with pytest.raises(SealError):
        setup.open(bundle, binding=other)
    served = {**bundle, **change}  # the PS serves the bundle with a field rewritten
    with pytest.raises(SealError):
        setup.open(served)


def test_another_blind_does_not_open(setup: Setup, bundle: dict[str, Any]) -> None:
    other = [(r + 1) % setup.n for r in setup.blind]
    with pytest.raises(SealError, match="blind"):
        setup.open(bundle, blind=other)
    # another R with a binding that names it: the sealed context differs, nothing opens
    named = dataclasses.replace(setup.binding, blind_sha256=blind_sha256(other, setup.n))
    with pytest.raises(SealError):
        setup.open(bundle, binding=named, blind=other)
    for wrong_length in (setup.blind[:-1], [*setup.blind, 0], []):
        with pytest.raises(SealError):
            setup.open(bundle, blind=wrong_length)


def test_only_a_contributor_opens_and_only_its_own_wrapped_key(
    setup: Setup, bundle: dict[str, Any]
) -> None:
    outsider = setup.keys["sub-x"][1]
    for subject in CONTRIBUTORS:
        with pytest.raises(SealError):
            setup.open(bundle, subject, secret_key=outsider)
    with pytest.raises(SealError):
        setup.open(bundle, "sub-a", wrapped_key=bundle["wrapped_keys"]["sub-b"])
    with pytest.raises(SealError):
        setup.open(bundle, wrapped_key="not a wrapped key")


def test_a_tampered_sealed_model_does_not_open(setup: Setup, bundle: dict[str, Any]) -> None:
    ct = bytearray(b64decode(bundle["sealed_model"]["ct"]))
    ct[0] ^= 1
    tampered = {**bundle["sealed_model"], "ct": b64encode(bytes(ct))}
    with pytest.raises(SealError):
        setup.open(bundle, sealed_model=tampered)
    # the sealed model of another release (same keys, other binding) does not open here
    other = setup.seal(dataclasses.replace(setup.binding, attempt=2), seed=5)
    with pytest.raises(SealError):
        setup.open(bundle, sealed_model=other["sealed_model"])


def test_a_release_needs_a_contributor(setup: Setup) -> None:
    with pytest.raises(ValueError, match="contributor"):
        setup.seal(contributors={})


# --------------------------------------------------------------------------- binding and blind


def test_the_binding_context_names_every_field(setup: Setup) -> None:
    b = setup.binding
    assert (
        b.context()
        == (
            f"trapdoor-release/v3|job-1|2|0|1|{'ba' * 32}|{b.contributors_sha256}|{b.blind_sha256}"
        ).encode()
    )
    changes: list[dict[str, Any]] = [
        {"job_id": "job-2"},
        {"round": 3},
        {"run": 1},
        {"attempt": 2},
        {"base_sha256": "bb" * 32},
        {"contributors_sha256": "cc" * 32},
        {"blind_sha256": "dd" * 32},
    ]
    contexts = {dataclasses.replace(b, **c).context() for c in changes}
    assert len(contexts) == len(changes) and b.context() not in contexts


def test_the_bundle_digest_names_the_binding_and_the_sealed_model(setup: Setup) -> None:
    b = setup.binding
    sealed = {"nonce": "AAAA", "ciphertext": "BBBB"}
    digest = bundle_sha256(b, sealed)
    assert len(digest) == 64 and digest == bundle_sha256(b, dict(sealed))
    others = {
        bundle_sha256(dataclasses.replace(b, run=1), sealed),
        bundle_sha256(dataclasses.replace(b, attempt=2), sealed),
        bundle_sha256(b, {**sealed, "ciphertext": "BBBC"}),
    }
    assert len(others) == 3 and digest not in others


def test_the_binding_is_rebuilt_from_a_bundle(setup: Setup) -> None:
    fields = setup.binding.fields()
    assert ReleaseBinding.from_fields({**fields, "extra": 1}) == setup.binding
    for name in fields:
        with pytest.raises(ValueError, match="binding"):
            ReleaseBinding.from_fields({k: v for k, v in fields.items() if k != name})
    for name in ("round", "attempt"):
        for bad in (None, "two", [2]):
            with pytest.raises(ValueError):
                ReleaseBinding.from_fields({**fields, name: bad})


def test_the_blind_digest_is_a_known_answer(setup: Setup) -> None:
    n = setup.n
    width = (n.bit_length() + 7) // 8
    blind = [0, 1, n - 1]
    raw = b"".join(v.to_bytes(width, "big") for v in blind)
    assert plaintexts_to_bytes(blind, n) == raw
    assert blind_sha256(blind, n) == hashlib.sha256(raw).hexdigest()
    assert blind_sha256(blind[::-1], n) != blind_sha256(blind, n)
    assert blind_sha256(blind[:2], n) != blind_sha256(blind, n)
    assert blind_from_text(blind_to_text(blind, n), n) == blind
    assert plaintexts_from_bytes(raw, n) == blind
    with pytest.raises(ValueError):
        plaintexts_from_bytes(raw[:-1], n)
    with pytest.raises(ValueError):
        plaintexts_from_bytes(n.to_bytes(width, "big"), n)
