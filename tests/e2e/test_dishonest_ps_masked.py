"""The parameter server breaks the protocol of a *masked* job: real KGC and PS processes.

The test plays the PS's operator, who holds the PS's signing key (unsealed from its
database) and can rewrite its database, and participant 3 as its colluder. Four
participants use the client library over real HTTP (docs/SECURITY.md §7 is the argument).
Each attack ends with a clear refusal, nothing sealed at the KGC or nothing opened at a
participant, and the honest job still finishing with the FedAvg model.

Attacks played here (issue 12):

- the PS serves a smaller ring, or claims another mode, than the KGC signed: every
  participant refuses the job before it masks anything;
- the colluder uploads an honest participant's frame, its ``y`` under its own statement,
  or its seed ciphertext: refused (the statement's signer, ``replayed-payload``);
- the PS asks the KGC for a release below the quorum, for a round out of schedule, with a
  statement it altered, or with a seed swapped between contributors: refused, nothing
  sealed;
- after the release, the PS shifts ``Z`` by rewriting a stored upload, or forges a
  bundle (its own data key wrapped to a contributor): no contributor opens anything;
- a participant that skipped a round gets 403 for that round's bundle and uploads, and
  cannot open a contributor's bundle.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import enrol_clients, json_column, ps_identity, read_rows
from sqlalchemy import text

from trapdoor.crypto.masking import vector_from_bytes, vector_to_bytes
from trapdoor.crypto.sealing import SealError, seal_bytes, wrap_data_key
from trapdoor.crypto.signing import b64encode, public_key_from_hex, sign_json
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame, encode_ring_frame
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.ml.training import local_fit, participant_rng
from trapdoor.participant.client import (
    ClientError,
    JobView,
    ParticipantClient,
    PreparedMaskedUpload,
)
from trapdoor.protocol.bundle import MaskedReleaseBinding, open_mask_sum, verify_release_statement
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.job import MaskedLayout
from trapdoor.protocol.release_request import masked_release_request_header
from trapdoor.protocol.upload import build_masked_upload_statement, seed_sha256
from trapdoor.ps.kgc_gateway import HttpKgcGateway, KgcError
from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

K = 4
JOB_ID = "masked-dishonest-1"
ROUNDS = 2
COLLUDER = 3
FRAC_BITS = 20


@dataclass
class World:
    cluster: LocalCluster
    clients: list[ParticipantClient]
    rogue: HttpKgcGateway  # the PS's own identity, driven by its dishonest operator
    ps_signing_key: Any
    w0: np.ndarray

    @property
    def ps_url(self) -> str:
        return self.cluster.ps_url

    @property
    def ps_db(self) -> Path:
        return self.cluster.workdir / "ps.db"

    def job(self, i: int) -> JobView:
        return self.clients[i].fetch_job(self.ps_url, JOB_ID)

    def data(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(100 + i)
        return rng.normal(size=(40, 64)), rng.integers(0, 10, size=40)

    def prepare(self, i: int, t: int, weights: np.ndarray) -> PreparedMaskedUpload:
        return self.clients[i].prepare_masked_update(self.job(i), t, weights, *self.data(i))

    def expected_update(self, i: int, t: int, weights: np.ndarray) -> np.ndarray:
        """``w_i·clip(Δ_i)`` as participant ``i`` computes it (same data, seed, schedule)."""
        job = self.job(i)
        fit = local_fit(
            job.model,
            weights,
            *self.data(i),
            job.training,
            participant_rng(job.seed, i, t),
        )
        layout = job.masked_layout
        weight = job.weights[self.clients[i].identity.subject_id]
        return np.clip(fit.update, -layout.clip_bound, layout.clip_bound) * weight

    def kgc_releases(self) -> int:
        rows = read_rows(
            self.cluster.workdir / "kgc.db",
            "SELECT count(*) FROM kgc_releases WHERE job_id = :j",
            j=JOB_ID,
        )
        return int(rows[0][0])

    def stored_uploads(self, t: int) -> dict[str, bytes]:
        """What the PS operator reads in its database: every stored upload frame."""
        rows = read_rows(
            self.ps_db,
            "SELECT subject_id, payload FROM uploads WHERE job_id = :j AND round = :t",
            j=JOB_ID,
            t=t,
        )
        return {str(s): bytes(p) for s, p in rows}

    def post_upload(self, i: int, t: int, frame: bytes) -> None:
        self.clients[i]._ps(self.ps_url).post_bytes(f"/v1/jobs/{JOB_ID}/rounds/{t}/uploads", frame)

    def forged_release(self, round_number: int, uploads: list[dict[str, Any]]) -> bytes:
        """A masked release request signed with the PS's real key, carrying what it likes."""
        header = masked_release_request_header(
            job_id=JOB_ID,
            round_number=round_number,
            run=0,
            layout=self.job(0).masked_layout,
            uploads=uploads,
        )
        signed = {**header, "request_signature": sign_json(self.ps_signing_key, header)}
        return json.dumps(signed).encode()

    def refused_by_kgc(self, body: bytes, status: int, code: str) -> None:
        before = self.kgc_releases()
        with pytest.raises(KgcError) as info:
            self.rogue.release_masked(body)
        assert (info.value.status, info.value.code) == (status, code), info.value
        assert self.kgc_releases() == before, "the KGC sealed something it should have refused"


def _sent(frame: bytes) -> dict[str, Any]:
    """The ``{"statement", "seed"}`` a release request carries for one upload frame."""
    header = decode_frame(frame, kind=RING_FRAME_KIND).header
    return {"statement": header["statement"], "seed": header["seed"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("masked-dishonest")
    with LocalCluster(workdir) as cluster:
        cluster.start_kgc(1024, demo=True)
        enrolments = [cluster.enrol(f"participant-{i}", "participant") for i in range(K)]
        cluster.start_param_server()
        clients = enrol_clients(cluster, enrolments)
        model = MLP([64, 8, 10])
        w0 = model.init_parameters(np.random.default_rng(3))
        cluster.ps_operator(timeout=120).post_json(
            "/v1/jobs",
            {
                "job_id": JOB_ID,
                "model": model.spec(),
                "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
                "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 16},
                "participants": [
                    {"subject_id": c.identity.subject_id, "num_samples": 40} for c in clients
                ],
                "quorum": 3,
                "rounds": ROUNDS,
                "round_deadline_seconds": 3600,
                "encoding": {"frac_bits": FRAC_BITS},  # aggregation: masked, the default
            },
        )
        identity = ps_identity(cluster)
        rogue = HttpKgcGateway(cluster.kgc_url, identity.subject_id, identity.signing_key)
        w = World(cluster, clients, rogue, identity.signing_key, np.asarray(w0))
        try:
            yield w
        finally:
            for c in clients:
                c.close()


@contextmanager
def rewritten(world: World, sql_read: str, sql_write: str, change: Any) -> Iterator[None]:
    """Rewrite one value in the PS's database (as its operator can), then put it back."""
    engine = make_engine(f"sqlite:///{world.ps_db}")
    try:
        with engine.begin() as conn:
            original = conn.execute(text(sql_read), {"j": JOB_ID}).scalar_one()
            conn.execute(text(sql_write), {"j": JOB_ID, "v": change(original)})
        try:
            yield
        finally:
            with engine.begin() as conn:
                conn.execute(text(sql_write), {"j": JOB_ID, "v": original})
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- the job itself


def _smaller_ring(packing: Any) -> str:
    layout = json_column(packing)
    return json.dumps({**layout, "bits": 32, "model_bound": 1024.0})


def _bcp_terms(terms: Any) -> str:
    return json.dumps({**json_column(terms), "aggregation": "bcp"})


@pytest.mark.parametrize(
    ("column", "change", "code"),
    [("packing", _smaller_ring, "job-mismatch"), ("job_terms", _bcp_terms, "bad-job-signature")],
    ids=["smaller-ring", "another-mode"],
)
def test_participants_refuse_a_ring_or_mode_the_kgc_did_not_sign(
    world: World, column: str, change: Any, code: str
) -> None:
    fresh = ParticipantClient(world.clients[0].identity, world.cluster.kgc_url)
    read = f"SELECT {column} FROM jobs WHERE job_id = :j"
    write = f"UPDATE jobs SET {column} = :v WHERE job_id = :j"
    try:
        with rewritten(world, read, write, change), pytest.raises(ClientError) as refused:
            fresh.fetch_job(world.ps_url, JOB_ID, refresh=True)
        assert refused.value.reason == code
    finally:
        fresh.close()
    status = world.cluster.ps_operator().get_json(f"/v1/jobs/{JOB_ID}/rounds/0")
    assert status["uploads"] == 0  # nothing was masked for a job the KGC did not sign


# ---------------------------------------------------------------------- round 0


def test_a_colluder_cannot_reuse_an_honest_upload_or_seed(world: World) -> None:
    """Participants 0-2 upload; the colluder tries their bytes in three ways, then its own."""
    for i in range(3):
        world.clients[i].upload_masked(world.job(i), world.prepare(i, 0, world.w0))
    honest = world.stored_uploads(0)[world.clients[0].identity.subject_id]
    colluder = world.clients[COLLUDER]
    me = colluder.identity.subject_id
    header = decode_frame(honest, kind=RING_FRAME_KIND)

    def resigned(payload: bytes, seed: dict[str, Any]) -> bytes:
        statement = build_masked_upload_statement(
            colluder.identity.signing_key,
            world.job(COLLUDER).terms,
            round_number=0,
            subject_id=me,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            seed_sha256=seed_sha256(seed),
        )
        layout = world.job(COLLUDER).masked_layout
        return encode_ring_frame(
            payload,
            bits=layout.ring.bits,
            num_elements=layout.length,
            extra_header={"job_id": JOB_ID, "round": 0, "statement": statement, "seed": seed},
        )

    own = decode_frame(world.prepare(COLLUDER, 0, world.w0).frame, kind=RING_FRAME_KIND)
    attempts = {
        "the honest frame as it is": (honest, 403, "statement-mismatch"),
        "its y under our statement": (
            resigned(header.payload, own.header["seed"]),
            409,
            "replayed-payload",
        ),
        "its seed under our statement": (
            resigned(own.payload, header.header["seed"]),
            409,
            "replayed-payload",
        ),
    }
    for what, (frame, status, code) in attempts.items():
        with pytest.raises(ServiceError) as refused:
            world.post_upload(COLLUDER, 0, frame)
        assert (refused.value.status, refused.value.code) == (status, code), what
    assert me not in world.stored_uploads(0)
    round0 = world.cluster.ps_operator().get_json(f"/v1/jobs/{JOB_ID}/rounds/0")
    assert round0["status"] == "open" and round0["uploads"] == 3


def test_the_kgc_refuses_forged_masked_releases(world: World) -> None:
    """With the PS's own key: below the quorum, out of schedule, an altered statement, a
    seed moved to another contributor. The KGC seals nothing."""
    uploads = [_sent(frame) for _, frame in sorted(world.stored_uploads(0).items())]
    world.refused_by_kgc(world.forged_release(0, uploads[:2]), 422, "below-quorum")
    world.refused_by_kgc(world.forged_release(1, uploads), 409, "out-of-schedule")
    world.refused_by_kgc(world.forged_release(ROUNDS, uploads), 409, "round-out-of-range")
    altered = json.loads(json.dumps(uploads))
    altered[0]["statement"]["statement"]["payload_sha256"] = "00" * 32
    world.refused_by_kgc(world.forged_release(0, altered), 403, "bad-statement-signature")
    swapped = json.loads(json.dumps(uploads))
    swapped[0]["seed"], swapped[1]["seed"] = swapped[1]["seed"], swapped[0]["seed"]
    world.refused_by_kgc(world.forged_release(0, swapped), 422, "statement-mismatch")


def test_the_ps_can_neither_shift_the_model_nor_forge_a_bundle(world: World) -> None:
    colluder = world.clients[COLLUDER]
    colluder.upload_masked(world.job(COLLUDER), world.prepare(COLLUDER, 0, world.w0))
    for c in world.clients:
        c.wait_for_release(world.ps_url, JOB_ID, 0, timeout=120)
    assert world.kgc_releases() == 1
    victim = world.clients[1].identity.subject_id
    layout: MaskedLayout = world.job(0).masked_layout

    def shifted(frame: bytes) -> bytes:
        parsed = decode_frame(frame, kind=RING_FRAME_KIND)
        y = vector_from_bytes(parsed.payload, layout.ring, layout.length)
        y[0] += np.uint32(1 << FRAC_BITS)  # +1.0 on the first weight of everyone's model
        header = {
            k: v
            for k, v in parsed.header.items()
            if k not in ("kind", "bits", "num_elements", "sha256")
        }
        return encode_ring_frame(
            vector_to_bytes(y, layout.ring),
            bits=layout.ring.bits,
            num_elements=layout.length,
            extra_header=header,
        )

    read = "SELECT payload FROM uploads WHERE job_id = :j AND round = 0 AND subject_id = '%s'"
    write = "UPDATE uploads SET payload = :v WHERE job_id = :j AND round = 0 AND subject_id = '%s'"
    with rewritten(world, read % victim, write % victim, lambda v: shifted(bytes(v))):
        with pytest.raises(ClientError) as refused:
            world.clients[0].download_model(world.ps_url, JOB_ID, 0, world.w0)
        assert refused.value.code == "upload-mismatch"

    target = world.clients[0]

    def forged(bundle: Any) -> str:
        """The operator's own D (zero) under its own data key, wrapped to participant 0."""
        stored = json_column(bundle)
        binding = MaskedReleaseBinding.from_fields(stored)
        key = bytes(32)
        sealed = seal_bytes(key, bytes(layout.payload_bytes), binding.context())
        wrapped = wrap_data_key(
            target.identity.public_key, key, binding.context(), random.Random(5)
        )
        return json.dumps(
            {
                **stored,
                "sealed_mask": sealed,
                "wrapped_keys": {**stored["wrapped_keys"], target.identity.subject_id: wrapped},
            }
        )

    read = "SELECT bundle FROM releases WHERE job_id = :j AND round = 0"
    write = "UPDATE releases SET bundle = :v WHERE job_id = :j AND round = 0"
    with rewritten(world, read, write, forged):
        with pytest.raises(ClientError) as refused:
            target.download_model(world.ps_url, JOB_ID, 0, world.w0)
        assert refused.value.code == "bad-release"

    # The honest release: every contributor opens the same model, exactly FedAvg.
    models = [c.download_model(world.ps_url, JOB_ID, 0, world.w0) for c in world.clients]
    for m in models[1:]:
        np.testing.assert_array_equal(m, models[0])
    expected = world.w0 + sum(world.expected_update(i, 0, world.w0) for i in range(K))
    np.testing.assert_allclose(models[0], expected, rtol=0, atol=(K + 1) * 2.0**-FRAC_BITS)


def test_a_skipper_is_refused_round_1_and_cannot_open_it(world: World) -> None:
    w1 = world.clients[0].download_model(world.ps_url, JOB_ID, 0, world.w0)
    for i in range(3):
        world.clients[i].upload_masked(world.job(i), world.prepare(i, 1, w1))
    world.cluster.ps_operator().post_json(f"/v1/jobs/{JOB_ID}/rounds/1/close", {})
    world.clients[0].wait_for_release(world.ps_url, JOB_ID, 1, timeout=120)
    skipper = world.clients[COLLUDER]
    for path in ("model", f"uploads/{world.clients[0].identity.subject_id}"):
        with pytest.raises(ServiceError) as refused:
            skipper._ps(world.ps_url).get_json(f"/v1/jobs/{JOB_ID}/rounds/1/{path}")
        assert refused.value.status == 403, path
    bundle = world.clients[0].download_bundle(world.ps_url, JOB_ID, 1)
    layout = world.job(0).masked_layout
    with pytest.raises(SealError):  # a contributor's bundle, in the skipper's hands
        open_mask_sum(
            skipper.identity.secret_key,
            MaskedReleaseBinding.from_fields(bundle),
            bundle["sealed_mask"],
            bundle["wrapped_key"],
            layout,
        )
    with pytest.raises(ProtocolError, match="wrapped key"):
        verify_release_statement(
            public_key_from_hex(skipper.kgc_verify_key),
            bundle,
            subject_id=skipper.identity.subject_id,
        )
    final = world.clients[1].download_model(world.ps_url, JOB_ID, 1, w1)
    assert np.all(np.isfinite(final)) and np.abs(final).max() <= layout.model_bound
    assert world.kgc_releases() == ROUNDS
    assert world.cluster.ps_operator().get_json(f"/v1/jobs/{JOB_ID}")["status"] == "finished"
