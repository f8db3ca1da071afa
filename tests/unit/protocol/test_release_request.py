"""Release requests (trapdoor.protocol.release_request) and the KGC's checks, both modes.

A PS that asks out of schedule, for another job, for contributors that did not commit,
audit or report, with statements under another closed set, without its own signature, or
for a vector that holds more than the proven uploads; a masked request that swaps or
repeats a seed. Re-runs: only of the newest undecoded release, over exactly its set, with
every member's report. The KGC's mask sum is the sum of the contributors' masks, and a
tampered seed gives an unrelated mask without an error.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from masked_support import LENGTH, ROUNDS, MaskedWorld, Upload, layout_obj
from protocol_support import (
    BASE,
    BUNDLE,
    PARTICIPANTS,
    RELEASE,
    THREE,
    Params,
    World,
    check,
    payload,
    refused,
)

from trapdoor.crypto.masking import derive_mask, ring_sum, seed_to_int
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import generate_signing_key, sign_json
from trapdoor.protocol.audit import (
    UNDECODABLE_PURPOSE,
    AuditDigests,
    build_undecodable_statement,
    contributors_sha256,
    verify_audit_statement,
    verify_undecodable_statement,
)
from trapdoor.protocol.commitment import pok_context, verify_commitment
from trapdoor.protocol.common import MAX_ATTEMPT, MAX_RUN, ProtocolError
from trapdoor.protocol.release_request import (
    MaskedReleaseCheck,
    ReleaseCheck,
    UndecodedRelease,
    check_release_request,
    kgc_mask_sum,
    verify_release_signature,
)
from trapdoor.protocol.upload import build_upload_statement, seed_from_obj, verify_upload_statement

# --------------------------------------------------------------------------- releases


def test_a_release_request_in_schedule_passes(world: World) -> None:
    header = world.release_header(1, THREE)
    assert verify_release_signature(header, world.ps.public_key()) == 1
    result = check(world, header, 1)
    closed = world.closed(header["closed_set"], 1)
    assert result == ReleaseCheck(1, 0, tuple(THREE), world.digests(closed.digest, THREE))
    assert result.digests.release_sha256 == RELEASE and result.digests.base_sha256 == BASE


def test_a_release_of_a_later_attempt_over_part_of_the_closed_set_passes(world: World) -> None:
    """sub-d committed but did not audit attempt 0: attempt 1 runs over the other three."""
    subjects = ["sub-c", "sub-a", "sub-b"]  # any order: the header lists them as given
    header = world.release_header(2, subjects, committed=PARTICIPANTS, attempt=1)
    result = check(world, header, 2)
    assert result.round == 2 and result.contributors == tuple(subjects)
    assert result.digests.attempt == 1
    assert result.digests.contributors_sha256 == contributors_sha256(THREE)


def test_release_requests_out_of_schedule_are_refused(world: World) -> None:
    """Relabelled rounds (issue 11 point 2): only the next round, only below ``rounds``."""
    refused("out-of-schedule", lambda: check(world, world.release_header(1, THREE), 0))
    refused("out-of-schedule", lambda: check(world, world.release_header(0, THREE), 1))
    refused("round-out-of-range", lambda: check(world, world.release_header(4, THREE), 4))
    refused("round-out-of-range", lambda: check(world, world.release_header(1000, THREE), 1000))
    for bad in (-1, True, "1", None):
        header = {**world.release_header(1, THREE), "round": bad}
        refused("round-out-of-range", lambda h=header: check(world, h, 1))


def test_a_request_for_another_job_is_refused(world: World) -> None:
    header = {**world.release_header(0, THREE), "job_id": "job-2"}
    refused("job-mismatch", lambda: check(world, header, 0))
    refused(
        "job-mismatch", lambda: check(world, {k: v for k, v in header.items() if k != "job_id"}, 0)
    )


def test_a_replayed_old_round_is_refused(world: World) -> None:
    """Round 0's request, or its messages relabelled as round 1, cannot release round 1."""
    old = world.release_header(0, THREE)
    refused("out-of-schedule", lambda: check(world, old, 1))
    relabelled = {**old, "round": 1}
    refused("closed-set-mismatch", lambda: check(world, relabelled, 1))
    fresh = world.release_header(1, THREE)
    refused(
        "statement-mismatch",
        lambda: check(world, {**fresh, "statements": old["statements"]}, 1),
    )
    refused("audit-mismatch", lambda: check(world, {**fresh, "audits": old["audits"]}, 1))


def test_release_requests_with_wrong_contributors_are_refused(world: World) -> None:
    refused("below-quorum", lambda: check(world, world.release_header(0, ["sub-a", "sub-b"]), 0))
    header = world.release_header(0, THREE)
    header["contributors"] = ["sub-a", "sub-b", "sub-x"]
    refused("not-a-participant", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["contributors"] = ["sub-a", "sub-b", "sub-b"]
    refused("duplicate-contributor", lambda: check(world, header, 0))
    for bad in ("sub-a", None, ["sub-a", 2, "sub-c"]):
        header = {**world.release_header(0, THREE), "contributors": bad}
        refused("bad-field", lambda h=header: check(world, h, 0))
    header = world.release_header(0, THREE)
    header["statements"][2] = world.statement("sub-c", 1)  # a statement of another round
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["statements"][2] = header["statements"][1]  # one contributor's statement twice
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["audits"][2] = header["audits"][1]  # one contributor's audit twice
    refused("audit-mismatch", lambda: check(world, header, 0))


def test_a_contributor_outside_the_closed_set_is_refused(world: World) -> None:
    """sub-d signs a statement and an audit, but never committed before the set closed."""
    header = world.release_header(0, PARTICIPANTS, committed=THREE)
    refused("not-committed", lambda: check(world, header, 0))


def test_a_request_whose_closed_set_is_below_quorum_or_forged_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    header["closed_set"] = world.closed_set(0, ["sub-a", "sub-b"])
    refused("below-quorum", lambda: check(world, header, 0))
    header["closed_set"] = world.closed_set(0, THREE, key=generate_signing_key())
    refused("bad-closed-set-signature", lambda: check(world, header, 0))
    header["closed_set"] = None
    refused("bad-closed-set", lambda: check(world, header, 0))


def test_a_statement_under_another_closed_set_or_payload_is_refused(world: World) -> None:
    """The PS cannot show the KGC one closed set and the contributors another."""
    header = world.release_header(0, THREE)
    other = world.closed(world.closed_set(0, THREE, closed_at=999))
    header["statements"][0] = world.statement("sub-a", 0, closed=other.digest)
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"])
    header["statements"][1] = world.statement("sub-b", 0, closed=closed.digest, digest="ee" * 32)
    refused("statement-mismatch", lambda: check(world, header, 0))
    # the closed set swapped for another one the contributors did not upload under
    header = world.release_header(0, THREE)
    header["closed_set"] = world.closed_set(0, THREE, closed_at=999)
    refused("statement-mismatch", lambda: check(world, header, 0))


def test_a_missing_or_extra_audit_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    for audits in (header["audits"][:2], [], None, [*header["audits"], header["audits"][0]]):
        refused("audit-mismatch", lambda a=audits: check(world, {**header, "audits": a}, 0))
    for statements in (header["statements"][:2], None):
        refused(
            "statement-mismatch",
            lambda s=statements: check(world, {**header, "statements": s}, 0),
        )


def test_a_release_of_something_the_contributors_did_not_audit_is_refused(world: World) -> None:
    """Another F, another base or another attempt than every audit names."""
    header = world.release_header(0, THREE)
    refused("audit-mismatch", lambda: check(world, header, 0, payload="f1" * 32))
    refused("audit-mismatch", lambda: check(world, header, 0, base="bb" * 32))
    refused("audit-mismatch", lambda: check(world, {**header, "attempt": 1}, 0))
    for bad in (-1, MAX_ATTEMPT + 1, True, None):
        refused("bad-field", lambda b=bad: check(world, {**header, "attempt": b}, 0))


@pytest.mark.parametrize(
    "change",
    [
        {"attempt": 1},
        {"closed_set_sha256": "cc" * 32},
        {"contributors_sha256": contributors_sha256(["sub-a", "sub-b"])},
        {"contributors_sha256": contributors_sha256(PARTICIPANTS)},
        {"base_sha256": "bb" * 32},
        {"aggregate_sha256": "ab" * 32},
        {"release_sha256": "f1" * 32},
        {"blind_sha256": "b2" * 32},
    ],
    ids=lambda c: next(iter(c)),
)
def test_one_audit_that_differs_from_the_others_is_refused(
    world: World, change: dict[str, Any]
) -> None:
    """Every contributor must have checked the same attempt, set, base, Agg, F and R."""
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"])
    honest = world.digests(closed.digest, THREE).fields()
    digests = AuditDigests(**{**honest, **change})
    for position in (0, 2):  # the first audit sets Agg and R for the others
        changed = copy.deepcopy(header)
        changed["audits"][position] = world.audit(THREE[position], 0, digests)
        with pytest.raises(ProtocolError) as info:
            check(world, changed, 0)
        assert info.value.code == "audit-mismatch"


def test_a_release_request_not_signed_by_the_server_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    refused(
        "bad-request-signature",
        lambda: verify_release_signature(header, generate_signing_key().public_key()),
    )
    header["round"] = 1  # changed after signing
    refused(
        "bad-request-signature", lambda: verify_release_signature(header, world.ps.public_key())
    )


def test_the_release_header_lists_contributors_from_the_statements(world: World) -> None:
    header = world.release_header(3, ["sub-b", "sub-a", "sub-d"])
    assert header["contributors"] == ["sub-b", "sub-a", "sub-d"]
    assert (header["job_id"], header["round"], header["attempt"]) == ("job-1", 3, 0)
    assert (header["run"], header["undecodable"]) == (0, [])
    assert set(header) == {
        "job_id",
        "round",
        "run",
        "undecodable",
        "attempt",
        "contributors",
        "closed_set",
        "statements",
        "audits",
        "request_signature",
    }


# --------------------------------------------------------------------------- re-runs


def test_every_round_message_names_its_run_and_is_void_in_the_other(world: World) -> None:
    commitment = world.commitment("sub-a", 1, run=1)
    assert commitment["commitment"]["run"] == 1
    assert verify_commitment(commitment, world.terms, round_number=1, run=1).run == 1
    refused(
        "commitment-mismatch", lambda: verify_commitment(commitment, world.terms, round_number=1)
    )
    closed = world.closed_set(1, run=1)
    assert world.closed(closed, 1, run=1).run == 1
    refused("closed-set-mismatch", lambda: world.closed(closed, 1, run=0))
    # a closed set of run 1 holding a commitment of run 0
    mixed = world.closed_set(
        1, commitments=[world.commitment(s, 1, run=0 if s == "sub-a" else 1) for s in THREE], run=1
    )
    refused("commitment-mismatch", lambda: world.closed(mixed, 1, run=1))
    audit = world.audit("sub-a", 1, world.digests("cc" * 32, THREE), run=1)
    refused("audit-mismatch", lambda: verify_audit_statement(audit, world.terms, round_number=1))
    statement = world.statement("sub-a", 1, run=1)
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(statement, world.terms, round_number=1),
    )


def test_undecodable_reports_name_their_bundle(world: World) -> None:
    report = world.undecodable("sub-b", 2)
    body = verify_undecodable_statement(
        report, world.terms, round_number=2, run=0, subject_id="sub-b", bundle_sha256=BUNDLE
    )
    assert (body.purpose, body.run, body.bundle_sha256) == (UNDECODABLE_PURPOSE, 0, BUNDLE)
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(
            report, world.terms, round_number=2, run=0, bundle_sha256="be" * 32
        ),
    )
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(report, world.terms, round_number=2, run=1),
    )
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(report, world.terms, round_number=3, run=0),
    )
    forged = world.undecodable("sub-b", 2, key=world.keys["sub-a"])
    refused(
        "bad-undecodable-signature",
        lambda: verify_undecodable_statement(forged, world.terms, round_number=2, run=0),
    )
    not_hex = world.undecodable("sub-b", 2, bundle="xyz")
    refused(
        "bad-undecodable",
        lambda: verify_undecodable_statement(not_hex, world.terms, round_number=2, run=0),
    )


UNDECODED = UndecodedRelease(round=1, contributors=tuple(THREE), bundle_sha256=BUNDLE)


def test_a_re_run_over_the_same_set_with_every_report_passes(world: World) -> None:
    header = world.release_header(1, ["sub-c", "sub-a", "sub-b"], run=1)
    result = check(world, header, 1, UNDECODED)
    assert (result.round, result.run, result.contributors) == (1, 1, ("sub-c", "sub-a", "sub-b"))
    assert result.digests.base_sha256 == BASE


def test_a_re_run_is_refused_without_an_undecoded_release_of_that_round(world: World) -> None:
    header = world.release_header(1, THREE, run=1)
    refused("out-of-schedule", lambda: check(world, header, 1))
    other_round = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    refused("out-of-schedule", lambda: check(world, header, 1, other_round))
    for bad in (MAX_RUN + 1, -1, "1", True, None):
        refused("bad-field", lambda b=bad: check(world, {**header, "run": b}, 1, UNDECODED))


def test_a_re_run_over_another_set_is_refused(world: World) -> None:
    """A smaller or larger set would let release₀ − release₁ reveal someone's update."""
    for subjects in (PARTICIPANTS, ["sub-a", "sub-b", "sub-d"]):
        header = world.release_header(1, subjects, run=1)
        refused("rerun-set-mismatch", lambda h=header: check(world, h, 1, UNDECODED))
    larger = UndecodedRelease(round=1, contributors=tuple(PARTICIPANTS), bundle_sha256=BUNDLE)
    refused(
        "rerun-set-mismatch", lambda: check(world, world.release_header(1, THREE, run=1), 1, larger)
    )


def test_a_re_run_needs_every_members_report_on_the_undecoded_bundle(world: World) -> None:
    reports = [world.undecodable(s, 1) for s in THREE]
    cases = {
        "one missing": reports[:2],
        "one twice": [reports[0], reports[0], reports[1]],
        "another bundle": [*reports[:2], world.undecodable("sub-c", 1, bundle="be" * 32)],
        "another round": [*reports[:2], world.undecodable("sub-c", 0)],
        "of run 1": [*reports[:2], world.undecodable("sub-c", 1, run=1)],
    }
    for name, sent in cases.items():
        header = world.release_header(1, THREE, run=1, undecodable=sent)
        with pytest.raises(ProtocolError) as info:
            check(world, header, 1, UNDECODED)
        assert info.value.code == "undecodable-mismatch", name
    forged = [*reports[:2], world.undecodable("sub-c", 1, key=world.keys["sub-a"])]
    header = world.release_header(1, THREE, run=1, undecodable=forged)
    refused("bad-undecodable-signature", lambda: check(world, header, 1, UNDECODED))
    header = world.release_header(1, THREE, run=1)
    refused("bad-field", lambda: check(world, {**header, "undecodable": None}, 1, UNDECODED))


def test_run_0_carries_no_reports_and_run_0_messages_do_not_serve_a_re_run(world: World) -> None:
    header = world.release_header(1, THREE, undecodable=[world.undecodable("sub-a", 1)])
    refused("undecodable-mismatch", lambda: check(world, header, 1))
    run0 = world.release_header(1, THREE)
    rerun = world.release_header(1, THREE, run=1)
    refused(
        "closed-set-mismatch",
        lambda: check(world, {**rerun, "closed_set": run0["closed_set"]}, 1, UNDECODED),
    )
    refused(
        "statement-mismatch",
        lambda: check(world, {**rerun, "statements": run0["statements"]}, 1, UNDECODED),
    )
    refused(
        "audit-mismatch", lambda: check(world, {**rerun, "audits": run0["audits"]}, 1, UNDECODED)
    )


# --------------------------------------------------------------------------- randomness proofs


def test_the_kgc_refuses_a_statement_without_a_proof_of_its_randomness(world: World) -> None:
    """A colluder vouching for a ciphertext whose randomness it does not know: refused."""
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"]).digest
    forged = build_upload_statement(
        world.keys[THREE[0]],
        world.terms,
        round_number=0,
        subject_id=THREE[0],
        payload_sha256=payload(THREE[0], 0),
        closed_set_sha256=closed,
        randomness_proof=prove_randomness(  # knows some randomness, not the upload's
            world.params,
            world.randomness(THREE[0], 99),
            pok_context(world.terms, 0, closed),
            THREE[0],
            random.Random(1),
        ).to_obj(),
    )
    body = {k: v for k, v in header.items() if k != "request_signature"}
    body["statements"] = [forged, *body["statements"][1:]]
    refused("broken-a-chain", lambda: check(world, body, 0))
    # a proof made for another round's context does not verify in this one
    replayed = world.statement(THREE[0], 1, closed=closed)
    body["statements"] = [replayed, *header["statements"][1:]]
    refused("statement-mismatch", lambda: check(world, body, 0))


def test_the_kgc_refuses_a_vector_that_holds_more_than_the_proven_uploads(world: World) -> None:
    header = world.release_header(0, THREE)
    extra = world.a_of([*THREE, PARTICIPANTS[3]], 0)  # a fourth, unproven ciphertext inside
    refused(
        "broken-a-chain",
        lambda: check_release_request(
            header,
            world.terms,
            next_round=0,
            base_sha256=BASE,
            payload_sha256=RELEASE,
            previous_a=[1] * world.blocks,
            current_a=extra,
        ),
    )
    tampered = {k: v for k, v in header.items()}
    proof = dict(tampered["statements"][0]["statement"]["randomness_proof"])
    proof["z"] = format(int(proof["z"], 16) + 1, "x")
    body = {**tampered["statements"][0]["statement"], "randomness_proof": proof}
    tampered["statements"] = [
        {"statement": body, "signature": sign_json(world.keys[THREE[0]], body)},
        *tampered["statements"][1:],
    ]
    refused("bad-randomness-proof", lambda: check(world, tampered, 0))


# --------------------------------------------------------------------------- release requests


def test_release_request_honest(masked_world: MaskedWorld, round0: list[Upload]) -> None:
    header = masked_world.header(list(reversed(round0)))
    assert header["aggregation"] == "masked" and header["layout"] == masked_world.layout.to_json()
    assert header["contributors"] == THREE
    assert [u["statement"]["statement"]["subject_id"] for u in header["uploads"]] == THREE
    assert header["undecodable"] == [] and (header["round"], header["run"]) == (0, 0)
    assert verify_release_signature(header, masked_world.ps.public_key()) == 0
    assert header == masked_world.header(round0)  # the order of the uploads does not matter
    check = masked_world.check(header)
    assert (check.round, check.run, check.layout) == (0, 0, masked_world.layout)
    assert check.contributors == tuple(THREE)
    assert dict(check.payloads) == {
        u.subject: hashlib.sha256(u.y_bytes).hexdigest() for u in round0
    }
    assert dict(check.seeds) == {
        u.subject: seed_from_obj(u.seed_obj, masked_world.job_key) for u in round0
    }


def test_release_request_later_round(masked_world: MaskedWorld) -> None:
    uploads = [masked_world.upload(s, 2) for s in PARTICIPANTS]
    check = masked_world.check(masked_world.header(uploads, 2), next_round=2)
    assert check.round == 2 and check.contributors == tuple(PARTICIPANTS)


def _edit(masked_world: MaskedWorld, header: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The header with ``changes``, signed again by the PS."""
    body = {k: v for k, v in header.items() if k != "request_signature"}
    body.update(changes)
    return {**body, "request_signature": sign_json(masked_world.ps, body)}


def _swap_seeds(masked_world: MaskedWorld, round0: list[Upload]) -> dict[str, Any]:
    header = masked_world.header(round0)
    uploads = header["uploads"]
    uploads[0]["seed"], uploads[1]["seed"] = uploads[1]["seed"], uploads[0]["seed"]
    return header


def _same_seed(masked_world: MaskedWorld, round0: list[Upload], *, respell: bool) -> dict[str, Any]:
    """sub-c sends (and signs) sub-a's seed ciphertext as its own, maybe spelled otherwise."""
    seed_obj = dict(round0[0].seed_obj)
    if respell:
        seed_obj = {"A": "0x" + seed_obj["A"], "B": seed_obj["B"].upper()}
    copied = masked_world.upload("sub-c", seed_obj=seed_obj)
    return masked_world.header([round0[0], round0[1], copied])


def _with_upload(masked_world: MaskedWorld, round0: list[Upload], **changes: Any) -> dict[str, Any]:
    header = masked_world.header(round0)
    header["uploads"][1].update(changes)
    return header


#: (name, request(masked_world, round0) -> header, next_round, code)
REFUSED_REQUESTS: list[tuple[str, Callable[[MaskedWorld, list[Upload]], Any], int, str]] = [
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
        lambda w, u: w.header(u, layout=layout_obj(model_bound=64.0)),
        0,
        "job-mismatch",
    ),
    (
        "the layout respelled",
        lambda w, u: w.header(u, layout=layout_obj(model_bound=32)),
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
    masked_world: MaskedWorld,
    round0: list[Upload],
    make: Callable[[MaskedWorld, list[Upload]], dict[str, Any]],
    next_round: int,
    code: str,
) -> None:
    header = make(masked_world, round0)
    refused(code, lambda: masked_world.check(header, next_round))


def test_release_request_for_a_bcp_job_is_refused(params_512: Params) -> None:
    bcp = MaskedWorld(*params_512, aggregation="bcp")
    assert bcp.terms.aggregation == "bcp"
    header = bcp.header([bcp.upload(s) for s in THREE])
    refused("job-mismatch", lambda: bcp.check(header))


def _report(masked_world: MaskedWorld, subject: str, bundle: str = BUNDLE) -> dict[str, Any]:
    return build_undecodable_statement(
        masked_world.keys[subject],
        masked_world.terms,
        round_number=0,
        run=0,
        subject_id=subject,
        bundle_sha256=bundle,
    )


def test_release_request_rerun(masked_world: MaskedWorld) -> None:
    undecoded = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    uploads = [masked_world.upload(s, run=1) for s in THREE]
    reports = [_report(masked_world, s) for s in THREE]
    header = masked_world.header(uploads, run=1, undecodable=reports)
    check = masked_world.check(header, 0, undecoded)
    assert (check.round, check.run, check.contributors) == (0, 1, tuple(THREE))
    # Without every report, with reports on another bundle, or for another set: refused.
    refused(
        "undecodable-mismatch",
        lambda: masked_world.check(masked_world.header(uploads, run=1), 0, undecoded),
    )
    refused(
        "undecodable-mismatch",
        lambda: masked_world.check(
            masked_world.header(uploads, run=1, undecodable=reports[:2]), 0, undecoded
        ),
    )
    other_bundle = [_report(masked_world, s, "ee" * 32) for s in THREE]
    refused(
        "undecodable-mismatch",
        lambda: masked_world.check(
            masked_world.header(uploads, run=1, undecodable=other_bundle), 0, undecoded
        ),
    )
    four = [*uploads, masked_world.upload("sub-d", run=1)]
    refused(
        "rerun-set-mismatch",
        lambda: masked_world.check(
            masked_world.header(four, run=1, undecodable=reports), 0, undecoded
        ),
    )
    # Run-0 statements cannot be replayed into the re-run.
    run0 = [masked_world.upload(s) for s in THREE]
    refused(
        "statement-mismatch",
        lambda: masked_world.check(
            masked_world.header(run0, run=1, undecodable=reports), 0, undecoded
        ),
    )
    # A re-run of round 0 is not a re-run of round 1.
    later = UndecodedRelease(round=1, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    refused("out-of-schedule", lambda: masked_world.check(header, 0, later))


# --------------------------------------------------------------------------- the KGC's sum


def test_kgc_mask_sum_is_the_sum_of_the_contributors_masks(
    masked_world: MaskedWorld, round0: list[Upload]
) -> None:
    check = masked_world.check(masked_world.header(round0))
    total = kgc_mask_sum(masked_world.master, masked_world.terms, check)
    ring = masked_world.layout.ring
    local = [
        derive_mask(seed_to_int(u.seed), masked_world.n, masked_world.context(u.subject), ring)
        for u in round0
    ]
    assert total.dtype == np.uint32 and total.shape == (LENGTH,)
    assert total.tolist() == ring_sum(local, ring, LENGTH).tolist()
    assert total.tolist() == [sum(int(m[i]) for m in local) % 2**32 for i in range(LENGTH)]
    assert all(u.mask.tolist() == m.tolist() for u, m in zip(round0, local, strict=True))


def test_kgc_mask_sum_of_a_rerun_uses_run_1_masks(masked_world: MaskedWorld) -> None:
    undecoded = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    uploads = [masked_world.upload(s, run=1) for s in THREE]
    header = masked_world.header(
        uploads, run=1, undecodable=[_report(masked_world, s) for s in THREE]
    )
    total = kgc_mask_sum(
        masked_world.master, masked_world.terms, masked_world.check(header, 0, undecoded)
    )
    assert (
        total.tolist()
        == ring_sum([u.mask for u in uploads], masked_world.layout.ring, LENGTH).tolist()
    )
    # The same seeds under run 0's context give another sum.
    run0 = [
        derive_mask(
            seed_to_int(u.seed),
            masked_world.n,
            masked_world.context(u.subject),
            masked_world.layout.ring,
        )
        for u in uploads
    ]
    assert total.tolist() != ring_sum(run0, masked_world.layout.ring, LENGTH).tolist()


def _tampered_seed(
    masked_world: MaskedWorld, seed_obj: dict[str, str], delta: int
) -> dict[str, str]:
    """``c·(1+δN)``: B·(1+δN) mod N², which decrypts to ``s + δ mod N``."""
    n, n2 = masked_world.n, int(masked_world.params.nsquare)
    b = int(seed_obj["B"], 16) * (1 + delta * n) % n2
    return {"A": seed_obj["A"], "B": format(b, "x")}


def test_a_tampered_seed_gives_an_unrelated_mask_and_no_error(
    masked_world: MaskedWorld, round0: list[Upload]
) -> None:
    """sub-c re-submits sub-a's seed as c·(1+δN): the KGC derives a mask from s_a + δ mod N,
    whatever that value is (0, above 2^256, near N), and says nothing about s_a."""
    honest_a = round0[0]
    s_a = seed_to_int(honest_a.seed)
    ring = masked_world.layout.ring
    context_c = masked_world.context("sub-c")
    n = masked_world.n
    sums = set()
    for delta in (1, 2, 2**256, n - s_a, n - s_a - 1, n - 1, 3 * n + 5):
        copied = masked_world.upload(
            "sub-c", seed_obj=_tampered_seed(masked_world, honest_a.seed_obj, delta)
        )
        check = masked_world.check(masked_world.header([honest_a, round0[1], copied]))
        total = kgc_mask_sum(masked_world.master, masked_world.terms, check)
        value = (s_a + delta) % n
        expected_c = derive_mask(value, n, context_c, ring)
        expected = ring_sum([honest_a.mask, round0[1].mask, expected_c], ring, LENGTH)
        assert total.tolist() == expected.tolist()
        assert expected_c.tolist() != derive_mask(s_a, n, context_c, ring).tolist()
        assert expected_c.tolist() != honest_a.mask.tolist()
        sums.add(total.tobytes())
    assert len(sums) == 7


def test_masks_of_other_rounds_runs_or_signers_differ(masked_world: MaskedWorld) -> None:
    seed = b"\x42" * 32
    cases = [("sub-a", 0, 0), ("sub-a", 1, 0), ("sub-a", 0, 1), ("sub-b", 0, 0)]
    sums = []
    for subject, round_number, run in cases:
        upload = masked_world.upload(subject, round_number, run=run, seed=seed)
        masks = kgc_mask_sum(
            masked_world.master,
            masked_world.terms,
            MaskedReleaseCheck(
                round_number,
                run,
                masked_world.layout,
                (subject,),
                {subject: "00" * 32},
                {subject: seed_from_obj(upload.seed_obj, masked_world.job_key)},
            ),
        )
        assert masks.tolist() == upload.mask.tolist()
        sums.append(masks.tobytes())
    assert len(set(sums)) == len(cases)
