"""The KGC domain (no Flask): enrolment, tokens, signed job terms, scheduled releases.

Every refusal is checked for its error class and code, and for leaving nothing stored.
The release tests play the parameter server as an attacker (docs/PROTOCOL.md): it
relabels rounds, repeats a round with other contributors, forges or misdirects upload
statements, names outsiders, or stays below quorum; the KGC must release nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, replace
from typing import Any

import gmpy2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kgc_unit_support import DomainWorld
from sqlalchemy import select

from common.bcp import MasterKey
from common.blocks import BlockLayout, EncryptedVector, JobKey, element_bytes
from common.db import session_scope
from common.demo_params import load_demo_master_key
from common.protocol import JobTerms, verify_job_terms
from common.release import open_release
from common.sealing import SealError
from common.signing import (
    TokenError,
    b64decode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from common.wire import MAX_HEADER_BYTES, from_obj, to_obj
from kgc.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    KgcError,
    NotFoundError,
    UnauthorizedError,
)
from kgc.models import Job, Release, Subject, TokenNonce
from kgc.testing import (
    TestSubject,
    encrypt_plaintexts,
    job_request,
    signed_release,
    statement_for,
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


def refused(call: Any, kind: type[KgcError], code: str) -> KgcError:
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
    def job_key(self) -> JobKey:
        return self.terms.job_key

    @property
    def ids(self) -> list[str]:
        return [m.subject_id for m in self.members]

    def frame(
        self,
        vector: EncryptedVector,
        round_number: int,
        signers: list[TestSubject],
        *,
        ps_key: Ed25519PrivateKey | None = None,
        **kwargs: Any,
    ) -> bytes:
        """A release request for ``round_number`` with ``signers``' own statements."""
        key = ps_key or self.ps.signing_key
        return signed_release(key, self.terms, vector, round_number, signers, **kwargs)


@pytest.fixture
def setup(world: DomainWorld, people: list[TestSubject]) -> Setup:
    ps = enrol(world, TestSubject.param_server(), "PS")
    members = [enrol(world, p, f"org{i}") for i, p in enumerate(people[:3])]
    outsider = enrol(world, people[3], "outsider")
    request = job_request(
        "job-1",
        [m.subject_id for m in members],
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
    assert setup.job_key.width == 3
    assert setup.job_key.params == world.service.params
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
        body = job_request("j2", members, quorum=quorum, rounds=2, width=3, num_plaintexts=4)
        return {**body["terms"], **changes}

    many = [f"sub-{i:05d}" for i in range(10_001)]
    cases: list[tuple[Any, type[KgcError], str]] = [
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
        (lambda: svc.create_job(ps, "j2", terms(param_server=ps)), BadRequestError, "bad-terms"),
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


def _blinded(setup: Setup, n: int, seed: int = 4) -> tuple[list[int], list[int], EncryptedVector]:
    rng = random.Random(seed)
    model = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
    blind = [rng.randrange(n) for _ in range(NUM_PLAINTEXTS)]
    vector = encrypt_plaintexts(
        setup.job_key, [(w + r) % n for w, r in zip(model, blind, strict=True)], rng
    )
    return model, blind, vector


def test_release_only_contributors_open_the_model(world: DomainWorld, setup: Setup) -> None:
    n = int(world.service.params.n)
    model, blind, vector = _blinded(setup, n)
    contributors = setup.ids[:2]
    frame = setup.frame(vector, 0, setup.members[:2])
    bundle, created = world.service.release(setup.ps.subject_id, "job-1", frame)
    assert created
    body = {k: v for k, v in bundle.items() if k != "kgc_signature"}
    verify_json(world.service.verify_key, body, bundle["kgc_signature"])
    assert sorted(bundle["wrapped_keys"]) == sorted(contributors)
    assert (bundle["job_id"], bundle["round"], bundle["num_plaintexts"]) == (
        "job-1",
        0,
        NUM_PLAINTEXTS,
    )
    for member in setup.members[:2]:
        opened = open_release(
            member.secret_key,  # type: ignore[arg-type]
            job_id="job-1",
            round_number=0,
            sealed_model=bundle["sealed_model"],
            wrapped_key=bundle["wrapped_keys"][member.subject_id],
            blind=blind,
        )
        assert [int(v) for v in opened] == model
    for stranger in (setup.members[2], setup.outsider):
        for wrapped in bundle["wrapped_keys"].values():
            with pytest.raises(SealError):
                open_release(
                    stranger.secret_key,  # type: ignore[arg-type]
                    job_id="job-1",
                    round_number=0,
                    sealed_model=bundle["sealed_model"],
                    wrapped_key=wrapped,
                    blind=blind,
                )
    # Nothing in the bundle is the blinded model in the clear.
    sealed = b64decode(bundle["sealed_model"]["ct"])
    first = ((model[0] + blind[0]) % n).to_bytes(128, "big")
    assert first not in sealed

    again, created = world.service.release(setup.ps.subject_id, "job-1", frame)
    assert (again, created) == (bundle, False)
    # The same contributors, re-signed statements, the same payload: the same request.
    reordered = setup.frame(vector, 0, list(reversed(setup.members[:2])))
    assert world.service.release(setup.ps.subject_id, "job-1", reordered) == (bundle, False)
    assert world.count(Release) == 1


def test_a_released_round_is_not_released_again_for_another_request(
    world: DomainWorld, setup: Setup
) -> None:
    """Attack (b): the PS repeats round 0 with another payload or contributor set."""
    n = int(world.service.params.n)
    _, _, vector = _blinded(setup, n)
    world.service.release(setup.ps.subject_id, "job-1", setup.frame(vector, 0, setup.members[:2]))
    _, _, other = _blinded(setup, n, seed=5)
    for frame in (
        setup.frame(other, 0, setup.members[:2]),  # another payload
        setup.frame(vector, 0, setup.members),  # a wider contributor set
        setup.frame(vector, 0, [setup.members[0], setup.members[2]]),  # another pair
        setup.frame(vector, 0, [setup.members[0]]),  # even one that would be refused
    ):
        refused(
            lambda f=frame: world.service.release(setup.ps.subject_id, "job-1", f),
            ConflictError,
            "already-released",
        )
    assert world.count(Release) == 1


def _tampered_requests(
    setup: Setup, vector: EncryptedVector
) -> list[tuple[str, bytes, type[KgcError], str]]:
    """(requester, frame, refusal, code) for round-0 requests the KGC must refuse."""
    a, b, c = setup.members
    terms = setup.terms
    rogue = generate_signing_key()

    def frame(round_number: int = 0, signers: list[TestSubject] | None = None, **kw: Any) -> bytes:
        return setup.frame(vector, round_number, [a, b] if signers is None else signers, **kw)

    def stmt(subject: TestSubject, round_number: int = 0, **kw: Any) -> dict[str, Any]:
        return statement_for(subject, kw.pop("terms", terms), round_number, **kw)

    params = vector.job_key.params
    n = int(params.n)
    bad_elements = list(vector.elements)
    bad_elements[1] = gmpy2.mpz(n)  # not invertible modulo N^2
    outside = EncryptedVector(vector.job_key, vector.layout, tuple(bad_elements), _trusted=True)
    zero = list(vector.elements)
    zero[0] = gmpy2.mpz(0)
    with_zero = EncryptedVector(vector.job_key, vector.layout, tuple(zero), _trusted=True)
    narrow_key = JobKey(params, vector.job_key.hs[:2])
    narrow = EncryptedVector(
        narrow_key, BlockLayout(2, 2), tuple(vector.elements[:3]), _trusted=True
    )
    short = EncryptedVector(
        vector.job_key, BlockLayout(3, 3), tuple(vector.elements[:4]), _trusted=True
    )
    ps = setup.ps.subject_id
    other_ps = replace(terms, param_server="sub-another-ps")
    other_job = replace(terms, job_id="job-2")
    other_digest = replace(terms, digest="0" * 64)
    return [
        # The request itself: not this PS's, not this job's, malformed.
        (ps, frame(ps_key=rogue), ForbiddenError, "bad-request-signature"),
        (a.subject_id, frame(), ForbiddenError, "not-job-owner"),
        (ps, frame(job_id="job-2"), InvalidError, "job-mismatch"),
        (ps, frame(extra={"round": -1}), BadRequestError, "bad-field"),
        (ps, frame(extra={"round": "0"}), BadRequestError, "bad-field"),
        (ps, frame(extra={"round": True}), BadRequestError, "bad-field"),
        (ps, frame(extra={"contributors": "a,b"}), BadRequestError, "bad-field"),
        (ps, b"TDFL garbage", BadRequestError, "bad-frame"),
        # Attack (a), (g): relabelled rounds, off the KGC's schedule.
        (ps, frame(1000), ConflictError, "round-out-of-range"),
        (ps, frame(ROUNDS), ConflictError, "round-out-of-range"),
        (ps, frame(2**31 - 1), ConflictError, "round-out-of-range"),
        (ps, frame(1), ConflictError, "out-of-schedule"),
        # Attack (c): statements not signed by their participant, or for something else.
        (
            ps,
            frame(statements=[stmt(a), stmt(b, signing_key=setup.ps.signing_key)]),
            ForbiddenError,
            "bad-statement-signature",
        ),
        (
            ps,
            frame(statements=[stmt(a), stmt(b, signing_key=a.signing_key)]),
            ForbiddenError,
            "bad-statement-signature",
        ),
        (
            ps,
            frame(statements=[stmt(a), stmt(b, signing_key=rogue)]),
            ForbiddenError,
            "bad-statement-signature",
        ),
        (ps, frame(statements=[stmt(a), stmt(b, 1)]), InvalidError, "statement-mismatch"),
        (
            ps,
            frame(statements=[stmt(a), stmt(b, terms=other_job)]),
            InvalidError,
            "statement-mismatch",
        ),
        (
            ps,
            frame(statements=[stmt(a), stmt(b, terms=other_ps)]),
            InvalidError,
            "statement-mismatch",
        ),
        (
            ps,
            frame(statements=[stmt(a), stmt(b, terms=other_digest)]),
            InvalidError,
            "statement-mismatch",
        ),
        # A statement of a's own, relabelled by the PS as b's contribution.
        (
            ps,
            frame(
                statements=[stmt(a), stmt(c)], extra={"contributors": [a.subject_id, b.subject_id]}
            ),
            InvalidError,
            "statement-mismatch",
        ),
        (
            ps,
            frame(statements=[stmt(a)], extra={"contributors": [a.subject_id, b.subject_id]}),
            InvalidError,
            "statement-mismatch",
        ),
        (ps, frame(extra={"statements": {}}), InvalidError, "statement-mismatch"),
        (ps, frame(extra={"statements": ["s1", "s2"]}), InvalidError, "bad-statement"),
        # Attack (d): outsiders and too few contributors.
        (ps, frame(signers=[a, setup.outsider]), InvalidError, "not-a-participant"),
        (ps, frame(signers=[a, a]), InvalidError, "duplicate-contributor"),
        (ps, frame(signers=[a]), InvalidError, "below-quorum"),
        (ps, frame(signers=[]), InvalidError, "below-quorum"),
        # The frame: not of the job's shape, or not group elements.
        (ps, setup.frame(narrow, 0, [a, b]), InvalidError, "wrong-shape"),
        (ps, setup.frame(short, 0, [a, b]), InvalidError, "wrong-shape"),
        (ps, setup.frame(outside, 0, [a, b]), InvalidError, "invalid-element"),
        (ps, setup.frame(with_zero, 0, [a, b]), InvalidError, "invalid-element"),
    ]


def test_release_refusals_store_nothing(world: DomainWorld, setup: Setup) -> None:
    _, _, vector = _blinded(setup, int(world.service.params.n))
    for requester, frame, kind, code in _tampered_requests(setup, vector):
        with pytest.raises(KgcError) as info:
            world.service.release(requester, "job-1", frame)
        assert (type(info.value), info.value.code) == (kind, code), info.value.message
        assert world.count(Release) == 0
    good = setup.frame(vector, 0, setup.members[:2], job_id="nope")
    refused(
        lambda: world.service.release(setup.ps.subject_id, "nope", good), NotFoundError, "not-found"
    )
    refused(
        lambda: world.service.release(setup.ps.subject_id, "nope", b""), NotFoundError, "not-found"
    )
    limit = world.service.release_body_limit(setup.ps.subject_id, "job-1")
    refused(
        lambda: world.service.release(setup.ps.subject_id, "job-1", b"TDFL" + bytes(limit)),
        BadRequestError,
        "bad-frame",
    )
    assert world.count(Release) == 0
    # Every refusal left the schedule as it was: round 0 is still releasable.
    _, created = world.service.release(
        setup.ps.subject_id, "job-1", setup.frame(vector, 0, setup.members[:2])
    )
    assert created


def test_refusals_are_logged_with_their_code(
    world: DomainWorld, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kgc.domain")
    _, _, vector = _blinded(setup, int(world.service.params.n))
    with pytest.raises(ConflictError):
        world.service.release(setup.ps.subject_id, "job-1", setup.frame(vector, 7, setup.members))
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING
    assert "round-out-of-range" in record.getMessage() and "job-1" in record.getMessage()


def test_release_body_limit_is_the_jobs_frame(world: DomainWorld, setup: Setup) -> None:
    svc = world.service
    layout = BlockLayout(NUM_PLAINTEXTS, 3)
    expected = 9 + MAX_HEADER_BYTES + layout.num_elements * element_bytes(svc.params)
    assert svc.release_body_limit(setup.ps.subject_id, "job-1") == expected
    _, _, vector = _blinded(setup, int(svc.params.n))
    assert len(setup.frame(vector, 0, setup.members)) < expected
    refused(lambda: svc.release_body_limit(setup.ps.subject_id, "nope"), NotFoundError, "not-found")
    refused(lambda: svc.release_body_limit(setup.ids[0], "job-1"), ForbiddenError, "not-job-owner")


def test_a_second_param_server_cannot_release_anothers_job(
    world: DomainWorld, setup: Setup
) -> None:
    other = enrol(world, TestSubject.param_server(), "PS2")
    _, _, vector = _blinded(setup, int(world.service.params.n))
    frame = setup.frame(vector, 0, setup.members, ps_key=other.signing_key)
    refused(
        lambda: world.service.release(other.subject_id, "job-1", frame),
        ForbiddenError,
        "not-job-owner",
    )
    assert world.count(Release) == 0


def test_rounds_are_released_in_order_once_each_and_no_more(
    world: DomainWorld, setup: Setup
) -> None:
    n = int(world.service.params.n)
    ps = setup.ps.subject_id
    bundles: list[dict[str, Any]] = []
    for t in range(ROUNDS):
        _, _, vector = _blinded(setup, n, seed=10 + t)
        # Attack (a): the next-but-one round is never released early.
        if t + 1 < ROUNDS:
            early = setup.frame(vector, t + 1, setup.members)
            refused(
                lambda f=early: world.service.release(ps, "job-1", f),
                ConflictError,
                "out-of-schedule",
            )
        signers = setup.members[: 2 + t % 2]
        frame = setup.frame(vector, t, signers)
        bundle, created = world.service.release(ps, "job-1", frame)
        assert created
        bundles.append(bundle)
        assert sorted(bundle["wrapped_keys"]) == sorted(s.subject_id for s in signers)
        # A statement for round t is worthless in round t + 1.
        if t + 1 < ROUNDS:
            stale = setup.frame(
                vector,
                t + 1,
                signers,
                statements=[statement_for(s, setup.terms, t) for s in signers],
            )
            refused(
                lambda f=stale: world.service.release(ps, "job-1", f),
                InvalidError,
                "statement-mismatch",
            )
    assert [b["round"] for b in bundles] == list(range(ROUNDS))
    assert world.count(Release) == ROUNDS
    # Attack (g): every round is released; round `rounds` and beyond never are.
    _, _, vector = _blinded(setup, n, seed=99)
    for t in (ROUNDS, ROUNDS + 1, 1000):
        frame = setup.frame(vector, t, setup.members)
        refused(
            lambda f=frame: world.service.release(ps, "job-1", f),
            ConflictError,
            "round-out-of-range",
        )
    assert world.count(Release) == ROUNDS


def test_a_job_without_signed_terms_is_never_released(world: DomainWorld, setup: Setup) -> None:
    """Jobs made before revision 0002 have no terms: nothing can check their statements."""
    with session_scope(world.sessions) as session:
        session.add(
            Job(
                job_id="legacy",
                owner_id=setup.ps.subject_id,
                job_key=to_obj(setup.job_key),
                terms=None,
                terms_signature=None,
                participants=setup.ids,
                quorum=1,
                rounds=None,
                width=3,
                created_at=0.0,
            )
        )
    _, _, vector = _blinded(setup, int(world.service.params.n))
    frame = setup.frame(vector, 0, setup.members, job_id="legacy")
    ps = setup.ps.subject_id
    refused(lambda: world.service.release_body_limit(ps, "legacy"), ConflictError, "legacy-job")
    refused(lambda: world.service.release(ps, "legacy", frame), ConflictError, "legacy-job")
    assert world.count(Release) == 0
