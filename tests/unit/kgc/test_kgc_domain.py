"""The KGC domain (no Flask): enrolment, tokens, job keys and contributor-only releases.

Every refusal is checked for its error class and code, and for leaving nothing stored.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any

import gmpy2
import pytest
from kgc_unit_support import DomainWorld
from sqlalchemy import select

from common.bcp import MasterKey
from common.blocks import BlockLayout, EncryptedVector, JobKey
from common.demo_params import load_demo_master_key
from common.release import open_release
from common.sealing import SealError
from common.signing import (
    b64decode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from common.wire import from_obj, to_obj
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
from kgc.testing import TestSubject, encrypt_plaintexts, receipt_for, release_frame


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
    claims = verify_token(world.service.verify_key, out["token"], now=world.clock())
    assert (claims.subject, claims.role, claims.issuer) == (p.subject_id, "participant", "kgc")
    assert out["expires_at"] == int(world.clock()) + 300
    assert world.service.authenticate(out["token"], "participant").subject == p.subject_id


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
    forged = issue_token(
        generate_signing_key(),
        subject=p.subject_id,
        role="param_server",
        now=now,
        ttl_seconds=300,
        token_id="x",
    )
    refused(lambda: svc.authenticate(forged, "param_server"), UnauthorizedError, "invalid-token")
    refused(
        lambda: svc.authenticate("v1.garbage", "participant"), UnauthorizedError, "invalid-token"
    )
    refused(lambda: svc.authenticate(token, "param_server"), ForbiddenError, "wrong-role")
    world.clock.advance(306)
    refused(lambda: svc.authenticate(token, "participant"), UnauthorizedError, "invalid-token")


# ---------------------------------------------------------------- jobs


@dataclass
class Setup:
    ps: TestSubject
    members: list[TestSubject]
    outsider: TestSubject
    job_key: JobKey


@pytest.fixture
def setup(world: DomainWorld, people: list[TestSubject]) -> Setup:
    ps = enrol(world, TestSubject.param_server(), "PS")
    members = [enrol(world, p, f"org{i}") for i, p in enumerate(people[:3])]
    outsider = enrol(world, people[3], "outsider")
    answer = world.service.create_job(ps.subject_id, "job-1", 3, [m.subject_id for m in members], 2)
    verify_json(
        world.service.verify_key,
        {"job_id": "job-1", "job_key": answer["job_key"]},
        answer["signature"],
    )
    job_key = from_obj(answer["job_key"])
    assert isinstance(job_key, JobKey)
    return Setup(ps, members, outsider, job_key)


def test_create_job_stores_the_public_key_only(world: DomainWorld, setup: Setup) -> None:
    assert setup.job_key.width == 3
    assert setup.job_key.params == world.service.params
    with world.sessions() as session:
        job = session.get(Job, "job-1")
        assert job is not None
        assert set(job.job_key) == {"kind", "n", "g", "hs"}
        assert (job.owner_id, job.quorum, job.width) == (setup.ps.subject_id, 2, 3)
        assert job.participants == [m.subject_id for m in setup.members]


def test_create_job_refusals_store_nothing(world: DomainWorld, setup: Setup) -> None:
    svc, ps = world.service, setup.ps.subject_id
    ids = [m.subject_id for m in setup.members]
    pending = svc.enrol("late", "participant")["subject_id"]
    cases: list[tuple[Any, type[KgcError], str]] = [
        (lambda: svc.create_job(ps, "job-1", 3, ids, 2), ConflictError, "job-exists"),
        (
            lambda: svc.create_job(ps, "j2", 3, [*ids, "sub-x"], 2),
            InvalidError,
            "unknown-participant",
        ),
        (lambda: svc.create_job(ps, "j2", 3, [*ids, ps], 2), InvalidError, "unknown-participant"),
        (
            lambda: svc.create_job(ps, "j2", 3, [*ids, pending], 2),
            InvalidError,
            "unknown-participant",
        ),
        (
            lambda: svc.create_job(ps, "j2", 3, [*ids, ids[0]], 2),
            InvalidError,
            "duplicate-participant",
        ),
        (lambda: svc.create_job(ps, "j2", 3, [], 1), InvalidError, "invalid-participants"),
        (lambda: svc.create_job(ps, "j2", 3, ids, 0), InvalidError, "invalid-quorum"),
        (lambda: svc.create_job(ps, "j2", 3, ids, 4), InvalidError, "invalid-quorum"),
        (lambda: svc.create_job(ps, "j2", 0, ids, 2), InvalidError, "invalid-width"),
        (lambda: svc.create_job(ps, "j2", 1025, ids, 2), InvalidError, "invalid-width"),
        (lambda: svc.create_job(ps, "bad id", 3, ids, 2), BadRequestError, "bad-field"),
        (lambda: svc.create_job(ps, "j2", 3, [*ids, 7], 2), BadRequestError, "bad-field"),
        (lambda: svc.create_job(ids[0], "j2", 3, ids, 2), ForbiddenError, "not-enrolled"),
    ]
    for call, kind, code in cases:
        refused(call, kind, code)
    assert world.count(Job) == 1


# ---------------------------------------------------------------- releases


def _blinded(setup: Setup, n: int, seed: int = 4) -> tuple[list[int], list[int], EncryptedVector]:
    rng = random.Random(seed)
    model = [rng.randrange(n) for _ in range(7)]
    blind = [rng.randrange(n) for _ in range(7)]
    vector = encrypt_plaintexts(
        setup.job_key, [(w + r) % n for w, r in zip(model, blind, strict=True)], rng
    )
    return model, blind, vector


def test_release_only_contributors_open_the_model(world: DomainWorld, setup: Setup) -> None:
    n = int(world.service.params.n)
    model, blind, vector = _blinded(setup, n)
    contributors = [m.subject_id for m in setup.members[:2]]
    frame = release_frame(
        setup.ps.signing_key, vector, job_id="job-1", round_number=0, contributors=contributors
    )
    bundle, created = world.service.release(setup.ps.subject_id, "job-1", frame)
    assert created
    body = {k: v for k, v in bundle.items() if k != "kgc_signature"}
    verify_json(world.service.verify_key, body, bundle["kgc_signature"])
    assert sorted(bundle["wrapped_keys"]) == sorted(contributors)
    assert (bundle["job_id"], bundle["round"], bundle["num_plaintexts"]) == ("job-1", 0, 7)
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
    assert world.count(Release) == 1

    _, _, other = _blinded(setup, n, seed=5)
    other_frame = release_frame(
        setup.ps.signing_key, other, job_id="job-1", round_number=0, contributors=contributors
    )
    refused(
        lambda: world.service.release(setup.ps.subject_id, "job-1", other_frame),
        ConflictError,
        "already-released",
    )
    more = [*contributors, setup.members[2].subject_id]
    wider = release_frame(
        setup.ps.signing_key, vector, job_id="job-1", round_number=0, contributors=more
    )
    refused(
        lambda: world.service.release(setup.ps.subject_id, "job-1", wider),
        ConflictError,
        "already-released",
    )
    assert world.count(Release) == 1


def _tampered_requests(setup: Setup, vector: EncryptedVector) -> list[tuple[str, bytes, str]]:
    """(requester, frame, expected code) for requests the KGC must refuse."""
    key = setup.ps.signing_key
    a, b, c = (m.subject_id for m in setup.members)
    rogue = generate_signing_key()

    def frame(**kwargs: Any) -> bytes:
        args: dict[str, Any] = {"job_id": "job-1", "round_number": 0, "contributors": [a, b]}
        args.update(kwargs)
        signer = args.pop("signer", key)
        vec = args.pop("vector", vector)
        return release_frame(signer, vec, **args)

    n2 = int(vector.job_key.params.nsquare)
    n = int(vector.job_key.params.n)
    bad_elements = list(vector.elements)
    bad_elements[1] = gmpy2.mpz(n)  # not invertible modulo N^2
    outside = EncryptedVector(vector.job_key, vector.layout, tuple(bad_elements), _trusted=True)
    zero = list(vector.elements)
    zero[0] = gmpy2.mpz(0)
    with_zero = EncryptedVector(vector.job_key, vector.layout, tuple(zero), _trusted=True)
    assert n2 > n
    narrow_key = JobKey(vector.job_key.params, vector.job_key.hs[:2])
    narrow = EncryptedVector(
        narrow_key, BlockLayout(2, 2), tuple(vector.elements[:3]), _trusted=True
    )
    ps = setup.ps.subject_id
    return [
        (ps, frame(signer=rogue), "bad-request-signature"),
        (
            ps,
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(rogue, "job-1", 0, b)]),
            "bad-receipt",
        ),
        (
            ps,
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(key, "job-1", 1, b)]),
            "receipt-mismatch",
        ),
        (
            ps,
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(key, "job-2", 0, b)]),
            "receipt-mismatch",
        ),
        (
            ps,
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(key, "job-1", 0, a)]),
            "receipt-mismatch",
        ),
        (ps, frame(receipts=[receipt_for(key, "job-1", 0, a)]), "receipt-mismatch"),
        (
            ps,
            frame(receipts=[receipt_for(key, "job-1", 0, a), receipt_for(key, "job-1", 0, c)]),
            "receipt-mismatch",
        ),
        (ps, frame(contributors=[a, a]), "duplicate-contributor"),
        (ps, frame(contributors=[a, setup.outsider.subject_id]), "not-a-participant"),
        (ps, frame(contributors=[a]), "below-quorum"),
        (ps, frame(contributors=[]), "below-quorum"),
        (ps, frame(vector=outside), "invalid-element"),
        (ps, frame(vector=with_zero), "invalid-element"),
        (ps, frame(vector=narrow), "invalid-frame"),
        (ps, frame(job_id="job-2"), "job-mismatch"),
        (ps, frame(round_number=-1), "bad-field"),
        (ps, frame(extra={"contributors": "a,b"}), "bad-field"),
        (ps, frame(extra={"receipts": {}}), "bad-field"),
        (ps, frame(receipts=["r1", "r2"]), "bad-field"),
        (ps, b"TDFL garbage", "bad-frame"),
        (a, frame(), "not-job-owner"),
    ]


def test_release_refusals_store_nothing(world: DomainWorld, setup: Setup) -> None:
    _, _, vector = _blinded(setup, int(world.service.params.n))
    for requester, frame, code in _tampered_requests(setup, vector):
        with pytest.raises(KgcError) as info:
            world.service.release(requester, "job-1", frame)
        assert info.value.code == code, (code, info.value.message)
    refused(
        lambda: world.service.release(setup.ps.subject_id, "nope", b""),
        BadRequestError,
        "bad-frame",
    )
    good = release_frame(
        setup.ps.signing_key, vector, job_id="nope", round_number=0, contributors=[]
    )
    refused(
        lambda: world.service.release(setup.ps.subject_id, "nope", good), NotFoundError, "not-found"
    )
    assert world.count(Release) == 0


def test_a_second_param_server_cannot_release_anothers_job(
    world: DomainWorld, setup: Setup
) -> None:
    other = enrol(world, TestSubject.param_server(), "PS2")
    _, _, vector = _blinded(setup, int(world.service.params.n))
    frame = release_frame(
        other.signing_key,
        vector,
        job_id="job-1",
        round_number=0,
        contributors=[m.subject_id for m in setup.members],
    )
    refused(
        lambda: world.service.release(other.subject_id, "job-1", frame),
        ForbiddenError,
        "not-job-owner",
    )
    assert world.count(Release) == 0


def test_rounds_are_released_independently(world: DomainWorld, setup: Setup) -> None:
    n = int(world.service.params.n)
    ids = [m.subject_id for m in setup.members]
    bundles: list[dict[str, Any]] = []
    for t in range(2):
        _, _, vector = _blinded(setup, n, seed=10 + t)
        frame = release_frame(
            setup.ps.signing_key, vector, job_id="job-1", round_number=t, contributors=ids[: 2 + t]
        )
        bundles.append(world.service.release(setup.ps.subject_id, "job-1", frame)[0])
    assert [b["round"] for b in bundles] == [0, 1]
    assert sorted(bundles[1]["wrapped_keys"]) == sorted(ids)
    assert world.count(Release) == 2
