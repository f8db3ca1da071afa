"""Job terms (trapdoor.protocol.job): what the KGC signs, and a participant's check of the
job it is served, for both aggregation modes.

Each check is played from the side that would break it: a PS that serves another job key,
definition, layout or initial model than the KGC signed, or terms that name another server
or a quorum below the participant's minimum. Known answers where the value can be written
down (``Enc(W_0)``'s digest, the masked layout and ``Z_0``), properties elsewhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import struct
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from masked_support import (
    CLIP,
    FRAC,
    LENGTH,
    MODEL_BOUND,
    W0,
    W0_RING32,
    MaskedWorld,
    default_layout,
    layout_obj,
)
from protocol_support import HYP, PARTICIPANTS, PS, Params, World, refused

from trapdoor.crypto.bcp import generate_params
from trapdoor.crypto.blocks import BlockLayout, decrypt_vector, generate_job_key
from trapdoor.crypto.encoding import EncodingError, PackingLayout, decode_vector
from trapdoor.crypto.masking import RingSpec, decode_ring
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex, sign_json
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.audit import contributors_sha256
from trapdoor.protocol.common import ProtocolError, json_sha256, kgc_key_id, vector_sha256
from trapdoor.protocol.job import (
    JOB_TERMS_PURPOSE,
    MASKED_LAYOUT_KIND,
    JobTerms,
    MaskedLayout,
    check_job_view,
    check_requested_terms,
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_plaintexts,
    initial_state,
    initial_state_sha256,
    masked_layout,
    verify_job_terms,
)

# --------------------------------------------------------------------------- job terms


def test_signed_terms_verify_and_carry_what_the_participant_relies_on(world: World) -> None:
    terms = world.terms
    assert isinstance(terms, JobTerms)
    assert terms.raw["purpose"] == JOB_TERMS_PURPOSE
    assert terms.raw["kgc_key_id"] == kgc_key_id(world.kgc.public_key())
    assert (terms.job_id, terms.param_server, terms.quorum, terms.rounds) == ("job-1", PS, 3, 4)
    assert terms.participants == tuple(PARTICIPANTS)
    assert terms.signing_keys["sub-b"] == public_key_hex(world.keys["sub-b"])
    assert terms.param_server_key == public_key_hex(world.ps)
    assert terms.initial_ciphertext_sha256 == vector_sha256(
        initial_ciphertext(terms.job_key, world.layout, world.initial_weights)
    )
    assert terms.num_plaintexts == world.layout.num_plaintexts
    assert check_job_view(world.view(), world.kgc.public_key(), world.params) == terms


def test_terms_signed_by_another_key_are_refused(world: World) -> None:
    impostor = generate_signing_key()
    view = world.view()
    view["job_terms_signature"] = sign_json(impostor, view["job_terms"])
    refused("bad-job-signature", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_a_job_key_the_ps_made_itself_is_refused(world: World) -> None:
    """The attack of issue 11 point 1: the PS serves a key whose exponents it knows."""
    own_key = to_obj(generate_job_key(world.params, 2, random.Random(99)))
    view = world.view()
    view["job_key"] = own_key
    refused("job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params))
    view = world.view()
    view["job_terms"]["job_key"] = own_key  # in the signed part: the signature breaks
    refused("bad-job-signature", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_a_job_key_under_other_parameters_is_refused(world: World) -> None:
    other, _ = generate_params(256, random.Random(5))
    refused(
        "bad-job-key",
        lambda: verify_job_terms(world.kgc.public_key(), world.signed, world.signature, other),
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v["definition"].__setitem__("rounds", 5),
        lambda v: v["definition"]["model"].__setitem__("layers", [2, 4]),
        lambda v: v["definition"].__setitem__("initial_weights", b64encode(bytes(40)[:-1] + b"\1")),
        lambda v: v["definition"]["training"].__setitem__("learning_rate", 9.0),
        lambda v: v["weights"].__setitem__("sub-a", 0.9),
        lambda v: v["packing"].__setitem__("frac_bits", 3),
        lambda v: v.__setitem__("job_id", "job-2"),
    ],
    ids=["rounds", "model", "initial-weights", "training", "weights", "packing", "job-id"],
)
def test_a_view_that_differs_from_the_signed_terms_is_refused(world: World, mutate: Any) -> None:
    view = world.view()
    mutate(view)
    refused("job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_terms_naming_another_initial_ciphertext_are_refused(small_params: Params) -> None:
    """The KGC signed a digest of Enc(W_0) that the served W_0 does not encrypt to."""
    lying = World(small_params[0], initial_digest="0e" * 32)
    with pytest.raises(ProtocolError) as info:
        check_job_view(lying.view(), lying.kgc.public_key(), lying.params)
    assert info.value.code == "job-mismatch"
    assert "initial_ciphertext_sha256" in info.value.message
    assert "initial_model_sha256" not in info.value.message


def test_requested_terms_need_a_well_formed_initial_ciphertext_digest(world: World) -> None:
    added = {"purpose", "kgc_key_id", "param_server", "param_server_key", "signing_keys", "job_key"}
    requested = {k: v for k, v in world.signed.items() if k not in added}
    assert check_requested_terms(dict(requested)).to_json() == requested
    missing = {k: v for k, v in requested.items() if k != "initial_ciphertext_sha256"}
    refused("bad-terms", lambda: check_requested_terms(missing))
    for bad in ("AB" * 32, "ab" * 31, 7, None):
        refused(
            "bad-terms",
            lambda bad=bad: check_requested_terms({**requested, "initial_ciphertext_sha256": bad}),
        )


@pytest.mark.parametrize("bad", ["", "zz" * 32, "ab" * 31, 5, None])
def test_terms_with_a_malformed_server_key_are_refused(world: World, bad: object) -> None:
    signed = {**copy.deepcopy(world.signed), "param_server_key": bad}
    signature = sign_json(world.kgc, signed)
    refused(
        "bad-job-terms",
        lambda: verify_job_terms(world.kgc.public_key(), signed, signature, world.params),
    )


def test_quorum_below_the_participants_minimum_is_refused(small_params: Params) -> None:
    low = World(small_params[0], quorum=2)
    key = low.kgc.public_key()
    refused("quorum-too-small", lambda: check_job_view(low.view(), key, low.params))
    assert check_job_view(low.view(), key, low.params, min_quorum=2).quorum == 2


def test_terms_naming_another_server_are_refused(world: World) -> None:
    key = world.kgc.public_key()
    refused(
        "wrong-param-server",
        lambda: check_job_view(world.view(), key, world.params, param_server="sub-other"),
    )
    assert check_job_view(world.view(), key, world.params, param_server=PS).param_server == PS


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_change_to_a_signed_field_breaks_the_signature(world: World, data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(world.signed)))
    value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    signed = {**copy.deepcopy(world.signed), name: value}
    if signed == world.signed:
        return
    with pytest.raises(ProtocolError):
        verify_job_terms(world.kgc.public_key(), signed, world.signature, world.params)


# --------------------------------------------------------------------------- Enc(W_0)


@HYP
@given(
    width=st.integers(min_value=1, max_value=4),
    values=st.lists(
        st.floats(min_value=-30, max_value=30, allow_nan=False), min_size=1, max_size=30
    ),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_the_initial_digest_needs_no_job_key(
    small_params: Params, width: int, values: list[float], seed: int
) -> None:
    """Any job key of the width gives the bytes the PS hashed before asking the KGC."""
    params, master = small_params
    layout = PackingLayout(modulus=int(params.n), length=len(values))
    job_key = generate_job_key(params, width, random.Random(seed))
    vector = initial_ciphertext(job_key, layout, values)
    assert initial_ciphertext_sha256(params, width, layout, values) == vector_sha256(vector)
    assert vector.layout == BlockLayout(layout.num_plaintexts, width)
    assert all(vector.elements[offset] == 1 for offset, _ in vector.layout.block_offsets())
    plaintexts = decrypt_vector(master, vector)
    assert plaintexts == [int(m) for m in initial_plaintexts(layout, values)]
    resolution = 2.0**-layout.frac_bits
    np.testing.assert_allclose(decode_vector(plaintexts, layout), values, rtol=0, atol=resolution)


def test_the_initial_digest_depends_on_weights_width_and_packing(world: World) -> None:
    params, w0 = world.params, world.initial_weights
    assert initial_ciphertext_sha256(params, 2, world.layout, w0) == (
        world.terms.initial_ciphertext_sha256
    )
    longer = np.linspace(-3.0, 3.0, 20)
    layout = PackingLayout(modulus=int(params.n), length=20)  # 3 plaintexts
    digest = initial_ciphertext_sha256(params, 2, layout, longer)
    assert initial_ciphertext_sha256(params, 1, layout, longer) != digest
    assert initial_ciphertext_sha256(params, 3, layout, longer) != digest
    assert initial_ciphertext_sha256(params, 2, layout, longer + 2.0**-10) != digest
    finer = PackingLayout(modulus=int(params.n), length=20, frac_bits=18)
    assert initial_ciphertext_sha256(params, 2, finer, longer) != digest


def test_initial_plaintexts_use_at_most_half_a_slot(world: World) -> None:
    """W_0 is clipped to slot_bound / 2: the other half is left for the updates' sum."""
    layout = world.layout
    big = np.full(5, 10 * layout.slot_bound)
    decoded = decode_vector(initial_plaintexts(layout, big), layout)
    np.testing.assert_array_equal(decoded, np.full(5, layout.slot_bound / 2))


def test_digest_helpers_are_known_answers(world: World) -> None:
    assert contributors_sha256(["sub-b", "sub-a"]) == contributors_sha256(["sub-a", "sub-b"])
    assert contributors_sha256(["sub-b", "sub-a"]) == (
        hashlib.sha256(b'["sub-a","sub-b"]').hexdigest()
    )
    assert contributors_sha256(["sub-a"]) != contributors_sha256(["sub-a", "sub-b"])
    vector = initial_ciphertext(world.terms.job_key, world.layout, world.initial_weights)
    assert vector_sha256(vector) == hashlib.sha256(vector.to_bytes()).hexdigest()


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


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "ring",
        {**layout_obj(), "extra": 1},
        {k: v for k, v in layout_obj().items() if k != "clip_bound"},
        {k: v for k, v in layout_obj().items() if k != "kind"},
        layout_obj(kind="bcp"),
        layout_obj(kind="Ring"),
        layout_obj(bits=True),
        layout_obj(bits=32.0),
        layout_obj(bits="32"),
        layout_obj(bits=16),
        layout_obj(bits=128),
        layout_obj(frac_bits=True),
        layout_obj(frac_bits=31),
        layout_obj(frac_bits=-1),
        layout_obj(frac_bits=20.0),
        layout_obj(length=True),
        layout_obj(length=0),
        layout_obj(length=-6),
        layout_obj(length=6.0),
        layout_obj(length="6"),
        layout_obj(model_bound=float("nan")),
        layout_obj(model_bound=float("inf")),
        layout_obj(model_bound=-32.0),
        layout_obj(model_bound=0.0),
        layout_obj(model_bound=True),
        layout_obj(model_bound="32"),
        layout_obj(model_bound=None),
        layout_obj(clip_bound=float("nan")),
        layout_obj(clip_bound=float("-inf")),
        layout_obj(clip_bound=-1),
        layout_obj(clip_bound=False),
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
        MaskedLayout.from_json(layout_obj(**changes))


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


def test_check_job_view_accepts_a_masked_view(masked_world: MaskedWorld) -> None:
    terms = check_job_view(
        masked_world.view(), masked_world.kgc.public_key(), masked_world.params, param_server=PS
    )
    assert terms.aggregation == "masked"
    assert terms.width == 1 and terms.num_plaintexts == LENGTH
    assert terms.packing_sha256 == json_sha256(masked_world.layout.to_json())
    assert terms.initial_ciphertext_sha256 == initial_state_sha256(masked_world.layout, W0)


@pytest.mark.parametrize(
    "packing",
    [
        layout_obj(model_bound=33.0),
        layout_obj(bits=64),
        layout_obj(frac_bits=21),
        layout_obj(model_bound=32),  # same meaning, another canonical JSON
    ],
)
def test_check_job_view_refuses_another_layout(
    masked_world: MaskedWorld, packing: dict[str, Any]
) -> None:
    view = masked_world.view()
    view["packing"] = packing
    error = refused(
        "job-mismatch",
        lambda: check_job_view(view, masked_world.kgc.public_key(), masked_world.params),
    )
    assert "packing_sha256" in error.message


def test_check_job_view_refuses_other_initial_weights(masked_world: MaskedWorld) -> None:
    view = masked_world.view()
    view["definition"]["initial_weights"] = b64encode((W0 + 2**-10).astype("<f8").tobytes())
    error = refused(
        "job-mismatch",
        lambda: check_job_view(view, masked_world.kgc.public_key(), masked_world.params),
    )
    assert "initial_ciphertext_sha256" in error.message


def test_check_job_view_refuses_terms_signing_another_initial_state(params_512: Params) -> None:
    """The served W_0 is the signed one, but the terms' Z_0 digest is not encode(W_0)'s."""
    wide = MaskedLayout(RingSpec(64, FRAC), LENGTH, MODEL_BOUND, CLIP)
    other = MaskedWorld(*params_512, initial_digest=initial_state_sha256(wide, W0))
    error = refused(
        "job-mismatch",
        lambda: check_job_view(other.view(), other.kgc.public_key(), other.params),
    )
    assert error.message.endswith("initial_ciphertext_sha256")
