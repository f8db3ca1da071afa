"""The typed terms request (trapdoor.protocol.job.RequestedTerms).

``to_json()`` is exactly the dict ``requested_terms`` built before it was typed: the same
keys in the same order (what the KGC's stored terms start with) and the same values, so
the canonical JSON the KGC signs is unchanged. ``from_json`` is the strict inverse and
refuses with the codes ``check_requested_terms`` always used, in the same order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_support import World, refused

from trapdoor.crypto.signing import b64decode, canonical_json
from trapdoor.protocol.common import MAX_ROUND, json_sha256, sha256_hex
from trapdoor.protocol.job import (
    AGGREGATIONS,
    RequestedTerms,
    check_requested_terms,
    requested_terms,
)

ROUND_TRIP = settings(max_examples=100, deadline=None)
#: The request's keys in the order the hand-written builder wrote them.
ORDER = (
    "job_id",
    "participants",
    "weights",
    "quorum",
    "rounds",
    "width",
    "num_plaintexts",
    "definition_sha256",
    "packing_sha256",
    "model_sha256",
    "initial_model_sha256",
    "initial_ciphertext_sha256",
    "aggregation",
)

digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
weights_in_range = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
positive = st.integers(min_value=1, max_value=2**40)


@st.composite
def requests(draw: st.DrawFn) -> RequestedTerms:
    """Any well-formed terms request."""
    participants = draw(st.lists(st.text(max_size=12), min_size=1, max_size=6, unique=True))
    return RequestedTerms(
        job_id=draw(st.text(max_size=32)),
        participants=tuple(participants),
        weights={p: draw(weights_in_range | st.just(1)) for p in participants},
        quorum=draw(st.integers(min_value=1, max_value=len(participants))),
        rounds=draw(st.integers(min_value=1, max_value=MAX_ROUND)),
        width=draw(positive),
        num_plaintexts=draw(positive),
        definition_sha256=draw(digests),
        packing_sha256=draw(digests),
        model_sha256=draw(digests),
        initial_model_sha256=draw(digests),
        initial_ciphertext_sha256=draw(digests),
        aggregation=draw(st.sampled_from(AGGREGATIONS)),
    )


def test_a_request_round_trips_in_the_builders_key_order() -> None:
    @ROUND_TRIP
    @given(requests())
    def check(message: RequestedTerms) -> None:
        body = message.to_json()
        assert RequestedTerms.from_json(body) == message
        assert check_requested_terms(body) == message
        assert list(body) == list(ORDER)
        assert body["participants"] == list(message.participants)
        assert canonical_json(body) == canonical_json({k: body[k] for k in ORDER})

    check()


def test_from_json_refuses_what_is_not_exactly_its_shape() -> None:
    @ROUND_TRIP
    @given(requests(), st.sampled_from(ORDER))
    def check(message: RequestedTerms, name: str) -> None:
        body = message.to_json()
        refused("bad-terms", lambda: RequestedTerms.from_json({**body, name: None}))
        missing = {k: v for k, v in body.items() if k != name}
        refused("bad-terms", lambda: RequestedTerms.from_json(missing))
        refused("bad-terms", lambda: RequestedTerms.from_json({**body, "note": "x"}))
        refused("bad-terms", lambda: RequestedTerms.from_json([body]))

    check()


def test_from_json_keeps_its_codes_and_their_order() -> None:
    @ROUND_TRIP
    @given(requests())
    def check(message: RequestedTerms) -> None:
        body = message.to_json()
        first = body["participants"][0]
        twice = {**body, "participants": [first, first]}
        refused("duplicate-participant", lambda: RequestedTerms.from_json(twice))
        # a duplicate is found before the weights and the quorum are looked at
        refused("duplicate-participant", lambda: RequestedTerms.from_json({**twice, "quorum": 0}))
        too_many = {**body, "quorum": len(body["participants"]) + 1}
        refused("invalid-quorum", lambda: RequestedTerms.from_json(too_many))
        # a malformed count is found before the quorum is compared with the participants
        refused("bad-terms", lambda: RequestedTerms.from_json({**too_many, "width": True}))
        refused("bad-terms", lambda: RequestedTerms.from_json({**body, "rounds": MAX_ROUND + 1}))
        refused("bad-terms", lambda: RequestedTerms.from_json({**body, "aggregation": "plain"}))
        zero = {**body, "weights": {**body["weights"], first: 0}}
        refused("bad-terms", lambda: RequestedTerms.from_json(zero))

    check()


def _hand_written(world: World) -> dict[str, Any]:
    """What ``requested_terms`` returned before it was typed, for the world's job."""
    definition = world.definition
    participants = [str(p["subject_id"]) for p in definition["participants"]]
    return {
        "job_id": "job-1",
        "participants": participants,
        "weights": {s: float(world.weights[s]) for s in participants},
        "quorum": int(definition["quorum"]),
        "rounds": int(definition["rounds"]),
        "width": 2,
        "num_plaintexts": world.layout.num_plaintexts,
        "definition_sha256": json_sha256(dict(definition)),
        "packing_sha256": json_sha256(dict(world.packing)),
        "model_sha256": json_sha256(definition["model"]),
        "initial_model_sha256": sha256_hex(b64decode(str(definition["initial_weights"]))),
        "initial_ciphertext_sha256": world.signed["initial_ciphertext_sha256"],
        "aggregation": "bcp",
    }


def test_the_builder_makes_the_hand_written_request_and_the_kgc_signs_it(world: World) -> None:
    """The KGC-signed terms start with the request exactly as the PS built it by hand."""
    built = requested_terms(
        job_id="job-1",
        definition=world.definition,
        packing=world.packing,
        weights=world.weights,
        width=2,
        num_plaintexts=world.layout.num_plaintexts,
        initial_ciphertext_sha256=world.signed["initial_ciphertext_sha256"],
    )
    expected = _hand_written(world)
    assert built.to_json() == expected
    assert list(built.to_json()) == list(expected)
    assert canonical_json(built.to_json()) == canonical_json(expected)
    assert list(world.signed)[: len(ORDER)] == list(ORDER)
    assert {k: world.signed[k] for k in ORDER} == expected


def test_integer_weights_keep_their_json_spelling() -> None:
    """A weight sent as ``1`` is signed as ``1``, not ``1.0``: the canonical JSON differs."""
    body = {
        "job_id": "j",
        "participants": ["a"],
        "weights": {"a": 1},
        "quorum": 1,
        "rounds": 1,
        "width": 1,
        "num_plaintexts": 1,
        **{name: "ab" * 32 for name in ORDER if name.endswith("_sha256")},
        "aggregation": "bcp",
    }
    parsed = RequestedTerms.from_json(body)
    assert canonical_json(parsed.to_json()) == canonical_json(body)
    assert b'"weights":{"a":1}' in canonical_json(parsed.to_json())
