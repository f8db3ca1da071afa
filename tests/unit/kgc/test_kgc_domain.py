"""The KGC domain (no Flask): enrolment, tokens, signed job terms, scheduled releases.

Every refusal is checked for its error class and code, and for leaving nothing stored.
The release tests play the parameter server as an attacker (docs/PROTOCOL.md,
docs/PROTOCOL.md): it relabels rounds, repeats a round with other
contributors, forges or misdirects commitments, closed sets, upload statements and
audits, sends another ``F`` than the one audited, breaks the chain of aggregates, names
outsiders, or stays below quorum; the KGC must release nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from kgc_unit_support import DomainWorld
from sqlalchemy import select

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.blocks import BlockLayout, element_bytes
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import (
    TokenError,
    b64decode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from trapdoor.crypto.wire import from_obj, to_obj
from trapdoor.kgc.models import Job, Release, Subject, TokenNonce
from trapdoor.kgc.testing import (
    RoundPlay,
    TestSubject,
    dishonest_requests,
    initial_base,
    job_request,
    play_round,
    undecodable_reports,
)
from trapdoor.protocol.bundle import ReleaseBinding, blind_sha256, open_release
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.job import JobTerms, verify_job_terms
from trapdoor.protocol.release_request import release_header_limit
from trapdoor.service.db import session_scope
from trapdoor.service.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    TrapdoorError,
    UnauthorizedError,
)


def enrol(world: DomainWorld, subject: TestSubject, name: str = "org") -> TestSubject:
    """Enrol and complete; returns the subject with its id."""
    answer = world.service.enrol(name, subject.role)
    done = replace(subject, subject_id=answer["subject_id"])
    body = done.completion(answer["code"])
    world.service.complete_enrolment(
        done.subject_id, body["code"], body["signing_key"], body.get("bcp_public_key")
    )
    return done


def refused(call: Any, kind: type[TrapdoorError], code: str) -> TrapdoorError:
    with pytest.raises(kind) as info:
        call()
    assert info.value.code == code, info.value.message
    return info.value


# ---------------------------------------------------------------- info, enrolment


def test_info_reports_params_verify_key_and_demo(
    world: DomainWorld, demo_master: MasterKey
) -> None:
    info = world.service.info()
    assert from_obj(info["params"]) == demo_master.params
    assert info["verify_key"] == public_key_hex(world.service.verify_key)
    assert info["demo"] is True
    assert "bits=1024" in repr(world.service)


def test_enrol_stores_only_the_code_digest(world: DomainWorld) -> None:
    answer = world.service.enrol("  Hospital A  ", "participant")
    assert set(answer) == {"subject_id", "code"}
    with world.sessions() as session:
        row = session.get(Subject, answer["subject_id"])
        assert row is not None
        assert row.name == "Hospital A"
        assert row.code_hash == hashlib.sha256(answer["code"].encode()).hexdigest()
        assert answer["code"] not in repr(vars(row))
        assert row.completed is False


@pytest.mark.parametrize(
    ("name", "role"),
    [("", "participant"), ("x" * 201, "participant"), ("a", "admin"), ("   ", "param_server")],
)
def test_enrol_refuses_bad_names_and_roles(world: DomainWorld, name: str, role: str) -> None:
    refused(lambda: world.service.enrol(name, role), BadRequestError, "bad-field")
    assert world.count(Subject) == 0


def test_complete_enrolment_certifies_a_participant(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    answer = world.service.enrol("A", "participant")
    subject = replace(people[0], subject_id=answer["subject_id"])
    body = subject.completion(answer["code"])
    out = world.service.complete_enrolment(
        subject.subject_id, body["code"], body["signing_key"].upper(), body["bcp_public_key"]
    )
    cert = out["certificate"]
    verify_json(world.service.verify_key, cert, out["signature"])
    assert cert == {
        "subject_id": subject.subject_id,
        "name": "A",
        "role": "participant",
        "signing_key": public_key_hex(subject.signing_key),
        "bcp_public_key": to_obj(subject.public_key),  # type: ignore[arg-type]
        "issued_at": int(world.clock()),
    }
    assert world.service.subject(subject.subject_id) == out


def test_complete_enrolment_of_the_param_server(world: DomainWorld) -> None:
    ps = enrol(world, TestSubject.param_server(), "PS")
    cert = world.service.subject(ps.subject_id)["certificate"]
    assert cert["role"] == "param_server"
    assert "bcp_public_key" not in cert


def test_complete_enrolment_refusals_leave_the_subject_open(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    svc = world.service
    answer = svc.enrol("A", "participant")
    sid, code = answer["subject_id"], answer["code"]
    body = replace(people[0], subject_id=sid).completion(code)
    key, bcp = body["signing_key"], body["bcp_public_key"]
    other_params = load_demo_master_key(2048).params
    foreign = to_obj(other_params.keygen(random.Random(3))[0])

    refused(
        lambda: svc.complete_enrolment("sub-nobody", code, key, bcp), NotFoundError, "not-found"
    )
    refused(
        lambda: svc.complete_enrolment(sid, code + "x", key, bcp), UnauthorizedError, "invalid-code"
    )
    refused(lambda: svc.complete_enrolment(sid, code, "ab" * 31, bcp), BadRequestError, "bad-field")
    refused(lambda: svc.complete_enrolment(sid, code, key, None), BadRequestError, "missing-field")
    refused(lambda: svc.complete_enrolment(sid, code, key, foreign), InvalidError, "wrong-params")
    refused(
        lambda: svc.complete_enrolment(sid, code, key, {**bcp, "h": "1"}),
        InvalidError,
        "invalid-key",
    )
    refused(
        lambda: svc.complete_enrolment(sid, code, key, {**bcp, "h": "zz"}),
        BadRequestError,
        "bad-field",
    )
    refused(
        lambda: svc.complete_enrolment(sid, code, key, to_obj(other_params)),
        BadRequestError,
        "bad-field",
    )
    with world.sessions() as session:
        row = session.get(Subject, sid)
        assert row is not None and not row.completed and row.certificate is None
    refused(lambda: svc.subject(sid), NotFoundError, "not-enrolled")
    refused(lambda: svc.subject("sub-nobody"), NotFoundError, "not-found")

    first = svc.complete_enrolment(sid, code, key, bcp)
    refused(lambda: svc.complete_enrolment(sid, code, key, bcp), ConflictError, "already-enrolled")
    assert svc.subject(sid) == first


def test_param_server_may_not_send_a_bcp_key(world: DomainWorld, people: list[TestSubject]) -> None:
    answer = world.service.enrol("PS", "param_server")
    bcp = to_obj(people[0].public_key)  # type: ignore[arg-type]
    key = public_key_hex(generate_signing_key())
    refused(
        lambda: world.service.complete_enrolment(answer["subject_id"], answer["code"], key, bcp),
        BadRequestError,
        "bad-field",
    )


# ---------------------------------------------------------------- tokens


def test_token_for_a_fresh_signed_challenge(world: DomainWorld, people: list[TestSubject]) -> None:
    p = enrol(world, people[0])
    out = world.service.issue_token(**p.challenge(world.clock() - 59, "nonce-0001"))
    claims = verify_token(world.service.verify_key, out["token"], now=world.clock(), audience="kgc")
    assert (claims.subject, claims.role, claims.issuer, claims.audience) == (
        p.subject_id,
        "participant",
        "kgc",
        "kgc",
    )
    assert out["expires_at"] == int(world.clock()) + 300
    assert world.service.authenticate(out["token"], "participant").subject == p.subject_id


def test_token_for_a_param_server_audience_is_refused_by_the_kgc(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    svc, now = world.service, world.clock()
    p = enrol(world, people[0])
    ps = enrol(world, TestSubject.param_server(), "PS")
    out = svc.issue_token(**p.challenge(now, "nonce-0001", audience=ps.subject_id))
    claims = verify_token(svc.verify_key, out["token"], now=now, audience=ps.subject_id)
    assert (claims.subject, claims.audience) == (p.subject_id, ps.subject_id)
    with pytest.raises(TokenError):
        verify_token(svc.verify_key, out["token"], now=now, audience="kgc")
    refused(
        lambda: svc.authenticate(out["token"], "participant"), UnauthorizedError, "invalid-token"
    )
    # The PS's own token for its own audience is no KGC token either.
    ps_token = svc.issue_token(**ps.challenge(now, "nonce-0002", audience=ps.subject_id))["token"]
    refused(lambda: svc.authenticate(ps_token, "param_server"), UnauthorizedError, "invalid-token")
    assert world.count(TokenNonce) == 2


def test_token_for_an_unknown_audience_is_refused(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    svc, now = world.service, world.clock()
    p = enrol(world, people[0])
    other = enrol(world, people[1], "B")
    pending_ps = svc.enrol("PS-late", "param_server")["subject_id"]
    for i, audience in enumerate(
        ["", "KGC", "sub-nobody", other.subject_id, p.subject_id, pending_ps, "x" * 200]
    ):
        challenge = p.challenge(now, f"nonce-aud-{i:02d}", audience=audience)
        refused(lambda c=challenge: svc.issue_token(**c), InvalidError, "unknown-audience")
    # The audience is signed: a challenge for "kgc" cannot be sent as one for a PS.
    ps = enrol(world, TestSubject.param_server(), "PS")
    swapped = {**p.challenge(now, "nonce-aud-99"), "audience": ps.subject_id}
    refused(lambda: svc.issue_token(**swapped), UnauthorizedError, "bad-signature")
    assert world.count(TokenNonce) == 0


def test_token_refusals_store_no_nonce(world: DomainWorld, people: list[TestSubject]) -> None:
    svc, now = world.service, world.clock()
    p = enrol(world, people[0])
    pending = replace(people[1], subject_id=svc.enrol("B", "participant")["subject_id"])

    forged = {**p.challenge(now, "nonce-0001"), "signature": sign_json(generate_signing_key(), {})}
    refused(lambda: svc.issue_token(**forged), UnauthorizedError, "bad-signature")
    tampered = {**p.challenge(now, "nonce-0001"), "nonce": "nonce-0002"}
    refused(lambda: svc.issue_token(**tampered), UnauthorizedError, "bad-signature")
    refused(
        lambda: svc.issue_token(**p.challenge(now - 61, "nonce-0003")),
        UnauthorizedError,
        "stale-timestamp",
    )
    refused(
        lambda: svc.issue_token(**p.challenge(now + 61, "nonce-0004")),
        UnauthorizedError,
        "stale-timestamp",
    )
    refused(lambda: svc.issue_token(**p.challenge(now, "short")), BadRequestError, "bad-field")
    refused(lambda: svc.issue_token(**p.challenge(now, "has space")), BadRequestError, "bad-field")
    refused(
        lambda: svc.issue_token(**pending.challenge(now, "nonce-0005")),
        ForbiddenError,
        "not-enrolled",
    )
    ghost = replace(people[2], subject_id="sub-ghost")
    refused(
        lambda: svc.issue_token(**ghost.challenge(now, "nonce-0006")), NotFoundError, "not-found"
    )
    assert world.count(TokenNonce) == 0

    svc.issue_token(**p.challenge(now, "nonce-0007"))
    refused(
        lambda: svc.issue_token(**p.challenge(now, "nonce-0007")), ConflictError, "nonce-replayed"
    )
    assert world.count(TokenNonce) == 1


def test_old_nonces_are_pruned_and_their_replays_are_stale(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    p = enrol(world, people[0])
    old = p.challenge(world.clock(), "nonce-old-1")
    world.service.issue_token(**old)
    world.clock.advance(121)
    world.service.issue_token(**p.challenge(world.clock(), "nonce-new-1"))
    with world.sessions() as session:
        assert list(session.scalars(select(TokenNonce.nonce))) == ["nonce-new-1"]
    refused(lambda: world.service.issue_token(**old), UnauthorizedError, "stale-timestamp")


def test_authenticate_refuses_forged_expired_and_wrong_role_tokens(
    world: DomainWorld, people: list[TestSubject]
) -> None:
    svc, now = world.service, world.clock()
    p = enrol(world, people[0])
    token = svc.issue_token(**p.challenge(now, "nonce-0001"))["token"]

    def kgc_signed(**claims: Any) -> str:
        args: dict[str, Any] = {
            "subject": p.subject_id,
            "role": "participant",
            "now": now,
            "ttl_seconds": 300,
            "token_id": "x",
            "audience": "kgc",
        }
        args.update(claims)
        return issue_token(args.pop("key", svc._signing_key), **args)

    for forged in (
        kgc_signed(key=generate_signing_key(), role="param_server"),
        kgc_signed(audience="sub-ps"),
        kgc_signed(issuer="another-kgc"),
        "v1.garbage",
    ):
        refused(
            lambda f=forged: svc.authenticate(f, "participant"), UnauthorizedError, "invalid-token"
        )
    assert svc.authenticate(kgc_signed(), "participant").subject == p.subject_id
    refused(lambda: svc.authenticate(token, "param_server"), ForbiddenError, "wrong-role")
    world.clock.advance(306)
    refused(lambda: svc.authenticate(token, "participant"), UnauthorizedError, "invalid-token")


# ---------------------------------------------------------------- jobs

ROUNDS = 3
NUM_PLAINTEXTS = 7


@dataclass
class Setup:
    ps: TestSubject
    members: list[TestSubject]
    outsider: TestSubject
    terms: JobTerms

    @property
    def ids(self) -> list[str]:
        return [m.subject_id for m in self.members]

    def play(
        self, signers: Sequence[TestSubject] | None = None, *, seed: int = 4, **kwargs: Any
    ) -> RoundPlay:
        """An honest round played by the PS with ``signers`` (default: the first two)."""
        chosen = self.members[:2] if signers is None else signers
        return play_round(self.terms, self.ps.signing_key, chosen, random.Random(seed), **kwargs)


@pytest.fixture
def setup(world: DomainWorld, people: list[TestSubject]) -> Setup:
    ps = enrol(world, TestSubject.param_server(), "PS")
    members = [enrol(world, p, f"org{i}") for i, p in enumerate(people[:3])]
    outsider = enrol(world, people[3], "outsider")
    request = job_request(
        "job-1",
        [m.subject_id for m in members],
        params=world.service.params,
        quorum=2,
        rounds=ROUNDS,
        width=3,
        num_plaintexts=NUM_PLAINTEXTS,
    )
    answer = world.service.create_job(ps.subject_id, "job-1", request["terms"])
    assert set(answer) == {"job_id", "job_key", "job_terms", "job_terms_signature"}
    terms = verify_job_terms(
        world.service.verify_key,
        answer["job_terms"],
        answer["job_terms_signature"],
        world.service.params,
    )
    assert answer["job_key"] == answer["job_terms"]["job_key"] == to_obj(terms.job_key)
    assert {k: answer["job_terms"][k] for k in request["terms"]} == request["terms"]
    return Setup(ps, members, outsider, terms)


def test_create_job_signs_the_terms_and_stores_the_public_key_only(
    world: DomainWorld, setup: Setup
) -> None:
    terms = setup.terms
    assert (terms.job_id, terms.param_server) == ("job-1", setup.ps.subject_id)
    # The PS's certified key: closed commitment sets of this job verify under it.
    assert terms.param_server_key == public_key_hex(setup.ps.signing_key)
    assert terms.initial_ciphertext_sha256 == vector_sha256(initial_base(terms))
    assert terms.participants == tuple(setup.ids)
    assert dict(terms.signing_keys) == {
        m.subject_id: public_key_hex(m.signing_key) for m in setup.members
    }
    assert (terms.quorum, terms.rounds, terms.width, terms.num_plaintexts) == (
        2,
        ROUNDS,
        3,
        NUM_PLAINTEXTS,
    )
    assert terms.job_key.width == 3
    assert terms.job_key.params == world.service.params
    with world.sessions() as session:
        job = session.get(Job, "job-1")
        assert job is not None
        assert set(job.job_key) == {"kind", "n", "g", "hs"}
        assert job.terms == dict(terms.raw)
        verify_json(world.service.verify_key, job.terms, job.terms_signature)
        assert (job.owner_id, job.quorum, job.rounds, job.width) == (
            setup.ps.subject_id,
            2,
            ROUNDS,
            3,
        )
        assert job.participants == setup.ids


def test_create_job_refusals_store_nothing(world: DomainWorld, setup: Setup) -> None:
    svc, ps = world.service, setup.ps.subject_id
    ids = setup.ids
    pending = svc.enrol("late", "participant")["subject_id"]

    def terms(participants: list[str] | None = None, **changes: Any) -> dict[str, Any]:
        members = ids if participants is None else participants
        quorum = changes.pop("quorum", 2)
        body = job_request(
            "j2", members, params=svc.params, quorum=quorum, rounds=2, width=3, num_plaintexts=4
        )
        return {**body["terms"], **changes}

    many = [f"sub-{i:05d}" for i in range(10_001)]
    cases: list[tuple[Any, type[TrapdoorError], str]] = [
        (
            lambda: svc.create_job(ps, "job-1", {**terms(), "job_id": "job-1"}),
            ConflictError,
            "job-exists",
        ),
        (
            lambda: svc.create_job(ps, "j2", terms([*ids, "sub-x"])),
            InvalidError,
            "unknown-participant",
        ),
        (lambda: svc.create_job(ps, "j2", terms([*ids, ps])), InvalidError, "unknown-participant"),
        (
            lambda: svc.create_job(ps, "j2", terms([*ids, pending])),
            InvalidError,
            "unknown-participant",
        ),
        (
            lambda: svc.create_job(ps, "j2", {**terms(), "participants": [*ids, ids[0]]}),
            InvalidError,
            "duplicate-participant",
        ),
        (
            lambda: svc.create_job(ps, "j2", terms(many, quorum=1)),
            InvalidError,
            "invalid-participants",
        ),
        (lambda: svc.create_job(ps, "j2", terms(quorum=4)), InvalidError, "invalid-quorum"),
        (lambda: svc.create_job(ps, "j2", terms(width=1025)), InvalidError, "invalid-width"),
        (lambda: svc.create_job(ps, "j2", terms(job_id="j3")), InvalidError, "job-mismatch"),
        (lambda: svc.create_job(ps, "j2", terms(quorum=0)), BadRequestError, "bad-terms"),
        (lambda: svc.create_job(ps, "j2", terms(width=0)), BadRequestError, "bad-terms"),
        (lambda: svc.create_job(ps, "j2", terms(rounds=0)), BadRequestError, "bad-terms"),
        (lambda: svc.create_job(ps, "j2", terms(num_plaintexts=0)), BadRequestError, "bad-terms"),
        (lambda: svc.create_job(ps, "j2", terms(participants=[])), BadRequestError, "bad-terms"),
        (
            lambda: svc.create_job(ps, "j2", terms(weights={ids[0]: 1.0})),
            BadRequestError,
            "bad-terms",
        ),
        (lambda: svc.create_job(ps, "j2", terms(model_sha256="00")), BadRequestError, "bad-terms"),
        (
            lambda: svc.create_job(ps, "j2", terms(initial_ciphertext_sha256="AB" * 32)),
            BadRequestError,
            "bad-terms",
        ),
        (lambda: svc.create_job(ps, "j2", terms(param_server=ps)), BadRequestError, "bad-terms"),
        (
            lambda: svc.create_job(ps, "j2", terms(param_server_key="00" * 32)),
            BadRequestError,
            "bad-terms",
        ),
        (lambda: svc.create_job(ps, "j2", ["not", "terms"]), BadRequestError, "bad-terms"),
        (
            lambda: svc.create_job(ps, "bad id", terms(job_id="bad id")),
            BadRequestError,
            "bad-field",
        ),
        (lambda: svc.create_job(ids[0], "j2", terms()), ForbiddenError, "not-enrolled"),
    ]
    for call, kind, code in cases:
        refused(call, kind, code)
    assert world.count(Job) == 1


# ---------------------------------------------------------------- releases


def _stored(world: DomainWorld) -> list[tuple[int, int | None, str | None]]:
    """(round, attempt, aggregate digest) of every stored release, in round order."""
    with world.sessions() as session:
        rows = session.scalars(select(Release).order_by(Release.round))
        return [(r.round, r.attempt, r.aggregate_sha256) for r in rows]


def _opened(bundle: dict[str, Any], member: TestSubject, play: RoundPlay) -> list[int]:
    """What ``member`` opens from ``bundle``, rebuilding the binding from its fields."""
    opened = open_release(
        member.secret_key,  # type: ignore[arg-type]
        binding=ReleaseBinding.from_fields(bundle),
        sealed_model=bundle["sealed_model"],
        wrapped_key=bundle["wrapped_keys"][member.subject_id],
        blind=play.blind,
    )
    return [int(v) for v in opened]


def test_release_only_contributors_open_the_model(world: DomainWorld, setup: Setup) -> None:
    play = setup.play()
    bundle, created = world.service.release(setup.ps.subject_id, "job-1", play.frame())
    assert created
    body = {k: v for k, v in bundle.items() if k != "kgc_signature"}
    verify_json(world.service.verify_key, body, bundle["kgc_signature"])
    assert sorted(bundle["wrapped_keys"]) == sorted(play.ids)
    digests = play.digests
    assert ReleaseBinding.from_fields(bundle) == ReleaseBinding(
        "job-1", 0, 0, digests.base_sha256, digests.contributors_sha256, digests.blind_sha256
    )
    assert digests.base_sha256 == setup.terms.initial_ciphertext_sha256
    assert bundle["num_plaintexts"] == NUM_PLAINTEXTS
    for member in play.signers:
        assert _opened(bundle, member, play) == list(play.model)
    for stranger in (setup.members[2], setup.outsider):
        for wrapped in bundle["wrapped_keys"].values():
            with pytest.raises(SealError):
                open_release(
                    stranger.secret_key,  # type: ignore[arg-type]
                    binding=ReleaseBinding.from_fields(bundle),
                    sealed_model=bundle["sealed_model"],
                    wrapped_key=wrapped,
                    blind=play.blind,
                )
    # Nothing in the bundle is the blinded model in the clear.
    n = int(world.service.params.n)
    sealed = b64decode(bundle["sealed_model"]["ct"])
    assert ((play.model[0] + play.blind[0]) % n).to_bytes(128, "big") not in sealed
    assert _stored(world) == [(0, 0, digests.aggregate_sha256)]

    again, created = world.service.release(setup.ps.subject_id, "job-1", play.frame())
    assert (again, created) == (bundle, False)
    # The same contributors, attempt and F in another order: the same request.
    reordered = play.frame(statements=play.statements[::-1], audits=play.audits[::-1])
    assert world.service.release(setup.ps.subject_id, "job-1", reordered) == (bundle, False)
    assert world.count(Release) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "job-2"},
        {"round": 1},
        {"attempt": 1},
        {"base_sha256": "ab" * 32},
        {"contributors_sha256": "ab" * 32},
    ],
)
def test_the_bundle_opens_only_under_its_own_binding(
    world: DomainWorld, setup: Setup, change: dict[str, Any]
) -> None:
    """A PS that serves the bundle under other fields gets nothing that opens."""
    play = setup.play()
    bundle, _ = world.service.release(setup.ps.subject_id, "job-1", play.frame())
    member = play.signers[0]
    assert _opened(bundle, member, play) == list(play.model)
    with pytest.raises(SealError):
        _opened({**bundle, **change}, member, play)


def test_the_bundle_opens_only_with_its_own_blind(world: DomainWorld, setup: Setup) -> None:
    """Another ``R``, even with a binding that names it, opens nothing (nor its digest)."""
    play = setup.play()
    bundle, _ = world.service.release(setup.ps.subject_id, "job-1", play.frame())
    n = int(world.service.params.n)
    other = replace(play, blind=tuple((r + 1) % n for r in play.blind))
    member = play.signers[0]
    with pytest.raises(SealError):
        _opened(bundle, member, other)
    renamed = {**bundle, "blind_sha256": blind_sha256(other.blind, n)}
    with pytest.raises(SealError):
        _opened(renamed, member, other)


def test_a_later_attempt_is_released_and_bound_to_its_number(
    world: DomainWorld, setup: Setup
) -> None:
    """After a contributor failed to audit, the PS re-aggregates: attempt 1 is released."""
    play = setup.play(setup.members[1:], attempt=1)
    bundle, created = world.service.release(setup.ps.subject_id, "job-1", play.frame())
    assert created and bundle["attempt"] == 1
    assert _stored(world) == [(0, 1, play.digests.aggregate_sha256)]
    assert _opened(bundle, play.signers[0], play) == list(play.model)


def test_a_released_round_is_not_released_again_for_another_request(
    world: DomainWorld, setup: Setup
) -> None:
    """Attack (b): the PS repeats round 0 with another payload, set or attempt."""
    play = setup.play()
    world.service.release(setup.ps.subject_id, "job-1", play.frame())
    retry = play.frame(attempt=1, audits=play.audits_with(attempt=1))
    for frame in (
        setup.play(seed=5).frame(),  # another F for the same contributors
        setup.play(setup.members).frame(),  # a wider contributor set
        setup.play([setup.members[0], setup.members[2]]).frame(),  # another pair
        retry,  # the same F and set, announced as another attempt
        play.frame(statements=play.statements[:1], audits=play.audits[:1]),  # even a bad one
    ):
        refused(
            lambda f=frame: world.service.release(setup.ps.subject_id, "job-1", f),
            ConflictError,
            "already-released",
        )
    assert world.count(Release) == 1


def test_release_refusals_store_nothing(world: DomainWorld, setup: Setup) -> None:
    """A dishonest PS changes one piece of an honest request: nothing is sealed."""
    play = setup.play()
    ps = setup.ps.subject_id
    refusals = dishonest_requests(
        play, spare=setup.members[2], outsider=setup.outsider, rng=random.Random(6)
    )
    statuses = {
        400: BadRequestError,
        403: ForbiddenError,
        409: ConflictError,
        422: InvalidError,
    }
    for refusal in refusals:
        with pytest.raises(TrapdoorError) as info:
            world.service.release(ps, "job-1", refusal.frame)
        got = (type(info.value), info.value.code)
        assert got == (statuses[refusal.status], refusal.code), (refusal.what, info.value.message)
        assert world.count(Release) == 0
    # Before the frame is even parsed: not the job's owner, no such job, too large.
    refused(
        lambda: world.service.release(setup.ids[0], "job-1", play.frame()),
        ForbiddenError,
        "not-job-owner",
    )
    elsewhere = play.frame(job_id="nope")
    refused(lambda: world.service.release(ps, "nope", elsewhere), NotFoundError, "not-found")
    refused(lambda: world.service.release(ps, "nope", b""), NotFoundError, "not-found")
    limit = world.service.release_body_limit(ps, "job-1")
    refused(
        lambda: world.service.release(ps, "job-1", b"TDFL" + bytes(limit)),
        BadRequestError,
        "bad-frame",
    )
    assert world.count(Release) == 0
    # Every refusal left the schedule and the chain as they were: round 0 is releasable.
    _, created = world.service.release(ps, "job-1", play.frame())
    assert created


def test_refusals_are_logged_with_their_code(
    world: DomainWorld, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trapdoor.kgc.domain")
    frame = setup.play().frame(extra={"round": 7})
    with pytest.raises(ConflictError):
        world.service.release(setup.ps.subject_id, "job-1", frame)
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING
    assert "round-out-of-range" in record.getMessage() and "job-1" in record.getMessage()


def test_release_body_limit_is_the_jobs_frame(world: DomainWorld, setup: Setup) -> None:
    svc = world.service
    layout = BlockLayout(NUM_PLAINTEXTS, 3)
    header = release_header_limit(len(setup.terms.participants))  # sized to the job
    expected = 9 + header + layout.num_elements * element_bytes(svc.params)
    assert svc.release_body_limit(setup.ps.subject_id, "job-1") == expected
    assert len(setup.play(setup.members).frame()) < expected
    refused(lambda: svc.release_body_limit(setup.ps.subject_id, "nope"), NotFoundError, "not-found")
    refused(lambda: svc.release_body_limit(setup.ids[0], "job-1"), ForbiddenError, "not-job-owner")


def test_a_second_param_server_cannot_release_anothers_job(
    world: DomainWorld, setup: Setup
) -> None:
    other = enrol(world, TestSubject.param_server(), "PS2")
    frame = setup.play().frame(ps_key=other.signing_key)
    refused(
        lambda: world.service.release(other.subject_id, "job-1", frame),
        ForbiddenError,
        "not-job-owner",
    )
    assert world.count(Release) == 0


def _chain_breaks(setup: Setup, previous: RoundPlay, play: RoundPlay) -> list[tuple[bytes, str]]:
    """Requests for ``play``'s round, ``previous`` being released, that break the chain;
    each with the code the KGC must refuse it with."""
    sibling = setup.play(previous.signers, seed=70 + play.round, round_number=previous.round)
    fork = setup.play(play.signers, seed=60 + play.round, after=sibling)
    restart = setup.play(play.signers, seed=80 + play.round, round_number=play.round)
    first = play.signers[0].subject_id
    replayed = [previous.audits[previous.ids.index(first)], *play.audits[1:]]
    old_statements = [previous.statement(s) for s in play.signers]
    return [
        (fork.frame(), "audit-mismatch"),  # the base is another round-t-1 aggregate
        (restart.frame(), "audit-mismatch"),  # a PS that restarts from Enc(W_0)
        (play.frame(audits=replayed), "audit-mismatch"),  # a round-t-1 audit replayed
        (play.frame(statements=old_statements), "statement-mismatch"),
    ]


def test_rounds_are_released_in_order_on_one_chain_once_each_and_no_more(
    world: DomainWorld, setup: Setup
) -> None:
    ps = setup.ps.subject_id

    def release(frame: bytes) -> tuple[dict[str, Any], bool]:
        return world.service.release(ps, "job-1", frame)

    plays: list[RoundPlay] = []
    bundles: list[dict[str, Any]] = []
    for t in range(ROUNDS):
        previous = plays[-1] if plays else None
        play = setup.play(setup.members[: 2 + t % 2], seed=10 + t, after=previous)
        if t + 1 < ROUNDS:  # Attack (a): the next-but-one round is never released early.
            early = setup.play(seed=40 + t, after=play).frame()
            refused(lambda f=early: release(f), ConflictError, "out-of-schedule")
        if previous is not None:
            for frame, code in _chain_breaks(setup, previous, play):
                refused(lambda f=frame: release(f), InvalidError, code)
        bundle, created = release(play.frame())
        assert created and bundle["round"] == t
        assert bundle["base_sha256"] == (
            setup.terms.initial_ciphertext_sha256
            if previous is None
            else previous.digests.aggregate_sha256
        )
        assert _opened(bundle, play.signers[-1], play) == list(play.model)
        plays.append(play)
        bundles.append(bundle)
    assert _stored(world) == [(p.round, 0, p.digests.aggregate_sha256) for p in plays]
    # A retry of an earlier round still gets its stored bundle.
    assert release(plays[0].frame()) == (bundles[0], False)
    # Attack (g): every round is released; round `rounds` and beyond never are.
    for t in (ROUNDS, ROUNDS + 1, 1000):
        frame = setup.play(seed=99, after=plays[-1], round_number=t).frame()
        refused(lambda f=frame: release(f), ConflictError, "round-out-of-range")
    assert world.count(Release) == ROUNDS


def test_an_undecodable_round_is_re_run_once_over_the_same_set_from_the_same_base(
    world: DomainWorld, setup: Setup
) -> None:
    """Item 7 of issue 11: one re-run, only with every contributor's report, never twice."""
    ps = setup.ps.subject_id

    def release(frame: bytes) -> tuple[dict[str, Any], bool]:
        return world.service.release(ps, "job-1", frame)

    run0 = setup.play()
    bundle0, _ = release(run0.frame())
    reports = undecodable_reports(setup.terms, bundle0, run0.signers)

    def rerun(**kwargs: Any) -> RoundPlay:
        return setup.play(seed=kwargs.pop("seed", 6), run=1, **kwargs)

    for frame, kind, code in [
        (rerun().frame(), InvalidError, "undecodable-mismatch"),  # no reports
        (rerun(undecodable=reports[:1]).frame(), InvalidError, "undecodable-mismatch"),
        (  # reports on another bundle (the same one under another attempt)
            rerun(
                undecodable=undecodable_reports(
                    setup.terms, {**bundle0, "attempt": 1}, run0.signers
                )
            ).frame(),
            InvalidError,
            "undecodable-mismatch",
        ),
        (  # a wider set: release₀ − release₁ would be the added member's update
            rerun(signers=setup.members, undecodable=reports).frame(),
            InvalidError,
            "rerun-set-mismatch",
        ),
        (  # audits naming run 0's aggregate as the base: a re-run starts where run 0 did
            rerun(undecodable=reports).frame(
                audits=rerun(undecodable=reports).audits_with(
                    base_sha256=run0.digests.aggregate_sha256
                )
            ),
            InvalidError,
            "audit-mismatch",
        ),
        (rerun(undecodable=reports).frame(extra={"run": 2}), BadRequestError, "bad-field"),
    ]:
        refused(lambda f=frame: release(f), kind, code)
    assert world.count(Release) == 1

    play = rerun(undecodable=reports)
    bundle1, created = release(play.frame())
    assert created and (bundle1["round"], bundle1["run"]) == (0, 1)
    assert bundle1["base_sha256"] == setup.terms.initial_ciphertext_sha256
    assert _opened(bundle1, play.signers[0], play) == list(play.model)
    with world.sessions() as session:
        stored = session.scalars(select(Release).where(Release.run == 1)).one()
        assert stored.undecodable == reports
    assert release(play.frame()) == (bundle1, False)
    # Never a third release from that base, whatever the run.
    for frame in (rerun(seed=7, undecodable=reports).frame(), setup.play(seed=8).frame()):
        refused(lambda f=frame: release(f), ConflictError, "already-released")
    # The job goes on from the re-run's aggregate.
    after = setup.play(seed=9, after=play)
    bundle2, _ = release(after.frame())
    assert bundle2["base_sha256"] == play.digests.aggregate_sha256
    assert world.count(Release) == 3


def test_only_the_latest_release_can_be_re_run(world: DomainWorld, setup: Setup) -> None:
    ps = setup.ps.subject_id
    run0 = setup.play()
    bundle0, _ = world.service.release(ps, "job-1", run0.frame())
    world.service.release(ps, "job-1", setup.play(seed=5, after=run0).frame())
    late = setup.play(
        seed=6, run=1, undecodable=undecodable_reports(setup.terms, bundle0, run0.signers)
    )
    refused(
        lambda: world.service.release(ps, "job-1", late.frame()), ConflictError, "out-of-schedule"
    )
    assert world.count(Release) == 2


def test_a_job_under_older_terms_is_never_released(world: DomainWorld, setup: Setup) -> None:
    """Jobs made before revision 0002, or under v1 terms, name no PS key or ``Enc(W_0)``."""
    old_terms = {**setup.terms.raw, "purpose": "trapdoor/job-terms/v1"}
    with session_scope(world.sessions) as session:
        for job_id, terms in (("legacy", None), ("v1-job", old_terms)):
            session.add(
                Job(
                    job_id=job_id,
                    owner_id=setup.ps.subject_id,
                    job_key=to_obj(setup.terms.job_key),
                    terms=terms,
                    terms_signature=None
                    if terms is None
                    else sign_json(world.service._signing_key, terms),
                    participants=setup.ids,
                    quorum=1,
                    rounds=None,
                    width=3,
                    created_at=0.0,
                )
            )
    ps = setup.ps.subject_id
    for job_id in ("legacy", "v1-job"):
        frame = setup.play().frame(job_id=job_id)
        refused(
            lambda j=job_id: world.service.release_body_limit(ps, j), ConflictError, "legacy-job"
        )
        refused(
            lambda j=job_id, f=frame: world.service.release(ps, j, f), ConflictError, "legacy-job"
        )
    assert world.count(Release) == 0
