"""The parameter server breaks the protocol: real KGC and PS processes, real participants.

The test plays the PS's operator, who holds the PS's own signing key (unsealed from its
database with its passphrase) and can rewrite its database, together with an enrolled
outsider. Four honest participants use the client library over real HTTP. Each attack ends
with a clear refusal, nothing sealed at the KGC, and the honest job still finishing.

Attacks played here (issue 11):

- the PS serves a job key it made itself, or a job that differs from what the KGC signed:
  every participant refuses the job before encrypting anything;
- an upload before the commitment set is closed, or one that differs from its commitment
  (a ciphertext chosen after seeing others, to cancel them): the PS refuses it;
- the PS relabels uploads as another round (1000, a round past the job's end, the next
  round before this one): the KGC refuses, nothing is sealed;
- the PS invents a contributor's statement or audit, names a non-participant, drops below
  the quorum, offers one participant's upload as the aggregate, or leaves out an audit:
  refused;
- round 0's closed set, statements and audits replayed for round 1: refused;
- the PS swaps the blind ``R`` after aggregating: no contributor signs an audit;
- a colluder commits to a re-randomised copy of an honest participant's earlier upload:
  it cannot prove the copy's randomness, and the PS refuses the upload;
- a token a participant sent to one PS is replayed at another PS and at the KGC: 401.

The KGC's side of that last attack (a colluding quorum that audits such a copy) is
played in tests/unit/protocol/test_audit.py against ``check_release_request``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import enrol_clients, json_column, ps_identity, read_rows
from sqlalchemy import text

from trapdoor.crypto.blocks import BlockLayout, EncryptedVector, generate_job_key
from trapdoor.crypto.signing import b64encode, sign_json
from trapdoor.crypto.wire import decode_frame, encode_frame, to_obj
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.participant.client import ClientError, JobView, ParticipantClient, PreparedUpload
from trapdoor.protocol.audit import build_audit_statement, verify_audit_statement
from trapdoor.protocol.commitment import ClosedSet
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.release_request import release_request_header
from trapdoor.protocol.upload import build_upload_statement
from trapdoor.ps.kgc_gateway import HttpKgcGateway, KgcError
from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceClient, ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

K = 4
JOB_ID = "dishonest-1"
ROUNDS = 2


@dataclass
class World:
    cluster: LocalCluster
    clients: list[ParticipantClient]
    outsider: ParticipantClient
    ps_subject: str
    rogue: HttpKgcGateway  # the PS's own identity, driven by its dishonest operator
    ps_signing_key: Any
    w0: np.ndarray

    @property
    def ps_url(self) -> str:
        return self.cluster.ps_url

    def ps_db(self) -> Any:
        return make_engine(f"sqlite:///{self.cluster.workdir}/ps.db")

    def kgc_releases(self) -> int:
        rows = read_rows(
            self.cluster.workdir / "kgc.db",
            "SELECT count(*) FROM kgc_releases WHERE job_id = :j",
            j=JOB_ID,
        )
        return int(rows[0][0])

    def data(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(100 + i)
        return rng.normal(size=(40, 64)), rng.integers(0, 10, size=40)

    def job(self, i: int) -> JobView:
        return self.clients[i].fetch_job(self.ps_url, JOB_ID)

    def commit(self, i: int, t: int, weights: np.ndarray) -> PreparedUpload:
        """Participant ``i`` trains, encrypts and commits (it does not upload yet)."""
        X, y = self.data(i)
        prepared = self.clients[i].prepare_update(self.job(i), t, weights, X, y)
        self.clients[i].commit(self.job(i), prepared)
        return prepared

    def upload(self, i: int, prepared: PreparedUpload) -> None:
        """Participant ``i`` uploads its committed ciphertext under the closed set."""
        job = self.job(i)
        self.clients[i].upload(job, prepared, self.clients[i].closed_set(job, prepared.round))

    def audit(self, i: int, t: int) -> None:
        self.clients[i].wait_for_round(self.ps_url, JOB_ID, t, 120, at_least="closed")
        self.clients[i].audit(self.job(i), t)

    def release_payload(self, t: int) -> bytes:
        """The true ``F`` of round ``t``'s current attempt, as any contributor recomputes it."""
        return self.clients[0].recompute_round(self.job(0), t).release.to_bytes()

    def stored_audits(self, t: int) -> list[dict[str, Any]]:
        """The signed audits the PS operator reads in its own database."""
        rows = read_rows(
            self.cluster.workdir / "ps.db",
            "SELECT signed FROM audits WHERE job_id = :j AND round = :t ORDER BY subject_id",
            j=JOB_ID,
            t=t,
        )
        return [json_column(r[0]) for r in rows]

    def stored_uploads(self, t: int) -> list[tuple[str, bytes, dict[str, Any]]]:
        """What the PS operator reads in its own database: payloads and signed statements."""
        rows = read_rows(
            self.cluster.workdir / "ps.db",
            "SELECT subject_id, payload, statement FROM uploads "
            "WHERE job_id = :j AND round = :t ORDER BY subject_id",
            j=JOB_ID,
            t=t,
        )
        return [(str(subject), bytes(payload), json_column(st)) for subject, payload, st in rows]

    def forged_release(
        self,
        round_number: int,
        payload: bytes,
        statements: list[dict[str, Any]],
        *,
        closed_set: dict[str, Any],
        audits: list[dict[str, Any]] | None = None,
        attempt: int = 0,
    ) -> bytes:
        """A release request signed with the PS's real key, carrying whatever it likes."""
        job = self.job(0)
        layout = BlockLayout(job.packing.num_plaintexts, job.job_key.width)
        vector = EncryptedVector.from_bytes(job.job_key, layout, payload)
        header = release_request_header(
            job_id=JOB_ID,
            round_number=round_number,
            attempt=attempt,
            closed_set=closed_set,
            statements=statements,
            audits=audits or [],
        )
        signed_header = decode_frame(encode_frame(vector, header), max_header_bytes=None).header
        return encode_frame(
            vector,
            {**header, "request_signature": sign_json(self.ps_signing_key, signed_header)},
        )

    def refused_by_kgc(self, frame: bytes, status: int, code: str) -> None:
        before = self.kgc_releases()
        with pytest.raises(KgcError) as info:
            self.rogue.release(frame)
        assert (info.value.status, info.value.code) == (status, code), info.value
        assert self.kgc_releases() == before, "the KGC sealed something it should have refused"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("dishonest")
    with LocalCluster(workdir) as cluster:
        cluster.start_kgc(1024, demo=True)
        enrolments = [cluster.enrol(f"participant-{i}", "participant") for i in range(K + 1)]
        cluster.start_param_server(wait=False)
        clients = enrol_clients(cluster, enrolments)
        assert cluster.param_server is not None
        cluster.wait_ready([cluster.param_server], 120)
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
                    {"subject_id": c.identity.subject_id, "num_samples": 40} for c in clients[:K]
                ],
                "quorum": 3,
                "rounds": ROUNDS,
                "aggregation": "bcp",
                "round_deadline_seconds": 3600,
            },
        )
        identity = ps_identity(cluster)
        rogue = HttpKgcGateway(cluster.kgc_url, identity.subject_id, identity.signing_key)
        w = World(
            cluster,
            clients[:K],
            clients[K],
            identity.subject_id,
            rogue,
            identity.signing_key,
            np.asarray(w0),
        )
        try:
            yield w
        finally:
            for c in clients:
                c.close()


# ---------------------------------------------------------------------- job keys


def _write_job(engine: Any, job: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET definition = :d, job_key = :k, job_terms = :t WHERE job_id = :j"),
            {
                "d": json.dumps(job["definition"]),
                "k": json.dumps(job["job_key"]),
                "t": json.dumps(job["job_terms"]),
                "j": JOB_ID,
            },
        )


@contextmanager
def tampered_job(world: World, change: Any) -> Iterator[None]:
    """Rewrite the PS's stored job (as its operator can), then put it back."""
    engine = world.ps_db()
    try:
        with engine.begin() as conn:
            row = conn.execute(
                text("SELECT definition, job_key, job_terms FROM jobs WHERE job_id = :j"),
                {"j": JOB_ID},
            ).one()
        original = {
            k: (json.loads(v) if isinstance(v, str) else v) for k, v in row._mapping.items()
        }
        _write_job(engine, change(copy.deepcopy(original)))
        try:
            yield
        finally:
            _write_job(engine, original)
    finally:
        engine.dispose()


def _own_key(world: World) -> dict[str, Any]:
    job = world.clients[0].fetch_job(world.ps_url, JOB_ID)
    return to_obj(generate_job_key(job.job_key.params, job.job_key.width, random.Random(666)))


def _swap_served_key(world: World) -> Any:
    own = _own_key(world)
    return lambda job: {**job, "job_key": own}


def _swap_signed_key(world: World) -> Any:
    own = _own_key(world)
    return lambda job: {**job, "job_key": own, "job_terms": {**job["job_terms"], "job_key": own}}


def _lower_learning_rate(job: dict[str, Any]) -> dict[str, Any]:
    job["definition"]["training"]["learning_rate"] = 5.0
    return job


@pytest.mark.parametrize(
    ("make_change", "code"),
    [
        (_swap_served_key, "job-mismatch"),
        (_swap_signed_key, "bad-job-signature"),
        (lambda world: _lower_learning_rate, "job-mismatch"),
    ],
    ids=["served-key", "signed-key", "definition"],
)
def test_participants_refuse_a_job_the_kgc_did_not_sign(
    world: World, make_change: Any, code: str
) -> None:
    fresh = ParticipantClient(world.clients[3].identity, world.cluster.kgc_url)
    try:
        with tampered_job(world, make_change(world)), pytest.raises(ClientError, match=code):
            fresh.fetch_job(world.ps_url, JOB_ID, refresh=True)
    finally:
        fresh.close()
    status = world.cluster.ps_operator().get_json(f"/v1/jobs/{JOB_ID}/rounds/0")
    assert status["uploads"] == 0  # nothing was encrypted under the PS's key


# ---------------------------------------------------------------------- the KGC's schedule


def test_uploads_wait_for_the_closed_set_and_match_their_commitment(world: World) -> None:
    """No upload before the set is closed; none that differs from its commitment."""
    prepared = {i: world.commit(i, 0, world.w0) for i in range(3)}
    job = world.job(3)
    mine = world.clients[3].prepare_update(job, 0, world.w0, *world.data(3))
    premature = world.clients[3].upload_frame(
        job, 0, mine.vector, ClosedSet(0, 0, {}, "00" * 32, {}), mine.randomness
    )
    ps = world.clients[3]._ps(world.ps_url)
    with pytest.raises(ServiceError) as info:
        ps.post_bytes(f"/v1/jobs/{JOB_ID}/rounds/0/uploads", premature)
    assert (info.value.status, info.value.code) == (409, "set-not-closed")

    world.clients[3].commit(job, mine)  # the last commitment closes the set
    closed = world.clients[3].closed_set(job, 0)
    assert sorted(closed.payloads) == sorted(c.identity.subject_id for c in world.clients)
    # a ciphertext chosen after the set closed (say, to cancel another upload): refused
    other = world.clients[3].prepare_update(job, 0, world.w0, *world.data(3))
    swapped = world.clients[3].upload_frame(job, 0, other.vector, closed, other.randomness)
    with pytest.raises(ServiceError) as info:
        ps.post_bytes(f"/v1/jobs/{JOB_ID}/rounds/0/uploads", swapped)
    assert (info.value.status, info.value.code) == (422, "upload-mismatch")
    for i, p in {**prepared, 3: mine}.items():
        world.upload(i, p)
    assert world.stored_uploads(0) and len(world.stored_uploads(0)) == K
    assert world.kgc_releases() == 0


def test_kgc_refuses_relabelled_rounds_invented_statements_and_unaudited_aggregates(
    world: World,
) -> None:
    """Round 0 is aggregated; three of four contributors audited it, the fourth has not."""
    for i in range(3):
        world.audit(i, 0)
    uploads = world.stored_uploads(0)
    statements = [statement for _, _, statement in uploads]
    single = uploads[0][1]  # one participant's upload, offered as "the aggregate"
    job = world.job(0)
    closed = world.clients[0].closed_set(job, 0)
    audits = world.stored_audits(0)
    assert len(audits) == 3

    def refused(frame_args: dict[str, Any], status: int, code: str, t: int = 0) -> None:
        args = {"closed_set": dict(closed.raw), "audits": audits, **frame_args}
        payload = args.pop("payload", single)
        world.refused_by_kgc(
            world.forged_release(t, payload, args.pop("statements", statements), **args),
            status,
            code,
        )

    # relabelled: past the job's last round, far in the future, the next round too early
    for t in (1000, ROUNDS, 10**6):
        refused({}, 409, "round-out-of-range", t)
    refused({}, 409, "out-of-schedule", 1)

    # a statement the PS signed itself in the name of participant 3
    invented = build_upload_statement(
        world.ps_signing_key,
        job.terms,
        round_number=0,
        subject_id=world.clients[3].identity.subject_id,
        payload_sha256=closed.payloads[world.clients[3].identity.subject_id],
        closed_set_sha256=closed.digest,
        randomness_proof=statements[0]["statement"]["randomness_proof"],
    )
    p3 = world.clients[3].identity.subject_id
    others = [s for s in statements if s["statement"]["subject_id"] != p3]
    refused({"statements": [*others, invented]}, 403, "bad-statement-signature")
    # an enrolled outsider, signing honestly for itself
    outsider = build_upload_statement(
        world.outsider.identity.signing_key,
        job.terms,
        round_number=0,
        subject_id=world.outsider.identity.subject_id,
        payload_sha256="00" * 32,
        closed_set_sha256=closed.digest,
        randomness_proof=statements[0]["statement"]["randomness_proof"],
    )
    refused({"statements": [*statements, outsider]}, 422, "not-a-participant")
    refused({"statements": statements[:2]}, 422, "below-quorum")
    # one contributor's upload in place of the aggregate, with the three real audits and
    # the three auditors as "the contributors": their audits name another F and set
    refused({"statements": others}, 422, "audit-mismatch")
    # the fourth contributor's audit, forged with the PS's key
    forged = build_audit_statement(
        world.ps_signing_key,
        job.terms,
        round_number=0,
        subject_id=p3,
        digests=verify_audit_statement(audits[0], job.terms, round_number=0).digests,
    )
    refused({"audits": [*audits, forged]}, 403, "bad-audit-signature")
    # the honest payload and evidence, but the fourth audit is missing
    refused({"payload": world.release_payload(0)}, 422, "audit-mismatch")
    assert world.kgc_releases() == 0


@contextmanager
def rewritten_blind(world: World, t: int) -> Iterator[None]:
    """The PS operator replaces round ``t``'s stored ``R`` (as it can), then puts it back."""
    engine = world.ps_db()
    try:
        with engine.begin() as conn:
            where = {"j": JOB_ID, "t": t}
            stored = conn.execute(
                text("SELECT blind FROM rounds WHERE job_id = :j AND round = :t"), where
            ).scalar_one()
            width = (int(world.job(0).packing.modulus).bit_length() + 7) // 8
            raw = bytes(stored)  # another R: its first two values swapped
            other = raw[width : 2 * width] + raw[:width] + raw[2 * width :]
            conn.execute(
                text("UPDATE rounds SET blind = :b WHERE job_id = :j AND round = :t"),
                {**where, "b": other},
            )
        try:
            yield
        finally:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE rounds SET blind = :b WHERE job_id = :j AND round = :t"),
                    {**where, "b": stored},
                )
    finally:
        engine.dispose()


def test_the_honest_job_finishes_after_the_attacks(world: World) -> None:
    world.audit(3, 0)  # the last audit: the PS releases round 0
    for c in world.clients:
        c.wait_for_release(world.ps_url, JOB_ID, 0, timeout=120)
    models = [c.download_model(world.ps_url, JOB_ID, 0) for c in world.clients]
    for m in models[1:]:
        np.testing.assert_array_equal(m, models[0])
    assert np.all(np.isfinite(models[0])) and not np.array_equal(models[0], world.w0)

    # round 0's evidence replayed as round 1 (the round now open): refused
    closed0 = dict(world.clients[0].closed_set(world.job(0), 0).raw)
    round0 = [s for _, _, s in world.stored_uploads(0)]
    audits0 = world.stored_audits(0)
    payload = world.stored_uploads(0)[0][1]
    world.refused_by_kgc(
        world.forged_release(1, payload, round0, closed_set=closed0, audits=audits0),
        422,
        "closed-set-mismatch",
    )
    # round 0 again, for another contributor set: the KGC released it once
    world.refused_by_kgc(
        world.forged_release(0, payload, round0[:3], closed_set=closed0, audits=audits0[:3]),
        409,
        "already-released",
    )

    # Round 1: participant 3 colludes. It commits to participant 0's round-0 upload,
    # re-randomised (times an encryption of zero it made), and cannot prove its randomness.
    prepared = {i: world.commit(i, 1, models[0]) for i in range(3)}
    job3 = world.job(3)
    old = EncryptedVector.from_bytes(
        job3.job_key,
        BlockLayout(job3.packing.num_plaintexts, job3.job_key.width),
        dict((s, p) for s, p, _ in world.stored_uploads(0))[world.clients[0].identity.subject_id],
    )
    zero, zero_randomness = (
        world.clients[3]
        .encryptor(job3)
        .encrypt_with_randomness([0] * job3.packing.num_plaintexts, world.clients[3].rng)
    )
    copy_of_old = old + zero
    world.clients[3].commit(
        job3, PreparedUpload(1, copy_of_old, vector_sha256(copy_of_old), {}, zero_randomness)
    )  # the set closes: all four committed
    for i, p in prepared.items():
        world.upload(i, p)
    closed1 = world.clients[3].closed_set(job3, 1)
    copied = world.clients[3].upload_frame(job3, 1, copy_of_old, closed1, zero_randomness)
    with pytest.raises(ServiceError) as info:
        world.clients[3]._ps(world.ps_url).post_bytes(f"/v1/jobs/{JOB_ID}/rounds/1/uploads", copied)
    assert (info.value.status, info.value.code) == (422, "bad-randomness-proof")
    world.cluster.ps_operator().post_json(f"/v1/jobs/{JOB_ID}/rounds/1/close", {})
    # The PS operator swaps R in its database after aggregating: what it now serves does
    # not give the F it announced, so no contributor signs anything.
    with rewritten_blind(world, 1):
        world.clients[0].wait_for_round(world.ps_url, JOB_ID, 1, 120, at_least="closed")
        with pytest.raises(ClientError) as refused:
            world.clients[0].audit(world.job(0), 1)
        assert refused.value.code == "audit-mismatch"
        assert world.stored_audits(1) == []
    for i in range(3):
        world.audit(i, 1)
    world.clients[0].wait_for_release(world.ps_url, JOB_ID, 1, timeout=120)
    assert world.cluster.ps_operator().get_json(f"/v1/jobs/{JOB_ID}/rounds/1")[
        "contributors"
    ] == sorted(c.identity.subject_id for c in world.clients[:3])
    final = world.clients[0].download_model(world.ps_url, JOB_ID, 1)
    assert np.all(np.isfinite(final))
    assert world.kgc_releases() == ROUNDS
    world.refused_by_kgc(
        world.forged_release(ROUNDS, payload, round0, closed_set=closed0, audits=audits0),
        409,
        "round-out-of-range",
    )


# ---------------------------------------------------------------------- tokens and files


def test_a_token_for_one_ps_is_refused_by_another_ps_and_by_the_kgc(world: World) -> None:
    cluster = world.cluster
    enrolment = cluster.enrol("param-server-2", "param_server")
    second = cluster.spawn(
        "param_server_2",
        [
            "-m", "trapdoor.ps", "serve",
            "--db", f"sqlite:///{cluster.workdir}/ps2.db",
            "--kgc", cluster.kgc_url, "--port", "0",
            f"--enrol-subject={enrolment['subject_id']}",
            f"--enrol-code={enrolment['code']}",  # a code may start with "-"
        ],
        {
            "TRAPDOOR_PS_PASSPHRASE": "second-ps-passphrase",
            "TRAPDOOR_PS_ADMIN_TOKEN": "second-admin",
        },
    )  # fmt: skip
    cluster.wait_ready([second], 120)
    assert second.url
    token = world.clients[0].token(world.ps_subject)  # what participant 0 sent to PS 1
    with pytest.raises(ServiceError) as info:
        ServiceClient(second.url, token).get_json(f"/v1/jobs/{JOB_ID}")
    assert (info.value.status, info.value.code) == (401, "invalid-token")
    # and the same token is still good where it belongs
    assert ServiceClient(world.ps_url, token).get_json(f"/v1/jobs/{JOB_ID}")["job_id"] == JOB_ID
    # the PS's own KGC token is no participant token at either PS
    kgc_token = world.rogue._token()
    with pytest.raises(ServiceError) as info:
        ServiceClient(world.ps_url, kgc_token).get_json(f"/v1/jobs/{JOB_ID}")
    assert info.value.status == 401
    # a participant's PS token is refused by the KGC
    with pytest.raises(ServiceError) as info:
        ServiceClient(cluster.kgc_url, token).post_json(
            "/v1/jobs", {"job_id": "stolen", "terms": {}}
        )
    assert info.value.status == 401


def test_huge_bodies_and_huge_round_numbers_are_refused_up_front(world: World) -> None:
    kgc = ServiceClient(world.cluster.kgc_url)
    with pytest.raises(ServiceError) as info:
        kgc.post_json("/v1/tokens", {"pad": "x" * (2 * 1024 * 1024)}, auth=False)
    assert info.value.status == 413
    ops = world.cluster.ps_operator()
    with pytest.raises(ServiceError) as info:
        ops.get_json(f"/v1/jobs/{JOB_ID}/rounds/{2**63}")
    assert info.value.status == 404


def test_databases_and_logs_are_owner_only(world: World) -> None:
    workdir = world.cluster.workdir
    for name in ("kgc.db", "ps.db"):
        mode = stat.S_IMODE(os.stat(workdir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    for log in world.cluster.logs.values():
        mode = stat.S_IMODE(os.stat(log).st_mode)
        assert mode == 0o600, (log, oct(mode))
