"""The typed participant-signed messages: commitments, upload statements (both modes),
audits and ``undecodable`` reports (trapdoor.protocol._statement and each step's module).

Each is a frozen dataclass whose ``to_json()`` is exactly the dict the protocol signed
before it was typed: the same keys in the same order (what the PS's JSON columns hold)
with the same values, so its canonical JSON, and so every Ed25519 signature, is
unchanged. ``from_json`` is the strict inverse.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from masked_support import MaskedWorld
from protocol_support import THREE, World, refused

from trapdoor.crypto.signing import canonical_json, sign_json
from trapdoor.protocol._statement import ParticipantStatement
from trapdoor.protocol.audit import AuditStatement, UndecodableStatement
from trapdoor.protocol.commitment import Commitment, Signed
from trapdoor.protocol.common import MAX_ATTEMPT, MAX_ROUND, MAX_RUN
from trapdoor.protocol.upload import MaskedUploadStatement, UploadStatement

_SHARED = (
    "purpose",
    "kgc_key_id",
    "job_id",
    "job_terms_sha256",
    "round",
    "run",
    "subject_id",
    "audience",
)
#: Each kind's own fields, in the order its builder wrote them before it was typed.
_OWN: dict[type[ParticipantStatement], tuple[str, ...]] = {
    Commitment: ("payload_sha256",),
    UploadStatement: ("payload_sha256", "closed_set_sha256", "randomness_proof"),
    MaskedUploadStatement: ("payload_sha256", "seed_sha256"),
    AuditStatement: (
        "attempt",
        "closed_set_sha256",
        "contributors_sha256",
        "base_sha256",
        "aggregate_sha256",
        "release_sha256",
        "blind_sha256",
    ),
    UndecodableStatement: ("bundle_sha256",),
}

#: Pure dataclasses, cheap to check: more examples than the signed-job tests run.
ROUND_TRIP = settings(max_examples=100, deadline=None)

digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
hex_ints = st.integers(min_value=0, max_value=2**600).map(lambda i: format(i, "x"))
proofs = st.fixed_dictionaries({"a_star": hex_ints, "t": hex_ints, "z": hex_ints})


def _own_value(name: str) -> st.SearchStrategy[Any]:
    if name == "attempt":
        return st.integers(min_value=0, max_value=MAX_ATTEMPT)
    if name == "randomness_proof":
        return proofs
    return digests


@st.composite
def statements(draw: st.DrawFn, kind: type[ParticipantStatement]) -> ParticipantStatement:
    """Any well-formed statement of ``kind``."""
    shared = {
        "purpose": kind.PURPOSE,
        "kgc_key_id": draw(st.text(max_size=32)),
        "job_id": draw(st.text(max_size=32)),
        "job_terms_sha256": draw(digests),
        "round": draw(st.integers(min_value=0, max_value=MAX_ROUND)),
        "run": draw(st.integers(min_value=0, max_value=MAX_RUN)),
        "subject_id": draw(st.text(max_size=32)),
        "audience": draw(st.text(max_size=32)),
    }
    own = {name: draw(_own_value(name)) for name in _OWN[kind]}
    return kind(**shared, **own)


def _dict_form(message: ParticipantStatement) -> dict[str, Any]:
    """The body as the builders wrote it by hand before the messages were typed."""
    return {name: getattr(message, name) for name in (*_SHARED, *_OWN[type(message)])}


KINDS = list(_OWN)
KIND_IDS = [k.__name__ for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_statement_round_trips_and_keeps_its_dict_form(
    kind: type[ParticipantStatement],
) -> None:
    @ROUND_TRIP
    @given(statements(kind))
    def check(message: ParticipantStatement) -> None:
        body = message.to_json()
        assert kind.from_json(body) == message
        assert list(body) == list(_dict_form(message))  # key order: the stored JSON text
        assert canonical_json(body) == canonical_json(_dict_form(message))

    check()


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_from_json_refuses_what_is_not_exactly_its_shape(
    kind: type[ParticipantStatement],
) -> None:
    @ROUND_TRIP
    @given(statements(kind), st.data())
    def check(message: ParticipantStatement, data: st.DataObject) -> None:
        body = message.to_json()
        code = f"bad-{kind.FIELD}"
        name = data.draw(st.sampled_from(sorted(body)))
        missing = {k: v for k, v in body.items() if k != name}
        refused(code, lambda: kind.from_json(missing))
        refused(code, lambda: kind.from_json({**body, "note": "x"}))
        refused(code, lambda: kind.from_json({**body, name: None}))
        refused(code, lambda: kind.from_json([body]))

    check()


@pytest.mark.parametrize(
    ("kind", "name", "bad"),
    [
        (Commitment, "purpose", UploadStatement.PURPOSE),
        (Commitment, "round", True),
        (Commitment, "round", -1),
        (Commitment, "run", MAX_RUN + 1),
        (Commitment, "payload_sha256", "AB" * 32),
        (AuditStatement, "attempt", MAX_ATTEMPT + 1),
        (AuditStatement, "attempt", False),
        (UploadStatement, "randomness_proof", {"a_star": "zz", "t": "1", "z": "1"}),
        (UploadStatement, "randomness_proof", ["1", "2", "3"]),
        (MaskedUploadStatement, "seed_sha256", "ab" * 31),
        (UndecodableStatement, "job_terms_sha256", 7),
    ],
)
def test_from_json_refuses_a_bad_value(
    kind: type[ParticipantStatement], name: str, bad: object
) -> None:
    @ROUND_TRIP
    @given(statements(kind))
    def check(message: ParticipantStatement) -> None:
        changed = {**message.to_json(), name: bad}
        refused(f"bad-{kind.FIELD}", lambda: kind.from_json(changed))

    check()


def _wire_forms(world: World, masked_world: MaskedWorld) -> list[tuple[str, dict[str, Any]]]:
    """One signed message of each kind, as its builder sends it (all signed by sub-a)."""
    audit_digests = world.digests("cc" * 32, THREE, attempt=3)
    return [
        ("commitment", world.commitment("sub-a", 2)),
        ("statement", world.statement("sub-a", 2)),
        ("statement", masked_world.upload("sub-a", 1, run=1).statement),
        ("audit", world.audit("sub-a", 2, audit_digests)),
        ("undecodable", world.undecodable("sub-a", 2)),
    ]


def test_the_wire_form_is_the_hand_written_envelope(
    world: World, masked_world: MaskedWorld
) -> None:
    """A builder's output is ``{field: body, "signature"}`` with the signature over the
    body in its hand-written form: byte for byte what it sent before it was typed."""
    for field, signed in _wire_forms(world, masked_world):
        body = signed[field]
        kind = next(k for k in KINDS if field == k.FIELD and body["purpose"] == k.PURPOSE)
        message = kind.from_json(body)
        assert set(signed) == {field, "signature"}
        assert list(body) == list(_dict_form(message))
        keys = masked_world.keys if kind is MaskedUploadStatement else world.keys
        assert signed["signature"] == sign_json(keys["sub-a"], _dict_form(message))
        assert Signed(message, signed["signature"]).to_json() == signed
        wire = canonical_json(Signed(message, signed["signature"]).to_json())
        assert wire == canonical_json(signed)
