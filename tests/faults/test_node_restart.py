"""A participant node restarted mid-job, and what the services write to their logs.

Three nodes (digits, IID) run a two-round job on the built-in servers (SQLite). Node 0 is
SIGKILLed once it has uploaded round 0 and started again with the same database and
passphrase: it must come back as the same subject (no second enrolment: the code was
one-time), with the keys that open ``W_1``, and finish the job. Then every log of the run
is searched for the secrets that passed through the services.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_support import ENCODING, LAYERS
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.signing import b64decode, b64encode
from trapdoor.demo.cluster import LocalCluster, wait_until
from trapdoor.ml.models import MLP
from trapdoor.participant.client import ParticipantClient
from trapdoor.participant.node import dataset_partitions, load_identity
from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 3
ROUNDS = 2
JOB_ID = "node-restart"


@dataclass
class Run:
    cluster: LocalCluster
    subjects: list[str]
    status_before: dict[str, Any]
    status_after: dict[str, Any]
    node_jobs: list[dict[str, Any]]
    ps_job: dict[str, Any]
    rounds: list[dict[str, Any]]
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir: Path = tmp_path_factory.mktemp("node-restart")
    with LocalCluster(workdir) as cluster:
        subjects = cluster.start_all(NODES, dataset="digits", partition_seed=7)
        _, parts = dataset_partitions("digits", NODES, "iid", 7)
        model = MLP(LAYERS)
        w0 = model.init_parameters(np.random.default_rng(7))
        cluster.ps_operator().post_json(
            "/v1/jobs",
            {
                "job_id": JOB_ID,
                "model": model.spec(),
                "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
                "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 32, "seed": 7},
                "participants": [
                    {"subject_id": s, "num_samples": len(p)}
                    for s, p in zip(subjects, parts, strict=True)
                ],
                "quorum": NODES,  # every round needs node 0: it must really resume
                "rounds": ROUNDS,
                "round_deadline_seconds": 3600,
                "below_quorum_policy": "stay-open",
                "aggregation": "bcp",
                "encoding": ENCODING,
            },
        )
        ops = [cluster.node_operator(i) for i in range(NODES)]
        for op in ops:
            op.post_json("/v1/jobs", {"ps_url": cluster.ps_url, "job_id": JOB_ID})
        ps_ops = cluster.ps_operator()

        def node0_uploaded() -> bool:
            status = ps_ops.get_json(f"/v1/jobs/{JOB_ID}/rounds/0")
            return subjects[0] in status["contributors"]

        wait_until("node 0's round-0 upload", node0_uploaded, 180)
        status_before = ops[0].get_json("/v1/status")
        cluster.kill(cluster.nodes[0])
        cluster.restart(cluster.nodes[0])
        ops[0] = cluster.node_operator(0)
        status_after = ops[0].get_json("/v1/status")

        def finished() -> bool:
            return bool(ps_ops.get_json(f"/v1/jobs/{JOB_ID}")["status"] == "finished")

        wait_until("the job to finish", finished, 240)
        node_jobs = [
            wait_until(
                f"node {i}",
                lambda op=op: (
                    (j := op.get_json(f"/v1/jobs/{JOB_ID}"))["status"] == "finished" and j
                ),
                60,
            )
            for i, op in enumerate(ops)
        ]
        rounds = [ps_ops.get_json(f"/v1/jobs/{JOB_ID}/rounds/{t}") for t in range(ROUNDS)]

        # secrets that went through the services, for the log check
        sessions = sessionmaker(make_engine(cluster.node_dbs[0]))
        identity = load_identity(sessions, cluster.node_passphrase)
        assert identity is not None
        outsider_code = cluster.enrol("outsider", "participant")
        outsider = ParticipantClient.enrol(
            cluster.kgc_url,
            outsider_code["subject_id"],
            outsider_code["code"],
            rng=random.Random(9),
        )
        token = outsider.ps_token(cluster.ps_url)
        with pytest.raises(ServiceError):  # the token reaches the PS (and is refused)
            outsider.fetch_job(cluster.ps_url, JOB_ID)
        model = ops[0].get_json(f"/v1/jobs/{JOB_ID}/model")
        weights = np.frombuffer(b64decode(model["weights"]), dtype="<f8")
        found = {
            "kgc admin token": cluster.kgc_admin_token,
            "ps admin token": cluster.ps_admin_token,
            "node admin token": cluster.node_admin_token,
            "kgc passphrase": cluster.kgc_passphrase,
            "ps passphrase": cluster.ps_passphrase,
            "node passphrase": cluster.node_passphrase,
            "bearer token": token,
            "node 0 secret exponent": format(int(identity.secret_key.a), "x"),
            "outsider secret exponent": format(int(outsider.identity.secret_key.a), "x"),
            **{f"enrolment code {i}": c for i, c in enumerate(cluster.enrolment_codes)},
            **{
                f"released weight {i}": repr(float(w))
                for i, w in enumerate(weights[:20])
                if abs(w) > 1e-3
            },
        }
        outsider.close()
        yield Run(
            cluster,
            subjects,
            status_before,
            status_after,
            node_jobs,
            ps_ops.get_json(f"/v1/jobs/{JOB_ID}"),
            rounds,
            found,
        )


def test_restarted_node_resumes_without_reenrolling(run: Run) -> None:
    before, after = run.status_before["identity"], run.status_after["identity"]
    assert before["enrolled"] and after["enrolled"]
    assert after["subject_id"] == before["subject_id"] == run.subjects[0]
    assert len(run.cluster.enrolment_codes) == 1 + NODES + 1  # PS, nodes, outsider: no more
    assert run.ps_job["status"] == "finished"
    for rnd in run.rounds:  # node 0 contributed to every round, before and after its restart
        assert rnd["status"] == "released"
        assert rnd["contributors"] == sorted(run.subjects)
    node0 = run.node_jobs[0]
    assert [r["contributed"] for r in node0["rounds"]] == [True] * ROUNDS
    # it opened W_1 and W_2 with its own (kept) key: a test accuracy for every round
    assert all(r["test_accuracy"] is not None for r in node0["rounds"])
    accuracies = {tuple(r["test_accuracy"] for r in job["rounds"]) for job in run.node_jobs}
    assert len(accuracies) == 1, "every node holds the same released models"
    restarted_log = run.cluster.nodes[0].log_text()
    assert "listening on" in restarted_log


def test_logs_hold_no_secret_token_passphrase_or_plaintext(run: Run) -> None:
    logs = run.cluster.all_logs()
    assert len(logs) > 0 and "listening on" in logs
    assert len(run.secrets) >= 12
    leaked = [name for name, value in run.secrets.items() if value and value in logs]
    assert leaked == []
