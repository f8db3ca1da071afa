"""One garbage upload: the round is re-run once from ``W_t``, then the job goes on or fails.

Real KGC, PS and three real participant nodes (digits, IID); a fourth participant, driven
here through the client library, uploads an encryption of out-of-range values in round 0
(there are no range proofs, so nobody can tell before the release). Every contributor
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

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import json_column, read_rows

from common.protocol import vector_sha256
from common.signing import b64decode, b64encode
from participant.client import (
    JobView,
    ParticipantClient,
    PreparedUpload,
    UndecodableReleaseError,
)
from participant.cluster import LocalCluster, wait_until
from participant.models import MLP
from participant.node import dataset_partitions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 3
ROUNDS = 2
LAYERS = [64, 8, 10]
ENCODING = {"frac_bits": 20, "slot_bits": 29, "slot_bound": 64.0, "clip_bound": 16.0, "width": 16}
TIMEOUT = 240.0


@dataclass
class World:
    cluster: LocalCluster
    poisoner: ParticipantClient
    subjects: list[str]  # the nodes' subject ids, then the poisoner's
    w0: np.ndarray
    X: np.ndarray
    y: np.ndarray

    def create_job(self, job_id: str) -> None:
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
                "aggregation": "bcp",
                "encoding": ENCODING,
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


def test_one_garbage_upload_costs_one_re_run_and_the_job_goes_on(world: World) -> None:
    job_id = "undecodable-once"
    world.create_job(job_id)
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


def test_garbage_again_in_the_re_run_fails_the_job_and_nothing_more_is_released(
    world: World,
) -> None:
    job_id = "undecodable-twice"
    world.create_job(job_id)
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
