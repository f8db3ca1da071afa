"""Tests for trapdoor.protocol.masked: the messages of the masked mode (PROTOCOL "Masked mode").

Each check is played from the side that would break it: a PS that serves another layout
or initial model than the KGC signed, swaps a seed between uploads, counts one seed twice
or relabels a round; a colluder that re-submits an honest seed ciphertext tampered as
``c·(1+δN)``; a PS that forges or edits a release bundle; a contributor that uploads
garbage. Known answers where the value can be written down, properties elsewhere.

Seeds are 256 bits, so the BCP parameters here have a 512-bit ``N`` (the session's
256-bit ``small_params`` cannot carry a seed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import MasterKey, PublicParams, generate_params
from trapdoor.crypto.blocks import generate_job_key
from trapdoor.crypto.encoding import EncodingError
from trapdoor.crypto.masking import (
    RingSpec,
    RingVector,
    add_into,
    decode_ring,
    derive_mask,
    encode_ring,
    encrypt_seed,
    mask_vector,
    ring_sum,
    seed_to_int,
    unmask,
    vector_from_bytes,
    vector_to_bytes,
)
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import (
    b64decode,
    b64encode,
    generate_signing_key,
    public_key_hex,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import decode_frame, encode_ring_frame, to_obj
from trapdoor.protocol.bundle import bundle_sha256
from trapdoor.protocol.masked import (
    MASKED_LAYOUT_KIND,
    MASKED_RELEASE_PURPOSE,
    MASKED_UPLOAD_PURPOSE,
    MaskedLayout,
    MaskedReleaseBinding,
    MaskedReleaseCheck,
    build_masked_upload_statement,
    check_masked_release_request,
    initial_state,
    initial_state_sha256,
    kgc_mask_sum,
    listed_uploads,
    mask_context,
    masked_layout,
    masked_release_request_header,
    next_model,
    open_mask_sum,
    release_statement,
    seal_mask_sum,
    seed_from_obj,
    seed_sha256,
    seed_to_obj,
    verify_masked_upload_statement,
    verify_release_statement,
)
from trapdoor.protocol.messages import (
    JobTerms,
    ProtocolError,
    UndecodedRelease,
    build_undecodable_statement,
    build_upload_statement,
    check_job_view,
    json_sha256,
    kgc_key_id,
    pok_context,
    requested_terms,
    sign_job_terms,
    verify_job_terms,
    verify_release_signature,
    verify_upload_statement,
)

PARAMS_512_SEED = 512_2024
PARTICIPANTS = ["sub-a", "sub-b", "sub-c", "sub-d"]
THREE = PARTICIPANTS[:3]
PS = "sub-ps"
JOB = "job-m"
LENGTH = 6
FRAC = 20
MODEL_BOUND = 32.0
CLIP = 16.0
ROUNDS = 3
#: W_0, with two values that exercise the rounding: 3·2^-21 is 1.5 units (rounds to 2),
#: and -1.25 and -0.125 are negative (two's complement).
W0 = np.array([0.5, -1.25, 0.0, 3.0, -0.125, 3 * 2.0**-21])
#: encode(W_0) in Z_{2^32} at 20 fractional bits, by hand.
W0_RING32 = [2**19, 2**32 - 5 * 2**18, 0, 3 * 2**20, 2**32 - 2**17, 2]
BUNDLE = "bd" * 32
HYP = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
Params = tuple[PublicParams, MasterKey]


def refused(code: str, call: Callable[[], object]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code == code, info.value.message
    return info.value


def default_layout(length: int = LENGTH) -> MaskedLayout:
    return masked_layout(
        length=length,
        frac_bits=FRAC,
        model_bound=MODEL_BOUND,
        clip_bound=CLIP,
        participants=len(PARTICIPANTS),
        rounds=ROUNDS,
    )


@dataclass
class Upload:
    """One contributor's upload of one round: what it keeps and what it sends."""

    subject: str
    update: npt.NDArray[np.float64]  # w·Δ
    seed: bytes
    mask: RingVector
    y: RingVector
    y_bytes: bytes
    seed_obj: dict[str, str]
    statement: dict[str, Any]

    @property
    def sent(self) -> dict[str, Any]:
        """What the PS forwards to the KGC for this upload."""
        return {"statement": copy.deepcopy(self.statement), "seed": dict(self.seed_obj)}


class World:
    """A KGC, a masked job signed for PS, its view, and the participants' keys."""

    def __init__(
        self,
        params: PublicParams,
        master: MasterKey,
        *,
        job_id: str = JOB,
        aggregation: str = "masked",
        layout: MaskedLayout | None = None,
        initial_digest: str | None = None,
        keys: dict[str, Any] | None = None,
        kgc: Any = None,
    ) -> None:
        rng = random.Random(11)
        self.params = params
        self.master = master
        self.job_id = job_id
        self.kgc = kgc or generate_signing_key()
        self.ps = generate_signing_key()
        self.keys = keys or {s: generate_signing_key() for s in PARTICIPANTS}
        self.bcp = {s: params.keygen(rng) for s in PARTICIPANTS}
        self.layout = layout or default_layout()
        self.packing = self.layout.to_json()
        self.definition: dict[str, Any] = {
            "job_id": job_id,
            "model": {"kind": "mlp", "layers": [2, 2]},
            "initial_weights": b64encode(W0.astype("<f8").tobytes()),
            "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
            "quorum": 3,
            "rounds": ROUNDS,
            "aggregation": aggregation,
            "encoding": {"frac_bits": FRAC, "clip_bound": CLIP, "model_bound": MODEL_BOUND},
        }
        self.weights = {s: 1 / len(PARTICIPANTS) for s in PARTICIPANTS}
        if initial_digest is None:
            initial_digest = initial_state_sha256(self.layout, W0)
        requested = requested_terms(
            job_id=job_id,
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=1,
            num_plaintexts=self.layout.length,
            initial_ciphertext_sha256=initial_digest,
        )
        self.job_key = generate_job_key(params, 1, rng)
        self.signed, self.signature = sign_job_terms(
            self.kgc,
            requested,
            param_server=PS,
            param_server_key=public_key_hex(self.ps),
            signing_keys={s: public_key_hex(k) for s, k in self.keys.items()},
            job_key=to_obj(self.job_key),
        )
        self.terms: JobTerms = verify_job_terms(
            self.kgc.public_key(), self.signed, self.signature, params
        )
        self.rng = random.Random(13)

    @property
    def n(self) -> int:
        return int(self.params.n)

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "definition": copy.deepcopy(self.definition),
            "packing": dict(self.packing),
            "weights": dict(self.weights),
            "job_key": to_obj(self.job_key),
            "job_terms": copy.deepcopy(self.signed),
            "job_terms_signature": self.signature,
        }

    def context(self, subject: str, round_number: int = 0, run: int = 0) -> Any:
        return mask_context(
            self.terms, self.layout, round_number=round_number, run=run, signer=subject
        )

    def upload(
        self,
        subject: str,
        round_number: int = 0,
        *,
        run: int = 0,
        seed: bytes | None = None,
        seed_obj: dict[str, str] | None = None,
        key: Any = None,
        terms: JobTerms | None = None,
    ) -> Upload:
        """An honest upload (unless ``seed_obj`` or ``key`` say otherwise)."""
        index = PARTICIPANTS.index(subject)
        delta = np.random.default_rng(100 * index + round_number).uniform(-1.0, 1.0, LENGTH)
        update = self.weights[subject] * delta
        if seed is None:
            seed = hashlib.sha256(f"{self.job_id}/{subject}/{round_number}/{run}".encode()).digest()
        mask = derive_mask(
            seed_to_int(seed), self.n, self.context(subject, round_number, run), self.layout.ring
        )
        y = mask_vector(encode_ring(update, self.layout.ring), mask)
        y_bytes = vector_to_bytes(y, self.layout.ring)
        if seed_obj is None:
            seed_obj = seed_to_obj(encrypt_seed(self.job_key.component(0), seed, self.rng))
        statement = build_masked_upload_statement(
            key or self.keys[subject],
            terms or self.terms,
            round_number=round_number,
            subject_id=subject,
            payload_sha256=hashlib.sha256(y_bytes).hexdigest(),
            seed_sha256=seed_sha256(seed_obj),
            run=run,
        )
        return Upload(subject, update, seed, mask, y, y_bytes, seed_obj, statement)

    def header(
        self,
        uploads: list[Upload] | list[dict[str, Any]],
        /,
        round_number: int = 0,
        *,
        run: int = 0,
        undecodable: list[dict[str, Any]] | None = None,
        ps_key: Any = None,
        **changes: Any,
    ) -> dict[str, Any]:
        """A PS-signed release request for these uploads, with ``changes`` applied."""
        sent = [u.sent if isinstance(u, Upload) else u for u in uploads]
        header = masked_release_request_header(
            job_id=self.job_id,
            round_number=round_number,
            run=run,
            layout=self.layout,
            uploads=sent,
            undecodable=undecodable or [],
        )
        header.update(changes)
        return {**header, "request_signature": sign_json(ps_key or self.ps, header)}

    def check(
        self,
        header: dict[str, Any],
        next_round: int = 0,
        undecoded: UndecodedRelease | None = None,
    ) -> MaskedReleaseCheck:
        return check_masked_release_request(
            header, self.terms, next_round=next_round, undecoded=undecoded
        )


@pytest.fixture(scope="module")
def params_512() -> Params:
    return generate_params(512, random.Random(PARAMS_512_SEED))


@pytest.fixture(scope="module")
def world(params_512: Params) -> World:
    return World(*params_512)


@pytest.fixture(scope="module")
def round0(world: World) -> list[Upload]:
    return [world.upload(s) for s in THREE]


# --------------------------------------------------------------------------- layout


def test_layout_json_known_answer_and_round_trip() -> None:
    layout = default_layout()
    assert layout.ring == RingSpec(bits=32, frac_bits=FRAC)
    assert layout.payload_bytes == 4 * LENGTH
    obj = layout.to_json()
    assert obj == {
        "kind": MASKED_LAYOUT_KIND,
        "bits": 32,
        "frac_bits": 20,
        "length": LENGTH,
        "model_bound": 32.0,
        "clip_bound": 16.0,
    }
    assert MaskedLayout.from_json(obj) == layout
    assert MaskedLayout.from_json(json.loads(json.dumps(obj))) == layout
    # Integer bounds are numbers too; they come back as floats.
    back = MaskedLayout.from_json({**obj, "model_bound": 32, "clip_bound": 16})
    assert back == layout and isinstance(back.model_bound, float)


@HYP
@given(
    bits=st.sampled_from([32, 64]),
    frac=st.integers(min_value=0, max_value=30),
    length=st.integers(min_value=1, max_value=10**7),
    model_bound=st.floats(min_value=1e-6, max_value=1e6),
    clip_bound=st.floats(min_value=1e-6, max_value=1e6),
)
def test_layout_round_trip_property(
    bits: int, frac: int, length: int, model_bound: float, clip_bound: float
) -> None:
    need = (Fraction(model_bound) + Fraction(clip_bound)) * 2**frac
    assume(need + 1 < 2 ** (bits - 1) and need < 2**52)  # from_json refuses the rest
    layout = MaskedLayout(RingSpec(bits, frac), length, model_bound, clip_bound)
    text = json.dumps(layout.to_json())
    back = MaskedLayout.from_json(json.loads(text))
    assert back == layout
    assert back.payload_bytes == length * bits // 8
    assert json_sha256(back.to_json()) == json_sha256(layout.to_json())


def _layout_obj(**changes: Any) -> dict[str, Any]:
    obj = default_layout().to_json()
    obj.update(changes)
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "ring",
        {**_layout_obj(), "extra": 1},
        {k: v for k, v in _layout_obj().items() if k != "clip_bound"},
        {k: v for k, v in _layout_obj().items() if k != "kind"},
        _layout_obj(kind="bcp"),
        _layout_obj(kind="Ring"),
        _layout_obj(bits=True),
        _layout_obj(bits=32.0),
        _layout_obj(bits="32"),
        _layout_obj(bits=16),
        _layout_obj(bits=128),
        _layout_obj(frac_bits=True),
        _layout_obj(frac_bits=31),
        _layout_obj(frac_bits=-1),
        _layout_obj(frac_bits=20.0),
        _layout_obj(length=True),
        _layout_obj(length=0),
        _layout_obj(length=-6),
        _layout_obj(length=6.0),
        _layout_obj(length="6"),
        _layout_obj(model_bound=float("nan")),
        _layout_obj(model_bound=float("inf")),
        _layout_obj(model_bound=-32.0),
        _layout_obj(model_bound=0.0),
        _layout_obj(model_bound=True),
        _layout_obj(model_bound="32"),
        _layout_obj(model_bound=None),
        _layout_obj(clip_bound=float("nan")),
        _layout_obj(clip_bound=float("-inf")),
        _layout_obj(clip_bound=-1),
        _layout_obj(clip_bound=False),
    ],
)
def test_layout_from_json_is_strict(obj: object) -> None:
    with pytest.raises(EncodingError):
        MaskedLayout.from_json(obj)


def test_masked_layout_picks_32_bits_for_the_defaults() -> None:
    layout = default_layout(1000)
    assert (layout.ring.bits, layout.ring.frac_bits) == (32, 20)
    assert (layout.length, layout.model_bound, layout.clip_bound) == (1000, 32.0, 16.0)
    assert layout.ring.dtype is np.uint32


@pytest.mark.parametrize(
    ("model_bound", "participants", "rounds", "bits"),
    [
        # (2046 + 1)·2^20 = 2^31 - 2^20: P·T decides, exactly at the threshold.
        (2046.0, 1, 2**20 - 1, 32),  # 2^31 - 1
        (2046.0, 2**10, 2**10, 64),  # 2^31 exactly: the larger ring
        (2046.0, 2**10 + 1, 2**10, 64),
        (2046.0 + 2**-20, 1, 2**20 - 2, 32),  # one unit more of bound: 2^31 - 1 again
        (2046.0 + 2**-20, 1, 2**20 - 1, 64),  # and 2^31
        (4096.0, 1, 1, 64),
        (32.0, 1000, 10_000, 32),
    ],
)
def test_masked_layout_ring_threshold(
    model_bound: float, participants: int, rounds: int, bits: int
) -> None:
    layout = masked_layout(
        length=3,
        frac_bits=20,
        model_bound=model_bound,
        clip_bound=1.0,
        participants=participants,
        rounds=rounds,
    )
    need = (model_bound + 1.0) * 2**20 + participants * rounds
    assert (need >= 2**31) == (bits == 64)
    assert layout.ring == RingSpec(bits=bits, frac_bits=20)


def test_masked_layout_refuses_what_float64_cannot_hold() -> None:
    # (2047 + 2048)·2^40 < 2^52: a 64-bit ring, exact in float64.
    ok = masked_layout(
        length=2, frac_bits=40, model_bound=2047.0, clip_bound=2048.0, participants=3, rounds=3
    )
    assert ok.ring == RingSpec(bits=64, frac_bits=40)
    # (2048 + 2048)·2^40 = 2^52: fits 64 bits, but a model would not round-trip float64.
    with pytest.raises(EncodingError, match="float64"):
        masked_layout(
            length=2, frac_bits=40, model_bound=2048.0, clip_bound=2048.0, participants=3, rounds=3
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frac_bits": 50, "model_bound": 4096.0, "clip_bound": 4096.0},  # 2^63
        {"frac_bits": 62, "model_bound": 1.0, "clip_bound": 1.0},  # 2^63 + P·T
        {"frac_bits": 63, "model_bound": 1.0, "clip_bound": 1.0},
    ],
)
def test_masked_layout_refuses_what_64_bits_cannot_hold(kwargs: dict[str, Any]) -> None:
    with pytest.raises(EncodingError, match=r"2\^63|frac_bits"):
        masked_layout(length=2, participants=3, rounds=3, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_bound": float("nan")},
        {"model_bound": 0.0},
        {"clip_bound": -1.0},
        {"clip_bound": float("inf")},
        {"frac_bits": -1},
        {"participants": 0},
        {"rounds": 0},
    ],
)
def test_masked_layout_refuses_bad_bounds(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "length": 2,
        "frac_bits": FRAC,
        "model_bound": MODEL_BOUND,
        "clip_bound": CLIP,
        "participants": 3,
        "rounds": 3,
    }
    with pytest.raises(EncodingError):
        masked_layout(**{**args, **kwargs})


@pytest.mark.parametrize("length", [0, -1])
def test_masked_layout_refuses_a_length_below_1(length: int) -> None:
    with pytest.raises(EncodingError):
        masked_layout(
            length=length,
            frac_bits=FRAC,
            model_bound=MODEL_BOUND,
            clip_bound=CLIP,
            participants=3,
            rounds=3,
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"model_bound": 4096.0},  # (4096 + 16)·2^20 >= 2^31 in a 32-bit ring
        {"bits": 64, "frac_bits": 50, "model_bound": 8192.0},  # >= 2^63
        {"bits": 64, "frac_bits": 40, "model_bound": 4096.0},  # >= 2^52: not exact in float64
    ],
)
def test_layout_from_json_refuses_a_ring_too_small_for_its_bounds(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(EncodingError):
        MaskedLayout.from_json(_layout_obj(**changes))


# --------------------------------------------------------------------------- initial state


def test_initial_state_known_answer() -> None:
    layout = default_layout()
    z0 = initial_state(layout, W0)
    assert z0.dtype == np.uint32
    assert z0.tolist() == W0_RING32
    expected = hashlib.sha256(struct.pack("<6I", *W0_RING32)).hexdigest()
    assert initial_state_sha256(layout, W0) == expected
    assert initial_state_sha256(layout, list(W0)) == expected
    # The same W_0 in a 64-bit ring: two's complement modulo 2^64.
    wide = MaskedLayout(RingSpec(64, FRAC), LENGTH, MODEL_BOUND, CLIP)
    values = [v if v < 2**31 else v - 2**32 + 2**64 for v in W0_RING32]
    assert initial_state(wide, W0).tolist() == values
    assert initial_state_sha256(wide, W0) == hashlib.sha256(struct.pack("<6Q", *values)).hexdigest()
    assert initial_state_sha256(wide, W0) != expected


@pytest.mark.parametrize(
    "weights",
    [
        np.zeros(LENGTH - 1),
        np.zeros(LENGTH + 1),
        np.zeros((1, LENGTH)),
        np.array([0, 0, 0, 0, 0, 32.000001]),
        np.array([-33.0, 0, 0, 0, 0, 0]),
        np.array([np.nan, 0, 0, 0, 0, 0]),
        np.array([np.inf, 0, 0, 0, 0, 0]),
    ],
)
def test_initial_state_refuses(weights: npt.NDArray[np.float64]) -> None:
    layout = default_layout()
    with pytest.raises(EncodingError):
        initial_state(layout, weights)
    with pytest.raises(EncodingError):
        initial_state_sha256(layout, weights)


def test_initial_state_accepts_the_bound_itself() -> None:
    edge = np.array([32.0, -32.0, 0, 0, 0, 0])
    decoded = decode_ring(initial_state(default_layout(), edge), RingSpec(32, FRAC))
    assert decoded.tolist() == edge.tolist()


def test_check_job_view_accepts_a_masked_view(world: World) -> None:
    terms = check_job_view(world.view(), world.kgc.public_key(), world.params, param_server=PS)
    assert terms.aggregation == "masked"
    assert terms.width == 1 and terms.num_plaintexts == LENGTH
    assert terms.packing_sha256 == json_sha256(world.layout.to_json())
    assert terms.initial_ciphertext_sha256 == initial_state_sha256(world.layout, W0)


@pytest.mark.parametrize(
    "packing",
    [
        _layout_obj(model_bound=33.0),
        _layout_obj(bits=64),
        _layout_obj(frac_bits=21),
        _layout_obj(model_bound=32),  # same meaning, another canonical JSON
    ],
)
def test_check_job_view_refuses_another_layout(world: World, packing: dict[str, Any]) -> None:
    view = world.view()
    view["packing"] = packing
    error = refused(
        "job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params)
    )
    assert "packing_sha256" in error.message


def test_check_job_view_refuses_other_initial_weights(world: World) -> None:
    view = world.view()
    view["definition"]["initial_weights"] = b64encode((W0 + 2**-10).astype("<f8").tobytes())
    error = refused(
        "job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params)
    )
    assert "initial_ciphertext_sha256" in error.message


def test_check_job_view_refuses_terms_signing_another_initial_state(params_512: Params) -> None:
    """The served W_0 is the signed one, but the terms' Z_0 digest is not encode(W_0)'s."""
    wide = MaskedLayout(RingSpec(64, FRAC), LENGTH, MODEL_BOUND, CLIP)
    other = World(*params_512, initial_digest=initial_state_sha256(wide, W0))
    error = refused(
        "job-mismatch",
        lambda: check_job_view(other.view(), other.kgc.public_key(), other.params),
    )
    assert error.message.endswith("initial_ciphertext_sha256")


# --------------------------------------------------------------------------- seeds


def test_seed_object_round_trip(world: World) -> None:
    seed = bytes(range(32))
    ciphertext = encrypt_seed(world.job_key.component(0), seed, random.Random(1))
    obj = seed_to_obj(ciphertext)
    assert set(obj) == {"A", "B"}
    assert obj == {"A": format(int(ciphertext.A), "x"), "B": format(int(ciphertext.B), "x")}
    back = seed_from_obj(json.loads(json.dumps(obj)), world.job_key)
    assert back == ciphertext
    assert back.public_key == world.job_key.component(0)
    assert world.master.decrypt(back) == seed_to_int(seed)


def test_seed_object_names_no_key(world: World) -> None:
    """A ciphertext under another key parses as if under the job key's first component."""
    other_key, _ = world.params.keygen(random.Random(3))
    ciphertext = other_key.encrypt(5, random.Random(4))
    back = seed_from_obj(seed_to_obj(ciphertext), world.job_key)
    assert back.public_key == world.job_key.component(0) != other_key
    assert (back.A, back.B) == (ciphertext.A, ciphertext.B)


@HYP
@given(seed=st.binary(min_size=32, max_size=32))
def test_seed_round_trip_property(world: World, seed: bytes) -> None:
    ciphertext = encrypt_seed(world.job_key.component(0), seed, random.Random(seed))
    back = seed_from_obj(seed_to_obj(ciphertext), world.job_key)
    assert back == ciphertext
    assert world.master.decrypt(back) == int.from_bytes(seed, "big")


SEED_OBJ = {"A": "1", "B": "1"}


@pytest.mark.parametrize(
    "make",
    [
        lambda n2, p: None,
        lambda n2, p: ["1", "1"],
        lambda n2, p: {"A": "1"},
        lambda n2, p: {**SEED_OBJ, "h": "1"},
        lambda n2, p: {"A": "1", "B": "zz"},
        lambda n2, p: {"A": "-1", "B": "1"},
        lambda n2, p: {"A": 1, "B": "1"},
        lambda n2, p: {"A": "1", "B": None},
        lambda n2, p: {"A": "0", "B": "1"},
        lambda n2, p: {"A": "1", "B": "0"},
        lambda n2, p: {"A": format(n2, "x"), "B": "1"},
        lambda n2, p: {"A": "1", "B": format(n2 + 1, "x")},
        lambda n2, p: {"A": format(p, "x"), "B": "1"},
        lambda n2, p: {"A": "1", "B": format(7 * p, "x")},
        # one spelling per ciphertext: its digest must name exactly one seed
        lambda n2, p: {"A": "0x1", "B": "1"},
        lambda n2, p: {"A": "1", "B": "01"},
        lambda n2, p: {"A": format(n2 - 1, "X"), "B": "1"},
    ],
)
def test_seed_from_obj_refuses(world: World, make: Callable[[int, int], object]) -> None:
    obj = make(int(world.params.nsquare), int(world.master.p))
    refused("bad-seed", lambda: seed_from_obj(obj, world.job_key))


def test_seed_sha256_is_the_canonical_json_digest(world: World) -> None:
    obj = seed_to_obj(encrypt_seed(world.job_key.component(0), bytes(32), random.Random(2)))
    text = '{"A":"' + obj["A"] + '","B":"' + obj["B"] + '"}'
    assert seed_sha256(obj) == hashlib.sha256(text.encode()).hexdigest()
    assert seed_sha256({"B": obj["B"], "A": obj["A"]}) == seed_sha256(obj)
    # The same ciphertext written otherwise is another object: another digest.
    assert seed_sha256({**obj, "A": "0x" + obj["A"]}) != seed_sha256(obj)


# --------------------------------------------------------------------------- mask context


def test_mask_context_names_the_job_round_run_and_signer(world: World) -> None:
    context = world.context("sub-b", 2, 1)
    assert (context.job_id, context.job_terms_sha256) == (JOB, world.terms.digest)
    assert (context.round, context.run, context.attempt, context.signer) == (2, 1, 0, "sub-b")
    assert (context.length, context.ring_bits) == (LENGTH, 32)
    value = seed_to_int(b"\x07" * 32)
    ring = world.layout.ring
    masks = {
        (s, t, r): derive_mask(value, world.n, world.context(s, t, r), ring).tobytes()
        for s in ("sub-a", "sub-b")
        for t in (0, 1)
        for r in (0, 1)
    }
    assert len(set(masks.values())) == len(masks)  # every counter changes the mask
    again = derive_mask(value, world.n, world.context("sub-a", 1, 0), ring)
    assert again.tobytes() == masks[("sub-a", 1, 0)]


# --------------------------------------------------------------------------- upload statements


def test_upload_statement_shape_and_verify(world: World, round0: list[Upload]) -> None:
    upload = round0[0]
    body = upload.statement["statement"]
    assert body == {
        "purpose": MASKED_UPLOAD_PURPOSE,
        "kgc_key_id": kgc_key_id(world.kgc),
        "job_id": JOB,
        "job_terms_sha256": world.terms.digest,
        "round": 0,
        "run": 0,
        "subject_id": "sub-a",
        "audience": PS,
        "payload_sha256": hashlib.sha256(upload.y_bytes).hexdigest(),
        "seed_sha256": seed_sha256(upload.seed_obj),
    }
    checked = verify_masked_upload_statement(
        upload.statement,
        world.terms,
        round_number=0,
        run=0,
        subject_id="sub-a",
        payload_sha256=body["payload_sha256"],
        seed_sha256=body["seed_sha256"],
    )
    assert checked == body


def _resigned(world: World, upload: Upload, **changes: Any) -> dict[str, Any]:
    body = {**upload.statement["statement"], **changes}
    subject = upload.statement["statement"]["subject_id"]
    return {"statement": body, "signature": sign_json(world.keys[subject], body)}


def test_upload_statement_refusals(world: World, params_512: Params) -> None:
    upload = world.upload("sub-a", 1, run=1)
    body = upload.statement["statement"]

    def verify(signed: object = upload.statement, **kw: Any) -> dict[str, Any]:
        terms = kw.pop("terms", world.terms)
        args: dict[str, Any] = {"round_number": 1, "run": 1, **kw}
        return verify_masked_upload_statement(signed, terms, **args)

    assert verify()["round"] == 1
    refused("statement-mismatch", lambda: verify(round_number=0))
    refused("statement-mismatch", lambda: verify(round_number=2))
    refused("statement-mismatch", lambda: verify(run=0))
    refused("statement-mismatch", lambda: verify(subject_id="sub-b"))
    refused("statement-mismatch", lambda: verify(payload_sha256="00" * 32))
    refused("statement-mismatch", lambda: verify(seed_sha256="00" * 32))
    refused("statement-mismatch", lambda: verify(seed_sha256=body["payload_sha256"]))
    refused("statement-mismatch", lambda: verify(_resigned(world, upload, audience="sub-x")))
    refused("statement-mismatch", lambda: verify(_resigned(world, upload, round=True)))
    refused("statement-mismatch", lambda: verify(_resigned(world, upload, extra=1)))
    refused("bad-statement", lambda: verify(_resigned(world, upload, seed_sha256="AB" * 32)))
    refused("bad-statement", lambda: verify(_resigned(world, upload, payload_sha256="ab")))
    refused("bad-statement", lambda: verify({"statement": "x", "signature": "y"}))
    refused("bad-statement", lambda: verify(None))
    # Signed by another participant's key, or by nobody.
    forged = world.upload("sub-a", 1, run=1, key=world.keys["sub-b"])
    refused("bad-statement-signature", lambda: verify(forged.statement))
    refused("bad-statement-signature", lambda: verify({**upload.statement, "signature": "x"}))
    refused("not-a-participant", lambda: verify(_resigned(world, upload, subject_id="sub-x")))
    # Another job with the same participant keys: another terms digest and job id.
    other = World(*params_512, job_id="job-other", keys=world.keys, kgc=world.kgc)
    elsewhere = world.upload("sub-a", 1, run=1, terms=other.terms)
    refused("statement-mismatch", lambda: verify(elsewhere.statement))
    assert verify(elsewhere.statement, terms=other.terms)["job_id"] == "job-other"
    refused("statement-mismatch", lambda: verify(terms=other.terms))


def test_masked_and_bcp_upload_statements_do_not_cross(world: World, round0: list[Upload]) -> None:
    masked = round0[0].statement
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(masked, world.terms, round_number=0, run=0),
    )
    closed = "cc" * 32
    proof = prove_randomness(
        world.params, [5], pok_context(world.terms, 0, closed), "sub-a", random.Random(0)
    )
    bcp = build_upload_statement(
        world.keys["sub-a"],
        world.terms,
        round_number=0,
        subject_id="sub-a",
        payload_sha256=masked["statement"]["payload_sha256"],
        closed_set_sha256=closed,
        randomness_proof=proof.to_obj(),
    )
    assert verify_upload_statement(bcp, world.terms, round_number=0)["subject_id"] == "sub-a"
    refused(
        "statement-mismatch",
        lambda: verify_masked_upload_statement(bcp, world.terms, round_number=0, run=0),
    )


# --------------------------------------------------------------------------- release requests


def test_release_request_honest(world: World, round0: list[Upload]) -> None:
    header = world.header(list(reversed(round0)))
    assert header["aggregation"] == "masked" and header["layout"] == world.layout.to_json()
    assert header["contributors"] == THREE
    assert [u["statement"]["statement"]["subject_id"] for u in header["uploads"]] == THREE
    assert header["undecodable"] == [] and (header["round"], header["run"]) == (0, 0)
    assert verify_release_signature(header, world.ps.public_key()) == 0
    assert header == world.header(round0)  # the order of the uploads does not matter
    check = world.check(header)
    assert (check.round, check.run, check.layout) == (0, 0, world.layout)
    assert check.contributors == tuple(THREE)
    assert dict(check.payloads) == {
        u.subject: hashlib.sha256(u.y_bytes).hexdigest() for u in round0
    }
    assert dict(check.seeds) == {
        u.subject: seed_from_obj(u.seed_obj, world.job_key) for u in round0
    }


def test_release_request_later_round(world: World) -> None:
    uploads = [world.upload(s, 2) for s in PARTICIPANTS]
    check = world.check(world.header(uploads, 2), next_round=2)
    assert check.round == 2 and check.contributors == tuple(PARTICIPANTS)


def _edit(world: World, header: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The header with ``changes``, signed again by the PS."""
    body = {k: v for k, v in header.items() if k != "request_signature"}
    body.update(changes)
    return {**body, "request_signature": sign_json(world.ps, body)}


def _swap_seeds(world: World, round0: list[Upload]) -> dict[str, Any]:
    header = world.header(round0)
    uploads = header["uploads"]
    uploads[0]["seed"], uploads[1]["seed"] = uploads[1]["seed"], uploads[0]["seed"]
    return header


def _same_seed(world: World, round0: list[Upload], *, respell: bool) -> dict[str, Any]:
    """sub-c sends (and signs) sub-a's seed ciphertext as its own, maybe spelled otherwise."""
    seed_obj = dict(round0[0].seed_obj)
    if respell:
        seed_obj = {"A": "0x" + seed_obj["A"], "B": seed_obj["B"].upper()}
    copied = world.upload("sub-c", seed_obj=seed_obj)
    return world.header([round0[0], round0[1], copied])


def _with_upload(world: World, round0: list[Upload], **changes: Any) -> dict[str, Any]:
    header = world.header(round0)
    header["uploads"][1].update(changes)
    return header


#: (name, request(world, round0) -> header, next_round, code)
REFUSED_REQUESTS: list[tuple[str, Callable[[World, list[Upload]], Any], int, str]] = [
    ("another job", lambda w, u: w.header(u, job_id="job-x"), 0, "job-mismatch"),
    ("bcp aggregation", lambda w, u: w.header(u, aggregation="bcp"), 0, "bad-field"),
    ("no aggregation", lambda w, u: w.header(u, aggregation=None), 0, "bad-field"),
    ("round = rounds", lambda w, u: w.header(u, round=ROUNDS), 0, "round-out-of-range"),
    ("negative round", lambda w, u: w.header(u, round=-1), 0, "round-out-of-range"),
    ("bool round", lambda w, u: w.header(u, round=False), 0, "round-out-of-range"),
    ("string round", lambda w, u: w.header(u, round="0"), 0, "round-out-of-range"),
    ("round again", lambda w, u: w.header(u), 1, "out-of-schedule"),
    (
        "round ahead",
        lambda w, u: w.header([w.upload(s, 1) for s in THREE], 1),
        0,
        "out-of-schedule",
    ),
    ("run 2", lambda w, u: w.header(u, run=2), 0, "bad-field"),
    ("bool run", lambda w, u: _edit(w, w.header(u), run=False), 0, "bad-field"),
    ("no run", lambda w, u: _edit(w, w.header(u), run=None), 0, "bad-field"),
    ("run 1 without an undecoded release", lambda w, u: w.header(u, run=1), 0, "out-of-schedule"),
    (
        "run 0 with reports",
        lambda w, u: w.header(u, undecodable=[_report(w, "sub-a")]),
        0,
        "undecodable-mismatch",
    ),
    ("reports not a list", lambda w, u: _edit(w, w.header(u), undecodable={}), 0, "bad-field"),
    (
        "duplicate contributor",
        lambda w, u: w.header(u, contributors=["sub-a", "sub-a", "sub-b", "sub-c"]),
        0,
        "duplicate-contributor",
    ),
    (
        "non-participant",
        lambda w, u: w.header(u, contributors=[*THREE, "sub-x"]),
        0,
        "not-a-participant",
    ),
    ("below quorum", lambda w, u: w.header(u[:2]), 0, "below-quorum"),
    ("contributors not a list", lambda w, u: w.header(u, contributors="sub-a"), 0, "bad-field"),
    (
        "contributor not a string",
        lambda w, u: w.header(u, contributors=[*THREE, 4]),
        0,
        "bad-field",
    ),
    (
        "a statement missing",
        lambda w, u: w.header(u[:2], contributors=THREE),
        0,
        "statement-mismatch",
    ),
    (
        "a statement extra",
        lambda w, u: w.header([*u, w.upload("sub-d")], contributors=THREE),
        0,
        "statement-mismatch",
    ),
    (
        "a statement for another contributor",
        lambda w, u: w.header([u[0], u[1], w.upload("sub-d")], contributors=THREE),
        0,
        "statement-mismatch",
    ),
    (
        "one contributor twice",
        lambda w, u: w.header([u[0], u[1], u[1]], contributors=THREE),
        0,
        "statement-mismatch",
    ),
    ("seeds swapped", _swap_seeds, 0, "statement-mismatch"),
    (
        "a seed not the one signed",
        lambda w, u: _with_upload(w, u, seed=dict(w.upload("sub-b", 1).seed_obj)),
        0,
        "statement-mismatch",
    ),
    (
        "a statement of another round",
        lambda w, u: w.header([u[0], u[1], w.upload("sub-c", 1)]),
        0,
        "statement-mismatch",
    ),
    (
        "a statement of another run",
        lambda w, u: w.header([u[0], u[1], w.upload("sub-c", run=1)]),
        0,
        "statement-mismatch",
    ),
    (
        "a forged statement",
        lambda w, u: w.header([u[0], u[1], w.upload("sub-c", key=w.keys["sub-a"])]),
        0,
        "bad-statement-signature",
    ),
    ("duplicate seed", lambda w, u: _same_seed(w, u, respell=False), 0, "duplicate-seed"),
    ("a seed respelled", lambda w, u: _same_seed(w, u, respell=True), 0, "bad-seed"),
    (
        "another layout",
        lambda w, u: w.header(u, layout=_layout_obj(model_bound=64.0)),
        0,
        "job-mismatch",
    ),
    (
        "the layout respelled",
        lambda w, u: w.header(u, layout=_layout_obj(model_bound=32)),
        0,
        "job-mismatch",
    ),
    ("no layout", lambda w, u: w.header(u, layout=None), 0, "job-mismatch"),
    ("uploads not a list", lambda w, u: w.header(u, uploads={"sub-a": 1}), 0, "bad-field"),
    ("uploads missing", lambda w, u: w.header(u, uploads=None), 0, "bad-field"),
    (
        "an upload not an object",
        lambda w, u: w.header(u, uploads=[u[0].sent, u[1].sent, "x"]),
        0,
        "bad-field",
    ),
    ("an upload without seed", lambda w, u: _with_upload(w, u, seed=None), 0, "bad-seed"),
    (
        "a signed seed not in Z*_{N^2}",
        lambda w, u: w.header([u[0], u[1], w.upload("sub-c", seed_obj={"A": "0", "B": "1"})]),
        0,
        "bad-seed",
    ),
]


@pytest.mark.parametrize(
    ("make", "next_round", "code"),
    [case[1:] for case in REFUSED_REQUESTS],
    ids=[case[0] for case in REFUSED_REQUESTS],
)
def test_release_request_refused(
    world: World,
    round0: list[Upload],
    make: Callable[[World, list[Upload]], dict[str, Any]],
    next_round: int,
    code: str,
) -> None:
    header = make(world, round0)
    refused(code, lambda: world.check(header, next_round))


def test_release_request_for_a_bcp_job_is_refused(params_512: Params) -> None:
    bcp = World(*params_512, aggregation="bcp")
    assert bcp.terms.aggregation == "bcp"
    header = bcp.header([bcp.upload(s) for s in THREE])
    refused("job-mismatch", lambda: bcp.check(header))


def _report(world: World, subject: str, bundle: str = BUNDLE) -> dict[str, Any]:
    return build_undecodable_statement(
        world.keys[subject],
        world.terms,
        round_number=0,
        run=0,
        subject_id=subject,
        bundle_sha256=bundle,
    )


def test_release_request_rerun(world: World) -> None:
    undecoded = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    uploads = [world.upload(s, run=1) for s in THREE]
    reports = [_report(world, s) for s in THREE]
    header = world.header(uploads, run=1, undecodable=reports)
    check = world.check(header, 0, undecoded)
    assert (check.round, check.run, check.contributors) == (0, 1, tuple(THREE))
    # Without every report, with reports on another bundle, or for another set: refused.
    refused(
        "undecodable-mismatch",
        lambda: world.check(world.header(uploads, run=1), 0, undecoded),
    )
    refused(
        "undecodable-mismatch",
        lambda: world.check(world.header(uploads, run=1, undecodable=reports[:2]), 0, undecoded),
    )
    other_bundle = [_report(world, s, "ee" * 32) for s in THREE]
    refused(
        "undecodable-mismatch",
        lambda: world.check(world.header(uploads, run=1, undecodable=other_bundle), 0, undecoded),
    )
    four = [*uploads, world.upload("sub-d", run=1)]
    refused(
        "rerun-set-mismatch",
        lambda: world.check(world.header(four, run=1, undecodable=reports), 0, undecoded),
    )
    # Run-0 statements cannot be replayed into the re-run.
    run0 = [world.upload(s) for s in THREE]
    refused(
        "statement-mismatch",
        lambda: world.check(world.header(run0, run=1, undecodable=reports), 0, undecoded),
    )
    # A re-run of round 0 is not a re-run of round 1.
    later = UndecodedRelease(round=1, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    refused("out-of-schedule", lambda: world.check(header, 0, later))


# --------------------------------------------------------------------------- the KGC's sum


def test_kgc_mask_sum_is_the_sum_of_the_contributors_masks(
    world: World, round0: list[Upload]
) -> None:
    check = world.check(world.header(round0))
    total = kgc_mask_sum(world.master, world.terms, check)
    ring = world.layout.ring
    local = [
        derive_mask(seed_to_int(u.seed), world.n, world.context(u.subject), ring) for u in round0
    ]
    assert total.dtype == np.uint32 and total.shape == (LENGTH,)
    assert total.tolist() == ring_sum(local, ring, LENGTH).tolist()
    assert total.tolist() == [sum(int(m[i]) for m in local) % 2**32 for i in range(LENGTH)]
    assert all(u.mask.tolist() == m.tolist() for u, m in zip(round0, local, strict=True))


def test_kgc_mask_sum_of_a_rerun_uses_run_1_masks(world: World) -> None:
    undecoded = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    uploads = [world.upload(s, run=1) for s in THREE]
    header = world.header(uploads, run=1, undecodable=[_report(world, s) for s in THREE])
    total = kgc_mask_sum(world.master, world.terms, world.check(header, 0, undecoded))
    assert total.tolist() == ring_sum([u.mask for u in uploads], world.layout.ring, LENGTH).tolist()
    # The same seeds under run 0's context give another sum.
    run0 = [
        derive_mask(seed_to_int(u.seed), world.n, world.context(u.subject), world.layout.ring)
        for u in uploads
    ]
    assert total.tolist() != ring_sum(run0, world.layout.ring, LENGTH).tolist()


def _tampered_seed(world: World, seed_obj: dict[str, str], delta: int) -> dict[str, str]:
    """``c·(1+δN)``: B·(1+δN) mod N², which decrypts to ``s + δ mod N``."""
    n, n2 = world.n, int(world.params.nsquare)
    b = int(seed_obj["B"], 16) * (1 + delta * n) % n2
    return {"A": seed_obj["A"], "B": format(b, "x")}


def test_a_tampered_seed_gives_an_unrelated_mask_and_no_error(
    world: World, round0: list[Upload]
) -> None:
    """sub-c re-submits sub-a's seed as c·(1+δN): the KGC derives a mask from s_a + δ mod N,
    whatever that value is (0, above 2^256, near N), and says nothing about s_a."""
    honest_a = round0[0]
    s_a = seed_to_int(honest_a.seed)
    ring = world.layout.ring
    context_c = world.context("sub-c")
    n = world.n
    sums = set()
    for delta in (1, 2, 2**256, n - s_a, n - s_a - 1, n - 1, 3 * n + 5):
        copied = world.upload("sub-c", seed_obj=_tampered_seed(world, honest_a.seed_obj, delta))
        check = world.check(world.header([honest_a, round0[1], copied]))
        total = kgc_mask_sum(world.master, world.terms, check)
        value = (s_a + delta) % n
        expected_c = derive_mask(value, n, context_c, ring)
        expected = ring_sum([honest_a.mask, round0[1].mask, expected_c], ring, LENGTH)
        assert total.tolist() == expected.tolist()
        assert expected_c.tolist() != derive_mask(s_a, n, context_c, ring).tolist()
        assert expected_c.tolist() != honest_a.mask.tolist()
        sums.add(total.tobytes())
    assert len(sums) == 7


def test_masks_of_other_rounds_runs_or_signers_differ(world: World) -> None:
    seed = b"\x42" * 32
    cases = [("sub-a", 0, 0), ("sub-a", 1, 0), ("sub-a", 0, 1), ("sub-b", 0, 0)]
    sums = []
    for subject, round_number, run in cases:
        upload = world.upload(subject, round_number, run=run, seed=seed)
        masks = kgc_mask_sum(
            world.master,
            world.terms,
            MaskedReleaseCheck(
                round_number,
                run,
                world.layout,
                (subject,),
                {subject: "00" * 32},
                {subject: seed_from_obj(upload.seed_obj, world.job_key)},
            ),
        )
        assert masks.tolist() == upload.mask.tolist()
        sums.append(masks.tobytes())
    assert len(set(sums)) == len(cases)


# --------------------------------------------------------------------------- sealing and opening


@dataclass
class Release:
    check: MaskedReleaseCheck
    mask_sum: RingVector
    binding: MaskedReleaseBinding
    bundle: dict[str, Any]


def _seal(world: World, check: MaskedReleaseCheck, total: RingVector) -> Release:
    binding = MaskedReleaseBinding(JOB, world.terms.digest, check.round, check.run, check.payloads)
    bundle = seal_mask_sum(
        world.kgc,
        world.master,
        total,
        world.layout,
        {s: world.bcp[s][0] for s in check.contributors},
        binding=binding,
        rng=random.Random(21),
        random_bytes=random.Random(22).randbytes,
    )
    return Release(check, total, binding, bundle)


@pytest.fixture(scope="module")
def release(world: World, round0: list[Upload]) -> Release:
    check = world.check(world.header(round0))
    return _seal(world, check, kgc_mask_sum(world.master, world.terms, check))


def view_of(
    bundle: dict[str, Any], subject: str, wrapped_from: str | None = None
) -> dict[str, Any]:
    """What ``GET .../model`` serves ``subject``: the bundle with only its wrapped key."""
    view = {k: copy.deepcopy(v) for k, v in bundle.items() if k != "wrapped_keys"}
    view["wrapped_key"] = copy.deepcopy(bundle["wrapped_keys"][wrapped_from or subject])
    return view


def test_seal_bundle_shape(world: World, release: Release) -> None:
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
        release.binding, bundle["sealed_mask"], bundle["wrapped_keys"], kgc_key_id(world.kgc)
    )
    assert statement["purpose"] == MASKED_RELEASE_PURPOSE
    assert statement["sealed_mask_sha256"] == json_sha256(bundle["sealed_mask"])
    # The signature is over exactly that statement.
    verify_json(world.kgc.public_key(), statement, bundle["release_signature"])
    assert MaskedReleaseBinding.from_fields(bundle) == release.binding


def test_every_contributor_opens_the_same_mask_sum(world: World, release: Release) -> None:
    names = set()
    for subject in THREE:
        view = view_of(release.bundle, subject)
        binding = verify_release_statement(world.kgc.public_key(), view, subject_id=subject)
        assert binding == release.binding and binding.contributors == THREE
        opened = open_mask_sum(
            world.bcp[subject][1], binding, view["sealed_mask"], view["wrapped_key"], world.layout
        )
        assert opened.dtype == np.uint32
        assert opened.tolist() == release.mask_sum.tolist()
        names.add(bundle_sha256(binding, view["sealed_mask"]))
    assert len(names) == 1  # every contributor names the bundle alike in a report


def test_seal_refuses_keys_not_for_the_listed_contributors(world: World, release: Release) -> None:
    for keys in (THREE[:2], PARTICIPANTS):
        with pytest.raises(ValueError, match="listed contributors"):
            seal_mask_sum(
                world.kgc,
                world.master,
                release.mask_sum,
                world.layout,
                {s: world.bcp[s][0] for s in keys},
                binding=release.binding,
                rng=random.Random(1),
                random_bytes=random.Random(2).randbytes,
            )


def test_a_non_contributor_cannot_open(world: World, release: Release) -> None:
    view = view_of(release.bundle, "sub-a")
    refused(
        "bad-release",
        lambda: verify_release_statement(world.kgc.public_key(), view, subject_id="sub-d"),
    )
    for wrapped in release.bundle["wrapped_keys"].values():
        with pytest.raises(SealError):
            open_mask_sum(
                world.bcp["sub-d"][1],
                release.binding,
                release.bundle["sealed_mask"],
                wrapped,
                world.layout,
            )
    # Nor can a contributor with another's wrapped key.
    with pytest.raises(SealError):
        open_mask_sum(
            world.bcp["sub-a"][1],
            release.binding,
            release.bundle["sealed_mask"],
            release.bundle["wrapped_keys"]["sub-b"],
            world.layout,
        )


def _flip_ct(sealed: dict[str, str]) -> dict[str, str]:
    raw = bytearray(b64decode(sealed["ct"]))
    raw[0] ^= 1
    return {**sealed, "ct": b64encode(bytes(raw))}


def _resign(world: World, view: dict[str, Any], key: Any, key_id: str) -> dict[str, Any]:
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


#: (name, change(world, view of sub-a) -> view)
TAMPERED_VIEWS: list[tuple[str, Callable[[World, dict[str, Any]], dict[str, Any]]]] = [
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
    world: World,
    release: Release,
    change: Callable[[World, dict[str, Any]], dict[str, Any]],
) -> None:
    view = change(world, view_of(release.bundle, "sub-a"))
    refused(
        "bad-release",
        lambda: verify_release_statement(world.kgc.public_key(), view, subject_id="sub-a"),
    )


def test_a_swapped_wrapped_key_is_refused(world: World, release: Release) -> None:
    view = view_of(release.bundle, "sub-a", wrapped_from="sub-b")
    refused(
        "bad-release",
        lambda: verify_release_statement(world.kgc.public_key(), view, subject_id="sub-a"),
    )
    # A wrapped key the KGC never made (the PS's own data key wrapped to sub-a) either.
    forged = view_of(release.bundle, "sub-a")
    forged["wrapped_key"] = {**forged["wrapped_key"], "nonce": b64encode(bytes(12))}
    refused(
        "bad-release",
        lambda: verify_release_statement(world.kgc.public_key(), forged, subject_id="sub-a"),
    )


def test_a_release_verifies_only_under_the_pinned_kgc(world: World, release: Release) -> None:
    view = view_of(release.bundle, "sub-a")
    assert verify_release_statement(world.kgc.public_key(), view, subject_id="sub-a")
    other = generate_signing_key().public_key()
    refused("bad-release", lambda: verify_release_statement(other, view, subject_id="sub-a"))


def test_open_mask_sum_is_bound_to_the_binding(world: World, release: Release) -> None:
    sealed, wrapped = release.bundle["sealed_mask"], release.bundle["wrapped_keys"]["sub-a"]
    key = world.bcp["sub-a"][1]
    assert open_mask_sum(key, release.binding, sealed, wrapped, world.layout).tolist() == (
        release.mask_sum.tolist()
    )
    for binding in (
        replace(release.binding, round=1),
        replace(release.binding, run=1),
        replace(release.binding, job_terms_sha256="00" * 32),
        replace(release.binding, uploads={**release.binding.uploads, "sub-b": "00" * 32}),
    ):
        with pytest.raises(SealError):
            open_mask_sum(key, binding, sealed, wrapped, world.layout)
    with pytest.raises(SealError):
        open_mask_sum(key, release.binding, _flip_ct(sealed), wrapped, world.layout)
    with pytest.raises(SealError):
        open_mask_sum(key, release.binding, sealed, None, world.layout)


# --------------------------------------------------------------------------- the next model


def test_next_model_known_answer(world: World, release: Release, round0: list[Upload]) -> None:
    ring = world.layout.ring
    opened = open_mask_sum(
        world.bcp["sub-b"][1],
        release.binding,
        release.bundle["sealed_mask"],
        release.bundle["wrapped_keys"]["sub-b"],
        world.layout,
    )
    w1 = next_model(world.layout, W0, [u.y for u in round0], opened)
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
        next_model(world.layout, W0, [u.y for u in round0], opened ^ np.uint32(1 << 29))


def test_a_round_through_ring_frames(world: World, release: Release, round0: list[Upload]) -> None:
    """The PS sums the framed ``y`` into ``Z``; ``Z_1 - D`` is the next model's encoding."""
    ring = world.layout.ring
    z = initial_state(world.layout, W0)
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
            world.terms,
            round_number=0,
            run=0,
            payload_sha256=hashlib.sha256(decoded.payload).hexdigest(),
            seed_sha256=seed_sha256(decoded.header["seed"]),
        )
        add_into(z, vector_from_bytes(decoded.payload, ring, LENGTH))
    w1 = next_model(world.layout, W0, [u.y for u in round0], release.mask_sum)
    assert decode_ring(unmask(z, release.mask_sum), ring).tolist() == w1.tolist()
    # Neither Z nor any y alone is the model.
    assert decode_ring(z, ring).tolist() != w1.tolist()


def test_listed_uploads_are_exactly_the_signed_ones(
    world: World, release: Release, round0: list[Upload]
) -> None:
    """A contributor sums the uploads the KGC's binding lists, each checked by digest."""
    ring = world.layout.ring
    frames = {
        u.subject: encode_ring_frame(
            u.y_bytes, bits=ring.bits, num_elements=LENGTH, extra_header=u.sent
        )
        for u in round0
    }
    got = listed_uploads(release.binding, world.layout, frames.__getitem__)
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
                world.layout,
                lambda s, served=served: served if s == victim else frames[s],
            )
        assert refused.value.code == "upload-mismatch"


def test_next_model_refuses_a_garbage_upload(
    world: World, release: Release, round0: list[Upload]
) -> None:
    ys = [u.y for u in round0]
    ring = world.layout.ring
    shifted = mask_vector(ys[1], encode_ring(np.full(LENGTH, 40.0), ring))
    with pytest.raises(EncodingError, match="beyond the job's bound"):
        next_model(world.layout, W0, [ys[0], shifted, ys[2]], release.mask_sum)
    garbage = np.random.default_rng(5).integers(0, 2**32, LENGTH, dtype=np.uint64).astype(np.uint32)
    with pytest.raises(EncodingError):
        next_model(world.layout, W0, [ys[0], garbage, ys[2]], release.mask_sum)
    # A missing upload leaves its mask unmatched: garbage too.
    with pytest.raises(EncodingError):
        next_model(world.layout, W0, ys[:2], release.mask_sum)


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
