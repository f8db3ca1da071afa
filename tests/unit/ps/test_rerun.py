"""A release that does not decode: reports, the rollback to ``W_t``, the one re-run, failure.

The PS domain with its fake KGC (which runs the KGC's own checks,
:func:`trapdoor.protocol.release_request.check_release_request` over
:func:`trapdoor.protocol.release_request.release_schedule`).
``p4`` uploads an encryption of out-of-range plaintexts; nobody can tell before the release.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ps_domain_support import Scenario, deltas_for, refused
from sqlalchemy import func, select

from trapdoor.crypto.blocks import EncryptedVector
from trapdoor.crypto.encoding import EncodingError
from trapdoor.protocol.audit import build_undecodable_statement
from trapdoor.protocol.bundle import ReleaseBinding, bundle_sha256
from trapdoor.protocol.common import vector_sha256
from trapdoor.ps.models import Audit, Commitment, Round, Upload
from trapdoor.ps.testing import PsWorld, TestParticipant

SET = ["p1", "p2", "p4"]  # p3 sits round 0 out: the re-run must not take it in


def _garbage(job: Scenario, p: TestParticipant) -> EncryptedVector:
    """``p``'s upload of plaintexts ``N/2`` (with proven randomness): it breaks decoding."""
    n = int(job.terms.job_key.params.n)
    plaintexts = [n // 2] * job.terms.num_plaintexts
    vector, randomness = job.encryptor.encrypt_with_randomness(plaintexts, job.rng)
    p.randomness[vector_sha256(vector)] = randomness
    return vector


def _play_round0(job: Scenario, *, garbage: bool, run: int = 0) -> dict[str, np.ndarray]:
    """p1, p2 and p4 commit (the operator closes the set), upload and audit; released."""
    deltas = {s: d for s, d in deltas_for(job.world.participants, seed=3).items() if s in SET}
    vectors = job.vectors(deltas)
    if garbage:
        vectors["p4"] = _garbage(job, job.p("p4"))
    for s in SET:
        job.p(s).commit(job.ps, job.terms, 0, vectors[s], run)
    if job.ps.round_view("job-a", 0)["status"] == "open":
        job.ps.close_round("job-a", 0)
    for s in SET:
        job.p(s).upload(job.ps, job.terms, 0, vectors[s], run)
    for s in SET:
        job.p(s).audit(job.ps, job.terms, 0, run)
    assert job.ps.tick().released == [("job-a", 0)]
    return deltas


def _report(job: Scenario, subject: str, *, run: int = 0, **changes: Any) -> dict[str, Any]:
    """``subject``'s signed report on round 0's release, as it downloaded it."""
    download = job.ps.download("job-a", 0, subject)
    binding = ReleaseBinding.from_fields(download)
    return build_undecodable_statement(
        changes.pop("key", job.p(subject).signing_key),
        job.terms,
        round_number=0,
        run=run,
        subject_id=subject,
        bundle_sha256=changes.pop("bundle", bundle_sha256(binding, download["sealed_model"])),
    )


def _count(world: PsWorld, model: Any) -> int:
    with world.sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(model).where(model.round == 0)) or 0
        )


def test_every_contributors_report_rolls_the_round_back_for_one_re_run(world: PsWorld) -> None:
    job = Scenario(world)
    ps = world.ps
    _play_round0(job, garbage=True)
    with pytest.raises(EncodingError):
        job.model_of(job.p("p1"), 0)
    assert ps.round_view("job-a", 1)["status"] == "open"

    # Refused reports change nothing.
    refused(403, "not-a-contributor", ps.accept_undecodable, "job-a", 0, "p3", {})
    refused(409, "not-released", ps.accept_undecodable, "job-a", 1, "p1", _report(job, "p1"))
    for signed, status, code in [
        (_report(job, "p1", bundle="be" * 32), 422, "undecodable-mismatch"),
        (_report(job, "p1", run=1), 422, "undecodable-mismatch"),
        (_report(job, "p1", key=job.p("p2").signing_key), 403, "bad-undecodable-signature"),
        ({"undecodable": "x"}, 422, "bad-undecodable"),
    ]:
        refused(status, code, ps.accept_undecodable, "job-a", 0, "p1", signed)

    first = _report(job, "p1")
    answer, created = ps.accept_undecodable("job-a", 0, "p1", first)
    assert created and answer == {"job_id": "job-a", "round": 0, "run": 0, "subject_id": "p1"}
    assert ps.accept_undecodable("job-a", 0, "p1", first) == (answer, False)
    ps.accept_undecodable("job-a", 0, "p2", _report(job, "p2"))
    assert ps.round_view("job-a", 0)["status"] == "released"  # p4 has not reported yet
    ps.accept_undecodable("job-a", 0, "p4", _report(job, "p4"))

    view = ps.round_view("job-a", 0)
    assert (view["status"], view["run"], view["attempt"], view["committed"]) == ("open", 1, 0, [])
    assert ps.job_view("job-a")["current_round"] == 0
    refused(404, "round-not-found", ps.round_view, "job-a", 1)
    assert [_count(world, m) for m in (Commitment, Upload, Audit)] == [0, 0, 0]
    with world.sessions() as session:
        rnd = session.get(Round, ("job-a", 0))
        assert rnd is not None and rnd.previous_run is not None
        assert rnd.previous_run["contributors"] == SET
        assert [r["undecodable"]["subject_id"] for r in rnd.previous_run["undecodable"]] == SET

    # Run 1: only run 0's set, only with run-1 messages.
    vector = job.vectors({"p3": np.zeros(300)})["p3"]
    refused(403, "not-in-rerun", ps.accept_commitment, "job-a", 0, "p3",
             job.p("p3").commitment(job.terms, 0, vector, run=1))  # fmt: skip
    refused(422, "commitment-mismatch", ps.accept_commitment, "job-a", 0, "p1",
             job.p("p1").commitment(job.terms, 0, vector, run=0))  # fmt: skip
    deltas = _play_round0(job, garbage=False, run=1)
    header = world.kgc.release_headers[-1]
    assert (header["run"], len(header["undecodable"])) == (1, 3)
    expected = job.expected(job.w0, deltas)
    job.assert_models(0, expected, SET)
    assert ps.round_view("job-a", 0)["run"] == 1
    assert ps.round_view("job-a", 1)["status"] == "open"
    assert sorted(world.kgc.jobs["job-a"].releases) == [(0, 0), (0, 1)]


def test_a_re_run_that_does_not_decode_either_fails_the_job(world: PsWorld) -> None:
    job = Scenario(world)
    ps = world.ps
    for run in (0, 1):
        _play_round0(job, garbage=True, run=run)
        for s in SET:
            ps.accept_undecodable("job-a", 0, s, _report(job, s, run=run))
    view = ps.round_view("job-a", 0)
    assert (view["status"], view["run"]) == ("failed", 1)
    job_view = ps.job_view("job-a")
    assert (job_view["status"], job_view["current_round"]) == ("failed", 0)
    refused(404, "round-not-found", ps.round_view, "job-a", 1)
    refused(409, "not-released", ps.accept_undecodable, "job-a", 0, "p1", {})
    assert len(world.kgc.release_headers) == 2


def test_a_re_run_goes_on_only_with_its_whole_set(world: PsWorld) -> None:
    """Not even at the deadline with a quorum: the KGC allows no other set, so it fails."""
    job = Scenario(world, below_quorum_policy="stay-open")
    ps = world.ps
    _play_round0(job, garbage=True)
    for s in SET:
        ps.accept_undecodable("job-a", 0, s, _report(job, s))
    vectors = job.vectors({s: np.zeros(300) for s in ("p1", "p2")})
    for s, v in vectors.items():
        job.p(s).commit(ps, job.terms, 0, v, 1)
    refused(409, "rerun-incomplete", ps.close_round, "job-a", 0)
    world.clock.advance(601)
    assert ps.tick().failed == [("job-a", 0)]
    assert ps.job_view("job-a")["status"] == "failed"


def test_reports_come_too_late_once_the_next_round_is_under_way(world: PsWorld) -> None:
    job = Scenario(world)
    ps = world.ps
    _play_round0(job, garbage=False)
    report = _report(job, "p1")  # a contributor that lies: the model decodes
    vectors = job.vectors(deltas_for(world.participants, seed=4))
    job.commit(1, vectors)  # everyone committed round 1: its set is closed
    refused(409, "round-moved-on", ps.accept_undecodable, "job-a", 0, "p1", report)
