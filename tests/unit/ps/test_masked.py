"""The parameter server's side of the masked aggregation mode (docs/PROTOCOL.md).

The PS domain and its HTTP API with the fake KGC, which releases masked jobs with the
shared pure functions (``check_masked_release_request``, ``kgc_mask_sum``,
``seal_mask_sum``) and a real master key: every contributor really opens ``D_t``, fetches
the listed uploads and computes ``next_model``. 1024-bit parameters (seeds are 256-bit, so
``N`` must be larger), a 50-value model, the job's participants ``p1 .. p3`` (``p4`` is
enrolled with the KGC, in no job) unless a test says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from ps_domain_support import refused
from sqlalchemy import func, select

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.encoding import EncodingError
from trapdoor.crypto.masking import ring_sum, vector_from_bytes, vector_to_bytes
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame, encode_ring_frame
from trapdoor.protocol.audit import build_undecodable_statement
from trapdoor.protocol.bundle import MaskedReleaseBinding, bundle_sha256
from trapdoor.protocol.job import MaskedLayout, initial_state
from trapdoor.protocol.upload import build_masked_upload_statement, seed_sha256
from trapdoor.ps.app import create_app
from trapdoor.ps.definition import masked_release_header_bytes
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.ps.models import Job, ModelChunk, Release, Round, Upload
from trapdoor.ps.storage import model_bytes
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    PsWorld,
    TestParticipant,
    job_terms_of,
    make_definition,
    make_world,
    masked_upload_frame,
    open_masked_model,
)
from trapdoor.service.errors import TrapdoorError

LENGTH = 50
TOLERANCE = 1e-5  # a few units of 2^-20 of rounding per round
SUBJECTS = ["p1", "p2", "p3"]
Deltas = dict[str, npt.NDArray[np.float64]]


def masked_definition(
    job_id: str, participants: list[TestParticipant], w0: npt.ArrayLike, **overrides: Any
) -> dict[str, Any]:
    """A valid masked job definition (default masked encoding)."""
    overrides.setdefault("encoding", {"frac_bits": 20, "clip_bound": 16.0, "model_bound": 32.0})
    overrides.setdefault("aggregation", "masked")
    return make_definition(job_id, participants, w0, **overrides)


def deltas_for(subjects: list[str], seed: int) -> Deltas:
    rng = np.random.default_rng(seed)
    return {s: rng.normal(0.0, 0.2, LENGTH) for s in subjects}


def count(world: PsWorld, model: Any, **where: Any) -> int:
    with world.sessions() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.scalar(query) or 0)


class MaskedJob:
    """A masked job as its participants see it (they check the served view first)."""

    def __init__(
        self,
        world: PsWorld,
        job_id: str = "mjob",
        subjects: list[str] | None = None,
        **overrides: Any,
    ) -> None:
        self.world = world
        self.ps = world.ps
        self.job_id = job_id
        self.subjects = subjects or SUBJECTS
        self.w0 = np.linspace(-1.0, 1.0, LENGTH)
        members = [self.p(s) for s in self.subjects]
        self.view = world.ps.create_job(masked_definition(job_id, members, self.w0, **overrides))
        self.terms = job_terms_of(self.view, world.kgc.info(), param_server=PS_SUBJECT_ID)
        self.layout = MaskedLayout.from_json(self.view["packing"])
        self.rng = random.Random(17)

    def p(self, subject: str) -> TestParticipant:
        return next(p for p in self.world.participants if p.subject_id == subject)

    def frame(self, subject: str, t: int, delta: npt.ArrayLike, run: int = 0) -> bytes:
        return masked_upload_frame(
            self.terms, self.layout, self.p(subject), t, delta, run=run, rng=self.rng
        )

    def restated(
        self,
        subject: str,
        t: int,
        y: bytes,
        seed: Any,
        *,
        run: int = 0,
        header: dict[str, Any] | None = None,
        signer: TestParticipant | None = None,
        **statement: Any,
    ) -> bytes:
        """A frame of ``y`` and ``seed`` with a statement signed by ``signer`` (``subject``)."""
        fields: dict[str, Any] = {
            "round_number": t,
            "subject_id": subject,
            "payload_sha256": hashlib.sha256(y).hexdigest(),
            "seed_sha256": seed_sha256(seed) if isinstance(seed, dict) else "0" * 64,
            "run": run,
            **statement,
        }
        signed = build_masked_upload_statement(
            (signer or self.p(subject)).signing_key, self.terms, **fields
        )
        extra = {"job_id": self.job_id, "round": t, "seed": seed, "statement": signed}
        extra.update(header or {})
        return encode_ring_frame(
            y,
            bits=self.layout.ring.bits,
            num_elements=len(y) * 8 // self.layout.ring.bits,
            extra_header=extra,
        )

    def upload(self, t: int, deltas: Deltas, run: int = 0) -> dict[str, bytes]:
        frames = {s: self.frame(s, t, d, run) for s, d in deltas.items()}
        for s, data in frames.items():
            self.ps.accept_upload(self.job_id, t, s, data)
        return frames

    def model_of(self, subject: str, t: int, current: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``subject``'s W_{t+1}: its bundle, the listed uploads, ``next_model``."""
        return open_masked_model(
            self.world.kgc.info().verify_key,
            self.layout,
            self.p(subject),
            self.ps.download(self.job_id, t, subject),
            lambda s: self.ps.upload_frame(self.job_id, t, s, subject),
            current,
        )

    def expected(self, w: npt.ArrayLike, deltas: Deltas) -> npt.NDArray[np.float64]:
        weights = self.view["weights"]
        return np.asarray(w) + sum(weights[s] * d for s, d in deltas.items())

    def state(self, version: int) -> npt.NDArray[Any]:
        """``Z_version`` as the PS stores it."""
        with self.world.sessions() as session:
            data = model_bytes(session, self.job_id, version)
        return vector_from_bytes(data, self.layout.ring, self.layout.length)

    def y(self, frame: bytes) -> npt.NDArray[Any]:
        payload = decode_frame(frame, kind=RING_FRAME_KIND).payload
        return vector_from_bytes(payload, self.layout.ring, self.layout.length)


def _report(job: MaskedJob, subject: str, t: int = 0, run: int = 0) -> dict[str, Any]:
    """``subject``'s signed report that round ``t``'s release (as it downloaded it) fails."""
    download = job.ps.download(job.job_id, t, subject)
    return build_undecodable_statement(
        job.p(subject).signing_key,
        job.terms,
        round_number=t,
        run=run,
        subject_id=subject,
        bundle_sha256=bundle_sha256(
            MaskedReleaseBinding.from_fields(download), download["sealed_mask"]
        ),
    )


# ---------------------------------------------------------------------- a whole job


def test_a_masked_job_of_two_rounds_every_contributor_decodes_the_fedavg_model(
    world: PsWorld,
) -> None:
    job = MaskedJob(world)
    ps, view = world.ps, job.view
    # The job as served: the layout as packing, a width-1 key, Z_0 = encode(W_0) stored.
    assert view["definition"]["aggregation"] == "masked"
    assert view["definition"]["encoding"] == {
        "frac_bits": 20,
        "clip_bound": 16.0,
        "model_bound": 32.0,
    }
    assert view["packing"] == job.layout.to_json() and job.layout.ring.bits == 32
    assert (job.terms.aggregation, job.terms.width, job.terms.num_plaintexts) == (
        "masked",
        1,
        LENGTH,
    )
    assert np.array_equal(job.state(0), initial_state(job.layout, job.w0))
    assert ps.upload_limit("mjob", "p1") == 9 + 64 * 1024 + LENGTH * 4

    current = job.w0
    for t in range(2):
        view_t = ps.round_view("mjob", t)
        assert (view_t["status"], view_t["run"], view_t["committed"]) == ("open", 0, [])
        deltas = deltas_for(SUBJECTS, seed=10 + t)
        frames = {}
        for s in SUBJECTS:
            frames[s] = job.frame(s, t, deltas[s])
            receipt = ps.accept_upload("mjob", t, s, frames[s])
            body = receipt["receipt"]
            assert body["sha256"] == decode_frame(frames[s], kind=RING_FRAME_KIND).header["sha256"]
            assert (body["job_id"], body["round"], body["subject_id"]) == ("mjob", t, s)
        view_t = ps.round_view("mjob", t)
        assert (view_t["status"], view_t["contributors"], view_t["uploads"]) == (
            "closed",
            SUBJECTS,
            3,
        )
        # Z_{t+1} - Z_t is exactly the sum of the uploads, with wrap-around.
        total = ring_sum([job.y(f) for f in frames.values()], job.layout.ring, LENGTH)
        assert np.array_equal(job.state(t + 1) - job.state(t), total)
        with pytest.raises(TrapdoorError) as err:
            ps.download("mjob", t, "p1")
        assert err.value.code == "not-released"
        assert ps.tick().released == [("mjob", t)]
        assert ps.round_view("mjob", t)["status"] == "released"

        download = ps.download("mjob", t, "p1")
        assert set(download) == {
            "aggregation",
            "job_id",
            "job_terms_sha256",
            "round",
            "run",
            "uploads",
            "sealed_mask",
            "wrapped_keys_sha256",
            "release_signature",
            "wrapped_key",
        }
        assert download["uploads"] == {
            s: hashlib.sha256(decode_frame(f, kind=RING_FRAME_KIND).payload).hexdigest()
            for s, f in frames.items()
        }
        # The stored frames come back byte for byte.
        assert all(ps.upload_frame("mjob", t, s, "p2") == f for s, f in frames.items())
        models = [job.model_of(s, t, current) for s in SUBJECTS]
        expected = job.expected(current, deltas)
        for model in models:
            assert np.array_equal(model, models[0])
            assert np.max(np.abs(model - expected)) < TOLERANCE
        current = models[0]

    assert ps.job_view("mjob")["status"] == "finished"
    assert world.kgc.release_calls == 2
    # The KGC got the statements and seeds only, sorted by subject, signed by the PS.
    header = world.kgc.release_headers[-1]
    assert header["contributors"] == SUBJECTS and header["aggregation"] == "masked"
    assert [u["statement"]["statement"]["subject_id"] for u in header["uploads"]] == SUBJECTS
    assert len(world.kgc.release_frames[-1]) <= masked_release_header_bytes(
        "mjob", SUBJECTS, param_server=PS_SUBJECT_ID, modulus_bits=1024
    )
    base = decode_frame(ps.base_frame("mjob", 1, "p3"), kind=RING_FRAME_KIND)
    assert base.payload == vector_to_bytes(job.state(1), job.layout.ring)


def test_release_failures_retry_the_same_stored_request(world: PsWorld) -> None:
    job = MaskedJob(world)
    job.upload(0, deltas_for(SUBJECTS, seed=1))
    world.kgc.failure = KgcError(0, "unreachable", "down")
    assert world.ps.tick().released == []
    with world.sessions() as session:
        rnd = session.get(Round, ("mjob", 0))
        assert rnd is not None and rnd.status == "closed" and rnd.last_error
    world.kgc.failure = None
    assert world.ps.tick().released == []  # backing off
    world.clock.advance(6)
    assert world.ps.tick().released == [("mjob", 0)]
    assert world.kgc.release_frames[0] == world.kgc.release_frames[1]
    assert json.loads(world.kgc.release_frames[1])["run"] == 0


def test_a_bundle_the_kgc_did_not_sign_for_this_round_is_not_stored(world: PsWorld) -> None:
    job = MaskedJob(world)
    job.upload(0, deltas_for(SUBJECTS, seed=1))
    real = world.kgc.release_masked

    def tampered(body: bytes) -> dict[str, Any]:
        bundle = dict(real(body))
        bundle["uploads"] = {**bundle["uploads"], "p1": "0" * 64}
        return bundle

    world.kgc.release_masked = tampered  # type: ignore[method-assign]
    assert world.ps.tick().released == []
    assert world.ps.round_view("mjob", 0)["status"] == "closed"
    world.kgc.release_masked = real  # type: ignore[method-assign]
    world.clock.advance(6)
    assert world.ps.tick().released == [("mjob", 0)]


# ---------------------------------------------------------------------- uploads


def test_upload_refusals_store_nothing(world: PsWorld) -> None:
    job = MaskedJob(world)
    ps, p2 = world.ps, job.p("p2")
    honest = job.frame("p1", 0, np.full(LENGTH, 0.1))
    parsed = decode_frame(honest, kind=RING_FRAME_KIND)
    y, seed = parsed.payload, parsed.header["seed"]
    other = decode_frame(job.frame("p2", 0, np.full(LENGTH, 0.2)), kind=RING_FRAME_KIND)
    flipped = honest[:-1] + bytes([honest[-1] ^ 1])
    upper = {"A": seed["A"].upper(), "B": seed["B"]}
    cases: list[tuple[str, int, str, bytes, int, str]] = [
        ("nope", 0, "p1", honest, 404, "job-not-found"),
        ("mjob", 0, "p4", honest, 403, "not-a-participant"),
        ("mjob", 1, "p1", honest, 409, "round-not-open"),
        ("mjob", 0, "p1", b"XXXX" + honest[4:], 400, "malformed-frame"),
        ("mjob", 0, "p1", flipped, 400, "malformed-frame"),
        ("mjob", 0, "p1", honest[:20], 400, "malformed-frame"),
        ("mjob", 0, "p1", honest + b"\0" * (ps.upload_limit("mjob", "p1")), 413, "too-large"),
        # header for another round or job
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, header={"round": 1}),
            422,
            "frame-mismatch",
        ),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, header={"job_id": "other"}),
            422,
            "frame-mismatch",
        ),
        # another shape: one element short, or the ring of another job
        ("mjob", 0, "p1", job.restated("p1", 0, y[:-4], seed), 422, "wrong-shape"),
        (
            "mjob",
            0,
            "p1",
            encode_ring_frame(
                y + y,
                bits=64,
                num_elements=LENGTH,
                extra_header={**parsed.header, "bits": 64},
            ),
            422,
            "wrong-shape",
        ),
        # seeds: not an element of Z*_{N^2}, not {"A","B"}, not canonical hex
        ("mjob", 0, "p1", job.restated("p1", 0, y, {"A": "0", "B": "1"}), 422, "bad-seed"),
        ("mjob", 0, "p1", job.restated("p1", 0, y, {"A": seed["A"]}), 422, "bad-seed"),
        ("mjob", 0, "p1", job.restated("p1", 0, y, "seed"), 422, "bad-seed"),
        ("mjob", 0, "p1", job.restated("p1", 0, y, upper), 422, "bad-seed"),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, {"A": "0x" + seed["A"], "B": seed["B"]}),
            422,
            "bad-seed",
        ),
        # statements
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, signer=p2),
            403,
            "bad-statement-signature",
        ),
        # p2's honest statement and upload, sent by p1
        (
            "mjob",
            0,
            "p1",
            job.restated("p2", 0, other.payload, other.header["seed"]),
            403,
            "statement-mismatch",
        ),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, round_number=1),
            422,
            "statement-mismatch",
        ),
        ("mjob", 0, "p1", job.restated("p1", 0, y, seed, run=1), 422, "statement-mismatch"),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, payload_sha256="0" * 64),
            422,
            "statement-mismatch",
        ),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, seed_sha256="0" * 64),
            422,
            "statement-mismatch",
        ),
        (
            "mjob",
            0,
            "p1",
            job.restated("p1", 0, y, seed, header={"statement": None}),
            422,
            "bad-statement",
        ),
    ]
    for job_id, t, subject, data, status, code in cases:
        refused(status, code, ps.accept_upload, job_id, t, subject, data)
    assert count(world, Upload) == 0
    assert ps.round_view("mjob", 0)["uploads"] == 0

    receipt = ps.accept_upload("mjob", 0, "p1", honest)
    assert receipt["receipt"]["sha256"] == hashlib.sha256(y).hexdigest()
    fresh = decode_frame(job.frame("p2", 0, np.full(LENGTH, 0.3)), kind=RING_FRAME_KIND)
    for subject, data, code in [
        ("p1", honest, "duplicate-upload"),
        ("p1", job.frame("p1", 0, np.full(LENGTH, 0.5)), "duplicate-upload"),
        # p2 sends p1's y under its own fresh seed, or its own y under p1's seed
        ("p2", job.restated("p2", 0, y, fresh.header["seed"]), "replayed-payload"),
        ("p2", job.restated("p2", 0, fresh.payload, seed), "replayed-payload"),
    ]:
        refused(409, code, ps.accept_upload, "mjob", 0, subject, data)
    assert count(world, Upload) == 1
    with world.sessions() as session:
        stored = session.scalars(select(Upload)).one()
        assert stored.payload == honest and stored.statement == parsed.header["statement"]
    # A p1 statement of p1's frame sent by p2: p2 may not upload it either.
    refused(403, "statement-mismatch", ps.accept_upload, "mjob", 0, "p2", honest)


def test_a_seed_or_payload_of_an_earlier_round_is_a_replay(world: PsWorld) -> None:
    job = MaskedJob(world)
    frames = job.upload(0, deltas_for(SUBJECTS, seed=2))
    assert world.ps.tick().released == [("mjob", 0)]
    old = decode_frame(frames["p1"], kind=RING_FRAME_KIND)
    fresh = decode_frame(job.frame("p1", 1, np.zeros(LENGTH)), kind=RING_FRAME_KIND)
    for data in (
        job.restated("p1", 1, fresh.payload, old.header["seed"]),
        job.restated("p1", 1, old.payload, fresh.header["seed"]),
    ):
        refused(409, "replayed-payload", world.ps.accept_upload, "mjob", 1, "p1", data)
    assert count(world, Upload, round=1) == 0
    world.ps.accept_upload(
        "mjob",
        1,
        "p1",
        encode_ring_frame(
            fresh.payload,
            bits=job.layout.ring.bits,
            num_elements=LENGTH,
            extra_header={k: v for k, v in fresh.header.items()},
        ),
    )


def test_a_bcp_frame_is_refused_by_a_masked_job_and_a_ring_frame_by_a_bcp_job(
    world: PsWorld,
) -> None:
    masked = MaskedJob(world)
    ring = masked.frame("p1", 0, np.zeros(LENGTH))
    # A bcp job beside it, in its upload phase.
    from ps_domain_support import Scenario
    from ps_domain_support import deltas_for as bcp_deltas

    bcp = Scenario(world, job_id="bjob")
    vectors = bcp.vectors(bcp_deltas(world.participants, seed=1))
    bcp.commit(0, vectors)
    closed = bcp.closed_digest(0)
    bcp_frame = bcp.p("p1").frame(bcp.terms, 0, vectors["p1"], closed)
    refused(400, "malformed-frame", world.ps.accept_upload, "mjob", 0, "p1", bcp_frame)
    bcp_ring = encode_ring_frame(
        decode_frame(ring, kind=RING_FRAME_KIND).payload,
        bits=32,
        num_elements=LENGTH,
        extra_header={"job_id": "bjob", "round": 0},
    )
    refused(400, "malformed-frame", world.ps.accept_upload, "bjob", 0, "p1", bcp_ring)
    assert count(world, Upload) == 0
    # No commitments, closed sets or audits in the masked mode.
    commitment = bcp.p("p1").commitment(masked.terms, 0, vectors["p1"])
    refused(409, "wrong-aggregation", world.ps.accept_commitment, "mjob", 0, "p1", commitment)
    refused(409, "wrong-aggregation", world.ps.accept_audit, "mjob", 0, "p1", {})
    refused(409, "set-not-closed", world.ps.closed_set, "mjob", 0)
    assert world.ps.job_view("bjob")["definition"]["aggregation"] == "bcp"


# ---------------------------------------------------------------------- deadlines


def test_deadline_with_quorum_drops_the_missing_participant(world: PsWorld) -> None:
    job = MaskedJob(world, quorum=2)
    deltas = deltas_for(["p1", "p2"], seed=4)
    job.upload(0, deltas)
    assert world.ps.tick().closed == []
    world.clock.advance(601)
    result = world.ps.tick()
    assert (result.closed, result.released) == ([("mjob", 0)], [("mjob", 0)])
    view = world.ps.round_view("mjob", 0)
    assert (view["status"], view["contributors"]) == ("released", ["p1", "p2"])
    assert world.kgc.release_headers[-1]["contributors"] == ["p1", "p2"]
    for s in ("p1", "p2"):
        assert np.max(np.abs(job.model_of(s, 0, job.w0) - job.expected(job.w0, deltas))) < TOLERANCE
    # p3 uploaded nothing: it gets no model and no uploads; too late for round 0.
    refused(403, "not-a-contributor", world.ps.download, "mjob", 0, "p3")
    refused(403, "not-a-contributor", world.ps.upload_frame, "mjob", 0, "p1", "p3")
    refused(404, "upload-not-found", world.ps.upload_frame, "mjob", 0, "p3", "p1")
    late = job.frame("p3", 0, np.zeros(LENGTH))
    refused(409, "round-not-open", world.ps.accept_upload, "mjob", 0, "p3", late)
    assert world.ps.round_view("mjob", 1)["status"] == "open"
    assert world.ps.round_view("mjob", 1)["deadline"] == world.clock.now + 600


def test_operator_close_needs_the_quorum(world: PsWorld) -> None:
    job = MaskedJob(world, quorum=2)
    job.upload(0, deltas_for(["p1"], seed=5))
    refused(409, "below-quorum", world.ps.close_round, "mjob", 0)
    job.upload(0, deltas_for(["p2"], seed=6))
    assert world.ps.close_round("mjob", 0)["status"] == "closed"
    assert world.ps.tick().released == [("mjob", 0)]


def test_deadline_below_quorum_stays_open_or_fails_by_policy(world: PsWorld) -> None:
    job = MaskedJob(world, quorum=2)
    job.upload(0, deltas_for(["p1"], seed=7))
    world.clock.advance(601)
    assert world.ps.tick().failed == []
    assert world.ps.round_view("mjob", 0)["status"] == "open"
    job.upload(0, deltas_for(["p2"], seed=8))  # the quorum, past the deadline: it closes
    assert world.ps.round_view("mjob", 0)["status"] == "closed"

    failing = MaskedJob(world, job_id="mfail", quorum=2, below_quorum_policy="fail")
    failing.upload(0, deltas_for(["p1"], seed=9))
    world.clock.advance(601)
    assert world.ps.tick().failed == [("mfail", 0)]
    assert world.ps.round_view("mfail", 0)["status"] == "failed"
    assert world.ps.job_view("mfail")["status"] == "failed"
    assert count(world, ModelChunk, job_id="mfail", version=1) == 0


# ---------------------------------------------------------------------- re-run


def test_an_undecodable_masked_release_re_runs_the_round_once(world: PsWorld) -> None:
    subjects = ["p1", "p2", "p3", "p4"]
    job = MaskedJob(world, subjects=subjects, quorum=2)
    ps = world.ps
    run0 = ["p1", "p2", "p3"]  # p4 sits round 0 out: the re-run must not take it in
    deltas = deltas_for(run0, seed=12)
    for s in ("p1", "p2"):
        ps.accept_upload("mjob", 0, s, job.frame(s, 0, deltas[s]))
    # p3 uploads garbage with an honest statement: nobody can tell before the release.
    garbage = np.random.default_rng(0).integers(0, 2**32, LENGTH, dtype=np.uint32)
    seed = decode_frame(job.frame("p3", 0, np.zeros(LENGTH)), kind=RING_FRAME_KIND).header["seed"]
    ps.accept_upload("mjob", 0, "p3", job.restated("p3", 0, garbage.tobytes(), seed))
    ps.close_round("mjob", 0)
    assert ps.tick().released == [("mjob", 0)]
    with pytest.raises(EncodingError):
        job.model_of("p1", 0, job.w0)
    frame = job.frame("p1", 1, np.zeros(LENGTH))  # round 1 took an upload already
    ps.accept_upload("mjob", 1, "p1", frame)

    refused(403, "not-a-contributor", ps.accept_undecodable, "mjob", 0, "p4", {})
    wrong = {**_report(job, "p1")}
    wrong["undecodable"] = {**wrong["undecodable"], "bundle_sha256": "be" * 32}
    refused(403, "bad-undecodable-signature", ps.accept_undecodable, "mjob", 0, "p1", wrong)
    for s in run0:
        ps.accept_undecodable("mjob", 0, s, _report(job, s))

    view = ps.round_view("mjob", 0)
    assert (view["status"], view["run"], view["uploads"]) == ("open", 1, 0)
    refused(404, "round-not-found", ps.round_view, "mjob", 1)
    assert count(world, Upload, job_id="mjob") == 0
    assert count(world, Release, job_id="mjob") == 0
    assert count(world, ModelChunk, job_id="mjob", version=1) == 0
    assert ps.job_view("mjob")["current_round"] == 0

    # Run 1: only run 0's set, only with run-1 statements.
    refused(
        403,
        "not-in-rerun",
        ps.accept_upload,
        "mjob",
        0,
        "p4",
        job.frame("p4", 0, deltas["p1"], run=1),
    )
    stale = job.frame("p1", 0, deltas["p1"], run=0)
    refused(422, "statement-mismatch", ps.accept_upload, "mjob", 0, "p1", stale)
    for s in ("p1", "p2"):
        ps.accept_upload("mjob", 0, s, job.frame(s, 0, deltas[s], run=1))
    refused(409, "rerun-incomplete", ps.close_round, "mjob", 0)
    ps.accept_upload("mjob", 0, "p3", job.frame("p3", 0, deltas["p3"], run=1))
    assert ps.tick().released == [("mjob", 0)]
    header = world.kgc.release_headers[-1]
    assert header["run"] == 1 and len(header["undecodable"]) == 3
    for s in run0:
        got = job.model_of(s, 0, job.w0)
        assert np.max(np.abs(got - job.expected(job.w0, deltas))) < TOLERANCE

    # A second undecodable release fails the round and the job.
    for s in run0:
        ps.accept_undecodable("mjob", 0, s, _report(job, s, run=1))
    assert ps.round_view("mjob", 0)["status"] == "failed"
    assert ps.job_view("mjob")["status"] == "failed"


def test_a_re_run_goes_on_only_with_its_whole_set(world: PsWorld) -> None:
    job = MaskedJob(world, quorum=2)
    job.upload(0, deltas_for(SUBJECTS, seed=13))
    assert world.ps.tick().released == [("mjob", 0)]
    for s in SUBJECTS:
        world.ps.accept_undecodable("mjob", 0, s, _report(job, s))
    job.upload(0, deltas_for(["p1", "p2"], seed=14), run=1)
    world.clock.advance(601)
    assert world.ps.tick().failed == [("mjob", 0)]
    assert world.ps.job_view("mjob")["status"] == "failed"


# ---------------------------------------------------------------------- definitions


def test_masked_definitions_are_checked_before_the_kgc_is_asked(world: PsWorld) -> None:
    members = [p for p in world.participants if p.subject_id in SUBJECTS]
    w0 = np.linspace(-1.0, 1.0, LENGTH)
    bad: list[tuple[dict[str, Any], int, str]] = [
        (masked_definition("m", members, w0, aggregation="secure"), 400, "bad-definition"),
        (masked_definition("m", members, w0, aggregation=1), 400, "bad-definition"),
        (masked_definition("m", members, w0, encoding={"width": 1}), 400, "bad-definition"),
        (masked_definition("m", members, w0, encoding={"slot_bits": 29}), 400, "bad-definition"),
        (masked_definition("m", members, w0, encoding={"slot_bound": 4.0}), 400, "bad-definition"),
        (masked_definition("m", members, w0, encoding={"scale": 4.0}), 400, "bad-definition"),
        (masked_definition("m", members, w0, encoding={"frac_bits": "20"}), 400, "bad-definition"),
        (
            masked_definition("m", members, w0, encoding={"model_bound": 0}),
            422,
            "invalid-definition",
        ),
        # W_0 beyond the model bound
        (
            masked_definition("m", members, w0, encoding={"model_bound": 0.5}),
            422,
            "invalid-definition",
        ),
        # rings that cannot fit: beyond 2^63, or beyond float64's exact integers
        (
            masked_definition("m", members, w0, encoding={"frac_bits": 60}),
            422,
            "invalid-definition",
        ),
        (
            masked_definition("m", members, w0, encoding={"frac_bits": 50}),
            422,
            "invalid-definition",
        ),
        (
            masked_definition("m", members, w0, encoding={"frac_bits": -1}),
            422,
            "invalid-definition",
        ),
    ]
    for definition, status, code in bad:
        refused(status, code, world.ps.create_job, definition)
    assert count(world, Job) == 0 and count(world, ModelChunk) == 0
    assert world.kgc.jobs == {}

    # Defaults, and a 64-bit ring when 32 bits cannot hold the bounds.
    wide = masked_definition("m64", members, w0, encoding={"frac_bits": 30})
    view = world.ps.create_job(wide)
    assert view["packing"]["bits"] == 64
    plain = make_definition("mdefault", members, w0, aggregation="masked")
    del plain["encoding"]
    assert world.ps.create_job(plain)["definition"]["encoding"] == {
        "frac_bits": 20,
        "clip_bound": 16.0,
        "model_bound": 32.0,
    }
    # bcp stays the default, and the normalised definition names it.
    assert (
        world.ps.create_job(make_definition("b", members, w0))["definition"]["aggregation"] == "bcp"
    )


# ---------------------------------------------------------------------- HTTP

ADMIN = "admin-token-for-masked-tests"


@pytest.fixture
def client(world: PsWorld) -> Iterator[FlaskClient]:
    app: Flask = create_app({"TESTING": True, "SERVICE": world.ps, "ADMIN_TOKEN": ADMIN})
    yield app.test_client()


def _auth(world: PsWorld, subject: str | None) -> dict[str, str]:
    if subject is None:
        return {"Authorization": f"Bearer {ADMIN}"}
    p = next(p for p in world.participants if p.subject_id == subject)
    return {"Authorization": f"Bearer {p.token(world.kgc, world.clock.now)}"}


def test_a_masked_round_over_http(world: PsWorld, client: FlaskClient) -> None:
    members = [p for p in world.participants if p.subject_id in SUBJECTS]
    w0 = np.linspace(-1.0, 1.0, LENGTH)
    answer = client.post(
        "/v1/jobs",
        json=masked_definition("mjob", members, w0, quorum=2),
        headers=_auth(world, None),
    )
    assert answer.status_code == 201, answer.get_json()
    view = client.get("/v1/jobs/mjob", headers=_auth(world, "p1")).get_json()
    terms = job_terms_of(view, world.kgc.info(), param_server=PS_SUBJECT_ID)
    layout = MaskedLayout.from_json(view["packing"])
    deltas = deltas_for(["p1", "p2"], seed=21)
    rng = random.Random(3)
    frames = {
        s: masked_upload_frame(
            terms, layout, next(p for p in members if p.subject_id == s), 0, d, rng=rng
        )
        for s, d in deltas.items()
    }

    def post(subject: str, data: bytes, t: int = 0) -> Any:
        return client.post(
            f"/v1/jobs/mjob/rounds/{t}/uploads",
            data=data,
            headers=_auth(world, subject),
            content_type="application/octet-stream",
        )

    too_big = frames["p1"] + b"\0" * (64 * 1024 + 1)
    for subject, data, status, code in [
        ("p4", frames["p1"], 403, "not-a-participant"),
        ("p1", too_big, 413, "too-large"),
        ("p1", frames["p1"][:-1], 400, "malformed-frame"),
    ]:
        answer = post(subject, data)
        assert (answer.status_code, answer.get_json()["error"]) == (status, code)
    for s, data in frames.items():
        answer = post(s, data)
        assert answer.status_code == 201 and "signature" in answer.get_json()
    round_view = client.get("/v1/jobs/mjob/rounds/0", headers=_auth(world, "p3")).get_json()
    assert (round_view["status"], round_view["contributors"]) == ("open", ["p1", "p2"])
    answer = client.get("/v1/jobs/mjob/rounds/0/model", headers=_auth(world, "p1"))
    assert (answer.status_code, answer.get_json()["error"]) == (409, "not-released")
    answer = client.get("/v1/jobs/mjob/rounds/0/uploads/p2", headers=_auth(world, "p1"))
    assert (answer.status_code, answer.get_json()["error"]) == (409, "not-released")
    assert (
        client.post("/v1/jobs/mjob/rounds/0/close", headers=_auth(world, None)).status_code == 200
    )
    assert world.ps.tick().released == [("mjob", 0)]

    model = client.get("/v1/jobs/mjob/rounds/0/model", headers=_auth(world, "p1"))
    assert model.status_code == 200
    download = model.get_json()
    assert "wrapped_keys" not in download and set(download["wrapped_keys_sha256"]) == {"p1", "p2"}

    def fetch(subject: str) -> bytes:
        answer = client.get(f"/v1/jobs/mjob/rounds/0/uploads/{subject}", headers=_auth(world, "p1"))
        assert answer.status_code == 200 and answer.mimetype == "application/octet-stream"
        return bytes(answer.get_data())

    p1 = next(p for p in members if p.subject_id == "p1")
    got = open_masked_model(world.kgc.info().verify_key, layout, p1, download, fetch, w0)
    weights = view["weights"]
    expected = w0 + sum(weights[s] * d for s, d in deltas.items())
    assert np.max(np.abs(got - expected)) < TOLERANCE
    assert fetch("p2") == frames["p2"]
    operator = client.get("/v1/jobs/mjob/rounds/0/uploads/p1", headers=_auth(world, None))
    assert operator.status_code == 200 and operator.get_data() == frames["p1"]
    for subject, path, status, code in [
        ("p3", "model", 403, "not-a-contributor"),
        ("p3", "uploads/p1", 403, "not-a-contributor"),
        ("p4", "model", 403, "not-a-participant"),
        ("p4", "uploads/p1", 403, "not-a-participant"),
        ("p1", "uploads/p3", 404, "upload-not-found"),
    ]:
        answer = client.get(f"/v1/jobs/mjob/rounds/0/{path}", headers=_auth(world, subject))
        assert (answer.status_code, answer.get_json()["error"]) == (status, code), path
    base = client.get("/v1/jobs/mjob/rounds/1/base", headers=_auth(world, "p3"))
    assert base.status_code == 200
    z1 = decode_frame(base.get_data(), kind=RING_FRAME_KIND)
    assert (z1.header["bits"], z1.header["num_elements"]) == (layout.ring.bits, LENGTH)


# ---------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_a_masked_round_on_postgres(
    postgres_url: str,
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
) -> None:
    from trapdoor.service.db import migrate

    migrate("param_server", postgres_url)
    world = make_world(params_1024[1], participants, postgres_url, create_schema=False)
    try:
        job = MaskedJob(world)
        deltas = deltas_for(SUBJECTS, seed=31)
        frames = job.upload(0, deltas)
        assert world.ps.tick().released == [("mjob", 0)]
        total = ring_sum([job.y(f) for f in frames.values()], job.layout.ring, LENGTH)
        assert np.array_equal(job.state(1) - job.state(0), total)
        got = job.model_of("p2", 0, job.w0)
        assert np.max(np.abs(got - job.expected(job.w0, deltas))) < TOLERANCE
    finally:
        world.close()
