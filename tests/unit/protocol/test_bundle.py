"""The release bundle (trapdoor.protocol.bundle), both modes.

bcp: a bundle opens only under the exact binding the KGC sealed it for (job, round,
attempt, base, contributor set, blind digest) and only with the ``R`` that binding names,
so a PS that serves it under other fields, or hands out another ``R``, gets nothing that
opens. masked: the KGC-signed release statement, every contributor opens the same mask
sum, a PS cannot forge or edit a bundle, and the next model is refused beyond its bound.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from masked_support import (
    CLIP,
    FRAC,
    JOB,
    LENGTH,
    MODEL_BOUND,
    W0,
    MaskedWorld,
    Upload,
    default_layout,
)
from protocol_support import HYP, PARTICIPANTS, THREE, Params, refused

from trapdoor.crypto.bcp import MasterKey, PublicKey, PublicParams, SecretKey
from trapdoor.crypto.blocks import (
    EncryptedVector,
    VectorEncryptor,
    add_plaintexts,
    generate_job_key,
)
from trapdoor.crypto.encoding import EncodingError
from trapdoor.crypto.masking import (
    RingSpec,
    RingVector,
    add_into,
    decode_ring,
    encode_ring,
    mask_vector,
    ring_sum,
    unmask,
    vector_from_bytes,
)
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import (
    b64decode,
    b64encode,
    generate_signing_key,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import decode_frame, encode_ring_frame
from trapdoor.protocol.audit import contributors_sha256
from trapdoor.protocol.bundle import (
    MASKED_RELEASE_PURPOSE,
    MaskedReleaseBinding,
    ReleaseBinding,
    blind_from_text,
    blind_sha256,
    blind_to_text,
    bundle_sha256,
    listed_uploads,
    next_model,
    open_mask_sum,
    open_release,
    plaintexts_from_bytes,
    plaintexts_to_bytes,
    release_statement,
    seal_mask_sum,
    seal_release,
    verify_release_statement,
)
from trapdoor.protocol.common import ProtocolError, json_sha256, kgc_key_id
from trapdoor.protocol.job import MaskedLayout, initial_state
from trapdoor.protocol.release_request import MaskedReleaseCheck, kgc_mask_sum
from trapdoor.protocol.upload import seed_sha256, verify_masked_upload_statement

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


# --------------------------------------------------------------------------- sealing and opening


@dataclass
class Release:
    check: MaskedReleaseCheck
    mask_sum: RingVector
    binding: MaskedReleaseBinding
    bundle: dict[str, Any]


def _seal(masked_world: MaskedWorld, check: MaskedReleaseCheck, total: RingVector) -> Release:
    binding = MaskedReleaseBinding(
        JOB, masked_world.terms.digest, check.round, check.run, check.payloads
    )
    bundle = seal_mask_sum(
        masked_world.kgc,
        masked_world.master,
        total,
        masked_world.layout,
        {s: masked_world.bcp[s][0] for s in check.contributors},
        binding=binding,
        rng=random.Random(21),
        random_bytes=random.Random(22).randbytes,
    )
    return Release(check, total, binding, bundle)


@pytest.fixture(scope="module")
def release(masked_world: MaskedWorld, round0: list[Upload]) -> Release:
    check = masked_world.check(masked_world.header(round0))
    return _seal(masked_world, check, kgc_mask_sum(masked_world.master, masked_world.terms, check))


def view_of(
    bundle: dict[str, Any], subject: str, wrapped_from: str | None = None
) -> dict[str, Any]:
    """What ``GET .../model`` serves ``subject``: the bundle with only its wrapped key."""
    view = {k: copy.deepcopy(v) for k, v in bundle.items() if k != "wrapped_keys"}
    view["wrapped_key"] = copy.deepcopy(bundle["wrapped_keys"][wrapped_from or subject])
    return view


def test_seal_bundle_shape(masked_world: MaskedWorld, release: Release) -> None:
    bundle = release.bundle
    assert set(bundle) == {
        "aggregation",
        "job_id",
        "job_terms_sha256",
        "round",
        "run",
        "uploads",
        "sealed_mask",
        "wrapped_keys",
        "wrapped_keys_sha256",
        "release_signature",
    }
    assert bundle["aggregation"] == "masked" and bundle["uploads"] == dict(release.check.payloads)
    assert sorted(bundle["wrapped_keys"]) == THREE
    assert bundle["wrapped_keys_sha256"] == {
        s: json_sha256(w) for s, w in bundle["wrapped_keys"].items()
    }
    statement = release_statement(
        release.binding, bundle["sealed_mask"], bundle["wrapped_keys"], kgc_key_id(masked_world.kgc)
    )
    assert statement["purpose"] == MASKED_RELEASE_PURPOSE
    assert statement["sealed_mask_sha256"] == json_sha256(bundle["sealed_mask"])
    # The signature is over exactly that statement.
    verify_json(masked_world.kgc.public_key(), statement, bundle["release_signature"])
    assert MaskedReleaseBinding.from_fields(bundle) == release.binding


def test_every_contributor_opens_the_same_mask_sum(
    masked_world: MaskedWorld, release: Release
) -> None:
    names = set()
    for subject in THREE:
        view = view_of(release.bundle, subject)
        binding = verify_release_statement(masked_world.kgc.public_key(), view, subject_id=subject)
        assert binding == release.binding and binding.contributors == THREE
        opened = open_mask_sum(
            masked_world.bcp[subject][1],
            binding,
            view["sealed_mask"],
            view["wrapped_key"],
            masked_world.layout,
        )
        assert opened.dtype == np.uint32
        assert opened.tolist() == release.mask_sum.tolist()
        names.add(bundle_sha256(binding, view["sealed_mask"]))
    assert len(names) == 1  # every contributor names the bundle alike in a report


def test_seal_refuses_keys_not_for_the_listed_contributors(
    masked_world: MaskedWorld, release: Release
) -> None:
    for keys in (THREE[:2], PARTICIPANTS):
        with pytest.raises(ValueError, match="listed contributors"):
            seal_mask_sum(
                masked_world.kgc,
                masked_world.master,
                release.mask_sum,
                masked_world.layout,
                {s: masked_world.bcp[s][0] for s in keys},
                binding=release.binding,
                rng=random.Random(1),
                random_bytes=random.Random(2).randbytes,
            )


def test_a_non_contributor_cannot_open(masked_world: MaskedWorld, release: Release) -> None:
    view = view_of(release.bundle, "sub-a")
    refused(
        "bad-release",
        lambda: verify_release_statement(masked_world.kgc.public_key(), view, subject_id="sub-d"),
    )
    for wrapped in release.bundle["wrapped_keys"].values():
        with pytest.raises(SealError):
            open_mask_sum(
                masked_world.bcp["sub-d"][1],
                release.binding,
                release.bundle["sealed_mask"],
                wrapped,
                masked_world.layout,
            )
    # Nor can a contributor with another's wrapped key.
    with pytest.raises(SealError):
        open_mask_sum(
            masked_world.bcp["sub-a"][1],
            release.binding,
            release.bundle["sealed_mask"],
            release.bundle["wrapped_keys"]["sub-b"],
            masked_world.layout,
        )


def _flip_ct(sealed: dict[str, str]) -> dict[str, str]:
    raw = bytearray(b64decode(sealed["ct"]))
    raw[0] ^= 1
    return {**sealed, "ct": b64encode(bytes(raw))}


def _resign(
    masked_world: MaskedWorld, view: dict[str, Any], key: Any, key_id: str
) -> dict[str, Any]:
    binding = MaskedReleaseBinding.from_fields(view)
    statement = {
        "purpose": MASKED_RELEASE_PURPOSE,
        "kgc_key_id": key_id,
        **binding.fields(),
        "sealed_mask_sha256": json_sha256(view["sealed_mask"]),
        "wrapped_keys_sha256": dict(view["wrapped_keys_sha256"]),
    }
    return {**view, "release_signature": sign_json(key, statement)}


def _other_key() -> Any:
    return generate_signing_key()


#: (name, change(masked_world, view of sub-a) -> view)
TAMPERED_VIEWS: list[tuple[str, Callable[[MaskedWorld, dict[str, Any]], dict[str, Any]]]] = [
    ("sealed mask altered", lambda w, v: {**v, "sealed_mask": _flip_ct(v["sealed_mask"])}),
    ("sealed mask missing", lambda w, v: {k: x for k, x in v.items() if k != "sealed_mask"}),
    (
        "uploads: a digest swapped",
        lambda w, v: {**v, "uploads": {**v["uploads"], "sub-b": "00" * 32}},
    ),
    (
        "uploads: one dropped",
        lambda w, v: {**v, "uploads": {k: x for k, x in v["uploads"].items() if k != "sub-c"}},
    ),
    ("uploads: one added", lambda w, v: {**v, "uploads": {**v["uploads"], "sub-d": "00" * 32}}),
    ("uploads empty", lambda w, v: {**v, "uploads": {}}),
    ("another round", lambda w, v: {**v, "round": 1}),
    ("another run", lambda w, v: {**v, "run": 1}),
    ("round as bool", lambda w, v: {**v, "round": False}),
    ("another job", lambda w, v: {**v, "job_id": "job-x"}),
    ("other terms", lambda w, v: {**v, "job_terms_sha256": "00" * 32}),
    ("bcp aggregation", lambda w, v: {**v, "aggregation": "bcp"}),
    (
        "wrapped key digests missing one",
        lambda w, v: {
            **v,
            "wrapped_keys_sha256": {
                k: x for k, x in v["wrapped_keys_sha256"].items() if k != "sub-b"
            },
        },
    ),
    ("wrapped key digests absent", lambda w, v: {**v, "wrapped_keys_sha256": None}),
    ("no signature", lambda w, v: {**v, "release_signature": None}),
    (
        "signed by another key",
        lambda w, v: _resign(w, v, _other_key(), kgc_key_id(w.kgc)),
    ),
    (
        "signed by another key under its own id",
        lambda w, v: _resign(w, v, (k := _other_key()), kgc_key_id(k)),
    ),
]


@pytest.mark.parametrize(
    "change", [case[1] for case in TAMPERED_VIEWS], ids=[case[0] for case in TAMPERED_VIEWS]
)
def test_a_tampered_release_view_is_refused(
    masked_world: MaskedWorld,
    release: Release,
    change: Callable[[MaskedWorld, dict[str, Any]], dict[str, Any]],
) -> None:
    view = change(masked_world, view_of(release.bundle, "sub-a"))
    refused(
        "bad-release",
        lambda: verify_release_statement(masked_world.kgc.public_key(), view, subject_id="sub-a"),
    )


def test_a_swapped_wrapped_key_is_refused(masked_world: MaskedWorld, release: Release) -> None:
    view = view_of(release.bundle, "sub-a", wrapped_from="sub-b")
    refused(
        "bad-release",
        lambda: verify_release_statement(masked_world.kgc.public_key(), view, subject_id="sub-a"),
    )
    # A wrapped key the KGC never made (the PS's own data key wrapped to sub-a) either.
    forged = view_of(release.bundle, "sub-a")
    forged["wrapped_key"] = {**forged["wrapped_key"], "nonce": b64encode(bytes(12))}
    refused(
        "bad-release",
        lambda: verify_release_statement(masked_world.kgc.public_key(), forged, subject_id="sub-a"),
    )


def test_a_release_verifies_only_under_the_pinned_kgc(
    masked_world: MaskedWorld, release: Release
) -> None:
    view = view_of(release.bundle, "sub-a")
    assert verify_release_statement(masked_world.kgc.public_key(), view, subject_id="sub-a")
    other = generate_signing_key().public_key()
    refused("bad-release", lambda: verify_release_statement(other, view, subject_id="sub-a"))


def test_open_mask_sum_is_bound_to_the_binding(masked_world: MaskedWorld, release: Release) -> None:
    sealed, wrapped = release.bundle["sealed_mask"], release.bundle["wrapped_keys"]["sub-a"]
    key = masked_world.bcp["sub-a"][1]
    assert open_mask_sum(key, release.binding, sealed, wrapped, masked_world.layout).tolist() == (
        release.mask_sum.tolist()
    )
    for binding in (
        replace(release.binding, round=1),
        replace(release.binding, run=1),
        replace(release.binding, job_terms_sha256="00" * 32),
        replace(release.binding, uploads={**release.binding.uploads, "sub-b": "00" * 32}),
    ):
        with pytest.raises(SealError):
            open_mask_sum(key, binding, sealed, wrapped, masked_world.layout)
    with pytest.raises(SealError):
        open_mask_sum(key, release.binding, _flip_ct(sealed), wrapped, masked_world.layout)
    with pytest.raises(SealError):
        open_mask_sum(key, release.binding, sealed, None, masked_world.layout)


# --------------------------------------------------------------------------- the next model


def test_next_model_known_answer(
    masked_world: MaskedWorld, release: Release, round0: list[Upload]
) -> None:
    ring = masked_world.layout.ring
    opened = open_mask_sum(
        masked_world.bcp["sub-b"][1],
        release.binding,
        release.bundle["sealed_mask"],
        release.bundle["wrapped_keys"]["sub-b"],
        masked_world.layout,
    )
    w1 = next_model(masked_world.layout, W0, [u.y for u in round0], opened)
    exact = W0 + sum(u.update for u in round0)
    # Each of the 1 + 3 encoded terms is rounded by at most half a unit 2^-f.
    assert np.all(np.abs(w1 - exact) <= 4 * 2.0 ** -(FRAC + 1))
    assert np.abs(w1 - exact).max() > 0  # the rounding is real, not a copy of the floats
    # And exactly the sum of the encodings, decoded.
    encodings = [encode_ring(W0, ring)] + [encode_ring(u.update, ring) for u in round0]
    assert w1.tolist() == decode_ring(ring_sum(encodings, ring, LENGTH), ring).tolist()
    # W_1 is exactly representable: the next round re-encodes it without loss.
    assert decode_ring(encode_ring(w1, ring), ring).tolist() == w1.tolist()
    # A wrong mask sum (a seed tampered at the KGC's input) decodes out of bounds.
    with pytest.raises(EncodingError, match="beyond the job's bound"):
        next_model(masked_world.layout, W0, [u.y for u in round0], opened ^ np.uint32(1 << 29))


def test_a_round_through_ring_frames(
    masked_world: MaskedWorld, release: Release, round0: list[Upload]
) -> None:
    """The PS sums the framed ``y`` into ``Z``; ``Z_1 - D`` is the next model's encoding."""
    ring = masked_world.layout.ring
    z = initial_state(masked_world.layout, W0)
    for upload in round0:
        frame = encode_ring_frame(
            upload.y_bytes,
            bits=ring.bits,
            num_elements=LENGTH,
            extra_header={"job_id": JOB, "round": 0, **upload.sent},
        )
        decoded = decode_frame(frame, kind="ring-vector")
        assert decoded.header["statement"] == upload.statement
        verify_masked_upload_statement(
            decoded.header["statement"],
            masked_world.terms,
            round_number=0,
            run=0,
            payload_sha256=hashlib.sha256(decoded.payload).hexdigest(),
            seed_sha256=seed_sha256(decoded.header["seed"]),
        )
        add_into(z, vector_from_bytes(decoded.payload, ring, LENGTH))
    w1 = next_model(masked_world.layout, W0, [u.y for u in round0], release.mask_sum)
    assert decode_ring(unmask(z, release.mask_sum), ring).tolist() == w1.tolist()
    # Neither Z nor any y alone is the model.
    assert decode_ring(z, ring).tolist() != w1.tolist()


def test_listed_uploads_are_exactly_the_signed_ones(
    masked_world: MaskedWorld, release: Release, round0: list[Upload]
) -> None:
    """A contributor sums the uploads the KGC's binding lists, each checked by digest."""
    ring = masked_world.layout.ring
    frames = {
        u.subject: encode_ring_frame(
            u.y_bytes, bits=ring.bits, num_elements=LENGTH, extra_header=u.sent
        )
        for u in round0
    }
    got = listed_uploads(release.binding, masked_world.layout, frames.__getitem__)
    by_subject = {u.subject: u.y for u in round0}
    assert [v.tolist() for v in got] == [
        by_subject[s].tolist() for s in sorted(release.binding.uploads)
    ]
    victim = sorted(frames)[1]
    shifted = bytes([round0[0].y_bytes[0] ^ 1]) + round0[0].y_bytes[1:]
    for served in (
        encode_ring_frame(shifted, bits=ring.bits, num_elements=LENGTH),  # a moved y
        frames[sorted(frames)[0]],  # another contributor's upload
        b"not a frame",
        encode_ring_frame(round0[0].y_bytes[:-4], bits=ring.bits, num_elements=LENGTH - 1),
    ):
        with pytest.raises(ProtocolError) as refused:
            listed_uploads(
                release.binding,
                masked_world.layout,
                lambda s, served=served: served if s == victim else frames[s],
            )
        assert refused.value.code == "upload-mismatch"


def test_next_model_refuses_a_garbage_upload(
    masked_world: MaskedWorld, release: Release, round0: list[Upload]
) -> None:
    ys = [u.y for u in round0]
    ring = masked_world.layout.ring
    shifted = mask_vector(ys[1], encode_ring(np.full(LENGTH, 40.0), ring))
    with pytest.raises(EncodingError, match="beyond the job's bound"):
        next_model(masked_world.layout, W0, [ys[0], shifted, ys[2]], release.mask_sum)
    garbage = np.random.default_rng(5).integers(0, 2**32, LENGTH, dtype=np.uint64).astype(np.uint32)
    with pytest.raises(EncodingError):
        next_model(masked_world.layout, W0, [ys[0], garbage, ys[2]], release.mask_sum)
    # A missing upload leaves its mask unmatched: garbage too.
    with pytest.raises(EncodingError):
        next_model(masked_world.layout, W0, ys[:2], release.mask_sum)


def test_next_model_bound_is_inclusive() -> None:
    layout = default_layout(2)
    zero = np.zeros(2, dtype=np.uint32)
    up = encode_ring(np.array([16.0, -16.0]), layout.ring)
    at = next_model(layout, np.array([16.0, -16.0]), [up], zero)
    assert at.tolist() == [32.0, -32.0]
    over = encode_ring(np.array([2.0**-20, 0.0]), layout.ring)
    with pytest.raises(EncodingError, match="beyond"):
        next_model(layout, at, [over], zero)


@HYP
@given(
    bits=st.sampled_from([32, 64]),
    near=st.lists(st.integers(min_value=1, max_value=2**20), min_size=3 * 4, max_size=3 * 4),
    updates=st.lists(
        st.floats(min_value=-4.0, max_value=4.0, allow_nan=False), min_size=3 * 4, max_size=3 * 4
    ),
)
def test_next_model_wraps_the_ring_exactly(
    bits: int, near: list[int], updates: list[float]
) -> None:
    """Masks just below 2^k make every ``y`` and the mask sum wrap; the model does not."""
    length = 4
    layout = MaskedLayout(RingSpec(bits, FRAC), length, MODEL_BOUND, CLIP)
    ring = layout.ring
    w0 = np.array([1.0, -2.5, 0.0, 30.0])
    masks = [
        np.array([ring.modulus - v for v in near[i * length : (i + 1) * length]], dtype=ring.dtype)
        for i in range(3)
    ]
    deltas = [np.array(updates[i * length : (i + 1) * length]) / 8 for i in range(3)]
    ys = [mask_vector(encode_ring(d, ring), m) for d, m in zip(deltas, masks, strict=True)]
    mask_sum = ring_sum(masks, ring, length)
    exact = [
        (round(w0[i] * 2**FRAC) + sum(round(d[i] * 2**FRAC) for d in deltas)) / 2**FRAC
        for i in range(length)
    ]
    model = next_model(layout, w0, ys, mask_sum)
    assert model.tolist() == exact
