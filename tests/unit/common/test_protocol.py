"""The shared protocol messages: job terms, upload statements, release requests, tokens.

Each check is played from the side that would break it: a PS that serves another job key
or definition than the KGC signed, a colluder that signs for another round, a PS that
relabels a round or names a contributor that never signed.
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bcp import MasterKey, PublicParams, generate_params
from common.blocks import generate_job_key
from common.encoding import PackingLayout
from common.protocol import (
    JOB_TERMS_PURPOSE,
    KGC_AUDIENCE,
    JobTerms,
    ProtocolError,
    build_upload_statement,
    check_job_view,
    check_release_request,
    kgc_key_id,
    release_request_header,
    requested_terms,
    sign_job_terms,
    token_challenge,
    token_request,
    verify_job_terms,
    verify_release_signature,
    verify_upload_statement,
)
from common.signing import (
    TokenError,
    b64encode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from common.wire import to_obj

PARTICIPANTS = ["sub-a", "sub-b", "sub-c"]
PS = "sub-ps"


class World:
    """A KGC key, a job signed for PS, its served view, and the participants' keys."""

    def __init__(self, params: PublicParams, *, quorum: int = 3, rounds: int = 4) -> None:
        rng = random.Random(7)
        self.params = params
        self.kgc = generate_signing_key()
        self.keys = {s: generate_signing_key() for s in PARTICIPANTS}
        weights_bytes = bytes(8 * 5)  # five float64 zeros
        self.definition: dict[str, Any] = {
            "job_id": "job-1",
            "model": {"kind": "mlp", "layers": [2, 3]},
            "initial_weights": b64encode(weights_bytes),
            "training": {"learning_rate": 0.1},
            "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
            "quorum": quorum,
            "rounds": rounds,
        }
        self.packing = PackingLayout(modulus=int(params.n), length=5).to_json()
        self.weights = {s: 1 / 3 for s in PARTICIPANTS}
        requested = requested_terms(
            job_id="job-1",
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=2,
            num_plaintexts=1,
        )
        self.job_key = to_obj(generate_job_key(params, 2, rng))
        self.signed, self.signature = sign_job_terms(
            self.kgc,
            requested,
            param_server=PS,
            signing_keys={s: public_key_hex(k) for s, k in self.keys.items()},
            job_key=self.job_key,
        )
        self.terms = verify_job_terms(self.kgc.public_key(), self.signed, self.signature, params)

    def view(self) -> dict[str, Any]:
        return {
            "job_id": "job-1",
            "definition": copy.deepcopy(self.definition),
            "packing": dict(self.packing),
            "weights": dict(self.weights),
            "job_key": copy.deepcopy(self.job_key),
            "job_terms": copy.deepcopy(self.signed),
            "job_terms_signature": self.signature,
        }

    def statement(self, subject: str, round_number: int = 0, **kw: Any) -> dict[str, Any]:
        return build_upload_statement(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            payload_sha256=kw.pop("digest", hashlib.sha256(subject.encode()).hexdigest()),
        )

    def release_header(self, round_number: int, subjects: list[str], ps_key: Any) -> dict[str, Any]:
        header = release_request_header(
            job_id="job-1",
            round_number=round_number,
            statements=[self.statement(s, round_number) for s in subjects],
        )
        return {**header, "request_signature": sign_json(ps_key, header)}


@pytest.fixture(scope="module")
def world(small_params: tuple[PublicParams, MasterKey]) -> World:
    return World(small_params[0])


def refused(code: str, call: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code == code, info.value.message


# --------------------------------------------------------------------------- job terms


def test_signed_terms_verify_and_carry_what_the_participant_relies_on(world: World) -> None:
    terms = world.terms
    assert isinstance(terms, JobTerms)
    assert terms.raw["purpose"] == JOB_TERMS_PURPOSE
    assert terms.raw["kgc_key_id"] == kgc_key_id(world.kgc.public_key())
    assert (terms.job_id, terms.param_server, terms.quorum, terms.rounds) == ("job-1", PS, 3, 4)
    assert terms.participants == tuple(PARTICIPANTS)
    assert terms.signing_keys["sub-b"] == public_key_hex(world.keys["sub-b"])
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


def test_quorum_below_the_participants_minimum_is_refused(
    small_params: tuple[PublicParams, MasterKey],
) -> None:
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


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_change_to_a_signed_field_breaks_the_signature(world: World, data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(world.signed)))
    value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    signed = {**copy.deepcopy(world.signed), name: value}
    if signed == world.signed:
        return
    with pytest.raises(ProtocolError):
        verify_job_terms(world.kgc.public_key(), signed, world.signature, world.params)


# --------------------------------------------------------------------------- statements


def test_an_upload_statement_verifies_for_its_round_and_payload(world: World) -> None:
    digest = "ab" * 32
    signed = world.statement("sub-a", 2, digest=digest)
    statement = verify_upload_statement(
        signed, world.terms, round_number=2, subject_id="sub-a", payload_sha256=digest
    )
    assert statement["audience"] == PS and statement["job_terms_sha256"] == world.terms.digest


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"round_number": 3}, "statement-mismatch"),
        ({"round_number": 2, "subject_id": "sub-b"}, "statement-mismatch"),
        ({"round_number": 2, "payload_sha256": "cd" * 32}, "statement-mismatch"),
    ],
)
def test_a_statement_for_another_round_signer_or_payload_is_refused(
    world: World, kwargs: dict[str, Any], code: str
) -> None:
    signed = world.statement("sub-a", 2, digest="ab" * 32)
    refused(code, lambda: verify_upload_statement(signed, world.terms, **kwargs))


def test_a_statement_signed_by_someone_else_is_refused(world: World) -> None:
    """A PS (or a colluder) cannot sign in an honest participant's name."""
    forged = world.statement("sub-a", 0, key=world.keys["sub-b"])
    refused(
        "bad-statement-signature",
        lambda: verify_upload_statement(forged, world.terms, round_number=0),
    )
    ps_signed = world.statement("sub-a", 0, key=generate_signing_key())
    refused(
        "bad-statement-signature",
        lambda: verify_upload_statement(ps_signed, world.terms, round_number=0),
    )
    outsider = {**world.statement("sub-a", 0)}
    outsider["statement"] = {**outsider["statement"], "subject_id": "sub-x"}
    refused(
        "not-a-participant", lambda: verify_upload_statement(outsider, world.terms, round_number=0)
    )


def test_a_statement_for_another_job_or_audience_is_refused(
    world: World, small_params: tuple[PublicParams, MasterKey]
) -> None:
    other = World(small_params[0], rounds=9)  # another job: another terms digest
    signed = build_upload_statement(
        world.keys["sub-a"],
        other.terms,
        round_number=0,
        subject_id="sub-a",
        payload_sha256="ab" * 32,
    )
    # other's terms carry other's keys; re-sign with world's key so only the job differs
    statement = signed["statement"]
    resigned = {"statement": statement, "signature": sign_json(world.keys["sub-a"], statement)}
    refused(
        "statement-mismatch", lambda: verify_upload_statement(resigned, world.terms, round_number=0)
    )
    moved = {**statement, "job_terms_sha256": world.terms.digest, "audience": "sub-other-ps"}
    resigned = {"statement": moved, "signature": sign_json(world.keys["sub-a"], moved)}
    refused(
        "statement-mismatch", lambda: verify_upload_statement(resigned, world.terms, round_number=0)
    )


# --------------------------------------------------------------------------- releases


def test_a_release_request_in_schedule_passes(world: World) -> None:
    ps_key = generate_signing_key()
    header = world.release_header(1, ["sub-a", "sub-b", "sub-c"], ps_key)
    assert verify_release_signature(header, ps_key.public_key()) == 1
    assert check_release_request(header, world.terms, next_round=1) == (
        1,
        ["sub-a", "sub-b", "sub-c"],
    )


def test_release_requests_out_of_schedule_are_refused(world: World) -> None:
    """Relabelled rounds (issue 11 point 2): only the next round, only below ``rounds``."""
    ps_key = generate_signing_key()
    everyone = ["sub-a", "sub-b", "sub-c"]
    refused(
        "out-of-schedule",
        lambda: check_release_request(
            world.release_header(1, everyone, ps_key), world.terms, next_round=0
        ),
    )
    refused(
        "out-of-schedule",
        lambda: check_release_request(
            world.release_header(0, everyone, ps_key), world.terms, next_round=1
        ),
    )
    refused(
        "round-out-of-range",
        lambda: check_release_request(
            world.release_header(4, everyone, ps_key), world.terms, next_round=4
        ),
    )
    refused(
        "round-out-of-range",
        lambda: check_release_request(
            world.release_header(1000, everyone, ps_key), world.terms, next_round=1000
        ),
    )


def test_release_requests_with_wrong_contributors_are_refused(world: World) -> None:
    ps_key = generate_signing_key()
    refused(
        "below-quorum",
        lambda: check_release_request(
            world.release_header(0, ["sub-a", "sub-b"], ps_key), world.terms, next_round=0
        ),
    )
    header = world.release_header(0, ["sub-a", "sub-b", "sub-c"], ps_key)
    header["contributors"] = ["sub-a", "sub-b", "sub-x"]
    refused("not-a-participant", lambda: check_release_request(header, world.terms, next_round=0))
    header = world.release_header(0, ["sub-a", "sub-b", "sub-c"], ps_key)
    header["statements"][2] = world.statement("sub-c", 1)  # a statement of another round
    refused("statement-mismatch", lambda: check_release_request(header, world.terms, next_round=0))
    header = world.release_header(0, ["sub-a", "sub-b", "sub-c"], ps_key)
    header["statements"][2] = header["statements"][1]  # one contributor's statement twice
    refused("statement-mismatch", lambda: check_release_request(header, world.terms, next_round=0))


def test_a_release_request_not_signed_by_the_server_is_refused(world: World) -> None:
    ps_key = generate_signing_key()
    header = world.release_header(0, ["sub-a", "sub-b", "sub-c"], ps_key)
    refused(
        "bad-request-signature",
        lambda: verify_release_signature(header, generate_signing_key().public_key()),
    )
    header["round"] = 1  # changed after signing
    refused("bad-request-signature", lambda: verify_release_signature(header, ps_key.public_key()))


# --------------------------------------------------------------------------- tokens


def test_tokens_are_accepted_only_by_their_audience() -> None:
    key = generate_signing_key()
    token = issue_token(
        key,
        subject="sub-a",
        role="participant",
        now=1000,
        ttl_seconds=60,
        token_id="t1",
        audience="sub-ps-1",
    )
    claims = verify_token(key.public_key(), token, now=1001, audience="sub-ps-1")
    assert (claims.subject, claims.audience, claims.issuer) == ("sub-a", "sub-ps-1", "kgc")
    for audience in ("sub-ps-2", KGC_AUDIENCE):
        with pytest.raises(TokenError, match="audience"):
            verify_token(key.public_key(), token, now=1001, audience=audience)
    with pytest.raises(TokenError, match="issued"):
        verify_token(key.public_key(), token, now=1001, audience="sub-ps-1", issuer="other-kgc")


def test_the_token_challenge_names_its_audience() -> None:
    challenge = token_challenge("sub-a", 5, "nonce-123", "sub-ps")
    assert challenge == {
        "purpose": "token",
        "subject_id": "sub-a",
        "timestamp": 5,
        "nonce": "nonce-123",
        "audience": "sub-ps",
    }
    key = generate_signing_key()
    body = token_request(key, "sub-a", 5, "nonce-123", "sub-ps")
    assert {k: v for k, v in body.items() if k != "signature"} == {
        k: v for k, v in challenge.items() if k != "purpose"
    }
    verify_json(key.public_key(), challenge, body["signature"])
