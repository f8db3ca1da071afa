"""One garbage upload: the round is re-run once from ``W_t``, then the job goes on or fails.

Real KGC, PS and three real participant nodes (digits, IID); a fourth participant, driven
here through the client library, uploads garbage in round 0, in both aggregation modes:
an encryption of out-of-range values (bcp), or uniformly random ring values under a
proper statement and seed (masked). There are no range proofs, so nobody can tell before
the release. Every contributor
opens the release, finds it undecodable, and signs a report naming the bundle; the PS
rolls round 0 back to ``W_0`` and runs it once more over exactly the same set (run 1),
and the KGC releases that run only with every member's report.

- **transient**: the fourth participant uploads a proper update in run 1: the job
  finishes, every node holds the same model as the fourth participant, and the KGC
  holds three releases (round 0 twice, round 1 once);
- **persistent**: garbage again in run 1: the job fails with a clear reason at the PS and
  at every node, and the KGC refuses a third release of round 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import json_column, read_rows

from trapdoor.crypto.masking import vector_to_bytes
from trapdoor.crypto.signing import b64decode, b64encode
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame, encode_ring_frame
from trapdoor.demo.cluster import LocalCluster, wait_until
from trapdoor.ml.models import MLP
from trapdoor.participant.client import (
    JobView,
    ParticipantClient,
    PreparedMaskedUpload,
    PreparedUpload,
    UndecodableReleaseError,
)
from trapdoor.participant.node import dataset_partitions
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.upload import build_masked_upload_statement, seed_sha256

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 3
ROUNDS = 2
LAYERS = [64, 8, 10]
ENCODINGS = {
    "bcp": {"frac_bits": 20, "slot_bits": 29, "slot_bound": 64.0, "clip_bound": 16.0, "width": 16},
    "masked": {"frac_bits": 20, "clip_bound": 16.0, "model_bound": 32.0},
}
AGGREGATIONS = sorted(ENCODINGS)
TIMEOUT = 240.0


@dataclass
class World:
    cluster: LocalCluster
    poisoner: ParticipantClient
    subjects: list[str]  # the nodes' subject ids, then the poisoner's
    w0: np.ndarray
    X: np.ndarray
    y: np.ndarray

    def create_job(self, job_id: str, aggregation: str) -> None:
        _, parts = dataset_partitions("digits", NODES, "iid", 7)
        sizes = [len(p) for p in parts] + [len(self.y)]
        self.cluster.ps_operator().post_json(
            "/v1/jobs",
            {
                "job_id": job_id,
                "model": MLP(LAYERS).spec(),
                "initial_weights": b64encode(np.asarray(self.w0, dtype="<f8").tobytes()),
                "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 32, "seed": 7},
                "participants": [
                    {"subject_id": s, "num_samples": n}
                    for s, n in zip(self.subjects, sizes, strict=True)
                ],
                "quorum": NODES + 1,
                "rounds": ROUNDS,
                "round_deadline_seconds": 3600,
                "below_quorum_policy": "fail",
                "aggregation": aggregation,
                "encoding": ENCODINGS[aggregation],
            },
        )
        for i in range(NODES):
            self.cluster.node_operator(i).post_json(
                "/v1/jobs", {"ps_url": self.cluster.ps_url, "job_id": job_id}
            )

    def contribute(
        self, job: JobView, t: int, weights: np.ndarray, *, garbage: bool
    ) -> np.ndarray | UndecodableReleaseError:
        """Play round ``t`` (its current run) as the fourth participant, all the way to
        the model; an undecodable release is reported, as an honest client does."""
        client, ps_url = self.poisoner, self.cluster.ps_url
        if job.aggregation == "masked":
            masked = client.prepare_masked_update(job, t, weights, self.X, self.y)
            client.upload_masked(job, _random_ring(client, job, masked) if garbage else masked)
            client.wait_for_release(ps_url, job.job_id, t, TIMEOUT)
            try:
                return client.download_model(ps_url, job.job_id, t, weights)
            except UndecodableReleaseError as exc:
                client.report_undecodable(job, exc)
                return exc
        prepared = client.prepare_update(job, t, weights, self.X, self.y)
        if garbage:
            prepared = _out_of_range(client, job, prepared)
        client.commit(job, prepared)
        client.wait_for_round(ps_url, job.job_id, t, TIMEOUT, at_least="committed")
        client.upload(job, prepared, client.closed_set(job, t, prepared.run))
        client.audit_until_released(job, t, TIMEOUT, own=prepared.vector)
        try:
            return client.download_model(ps_url, job.job_id, t)
        except UndecodableReleaseError as exc:
            client.report_undecodable(job, exc)
            return exc

    def kgc_releases(self, job_id: str) -> list[tuple[int, int, int]]:
        """(round, run, number of undecodable reports) of every release the KGC made."""
        rows = read_rows(
            self.cluster.workdir / "kgc.db",
            "SELECT round, run, undecodable FROM kgc_releases WHERE job_id = :j "
            "ORDER BY round, run",
            j=job_id,
        )
        return [(int(r), int(run), len(json_column(u) or [])) for r, run, u in rows]

    def node_job(self, i: int, job_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
        op = self.cluster.node_operator(i)
        found: dict[str, Any] = wait_until(
            f"node {i} to reach {statuses}",
            lambda: (j := op.get_json(f"/v1/jobs/{job_id}"))["status"] in statuses and j,
            TIMEOUT,
        )
        return found


def _out_of_range(
    client: ParticipantClient, job: JobView, prepared: PreparedUpload
) -> PreparedUpload:
    """An honest-looking upload (committed, proven randomness) of plaintexts ``N/2``:
    added to any model, every slot overflows."""
    garbage = [job.packing.modulus // 2] * job.packing.num_plaintexts
    vector, randomness = client.encryptor(job).encrypt_with_randomness(garbage, client.rng)
    return PreparedUpload(
        prepared.round, vector, vector_sha256(vector), prepared.metrics, randomness
    )


def _random_ring(
    client: ParticipantClient, job: JobView, prepared: PreparedMaskedUpload
) -> PreparedMaskedUpload:
    """A properly signed masked upload (its own fresh seed) whose ``y`` is uniformly random
    ring values: unmasked, the round's sum is random too, far beyond the model bound."""
    layout = job.masked_layout
    frame = decode_frame(prepared.frame, kind=RING_FRAME_KIND)
    garbage = vector_to_bytes(
        np.random.default_rng(99).integers(0, 2**32, layout.length, dtype=np.uint32),
        layout.ring,
    )
    statement = build_masked_upload_statement(
        client.identity.signing_key,
        job.terms,
        round_number=prepared.round,
        subject_id=client.identity.subject_id,
        payload_sha256=hashlib.sha256(garbage).hexdigest(),
        seed_sha256=seed_sha256(frame.header["seed"]),
        run=prepared.run,
    )
    header = {**frame.header, "statement": statement}
    for name in ("kind", "bits", "num_elements", "sha256"):
        header.pop(name)
    return dataclasses.replace(
        prepared,
        frame=encode_ring_frame(
            garbage, bits=layout.ring.bits, num_elements=layout.length, extra_header=header
        ),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("undecodable")
    with LocalCluster(workdir) as cluster:
        subjects = cluster.start_all(NODES, dataset="digits", partition_seed=7)
        fourth = cluster.enrol("fourth", "participant")
        poisoner = ParticipantClient.enrol(
            cluster.kgc_url, fourth["subject_id"], fourth["code"], rng=random.Random(4)
        )
        dataset, _ = dataset_partitions("digits", NODES, "iid", 7)
        w0 = MLP(LAYERS).init_parameters(np.random.default_rng(7))
        try:
            yield World(
                cluster,
                poisoner,
                [*subjects, poisoner.identity.subject_id],
                np.asarray(w0),
                dataset.X_train[:120],
                dataset.y_train[:120],
            )
        finally:
            poisoner.close()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_one_garbage_upload_costs_one_re_run_and_the_job_goes_on(
    world: World, aggregation: str
) -> None:
    job_id = f"undecodable-once-{aggregation}"
    world.create_job(job_id, aggregation)
    job = world.poisoner.fetch_job(world.cluster.ps_url, job_id)
    ps = world.cluster.ps_operator()

    report = world.contribute(job, 0, world.w0, garbage=True)
    assert isinstance(report, UndecodableReleaseError) and report.binding.run == 0
    wait_until(
        "the re-run", lambda: ps.get_json(f"/v1/jobs/{job_id}/rounds/0")["run"] == 1, TIMEOUT
    )
    w1 = world.contribute(job, 0, world.w0, garbage=False)  # run 1: a proper update
    assert isinstance(w1, np.ndarray) and np.all(np.isfinite(w1))
    w2 = world.contribute(job, 1, w1, garbage=False)
    assert isinstance(w2, np.ndarray)

    wait_until(
        "the job to finish",
        lambda: ps.get_json(f"/v1/jobs/{job_id}")["status"] == "finished",
        TIMEOUT,
    )
    for i in range(NODES):
        node_job = world.node_job(i, job_id, ("finished",))
        round0 = next(r for r in node_job["rounds"] if r["round"] == 0)
        assert "undecodable_run_0" in round0, round0
        model = world.cluster.node_operator(i).get_json(f"/v1/jobs/{job_id}/model")
        assert model["round"] == ROUNDS - 1
        assert np.array_equal(np.frombuffer(b64decode(model["weights"]), dtype="<f8"), w2)
    assert world.kgc_releases(job_id) == [(0, 0, 0), (0, 1, NODES + 1), (1, 0, 0)]
    round0 = ps.get_json(f"/v1/jobs/{job_id}/rounds/0")
    assert (round0["status"], round0["run"], len(round0["contributors"])) == (
        "released",
        1,
        NODES + 1,
    )


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_garbage_again_in_the_re_run_fails_the_job_and_nothing_more_is_released(
    world: World, aggregation: str
) -> None:
    job_id = f"undecodable-twice-{aggregation}"
    world.create_job(job_id, aggregation)
    job = world.poisoner.fetch_job(world.cluster.ps_url, job_id)
    ps = world.cluster.ps_operator()

    assert isinstance(world.contribute(job, 0, world.w0, garbage=True), UndecodableReleaseError)
    wait_until(
        "the re-run", lambda: ps.get_json(f"/v1/jobs/{job_id}/rounds/0")["run"] == 1, TIMEOUT
    )
    again = world.contribute(job, 0, world.w0, garbage=True)
    assert isinstance(again, UndecodableReleaseError) and again.binding.run == 1

    wait_until(
        "the job to fail", lambda: ps.get_json(f"/v1/jobs/{job_id}")["status"] == "failed", TIMEOUT
    )
    round0 = ps.get_json(f"/v1/jobs/{job_id}/rounds/0")
    assert (round0["status"], round0["run"]) == ("failed", 1)
    for i in range(NODES):
        node_job = world.node_job(i, job_id, ("failed",))
        assert "did not decode either" in node_job["error"], node_job
    assert world.kgc_releases(job_id) == [(0, 0, 0), (0, 1, NODES + 1)]
