"""Commitments and the closed commitment set (trapdoor.protocol.commitment).

A PS that closes a set for another round or job, signs it with another key, lists a subject
twice, out of order or below the quorum, or slips a bad commitment inside.
"""

from __future__ import annotations

from typing import Any

from protocol_support import PARTICIPANTS, PS, THREE, Params, World, payload, refused, resigned

from trapdoor.crypto.signing import generate_signing_key
from trapdoor.protocol.commitment import (
    CLOSED_SET_PURPOSE,
    COMMITMENT_PURPOSE,
    verify_closed_set,
    verify_commitment,
)
from trapdoor.protocol.common import json_sha256

# --------------------------------------------------------------------------- commitments


def test_a_commitment_names_the_payload(world: World) -> None:
    signed = world.commitment("sub-c", 3, digest="ab" * 32)
    body = verify_commitment(signed, world.terms, round_number=3, subject_id="sub-c")
    assert body.payload_sha256 == "ab" * 32
    tampered = {**signed, "commitment": {**body.to_json(), "payload_sha256": "cd" * 32}}
    refused(
        "bad-commitment-signature",
        lambda: verify_commitment(tampered, world.terms, round_number=3),
    )


# --------------------------------------------------------------------------- closed sets


def test_a_closed_set_verifies_and_lists_the_committed_payloads(world: World) -> None:
    signed = world.closed_set(1, ["sub-d", "sub-b", "sub-a"], closed_at=1234)
    closed = world.closed(signed, 1)
    assert closed.round == 1
    assert dict(closed.payloads) == {s: payload(s, 1) for s in ("sub-a", "sub-b", "sub-d")}
    assert list(closed.payloads) == ["sub-a", "sub-b", "sub-d"]  # sorted by the builder
    assert closed.digest == json_sha256(signed["closed_set"])
    body = signed["closed_set"]
    assert (body["purpose"], body["param_server"], body["closed_at"]) == (
        CLOSED_SET_PURPOSE,
        PS,
        1234,
    )
    assert body["job_terms_sha256"] == world.terms.digest
    # another set (another time of closing) has another digest
    assert world.closed(world.closed_set(1, ["sub-a", "sub-b", "sub-d"]), 1).digest != (
        closed.digest
    )


def test_a_closed_set_for_another_round_or_job_is_refused(
    world: World, small_params: Params
) -> None:
    signed = world.closed_set(1)
    for rnd in (0, 2):
        refused("closed-set-mismatch", lambda r=rnd: world.closed(signed, r))
    other = World(small_params[0], rounds=9)
    refused(
        "bad-closed-set-signature",  # other's terms name other's PS key
        lambda: verify_closed_set(signed, other.terms, round_number=1),
    )
    body = signed["closed_set"]
    for name, value in (
        ("job_terms_sha256", other.terms.digest),
        ("job_id", "job-2"),
        ("param_server", "sub-other-ps"),
        ("purpose", COMMITMENT_PURPOSE),
        ("kgc_key_id", "00" * 16),
        ("round", True),
        ("closed_at", "now"),
        ("commitments", {}),
    ):
        moved = {**body, name: value}
        refused(
            "closed-set-mismatch",
            lambda m=moved: world.closed(resigned("closed_set", m, world.ps), 1),
        )
    extra = {**body, "note": 1}
    refused("closed-set-mismatch", lambda: world.closed(resigned("closed_set", extra, world.ps), 1))


def test_a_closed_set_not_signed_by_the_terms_server_key_is_refused(world: World) -> None:
    """Only the key the KGC certified for this job's PS signs its closed sets."""
    for key in (generate_signing_key(), world.kgc, world.keys["sub-a"]):
        refused("bad-closed-set-signature", lambda k=key: world.closed(world.closed_set(0, key=k)))
    signed = world.closed_set(0)
    tampered = {**signed, "closed_set": {**signed["closed_set"], "closed_at": 1}}
    refused("bad-closed-set-signature", lambda: world.closed(tampered))
    refused("bad-closed-set-signature", lambda: world.closed({**signed, "signature": None}))
    refused("bad-closed-set", lambda: world.closed({"closed_set": []}))
    refused("bad-closed-set", lambda: world.closed(signed["closed_set"]))


def test_a_closed_set_with_a_duplicate_subject_is_refused(world: World) -> None:
    twice = [*(world.commitment(s) for s in THREE), world.commitment("sub-a", digest="ee" * 32)]
    refused("duplicate-commitment", lambda: world.closed(world.closed_set(commitments=twice)))
    same = [*(world.commitment(s) for s in THREE), world.commitment("sub-b")]
    refused("duplicate-commitment", lambda: world.closed(world.closed_set(commitments=same)))


def hand_made_set(world: World, commitments: list[Any], round_number: int = 0) -> dict[str, Any]:
    """A closed set the PS signs in exactly the given order (no builder to tidy it up)."""
    body = {**world.closed_set(round_number)["closed_set"], "commitments": commitments}
    return resigned("closed_set", body, world.ps)


def test_an_unsorted_closed_set_is_refused(world: World) -> None:
    commitments = [world.commitment(s) for s in reversed(PARTICIPANTS)]
    refused("bad-closed-set", lambda: world.closed(hand_made_set(world, commitments)))
    swapped = [world.commitment(s) for s in ("sub-a", "sub-c", "sub-b")]
    refused("bad-closed-set", lambda: world.closed(hand_made_set(world, swapped)))
    ordered = [world.commitment(s) for s in PARTICIPANTS]
    assert list(world.closed(hand_made_set(world, ordered)).payloads) == PARTICIPANTS


def test_a_closed_set_below_the_quorum_is_refused(world: World) -> None:
    for subjects in (["sub-a", "sub-b"], ["sub-c"], []):
        refused("below-quorum", lambda s=subjects: world.closed(world.closed_set(0, s)))


def test_a_closed_set_with_a_bad_commitment_inside_is_refused(world: World) -> None:
    honest = [world.commitment(s, 1) for s in THREE]
    for bad, code in (
        (world.commitment("sub-d", 0), "commitment-mismatch"),  # another round
        (world.commitment("sub-d", 2), "commitment-mismatch"),
        (world.commitment("sub-d", 1, key=world.ps), "bad-commitment-signature"),
        (world.commitment("sub-d", 1) | {"signature": "x"}, "bad-commitment-signature"),
        (world.statement("sub-d", 1), "bad-commitment"),  # not a commitment at all
        ("sub-d", "bad-commitment"),
    ):
        signed = hand_made_set(world, [*honest, bad], 1)
        refused(code, lambda s=signed: world.closed(s, 1))
