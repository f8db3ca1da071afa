"""The envelope every participant-signed round message shares (trapdoor.protocol._statement).

Played for each kind (commitment, upload statement, audit): a colluder that signs for
another round, job, audience or purpose, another participant's key, a malformed digest, and
one kind passed off as another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_support import HYP, PS, THREE, Params, World, refused, resigned

from trapdoor.crypto.signing import generate_signing_key
from trapdoor.protocol.audit import AUDIT_PURPOSE, verify_audit_statement
from trapdoor.protocol.commitment import CLOSED_SET_PURPOSE, COMMITMENT_PURPOSE, verify_commitment
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.job import JOB_TERMS_PURPOSE
from trapdoor.protocol.upload import UPLOAD_PURPOSE, verify_upload_statement

# --------------------------------------------------------------------------- participant-signed

#: The three participant-signed messages of a round, made and checked the same way.
Kind = tuple[str, str, Callable[..., dict[str, Any]], Callable[..., Any]]


def _commit(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.commitment(subject, rnd, **kw)


def _state(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.statement(subject, rnd, **kw)


def _audit(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.audit(subject, rnd, world.digests("cc" * 32, THREE, attempt=2), **kw)


KINDS: list[Kind] = [
    ("commitment", COMMITMENT_PURPOSE, _commit, verify_commitment),
    ("statement", UPLOAD_PURPOSE, _state, verify_upload_statement),
    ("audit", AUDIT_PURPOSE, _audit, verify_audit_statement),
]
KIND_IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_participant_signed_message_verifies_for_its_round_and_subject(
    world: World, kind: Kind
) -> None:
    field, purpose, build, verify = kind
    signed = build(world, "sub-a", 2)
    checked = verify(signed, world.terms, round_number=2, subject_id="sub-a")
    body = checked.to_json()
    assert body == signed[field]
    assert checked.purpose == purpose
    assert body["audience"] == PS and body["job_terms_sha256"] == world.terms.digest
    assert body["kgc_key_id"] == world.terms.raw["kgc_key_id"]
    assert (body["round"], body["subject_id"], body["job_id"]) == (2, "sub-a", "job-1")
    assert verify(signed, world.terms, round_number=2) == checked  # any subject


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_for_another_round_or_subject_is_refused(world: World, kind: Kind) -> None:
    field, _, build, verify = kind
    signed = build(world, "sub-a", 2)
    for rnd in (0, 1, 3):
        refused(f"{field}-mismatch", lambda r=rnd: verify(signed, world.terms, round_number=r))
    refused(
        f"{field}-mismatch",
        lambda: verify(signed, world.terms, round_number=2, subject_id="sub-b"),
    )


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_signed_by_another_key_is_refused(world: World, kind: Kind) -> None:
    """Neither the PS nor a colluder can sign in an honest participant's name."""
    field, _, build, verify = kind
    for key in (world.keys["sub-b"], world.ps, generate_signing_key()):
        forged = build(world, "sub-a", 0, key=key)
        refused(f"bad-{field}-signature", lambda f=forged: verify(f, world.terms, round_number=0))
    outsider = build(world, "sub-a", 0)
    outsider = {**outsider, field: {**outsider[field], "subject_id": "sub-x"}}
    refused("not-a-participant", lambda: verify(outsider, world.terms, round_number=0))
    refused(f"bad-{field}", lambda: verify({"body": {}}, world.terms, round_number=0))
    refused(f"bad-{field}", lambda: verify([outsider], world.terms, round_number=0))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_for_another_job_audience_or_purpose_is_refused(
    world: World, small_params: Params, kind: Kind
) -> None:
    field, _, build, verify = kind
    key = world.keys["sub-a"]
    other = World(small_params[0], rounds=9)  # another job: another terms digest
    # other's terms carry other's keys; re-sign with world's key so only the job differs
    body = build(other, "sub-a", 0)[field]
    refused(
        f"{field}-mismatch",
        lambda: verify(resigned(field, body, key), world.terms, round_number=0),
    )
    mine = build(world, "sub-a", 0)[field]
    for name, value in (
        ("audience", "sub-other-ps"),
        ("purpose", JOB_TERMS_PURPOSE),
        ("purpose", CLOSED_SET_PURPOSE),
        ("kgc_key_id", "00" * 16),
        ("job_id", "job-2"),
        ("round", True),
        ("round", "0"),
    ):
        moved = {**mine, name: value}
        refused(
            f"{field}-mismatch",
            lambda m=moved: verify(resigned(field, m, key), world.terms, round_number=0),
        )
    extra = {**mine, "note": "x"}
    refused(
        f"{field}-mismatch",
        lambda: verify(resigned(field, extra, key), world.terms, round_number=0),
    )


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_with_a_malformed_digest_is_refused(world: World, kind: Kind) -> None:
    field, _, build, verify = kind
    body = build(world, "sub-a", 0)[field]
    for name in [k for k in body if k.endswith("_sha256") and k != "job_terms_sha256"]:
        for bad in ("AB" * 32, "ab" * 31, 7, None):
            changed = {**body, name: bad}
            refused(
                f"bad-{field}",
                lambda c=changed: verify(
                    resigned(field, c, world.keys["sub-a"]), world.terms, round_number=0
                ),
            )


def test_one_kind_of_signed_message_never_passes_as_another(world: World) -> None:
    """A commitment and an upload statement both name a payload; the purpose tells them apart."""
    commitment = world.commitment("sub-a", 0)
    statement = world.statement("sub-a", 0)
    audit = _audit(world, "sub-a", 0)
    as_statement = {"statement": commitment["commitment"], "signature": commitment["signature"]}
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(as_statement, world.terms, round_number=0),
    )
    as_commitment = {"commitment": statement["statement"], "signature": statement["signature"]}
    refused(
        "commitment-mismatch",
        lambda: verify_commitment(as_commitment, world.terms, round_number=0),
    )
    # the same fields under another purpose tag (re-signed): still refused by purpose
    relabelled = {**commitment["commitment"], "purpose": UPLOAD_PURPOSE}
    refused(
        "commitment-mismatch",
        lambda: verify_commitment(
            resigned("commitment", relabelled, world.keys["sub-a"]), world.terms, round_number=0
        ),
    )
    as_audit = {"audit": statement["statement"], "signature": statement["signature"]}
    refused("audit-mismatch", lambda: verify_audit_statement(as_audit, world.terms, round_number=0))
    as_statement = {"statement": audit["audit"], "signature": audit["signature"]}
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(as_statement, world.terms, round_number=0),
    )


@HYP
@given(data=st.data())
def test_any_change_to_a_signed_message_is_refused(world: World, data: Any) -> None:
    field, _, build, verify = data.draw(st.sampled_from(KINDS))
    signed = build(world, "sub-a", 1)
    name = data.draw(st.sampled_from(sorted(signed[field])))
    value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none(), st.just("ab" * 32)))
    tampered = {**signed, field: {**signed[field], name: value}}
    if tampered == signed:
        return
    with pytest.raises(ProtocolError):
        verify(tampered, world.terms, round_number=1)
