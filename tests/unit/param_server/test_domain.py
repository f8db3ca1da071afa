"""The parameter server's domain end to end, with a fake KGC doing the real crypto.

1024-bit parameters, a 300-value model (9 packed plaintexts, 3 blocks of width 4,
12 group elements stored as 4 chunk rows of 3), four participants with weights
0.1 .. 0.4.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import func, select

from common.blocks import VectorEncryptor, add_plaintexts
from common.protocol import (
    build_upload_statement,
    check_job_view,
    release_request_header,
    verify_release_signature,
)
from common.release import plaintexts_from_bytes
from common.signing import generate_signing_key, sign_json, verify_json
from common.wire import decode_frame, encode_frame
from param_server.definition import release_header_bytes
from param_server.domain import ParameterServer
from param_server.errors import DomainError
from param_server.kgc_gateway import KgcError
from param_server.models import Job, ModelChunk, Release, Round, Upload
from param_server.testing import (
    PS_SUBJECT_ID,
    PsWorld,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    open_model,
)

LENGTH = 300
TOLERANCE = 2.0**-18


def _w0(seed: int = 11) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0.0, 0.5, LENGTH)


def _deltas(participants: list[TestParticipant], seed: int) -> dict[str, npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return {p.subject_id: rng.normal(0.0, 0.2, LENGTH) for p in participants}


class Scenario:
    """A job as the participants see it, with their shared encryptor for uploads."""

    def __init__(self, world: PsWorld, job_id: str = "job-a", **overrides: Any) -> None:
        self.world = world
        self.job_id = job_id
        self.w0 = _w0()
        self.view = world.ps.create_job(
            make_definition(job_id, world.participants, self.w0, **overrides)
        )
        # What every participant checks before it encrypts anything.
        self.terms = job_terms_of(self.view, world.kgc.info(), param_server=PS_SUBJECT_ID)
        self.encryptor = VectorEncryptor(job_key_of(self.view), window=4)
        self.rng = random.Random(99)

    def frame(self, p: TestParticipant, t: int, delta: npt.NDArray[np.float64]) -> bytes:
        return p.frame(self.view, self.terms, t, delta, self.encryptor, self.rng)

    def upload(self, p: TestParticipant, t: int, delta: npt.NDArray[np.float64]) -> dict[str, Any]:
        return self.world.ps.accept_upload(self.job_id, t, p.subject_id, self.frame(p, t, delta))

    def expected(
        self, w: npt.NDArray[np.float64], deltas: dict[str, npt.NDArray[np.float64]]
    ) -> npt.NDArray[np.float64]:
        weights = self.view["weights"]
        return w + sum(weights[s] * d for s, d in deltas.items())

    def model_of(self, p: TestParticipant, t: int) -> npt.NDArray[np.float64]:
        return open_model(self.view, p, self.world.ps.download(self.job_id, t, p.subject_id))


def _count(world: PsWorld, model: Any, *where: Any) -> int:
    with world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _round(world: PsWorld, job_id: str, t: int) -> Round | None:
    with world.sessions() as session:
        return session.get(Round, (job_id, t))


def test_full_job_every_contributor_decodes_the_fedavg_model(world: PsWorld) -> None:
    job = Scenario(world)
    ps = world.ps
    assert job.view["status"] == "running" and job.view["current_round"] == 0
    assert job.view["weights"] == pytest.approx({"p1": 0.1, "p2": 0.2, "p3": 0.3, "p4": 0.4})
    # The encrypted model is chunked: 12 elements in 4 rows of at most 3.
    assert _count(world, ModelChunk, ModelChunk.job_id == "job-a", ModelChunk.version == 0) == 4

    w = job.w0
    for t in range(2):
        deltas = _deltas(world.participants, seed=t)
        for p in world.participants:
            signed = job.upload(p, t, deltas[p.subject_id])
            verify_json(world.ps_key.public_key(), signed["receipt"], signed["signature"])
            assert signed["receipt"]["subject_id"] == p.subject_id
            assert signed["receipt"]["round"] == t
        # All four uploaded: the round closed at once, W_{t+1} is stored, nothing released.
        assert ps.round_view("job-a", t)["status"] == "closed"
        assert _count(world, ModelChunk, ModelChunk.version == t + 1) == 4
        result = ps.tick()
        assert result.released == [("job-a", t)]
        view = ps.round_view("job-a", t)
        assert view["status"] == "released"
        assert view["contributors"] == ["p1", "p2", "p3", "p4"]
        expected = job.expected(w, deltas)
        models = [job.model_of(p, t) for p in world.participants]
        for model in models:
            assert np.max(np.abs(model - expected)) < TOLERANCE
        w = models[0]

    final = ps.job_view("job-a")
    assert final["status"] == "finished"
    assert final["current_round"] == 1
    assert _round(world, "job-a", 2) is None
    assert [j["job_id"] for j in ps.list_jobs()] == ["job-a"]


def test_deadline_with_quorum_releases_to_contributors_only(world: PsWorld) -> None:
    job = Scenario(world, quorum=2)
    p1, p2, p3, p4 = world.participants
    deltas = _deltas(world.participants, seed=3)
    for p in (p1, p3):
        job.upload(p, 0, deltas[p.subject_id])
    assert world.ps.tick().closed == []  # before the deadline, 2 of 4 is not enough
    assert world.ps.round_view("job-a", 0)["status"] == "open"

    world.clock.advance(601)
    result = world.ps.tick()
    assert result.closed == [("job-a", 0)] and result.released == [("job-a", 0)]

    expected = job.w0 + 0.1 * deltas["p1"] + 0.3 * deltas["p3"]  # dropouts count as zero
    for p in (p1, p3):
        assert np.max(np.abs(job.model_of(p, 0) - expected)) < TOLERANCE
    for p in (p2, p4):
        with pytest.raises(DomainError) as err:
            world.ps.download("job-a", 0, p.subject_id)
        assert (err.value.status, err.value.code) == (403, "not-a-contributor")
    # Round 1 is open with a fresh deadline.
    assert world.ps.round_view("job-a", 1)["status"] == "open"
    assert world.ps.round_view("job-a", 1)["deadline"] == world.clock.now + 600


def test_deadline_without_quorum_stays_open_then_closes_when_quorum_arrives(world: PsWorld) -> None:
    job = Scenario(world, quorum=2, below_quorum_policy="stay-open")
    p1, p2, *_ = world.participants
    job.upload(p1, 0, np.zeros(LENGTH))
    world.clock.advance(601)
    assert world.ps.tick().closed == []
    assert world.ps.round_view("job-a", 0)["status"] == "open"
    job.upload(p2, 0, np.zeros(LENGTH))  # late, but the round stayed open: quorum now
    assert world.ps.round_view("job-a", 0)["status"] == "closed"
    assert world.ps.tick().released == [("job-a", 0)]


def test_deadline_without_quorum_fails_the_round_and_job(world: PsWorld) -> None:
    job = Scenario(world, quorum=3, below_quorum_policy="fail")
    p1, p2, *_ = world.participants
    job.upload(p1, 0, np.zeros(LENGTH))
    world.clock.advance(601)
    assert world.ps.tick().failed == [("job-a", 0)]
    assert world.ps.round_view("job-a", 0)["status"] == "failed"
    assert world.ps.job_view("job-a")["status"] == "failed"
    with pytest.raises(DomainError) as err:
        job.upload(p2, 0, np.zeros(LENGTH))
    assert err.value.status == 409
    assert _count(world, Upload) == 1


def test_operator_close_needs_quorum(world: PsWorld) -> None:
    job = Scenario(world, quorum=2)
    p1, p2, *_ = world.participants
    job.upload(p1, 0, np.zeros(LENGTH))
    with pytest.raises(DomainError) as err:
        world.ps.close_round("job-a", 0)
    assert (err.value.status, err.value.code) == (409, "below-quorum")
    job.upload(p2, 0, np.zeros(LENGTH))
    assert world.ps.close_round("job-a", 0)["status"] == "closed"
    with pytest.raises(DomainError) as err:
        world.ps.close_round("job-a", 0)
    assert (err.value.status, err.value.code) == (409, "round-not-open")


def test_kgc_unreachable_leaves_round_closed_and_tick_retries(world: PsWorld) -> None:
    job = Scenario(world)
    deltas = _deltas(world.participants, seed=5)
    world.kgc.failure = KgcError(0, "unreachable", "connection refused")
    for p in world.participants:
        job.upload(p, 0, deltas[p.subject_id])
    assert world.ps.tick().released == []
    rnd = _round(world, "job-a", 0)
    assert rnd is not None and rnd.status == "closed" and rnd.last_error
    assert _round(world, "job-a", 1) is None
    assert world.ps.job_view("job-a")["current_round"] == 0
    with pytest.raises(DomainError) as err:
        world.ps.download("job-a", 0, "p1")
    assert (err.value.status, err.value.code) == (409, "not-released")

    calls = world.kgc.release_calls
    assert world.ps.tick().released == []  # backing off: no new attempt yet
    assert world.kgc.release_calls == calls

    world.kgc.failure = None
    world.clock.advance(10)
    assert world.ps.tick().released == [("job-a", 0)]
    expected = job.expected(job.w0, deltas)
    assert np.max(np.abs(job.model_of(world.participants[0], 0) - expected)) < TOLERANCE
    assert _round(world, "job-a", 1) is not None


def test_crash_after_kgc_answer_resends_the_same_request(
    world: PsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored request (same R, same bytes) is re-sent; the KGC answers idempotently."""
    job = Scenario(world)
    deltas = _deltas(world.participants, seed=6)
    original = ParameterServer._finish_release

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(ParameterServer, "_finish_release", crash)
    for p in world.participants:
        job.upload(p, 0, deltas[p.subject_id])
    assert world.ps.tick().released == []
    assert world.kgc.release_calls == 1
    with world.sessions() as session:
        pending = session.get(Release, ("job-a", 0))
        assert pending is not None and pending.bundle is None and pending.request
    assert _round(world, "job-a", 0).status == "closed"  # type: ignore[union-attr]

    monkeypatch.setattr(ParameterServer, "_finish_release", original)
    world.clock.advance(10)
    assert world.ps.tick().released == [("job-a", 0)]
    assert world.kgc.release_calls == 2
    expected = job.expected(job.w0, deltas)
    for p in world.participants:
        assert np.max(np.abs(job.model_of(p, 0) - expected)) < TOLERANCE


def test_crash_while_aggregating_keeps_uploads_and_round_open(
    world: PsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Scenario(world)
    deltas = _deltas(world.participants, seed=7)
    original = ParameterServer._store_model

    def half_write(self: ParameterServer, session: Any, job_id: str, version: int, v: Any) -> None:
        original(self, session, job_id, version, v)  # chunks written, then the crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(ParameterServer, "_store_model", half_write)
    for p in world.participants:
        job.upload(p, 0, deltas[p.subject_id])  # the last upload is still accepted
    assert _count(world, Upload) == 4
    assert _count(world, ModelChunk, ModelChunk.version == 1) == 0  # nothing half-applied
    assert world.ps.round_view("job-a", 0)["status"] == "open"

    monkeypatch.setattr(ParameterServer, "_store_model", original)
    result = world.ps.tick()
    assert result.closed == [("job-a", 0)] and result.released == [("job-a", 0)]
    expected = job.expected(job.w0, deltas)
    assert np.max(np.abs(job.model_of(world.participants[3], 0) - expected)) < TOLERANCE


def test_upload_checks(world: PsWorld) -> None:
    job = Scenario(world)
    p1 = world.participants[0]
    frame = job.frame(p1, 0, np.zeros(LENGTH))
    cases: list[tuple[str, int, str, bytes, int, str]] = [
        ("nope", 0, "p1", frame, 404, "job-not-found"),
        ("job-a", 0, "stranger", frame, 403, "not-a-participant"),
        ("job-a", 1, "p1", frame, 409, "round-not-open"),
        ("job-a", 0, "p1", b"XXXX" + frame[4:], 400, "malformed-frame"),
        ("job-a", 0, "p1", frame[:-1] + bytes([frame[-1] ^ 1]), 400, "malformed-frame"),
    ]
    for job_id, t, subject, data, status, code in cases:
        with pytest.raises(DomainError) as err:
            world.ps.accept_upload(job_id, t, subject, data)
        assert (err.value.status, err.value.code) == (status, code), (job_id, t, subject)
    assert _count(world, Upload) == 0

    world.ps.accept_upload("job-a", 0, "p1", frame)
    # p2 copies p1's ciphertext and signs its own statement for it: a replay all the same.
    p2 = world.participants[1]
    digest = decode_frame(frame).header["sha256"]
    copied = _restated(
        job,
        frame,
        build_upload_statement(
            p2.signing_key, job.terms, round_number=0, subject_id="p2", payload_sha256=digest
        ),
    )
    for subject, data, code in (
        ("p1", frame, "duplicate-upload"),
        ("p2", copied, "replayed-payload"),
    ):
        with pytest.raises(DomainError) as err:
            world.ps.accept_upload("job-a", 0, subject, data)
        assert (err.value.status, err.value.code) == (409, code)
    assert _count(world, Upload) == 1


def test_create_job_checks_leave_nothing_behind(world: PsWorld) -> None:
    ps, participants = world.ps, world.participants
    w0 = _w0()
    bad: list[tuple[dict[str, Any], int, str]] = [
        (make_definition("bad id!", participants, w0), 400, "bad-definition"),
        (make_definition("j", participants, w0, quorum=5), 422, "invalid-definition"),
        (make_definition("j", participants, w0 * 100), 422, "invalid-definition"),
        (make_definition("j", participants, w0, rounds=0), 422, "invalid-definition"),
        (make_definition("j", participants, w0, extra=1), 400, "bad-definition"),
        (
            {**make_definition("j", participants, w0), "initial_weights": "!!"},
            400,
            "bad-definition",
        ),
        (
            make_definition("j", participants, w0, encoding={"slot_bits": 20}),
            422,
            "invalid-definition",
        ),
    ]
    crowd = [{"subject_id": f"{i:032x}", "num_samples": 1} for i in range(300)]
    too_many = {**make_definition("j", participants, w0), "participants": crowd}
    bad.append((too_many, 422, "invalid-definition"))  # statements outgrow one release header
    for training in ({"learning_rate": float("nan")}, {"steps": [float("inf")]}, {1: 2}):
        # Would hash, store or serve differently from what a strict JSON client reads.
        bad.append(
            (make_definition("j", participants, w0, training=training), 400, "bad-definition")
        )
    for definition, status, code in bad:
        with pytest.raises(DomainError) as err:
            ps.create_job(definition)
        assert (err.value.status, err.value.code) == (status, code)

    stranger = TestParticipant(
        "stranger", 10, participants[0].public_key, participants[0].secret_key
    )
    with pytest.raises(DomainError) as err:
        ps.create_job(make_definition("j", [*participants, stranger], w0))
    assert (err.value.status, err.value.code) == (422, "kgc-rejected")

    world.kgc.failure = KgcError(0, "unreachable", "down")
    with pytest.raises(DomainError) as err:
        ps.create_job(make_definition("j", participants, w0))
    assert (err.value.status, err.value.code) == (503, "kgc-unavailable")
    world.kgc.failure = None
    world.kgc.ps_subject_id = "another-ps"  # the KGC signs the job for another server
    with pytest.raises(DomainError) as err:
        ps.create_job(make_definition("j", participants, w0))
    assert (err.value.status, err.value.code) == (502, "bad-kgc-answer")
    world.kgc.ps_subject_id = PS_SUBJECT_ID
    del world.kgc.jobs["j"]
    assert _count(world, Job) == 0 and _count(world, ModelChunk) == 0
    assert _count(world, Round) == 0

    world.kgc.failure = None
    ps.create_job(make_definition("j", participants, w0))
    with pytest.raises(DomainError) as err:
        ps.create_job(make_definition("j", participants, w0))
    assert (err.value.status, err.value.code) == (409, "job-exists")
    assert _count(world, Job) == 1


def _release_row(world: PsWorld, job_id: str, t: int) -> Release | None:
    with world.sessions() as session:
        return session.get(Release, (job_id, t))


def _release_round_zero(world: PsWorld, job: Scenario, seed: int) -> Release:
    """Everyone uploads, the tick releases, every contributor opens the FedAvg model."""
    deltas = _deltas(world.participants, seed=seed)
    for p in world.participants:
        job.upload(p, 0, deltas[p.subject_id])
    assert world.ps.tick().released == [("job-a", 0)]
    expected = job.expected(job.w0, deltas)
    for p in world.participants:
        assert np.max(np.abs(job.model_of(p, 0) - expected)) < TOLERANCE
    released = _release_row(world, "job-a", 0)
    assert released is not None
    return released


def test_w0_and_the_blind_are_trivial_encryptions_the_kgc_opens(world: PsWorld) -> None:
    """``Enc(W_0)`` has ``A = 1``; the release is ``F = Agg · (1 + R N)`` with Agg's ``A``.

    The PS never draws encryption randomness: ``W_0`` is public and only the KGC, which
    holds the master key, ever opens ``F``. The contributors still decode the FedAvg model.
    """
    job = Scenario(world)
    crypto = world.ps._crypto(_job_row(world, "job-a"))
    with world.sessions() as session:
        w0 = world.ps._load_model(session, "job-a", 0, crypto)
    a_offsets = [offset for offset, _ in crypto.layout.block_offsets()]
    assert all(w0.elements[i] == 1 for i in a_offsets)

    frames: list[bytes] = []
    release = world.kgc.release
    world.kgc.release = lambda frame: frames.append(frame) or release(frame)  # type: ignore[method-assign]
    released = _release_round_zero(world, job, seed=5)
    with world.sessions() as session:
        aggregate = world.ps._load_model(session, "job-a", 1, crypto)
    [frame] = frames
    blinded = decode_frame(frame).vector(crypto.job_key)
    n = int(crypto.job_key.params.n)
    blind = plaintexts_from_bytes(released.blind, n)
    assert blinded == add_plaintexts(aggregate, blind)
    assert all(blinded.elements[i] == aggregate.elements[i] for i in a_offsets)


def test_each_round_draws_a_fresh_blind(world: PsWorld) -> None:
    job = Scenario(world)
    first = _release_round_zero(world, job, seed=6)
    deltas = _deltas(world.participants, seed=7)
    for p in world.participants:
        job.upload(p, 1, deltas[p.subject_id])
    assert world.ps.tick().released == [("job-a", 1)]
    second = _release_row(world, "job-a", 1)
    assert second is not None and second.blind != first.blind


def _job_row(world: PsWorld, job_id: str) -> Job:
    with world.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# ---------------------------------------------------------------------- signed terms


def test_job_view_serves_kgc_signed_terms_of_exactly_the_served_job(world: PsWorld) -> None:
    job = Scenario(world)
    view = job.view
    assert "job_key_signature" not in view
    assert view["job_terms"]["param_server"] == PS_SUBJECT_ID
    assert view["job_terms"]["job_key"] == view["job_key"]
    info = world.kgc.info()
    terms = check_job_view(view, info.verify_key, info.params, min_quorum=2, param_server="ps-test")
    assert terms.participants == ("p1", "p2", "p3", "p4") and terms.quorum == 2
    assert terms.num_plaintexts == 9 and terms.width == 4
    assert world.ps.job_view("job-a") == view  # what is stored is what was signed
    with world.sessions() as session:
        row = session.get(Job, "job-a")
        assert row is not None and row.job_terms == view["job_terms"]


# ---------------------------------------------------------------------- upload statements


def _restated(job: Scenario, frame: bytes, statement: Any, **header: Any) -> bytes:
    """The same ciphertext, framed with another statement (or header fields)."""
    parsed = decode_frame(frame)
    extra = {"job_id": parsed.header["job_id"], "round": parsed.header["round"], **header}
    if statement is not _ABSENT:
        extra["statement"] = statement
    return encode_frame(parsed.vector(job_key_of(job.view)), extra)


_ABSENT = object()


def test_upload_statements_are_checked_before_anything_is_stored(world: PsWorld) -> None:
    job = Scenario(world)
    p1, p2 = world.participants[:2]
    honest = job.frame(p1, 0, np.zeros(LENGTH))
    digest = decode_frame(honest).header["sha256"]
    good = decode_frame(honest).header["statement"]

    def statement(key: Any = p1.signing_key, **changes: Any) -> dict[str, Any]:
        body = {**good["statement"], **changes}
        return {"statement": body, "signature": sign_json(key, body)}

    def by(p: TestParticipant, subject: str = "p1", t: int = 0) -> dict[str, Any]:
        return build_upload_statement(
            p.signing_key, job.terms, round_number=t, subject_id=subject, payload_sha256=digest
        )

    cases: list[tuple[Any, int, str]] = [
        (by(p2), 403, "bad-statement-signature"),  # signed by another participant
        (by(p2, "p2"), 422, "statement-mismatch"),  # p2's own statement, uploaded by p1
        (statement(generate_signing_key()), 403, "bad-statement-signature"),  # by nobody
        ({**good, "signature": "A" * 86}, 403, "bad-statement-signature"),
        ({"statement": good["statement"]}, 403, "bad-statement-signature"),
        (statement(subject_id="stranger"), 403, "not-a-participant"),
        (by(p1, t=1), 422, "statement-mismatch"),  # another round
        (statement(round=True), 422, "statement-mismatch"),
        (statement(audience="another-ps"), 422, "statement-mismatch"),  # another audience
        (statement(payload_sha256="0" * 64), 422, "statement-mismatch"),  # another payload
        (statement(job_terms_sha256="0" * 64), 422, "statement-mismatch"),  # other terms
        (statement(job_id="job-b"), 422, "statement-mismatch"),
        (statement(purpose="token"), 422, "statement-mismatch"),
        (statement(kgc_key_id="0" * 32), 422, "statement-mismatch"),
        (statement(extra=1), 422, "statement-mismatch"),
        (statement(payload_sha256="ab"), 422, "bad-statement"),
        (_ABSENT, 422, "bad-statement"),  # no statement at all
        ("signed", 422, "bad-statement"),
        ({"statement": "x", "signature": "y"}, 422, "bad-statement"),
    ]
    for signed, status, code in cases:
        with pytest.raises(DomainError) as err:
            world.ps.accept_upload("job-a", 0, "p1", _restated(job, honest, signed))
        assert (err.value.status, err.value.code) == (status, code), signed
    assert _count(world, Upload) == 0

    # p1's honest statement, posted by p2 (who copied p1's frame): not p2's statement.
    with pytest.raises(DomainError) as err:
        world.ps.accept_upload("job-a", 0, "p2", honest)
    assert (err.value.status, err.value.code) == (422, "statement-mismatch")
    assert _count(world, Upload) == 0

    receipt = world.ps.accept_upload("job-a", 0, "p1", honest)  # the honest upload still goes
    assert receipt["receipt"]["sha256"] == digest
    with world.sessions() as session:
        stored = session.scalars(select(Upload)).one()
        assert stored.statement == good and stored.subject_id == "p1"


# ---------------------------------------------------------------------- release requests


def _resigned(world: PsWorld, job: Scenario, frame: bytes, **changes: Any) -> bytes:
    """A release request rebuilt from ``frame`` with ``changes``, signed as the PS signs."""
    parsed = decode_frame(frame)
    vector = parsed.vector(job_key_of(job.view))
    base = release_request_header(
        job_id=parsed.header["job_id"],
        round_number=parsed.header["round"],
        statements=parsed.header["statements"],
    )
    header = {**base, **changes}
    key = header.pop("key", world.ps_key)
    signed = decode_frame(encode_frame(vector, header)).header
    return encode_frame(vector, {**header, "request_signature": sign_json(key, signed)})


def test_release_request_carries_the_statements_and_the_kgc_checks_them(world: PsWorld) -> None:
    job = Scenario(world)
    deltas = _deltas(world.participants, seed=8)
    for p in world.participants:
        job.upload(p, 0, deltas[p.subject_id])
    world.kgc.failure = KgcError(0, "unreachable", "down")
    assert world.ps.tick().released == []
    world.kgc.failure = None
    frame = world.kgc.release_frames[-1]
    header = decode_frame(frame).header
    with world.sessions() as session:
        uploads = session.scalars(select(Upload).order_by(Upload.subject_id)).all()
        statements = [u.statement for u in uploads]
    assert "receipts" not in header
    assert header["contributors"] == ["p1", "p2", "p3", "p4"]
    assert header["statements"] == statements
    assert verify_release_signature(header, world.ps_key.public_key()) == 0
    head_bytes = int.from_bytes(frame[5:9], "big")
    assert head_bytes <= release_header_bytes(
        "job-a", ["p1", "p2", "p3", "p4"], param_server=PS_SUBJECT_ID
    )

    kgc = world.kgc
    p1_statement = header["statements"][0]
    tampered_round = {**p1_statement["statement"], "round": 1}
    invented = build_upload_statement(
        world.ps_key, job.terms, round_number=0, subject_id="p2", payload_sha256="0" * 64
    )
    refusals: list[tuple[bytes, int, str]] = [
        (_resigned(world, job, frame, key=generate_signing_key()), 403, "bad-request-signature"),
        (
            _resigned(
                world,
                job,
                frame,
                statements=[{**p1_statement, "statement": tampered_round}, *statements[1:]],
            ),
            403,
            "bad-statement-signature",
        ),
        (
            _resigned(world, job, frame, statements=[statements[0], invented, *statements[2:]]),
            403,
            "bad-statement-signature",
        ),
        (_resigned(world, job, frame, round=1), 409, "out-of-schedule"),
        (_resigned(world, job, frame, round=2), 409, "round-out-of-range"),
        (_resigned(world, job, frame, contributors=["p1", "p2"]), 422, "statement-mismatch"),
        (
            _resigned(world, job, frame, contributors=[*header["contributors"], "stranger"]),
            422,
            "not-a-participant",
        ),
        (
            _resigned(world, job, frame, contributors=["p1"], statements=statements[:1]),
            422,
            "below-quorum",
        ),
    ]
    for request, status, code in refusals:
        with pytest.raises(KgcError) as err:
            kgc.release(request)
        assert (err.value.status, err.value.code) == (status, code)
    assert kgc.jobs["job-a"].releases == {}  # nothing sealed

    world.clock.advance(10)  # the honest, stored request goes through on the retry
    assert world.ps.tick().released == [("job-a", 0)]
    assert kgc.release_frames[-1] == frame
    expected = job.expected(job.w0, deltas)
    assert np.max(np.abs(job.model_of(world.participants[0], 0) - expected)) < TOLERANCE
    # The same request again is answered with the same bundle; another one is refused.
    assert kgc.release(frame) == kgc.jobs["job-a"].releases[0][2]
    with pytest.raises(KgcError) as err:
        kgc.release(
            _resigned(world, job, frame, contributors=["p1", "p2", "p3"], statements=statements[:3])
        )
    assert (err.value.status, err.value.code) == (409, "already-released")


def test_a_statement_tampered_in_the_ps_database_is_refused_by_the_kgc(world: PsWorld) -> None:
    """The PS's operator rewrites a stored statement: the KGC seals nothing."""
    job = Scenario(world)
    for p in world.participants:
        job.upload(p, 0, np.zeros(LENGTH))
    with world.sessions() as session, session.begin():
        upload = session.scalars(select(Upload).where(Upload.subject_id == "p2")).one()
        assert upload.statement is not None
        upload.statement = {
            **upload.statement,
            "statement": {**upload.statement["statement"], "round": 1},
        }
    assert world.ps.tick().released == []
    rnd = _round(world, "job-a", 0)
    assert rnd is not None and rnd.status == "closed"
    assert rnd.last_error and "signed" in rnd.last_error
    assert world.kgc.release_calls == 1 and world.kgc.jobs["job-a"].releases == {}
