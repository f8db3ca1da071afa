"""The parameter server's domain end to end, with a fake KGC doing the real crypto.

1024-bit parameters, a 300-value model (9 packed plaintexts, 3 blocks of width 4,
12 group elements stored as 4 chunk rows of 3), four participants with weights
0.1 .. 0.4. Rounds follow docs/PROTOCOL.md: commit, upload, audit, release.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ps_domain_support import LENGTH, Scenario, deltas_for, initial_w, refused
from sqlalchemy import func, select

from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.signing import generate_signing_key, sign_json, verify_json
from trapdoor.crypto.wire import decode_frame, encode_frame
from trapdoor.protocol.commitment import verify_closed_set
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.job import check_job_view, initial_ciphertext, initial_weights_of
from trapdoor.protocol.release_request import (
    release_header_limit,
    release_request_header,
    verify_release_signature,
)
from trapdoor.protocol.upload import build_upload_statement
from trapdoor.ps.definition import release_header_bytes
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.ps.models import Audit, Commitment, Job, ModelChunk, Release, Round, Upload
from trapdoor.ps.release import Releases
from trapdoor.ps.storage import ModelStore
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    PsWorld,
    TestParticipant,
    job_key_of,
    make_definition,
)


def _count(world: PsWorld, model: Any, *where: Any) -> int:
    with world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _round(world: PsWorld, job_id: str, t: int) -> Round | None:
    with world.sessions() as session:
        return session.get(Round, (job_id, t))


ALL = ["p1", "p2", "p3", "p4"]


def test_full_job_every_contributor_decodes_the_fedavg_model(world: PsWorld) -> None:
    job = Scenario(world)
    ps = world.ps
    assert job.view["status"] == "running" and job.view["current_round"] == 0
    assert job.view["weights"] == pytest.approx({"p1": 0.1, "p2": 0.2, "p3": 0.3, "p4": 0.4})
    # The encrypted model is chunked: 12 elements in 4 rows of at most 3.
    assert _count(world, ModelChunk, ModelChunk.job_id == "job-a", ModelChunk.version == 0) == 4

    w = job.w0
    for t in range(2):
        deltas = deltas_for(world.participants, seed=t)
        vectors = job.vectors(deltas)
        job.commit(t, vectors)  # everyone committed: the set is closed at once
        view = ps.round_view("job-a", t)
        assert (view["status"], view["committed"], view["contributors"]) == ("committed", ALL, [])
        for p in world.participants:
            signed = p.upload(ps, job.terms, t, vectors[p.subject_id])
            verify_json(world.ps_key.public_key(), signed["receipt"], signed["signature"])
            assert signed["receipt"]["subject_id"] == p.subject_id
            assert signed["receipt"]["round"] == t
        # All four uploaded: attempt 0 is aggregated at once, W_{t+1} stored, nothing released.
        view = ps.round_view("job-a", t)
        assert (view["status"], view["attempt"], view["contributors"]) == ("closed", 0, ALL)
        assert _count(world, ModelChunk, ModelChunk.version == t + 1) == 4
        assert ps.tick().released == []  # the audits are not in yet
        job.audit(t, ALL)
        result = ps.tick()
        assert result.released == [("job-a", t)]
        assert ps.round_view("job-a", t)["status"] == "released"
        expected = job.expected(w, deltas)
        job.assert_models(t, expected, ALL)
        w = job.model_of(world.participants[0], t)

    final = ps.job_view("job-a")
    assert final["status"] == "finished"
    assert final["current_round"] == 1
    assert _round(world, "job-a", 2) is None
    assert [j["job_id"] for j in ps.list_jobs()] == ["job-a"]


def test_job_creation_stores_the_trivial_enc_w0_the_terms_name(world: PsWorld) -> None:
    job = Scenario(world)
    refused(409, "not-aggregated", world.ps.base_frame, "job-a", 0, None)  # not before
    with world.sessions() as session:
        rows = session.scalars(
            select(ModelChunk.data).where(ModelChunk.version == 0).order_by(ModelChunk.chunk_index)
        ).all()
    expected = initial_ciphertext(
        job.terms.job_key,
        PackingLayout.from_json(job.view["packing"]),
        initial_weights_of(job.view["definition"]),
    )
    assert b"".join(rows) == expected.to_bytes()
    assert vector_sha256(expected) == job.terms.initial_ciphertext_sha256
    assert job.terms.param_server_key == world.ps.verify_key_hex


def test_deadline_with_quorum_releases_to_contributors_only(world: PsWorld) -> None:
    job = Scenario(world, quorum=2)
    _, p2, _, p4 = world.participants
    deltas = {s: d for s, d in deltas_for(world.participants, seed=3).items() if s in ("p1", "p3")}
    vectors = job.vectors(deltas)
    job.commit(0, vectors)
    assert world.ps.tick().committed == []  # before the deadline, 2 of 4 is not enough
    assert world.ps.round_view("job-a", 0)["status"] == "open"

    world.clock.advance(601)
    assert world.ps.tick().committed == [("job-a", 0)]
    view = world.ps.round_view("job-a", 0)
    assert view["committed"] == ["p1", "p3"] and view["deadline"] == world.clock.now + 600
    # Too late to commit, and nothing to upload for a subject outside the set.
    late = job.vectors({"p2": np.zeros(LENGTH)})["p2"]
    refused(409, "round-not-open", p2.commit, world.ps, job.terms, 0, late)
    frame = p2.frame(job.terms, 0, late, job.closed_digest(0))
    refused(403, "not-committed", world.ps.accept_upload, "job-a", 0, "p2", frame)
    job.upload(0, vectors)  # every committed subject uploaded: aggregated at once
    assert world.ps.round_view("job-a", 0)["status"] == "closed"
    job.audit(0, ["p1", "p3"])
    assert world.ps.tick().released == [("job-a", 0)]

    expected = job.w0 + 0.1 * deltas["p1"] + 0.3 * deltas["p3"]  # dropouts count as zero
    job.assert_models(0, expected, ["p1", "p3"])
    for p in (p2, p4):
        refused(403, "not-a-contributor", world.ps.download, "job-a", 0, p.subject_id)
    # Round 1 is open with a fresh deadline.
    assert world.ps.round_view("job-a", 1)["status"] == "open"
    assert world.ps.round_view("job-a", 1)["deadline"] == world.clock.now + 600


def test_upload_deadline_with_quorum_aggregates_the_uploads_so_far(world: PsWorld) -> None:
    job = Scenario(world, quorum=2)
    deltas = deltas_for(world.participants, seed=4)
    vectors = job.vectors(deltas)
    job.commit(0, vectors)
    job.upload(0, {s: vectors[s] for s in ("p2", "p4")})
    assert world.ps.tick().closed == []
    world.clock.advance(601)
    assert world.ps.tick().closed == [("job-a", 0)]
    assert world.ps.round_view("job-a", 0)["contributors"] == ["p2", "p4"]
    refused(409, "round-not-open", job.p("p1").upload, world.ps, job.terms, 0, vectors["p1"])
    job.audit(0, ["p2", "p4"])
    assert world.ps.tick().released == [("job-a", 0)]
    expected = job.w0 + 0.2 * deltas["p2"] + 0.4 * deltas["p4"]
    job.assert_models(0, expected, ["p2", "p4"])


def test_deadline_without_quorum_stays_open_then_closes_when_quorum_arrives(world: PsWorld) -> None:
    job = Scenario(world, quorum=2, below_quorum_policy="stay-open")
    vectors = job.vectors({"p1": np.zeros(LENGTH), "p2": np.zeros(LENGTH)})
    job.commit(0, {"p1": vectors["p1"]})
    world.clock.advance(601)
    assert world.ps.tick().committed == []
    assert world.ps.round_view("job-a", 0)["status"] == "open"
    job.commit(0, {"p2": vectors["p2"]})  # late, but the round stayed open: quorum now
    assert world.ps.round_view("job-a", 0)["status"] == "committed"
    job.upload(0, vectors)
    job.audit(0, ["p1", "p2"])
    assert world.ps.tick().released == [("job-a", 0)]


def test_deadline_without_quorum_fails_the_round_and_job(world: PsWorld) -> None:
    job = Scenario(world, quorum=3, below_quorum_policy="fail")
    vectors = job.vectors({"p1": np.zeros(LENGTH), "p2": np.zeros(LENGTH)})
    job.commit(0, {"p1": vectors["p1"]})
    world.clock.advance(601)
    assert world.ps.tick().failed == [("job-a", 0)]
    assert world.ps.round_view("job-a", 0)["status"] == "failed"
    assert world.ps.job_view("job-a")["status"] == "failed"
    refused(409, "round-not-open", job.p("p2").commit, world.ps, job.terms, 0, vectors["p2"])
    assert _count(world, Commitment) == 1 and _count(world, Upload) == 0


def test_operator_close_needs_quorum(world: PsWorld) -> None:
    job = Scenario(world, quorum=2)
    vectors = job.vectors({"p1": np.zeros(LENGTH), "p2": np.zeros(LENGTH)})
    job.commit(0, {"p1": vectors["p1"]})
    refused(409, "below-quorum", world.ps.close_round, "job-a", 0)
    job.commit(0, {"p2": vectors["p2"]})
    assert world.ps.close_round("job-a", 0)["status"] == "committed"  # the set, closed now
    job.upload(0, {"p1": vectors["p1"]})
    refused(409, "below-quorum", world.ps.close_round, "job-a", 0)
    job.upload(0, {"p2": vectors["p2"]})  # every committed subject: aggregated at once
    assert world.ps.round_view("job-a", 0)["status"] == "closed"
    refused(409, "round-not-open", world.ps.close_round, "job-a", 0)
    refused(404, "round-not-found", world.ps.close_round, "job-a", 7)


def test_kgc_unreachable_leaves_round_closed_and_tick_retries(world: PsWorld) -> None:
    job = Scenario(world)
    deltas = deltas_for(world.participants, seed=5)
    world.kgc.failure = KgcError(0, "unreachable", "connection refused")
    job.play(0, deltas)
    assert world.ps.tick().released == []
    rnd = _round(world, "job-a", 0)
    assert rnd is not None and rnd.status == "closed" and rnd.last_error
    assert _round(world, "job-a", 1) is None
    assert world.ps.job_view("job-a")["current_round"] == 0
    refused(409, "not-released", world.ps.download, "job-a", 0, "p1")

    calls = world.kgc.release_calls
    assert world.ps.tick().released == []  # backing off: no new attempt yet
    assert world.kgc.release_calls == calls

    world.kgc.failure = None
    world.clock.advance(10)
    assert world.ps.tick().released == [("job-a", 0)]
    job.assert_models(0, job.expected(job.w0, deltas), ["p1"])
    assert _round(world, "job-a", 1) is not None


def test_crash_after_kgc_answer_resends_the_same_request(
    world: PsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored request (same R, same bytes) is re-sent; the KGC answers idempotently."""
    job = Scenario(world)
    deltas = deltas_for(world.participants, seed=6)
    original = Releases.finish

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(Releases, "finish", crash)
    job.play(0, deltas)
    assert world.ps.tick().released == []
    assert world.kgc.release_calls == 1
    with world.sessions() as session:
        pending = session.get(Release, ("job-a", 0))
        assert pending is not None and pending.bundle is None and pending.request
    assert _round(world, "job-a", 0).status == "closed"  # type: ignore[union-attr]

    monkeypatch.setattr(Releases, "finish", original)
    world.clock.advance(10)
    assert world.ps.tick().released == [("job-a", 0)]
    assert world.kgc.release_calls == 2
    assert world.kgc.release_frames[0] == world.kgc.release_frames[1]
    job.assert_models(0, job.expected(job.w0, deltas), ALL)


def test_crash_while_aggregating_keeps_uploads_and_the_upload_phase(
    world: PsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Scenario(world)
    deltas = deltas_for(world.participants, seed=7)
    original = ModelStore.store_model

    def half_write(self: ModelStore, session: Any, job_id: str, version: int, v: Any) -> None:
        original(self, session, job_id, version, v)  # chunks written, then the crash
        raise RuntimeError("disk full")

    vectors = job.vectors(deltas)
    job.commit(0, vectors)
    monkeypatch.setattr(ModelStore, "store_model", half_write)
    job.upload(0, vectors)  # the last upload is still accepted
    assert _count(world, Upload) == 4
    assert _count(world, ModelChunk, ModelChunk.version == 1) == 0  # nothing half-applied
    assert world.ps.round_view("job-a", 0)["status"] == "committed"

    monkeypatch.setattr(ModelStore, "store_model", original)
    assert world.ps.tick().closed == [("job-a", 0)]
    job.audit(0, ALL)
    assert world.ps.tick().released == [("job-a", 0)]
    job.assert_models(0, job.expected(job.w0, deltas), ["p4"])


# ---------------------------------------------------------------------- commitments


def test_commitments_are_checked_idempotent_and_final(world: PsWorld) -> None:
    job = Scenario(world)
    p1, p2 = job.p("p1"), job.p("p2")
    vectors = job.vectors({"p1": np.zeros(LENGTH), "p2": np.ones(LENGTH) * 0.1})
    good = p1.commitment(job.terms, 0, vectors["p1"])
    body = good["commitment"]

    def resigned(key: Any = p1.signing_key, **changes: Any) -> dict[str, Any]:
        changed = {**body, **changes}
        return {"commitment": changed, "signature": sign_json(key, changed)}

    cases: list[tuple[Any, int, str]] = [
        (resigned(generate_signing_key()), 403, "bad-commitment-signature"),
        (p2.commitment(job.terms, 0, vectors["p1"]), 422, "commitment-mismatch"),  # p2's
        (resigned(subject_id="stranger"), 403, "not-a-participant"),
        (p1.commitment(job.terms, 1, vectors["p1"]), 422, "commitment-mismatch"),  # round 1
        (resigned(audience="another-ps"), 422, "commitment-mismatch"),
        (resigned(payload_sha256="ab"), 422, "bad-commitment"),
        ({"commitment": "x"}, 422, "bad-commitment"),
    ]
    for signed, status, code in cases:
        refused(status, code, world.ps.accept_commitment, "job-a", 0, "p1", signed)
    refused(403, "not-a-participant", world.ps.accept_commitment, "job-a", 0, "stranger", good)
    refused(404, "job-not-found", world.ps.accept_commitment, "nope", 0, "p1", good)
    assert _count(world, Commitment) == 0

    answer, created = world.ps.accept_commitment("job-a", 0, "p1", good)
    assert created and answer == {
        "job_id": "job-a",
        "round": 0,
        "run": 0,
        "subject_id": "p1",
        "payload_sha256": vector_sha256(vectors["p1"]),
    }
    assert world.ps.accept_commitment("job-a", 0, "p1", good) == (answer, False)  # a restart
    other = p1.commitment(job.terms, 0, vectors["p2"])
    refused(409, "duplicate-commitment", world.ps.accept_commitment, "job-a", 0, "p1", other)
    refused(409, "set-not-closed", world.ps.closed_set, "job-a", 0)
    assert _count(world, Commitment) == 1

    job.commit(0, job.vectors({s: np.zeros(LENGTH) for s in ("p2", "p3", "p4")}))
    closed = verify_closed_set(
        world.ps.closed_set("job-a", 0)["closed_set"], job.terms, round_number=0
    )
    assert list(closed.payloads) == ALL and closed.payloads["p1"] == answer["payload_sha256"]
    assert world.ps.accept_commitment("job-a", 0, "p1", good) == (answer, False)
    refused(409, "duplicate-commitment", world.ps.accept_commitment, "job-a", 0, "p1", other)
    late = p1.commitment(job.terms, 1, vectors["p1"])
    refused(409, "round-not-open", world.ps.accept_commitment, "job-a", 1, "p1", late)


# ---------------------------------------------------------------------- uploads


def test_upload_checks(world: PsWorld) -> None:
    job = Scenario(world)
    p1, p2 = job.p("p1"), job.p("p2")
    vectors = job.vectors({s: np.full(LENGTH, 0.01 * i) for i, s in enumerate(ALL)})
    job.commit(0, {"p1": vectors["p1"]})
    # Before the set is closed nothing is taken, whatever it names.
    early = p1.frame(job.terms, 0, vectors["p1"], "0" * 64)
    refused(409, "set-not-closed", world.ps.accept_upload, "job-a", 0, "p1", early)
    assert _count(world, Upload) == 0

    # p2 commits to p1's payload (it saw it somewhere): it may upload nothing else.
    p2_copy = p2.commitment(job.terms, 0, vectors["p1"])
    world.ps.accept_commitment("job-a", 0, "p2", p2_copy)
    job.commit(0, {s: vectors[s] for s in ("p3", "p4")})
    frame = p1.frame(job.terms, 0, vectors["p1"], job.closed_digest(0))
    cases: list[tuple[str, int, str, bytes, int, str]] = [
        ("nope", 0, "p1", frame, 404, "job-not-found"),
        ("job-a", 0, "stranger", frame, 403, "not-a-participant"),
        ("job-a", 1, "p1", frame, 409, "round-not-open"),
        ("job-a", 0, "p1", b"XXXX" + frame[4:], 400, "malformed-frame"),
        ("job-a", 0, "p1", frame[:-1] + bytes([frame[-1] ^ 1]), 400, "malformed-frame"),
        # Signed honestly, but not the payload p1 committed to.
        (
            "job-a",
            0,
            "p1",
            p1.frame(job.terms, 0, vectors["p3"], job.closed_digest(0)),
            422,
            "upload-mismatch",
        ),
    ]
    for job_id, t, subject, data, status, code in cases:
        refused(status, code, world.ps.accept_upload, job_id, t, subject, data)
    assert _count(world, Upload) == 0

    world.ps.accept_upload("job-a", 0, "p1", frame)
    # p2 uploads p1's ciphertext with its own statement: a replay all the same.
    copied = p2.frame(job.terms, 0, vectors["p1"], job.closed_digest(0))
    for subject, data, code in (
        ("p1", frame, "duplicate-upload"),
        ("p2", copied, "replayed-payload"),
    ):
        refused(409, code, world.ps.accept_upload, "job-a", 0, subject, data)
    assert _count(world, Upload) == 1


def test_create_job_checks_leave_nothing_behind(world: PsWorld) -> None:
    ps, participants = world.ps, world.participants
    w0 = initial_w()
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
    for training in ({"learning_rate": float("nan")}, {"steps": [float("inf")]}, {1: 2}):
        # Would hash, store or serve differently from what a strict JSON client reads.
        bad.append(
            (make_definition("j", participants, w0, training=training), 400, "bad-definition")
        )
    for definition, status, code in bad:
        refused(status, code, ps.create_job, definition)

    stranger = TestParticipant(
        "stranger", 10, participants[0].public_key, participants[0].secret_key
    )
    refused(422, "kgc-rejected", ps.create_job, make_definition("j", [*participants, stranger], w0))

    world.kgc.failure = KgcError(0, "unreachable", "down")
    refused(503, "kgc-unavailable", ps.create_job, make_definition("j", participants, w0))
    world.kgc.failure = None
    world.kgc.ps_subject_id = "another-ps"  # the KGC signs the job for another server
    refused(502, "bad-kgc-answer", ps.create_job, make_definition("j", participants, w0))
    world.kgc.ps_subject_id = PS_SUBJECT_ID
    del world.kgc.jobs["j"]
    ps_key = world.kgc.ps_verify_key
    world.kgc.ps_verify_key = generate_signing_key().public_key()  # ... or another key
    refused(502, "bad-kgc-answer", ps.create_job, make_definition("j", participants, w0))
    world.kgc.ps_verify_key = ps_key
    del world.kgc.jobs["j"]
    assert _count(world, Job) == 0 and _count(world, ModelChunk) == 0
    assert _count(world, Round) == 0

    ps.create_job(make_definition("j", participants, w0))
    refused(409, "job-exists", ps.create_job, make_definition("j", participants, w0))
    assert _count(world, Job) == 1


# ---------------------------------------------------------------------- signed terms


def test_job_view_serves_kgc_signed_terms_of_exactly_the_served_job(world: PsWorld) -> None:
    job = Scenario(world)
    view = job.view
    assert "job_key_signature" not in view
    assert view["job_terms"]["param_server"] == PS_SUBJECT_ID
    assert view["job_terms"]["param_server_key"] == world.ps.verify_key_hex
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
    p1, p2 = job.p("p1"), job.p("p2")
    vectors = job.vectors({s: np.full(LENGTH, 0.01 * i) for i, s in enumerate(ALL)})
    job.commit(0, vectors)
    closed = job.closed_digest(0)
    honest = p1.frame(job.terms, 0, vectors["p1"], closed)
    digest = decode_frame(honest).header["sha256"]
    good = decode_frame(honest).header["statement"]

    def statement(key: Any = p1.signing_key, **changes: Any) -> dict[str, Any]:
        body = {**good["statement"], **changes}
        return {"statement": body, "signature": sign_json(key, body)}

    def by(p: TestParticipant, subject: str = "p1", t: int = 0, closed_set: str = closed) -> Any:
        return build_upload_statement(
            p.signing_key,
            job.terms,
            round_number=t,
            subject_id=subject,
            payload_sha256=digest,
            closed_set_sha256=closed_set,
            randomness_proof=good["statement"]["randomness_proof"],
        )

    cases: list[tuple[Any, int, str]] = [
        (by(p2), 403, "bad-statement-signature"),  # signed by another participant
        (by(p2, "p2"), 422, "statement-mismatch"),  # p2's own statement, uploaded by p1
        (statement(generate_signing_key()), 403, "bad-statement-signature"),  # by nobody
        ({**good, "signature": "A" * 86}, 403, "bad-statement-signature"),
        ({"statement": good["statement"]}, 403, "bad-statement-signature"),
        (statement(subject_id="stranger"), 403, "not-a-participant"),
        (by(p1, t=1), 422, "statement-mismatch"),  # another round
        (by(p1, closed_set="0" * 64), 422, "statement-mismatch"),  # another closed set
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
        data = _restated(job, honest, signed)
        refused(status, code, world.ps.accept_upload, "job-a", 0, "p1", data)
    assert _count(world, Upload) == 0

    # p1's honest statement, posted by p2 (who copied p1's frame): not p2's statement.
    refused(422, "statement-mismatch", world.ps.accept_upload, "job-a", 0, "p2", honest)
    assert _count(world, Upload) == 0

    receipt = world.ps.accept_upload("job-a", 0, "p1", honest)  # the honest upload still goes
    assert receipt["receipt"]["sha256"] == digest
    with world.sessions() as session:
        stored = session.scalars(select(Upload)).one()
        assert stored.statement == good and stored.subject_id == "p1"


# ---------------------------------------------------------------------- audits


def test_audits_must_name_exactly_the_attempts_digests(world: PsWorld) -> None:
    job = Scenario(world)
    p1 = job.p("p1")
    vectors = job.vectors(deltas_for(world.participants, seed=9))
    job.commit(0, vectors)
    refused(409, "not-aggregated", world.ps.audit_package, "job-a", 0, "p1")
    job.upload(0, {s: vectors[s] for s in ("p1", "p2", "p3")})
    world.clock.advance(601)
    assert world.ps.tick().closed == [("job-a", 0)]  # p4 never uploaded
    refused(403, "not-a-contributor", world.ps.audit_package, "job-a", 0, "p4")
    refused(403, "not-a-contributor", world.ps.base_frame, "job-a", 0, "p4")
    refused(404, "upload-not-found", world.ps.upload_frame, "job-a", 0, "p4", "p1")

    digests = p1.recompute(world.ps, job.terms, 0)  # really recomputed from what is served
    package = world.ps.audit_package("job-a", 0, None)
    assert package["contributors"] == ["p1", "p2", "p3"] and package["attempt"] == 0
    assert {k: package[k] for k in ("aggregate_sha256", "release_sha256")} == {
        "aggregate_sha256": digests.aggregate_sha256,
        "release_sha256": digests.release_sha256,
    }
    base = decode_frame(world.ps.base_frame("job-a", 0, "p1"))
    assert vector_sha256(base.vector(job.terms.job_key)) == job.terms.initial_ciphertext_sha256

    wrong = [
        digests.__class__(**{**digests.fields(), "aggregate_sha256": "0" * 64}),
        digests.__class__(**{**digests.fields(), "blind_sha256": "1" * 64}),
        digests.__class__(**{**digests.fields(), "attempt": 1}),
    ]
    for other in wrong:
        signed = p1.audit_statement(job.terms, 0, other)
        refused(422, "audit-mismatch", world.ps.accept_audit, "job-a", 0, "p1", signed)
    signed = job.p("p4").audit_statement(job.terms, 0, digests)
    refused(403, "not-a-contributor", world.ps.accept_audit, "job-a", 0, "p4", signed)
    forged = {**p1.audit_statement(job.terms, 0, digests), "signature": "A" * 86}
    refused(403, "bad-audit-signature", world.ps.accept_audit, "job-a", 0, "p1", forged)
    refused(422, "audit-mismatch", world.ps.accept_audit, "job-a", 0, "p2", signed)  # p4's
    assert _count(world, Audit) == 0

    good = p1.audit_statement(job.terms, 0, digests)
    answer, created = world.ps.accept_audit("job-a", 0, "p1", good)
    assert created and answer == {
        "job_id": "job-a",
        "round": 0,
        "run": 0,
        "attempt": 0,
        "subject_id": "p1",
    }
    assert world.ps.accept_audit("job-a", 0, "p1", good) == (answer, False)
    assert world.ps.tick().released == []  # p2 and p3 have not audited
    assert _count(world, Audit) == 1


def test_audit_deadline_drops_the_missing_auditor_and_reaggregates_with_a_fresh_blind(
    world: PsWorld,
) -> None:
    job = Scenario(world, quorum=2)
    deltas = deltas_for(world.participants, seed=10)
    job.play(0, deltas, audit=False)
    job.audit(0, ["p1", "p2", "p3"])  # p4 never audits
    first = world.ps.audit_package("job-a", 0, None)
    p4 = job.p("p4")
    p4_late = p4.audit_statement(job.terms, 0, p4.recompute(world.ps, job.terms, 0))  # unsent
    assert world.ps.tick().released == []
    world.clock.advance(601)
    result = world.ps.tick()
    assert result.reaggregated == [("job-a", 0)] and result.released == []
    second = world.ps.audit_package("job-a", 0, None)
    assert second["attempt"] == 1 and second["contributors"] == ["p1", "p2", "p3"]
    assert second["blind"] != first["blind"] and second["blind_sha256"] != first["blind_sha256"]
    assert second["base_sha256"] == first["base_sha256"]
    assert second["aggregate_sha256"] != first["aggregate_sha256"]
    assert world.ps.round_view("job-a", 0)["deadline"] == world.clock.now + 600
    # The dropped contributor and an audit of the superseded attempt are refused.
    refused(403, "not-a-contributor", world.ps.audit_package, "job-a", 0, "p4")
    refused(409, "stale-attempt", world.ps.accept_audit, "job-a", 0, "p4", p4_late)

    job.audit(0, ["p1", "p2", "p3"])
    assert world.ps.tick().released == [("job-a", 0)]
    header = world.kgc.release_headers[-1]
    assert header["attempt"] == 1 and header["contributors"] == ["p1", "p2", "p3"]
    expected = job.expected(job.w0, {s: deltas[s] for s in ("p1", "p2", "p3")})
    job.assert_models(0, expected, ["p1", "p2", "p3"])
    refused(403, "not-a-contributor", world.ps.download, "job-a", 0, "p4")
    bundle = world.ps.download("job-a", 0, "p1")
    assert (bundle["attempt"], bundle["blind_sha256"]) == (1, second["blind_sha256"])

    # Round 1 continues from the released attempt's aggregate: the KGC's chain holds.
    later = deltas_for(world.participants, seed=11)
    job.play(1, later)
    assert world.ps.tick().released == [("job-a", 1)]
    job.assert_models(1, job.expected(expected, later), ALL)


def test_audit_deadline_below_quorum_fails_under_the_fail_policy(world: PsWorld) -> None:
    job = Scenario(world, quorum=3, below_quorum_policy="fail")
    job.play(0, deltas_for(world.participants, seed=12), audit=False)
    job.audit(0, ["p1", "p2"])
    world.clock.advance(601)
    assert world.ps.tick().failed == [("job-a", 0)]
    assert world.ps.job_view("job-a")["status"] == "failed"
    assert world.kgc.release_calls == 0


# ---------------------------------------------------------------------- release requests


def _resigned(world: PsWorld, job: Scenario, frame: bytes, **changes: Any) -> bytes:
    """A release request rebuilt from ``frame`` with ``changes``, signed as the PS signs."""
    parsed = decode_frame(frame)
    vector = parsed.vector(job_key_of(job.view))
    base = release_request_header(
        job_id=parsed.header["job_id"],
        round_number=parsed.header["round"],
        attempt=parsed.header["attempt"],
        closed_set=parsed.header["closed_set"],
        statements=parsed.header["statements"],
        audits=parsed.header["audits"],
    )
    header = {**base, **changes}
    key = header.pop("key", world.ps_key)
    signed = decode_frame(encode_frame(vector, header)).header
    return encode_frame(vector, {**header, "request_signature": sign_json(key, signed)})


def test_release_request_carries_the_set_statements_and_audits_and_the_kgc_checks_them(
    world: PsWorld,
) -> None:
    job = Scenario(world)
    deltas = deltas_for(world.participants, seed=8)
    job.play(0, deltas)
    world.kgc.failure = KgcError(0, "unreachable", "down")
    assert world.ps.tick().released == []
    world.kgc.failure = None
    frame = world.kgc.release_frames[-1]
    header = decode_frame(frame).header
    with world.sessions() as session:
        statements = [
            u.statement for u in session.scalars(select(Upload).order_by(Upload.subject_id))
        ]
        audits = [a.signed for a in session.scalars(select(Audit).order_by(Audit.subject_id))]
    assert "receipts" not in header
    assert header["contributors"] == ALL and header["attempt"] == 0
    assert header["statements"] == statements and header["audits"] == audits
    assert header["closed_set"] == world.ps.closed_set("job-a", 0)["closed_set"]
    assert header["sha256"] == world.ps.audit_package("job-a", 0, None)["release_sha256"]
    assert verify_release_signature(header, world.ps_key.public_key()) == 0
    head_bytes = int.from_bytes(frame[5:9], "big")
    assert head_bytes <= release_header_bytes("job-a", ALL, param_server=PS_SUBJECT_ID)

    kgc = world.kgc
    tampered_round = {**statements[0]["statement"], "round": 1}
    invented = build_upload_statement(
        world.ps_key,
        job.terms,
        round_number=0,
        subject_id="p2",
        payload_sha256="0" * 64,
        closed_set_sha256="0" * 64,
        randomness_proof=header["statements"][1]["statement"]["randomness_proof"],
    )
    other_set = {**header["closed_set"], "signature": sign_json(world.ps_key, {"x": 1})}
    refusals: list[tuple[bytes, int, str]] = [
        (_resigned(world, job, frame, key=generate_signing_key()), 403, "bad-request-signature"),
        (
            _resigned(
                world,
                job,
                frame,
                statements=[{**statements[0], "statement": tampered_round}, *statements[1:]],
            ),
            403,
            "bad-statement-signature",
        ),
        (
            _resigned(world, job, frame, statements=[statements[0], invented, *statements[2:]]),
            403,
            "bad-statement-signature",
        ),
        (_resigned(world, job, frame, closed_set=other_set), 403, "bad-closed-set-signature"),
        (_resigned(world, job, frame, round=1), 409, "out-of-schedule"),
        (_resigned(world, job, frame, round=2), 409, "round-out-of-range"),
        (_resigned(world, job, frame, contributors=["p1", "p2"]), 422, "statement-mismatch"),
        (_resigned(world, job, frame, audits=audits[:3]), 422, "audit-mismatch"),
        (_resigned(world, job, frame, attempt=1), 422, "audit-mismatch"),
        (
            _resigned(world, job, frame, contributors=[*header["contributors"], "stranger"]),
            422,
            "not-a-participant",
        ),
        (
            _resigned(
                world, job, frame, contributors=["p1"], statements=statements[:1], audits=audits[:1]
            ),
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
    job.assert_models(0, job.expected(job.w0, deltas), ["p1"])
    # The same request again is answered with the same bundle; another one is refused.
    assert kgc.release(frame) == kgc.jobs["job-a"].releases[(0, 0)].bundle
    with pytest.raises(KgcError) as err:
        kgc.release(
            _resigned(
                world,
                job,
                frame,
                contributors=["p1", "p2", "p3"],
                statements=statements[:3],
                audits=audits[:3],
            )
        )
    assert (err.value.status, err.value.code) == (409, "already-released")


def test_a_statement_tampered_in_the_ps_database_is_refused_by_the_kgc(world: PsWorld) -> None:
    """The PS's operator rewrites a stored statement: the KGC seals nothing."""
    job = Scenario(world)
    job.play(0, {s: np.zeros(LENGTH) + 0.01 * i for i, s in enumerate(ALL)})
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


@pytest.mark.parametrize("count", [1, 3, 30, 300])
def test_a_release_header_always_fits_the_limit_sized_to_its_job(count: int) -> None:
    """Longest ids and job id: every contributor's evidence fits the KGC's header cap."""
    subjects = [f"{i:0128x}" for i in range(count)]
    worst = release_header_bytes("j" * 64, subjects)
    assert worst <= release_header_limit(count)
    assert worst > 2000 * count  # ~2 KiB of commitment, statement and audit each
