"""Dropouts and deadlines (short ``round_deadline_seconds``), on the gunicorn deployment.

A participant that fetched the job and then vanishes counts as a zero update: the round
closes at the deadline with the quorum and only the contributors get ``W_1``. Without a
quorum, policy ``fail`` fails the round and the job; ``stay-open`` waits for a late upload.
"""

from __future__ import annotations

import time

import pytest
from conftest import Deployment
from fault_support import create_job

from trapdoor.service.http import ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

DEADLINE = 4.0


def test_dropout_closes_at_deadline_with_quorum(deployment: Deployment) -> None:
    cluster, clients = deployment.cluster, deployment.clients[8:12]
    job = create_job(cluster, clients, "dropout", quorum=3, deadline=DEADLINE)
    try:
        clients[3].fetch_job(job.ps_url, job.job_id)  # joined, then drops out
        job.play(range(3))  # the set closes at the commit deadline with three
        job.wait_status(["released"], timeout=60)
        assert job.round()["contributors"] == sorted(job.subjects[:3])
        job.check_model(range(3))  # W_0 + Σ over the three: the dropout adds nothing
        with pytest.raises(ServiceError) as info:
            clients[3].download_bundle(job.ps_url, job.job_id, 0)
        assert (info.value.status, info.value.code) == (403, "not-a-contributor")
    finally:
        job.close()


def test_deadline_without_quorum_fails_under_policy_fail(deployment: Deployment) -> None:
    cluster, clients = deployment.cluster, deployment.clients[12:16]
    job = create_job(cluster, clients, "deadline-fail", quorum=3, deadline=DEADLINE, policy="fail")
    try:
        for i in range(2):
            job.commit(i)
        job.wait_status(["failed"], timeout=60)
        assert job.as_participant(0).get_json(f"/v1/jobs/{job.job_id}")["status"] == "failed"
        with pytest.raises(ServiceError) as info:
            job.commit(2)
        assert (info.value.status, info.value.code) == (409, "round-not-open")
        with pytest.raises(ServiceError) as info:
            clients[0].download_bundle(job.ps_url, job.job_id, 0)
        assert info.value.status == 409
        assert job.round()["commitments"] == 2 and job.round()["uploads"] == 0
    finally:
        job.close()


def test_deadline_without_quorum_stays_open_until_a_late_upload(deployment: Deployment) -> None:
    cluster, clients = deployment.cluster, deployment.clients[16:20]
    job = create_job(cluster, clients, "deadline-stay", quorum=3, deadline=DEADLINE)
    try:
        for i in range(2):
            job.commit(i)
        time.sleep(DEADLINE + 2)
        status = job.round()
        assert status["status"] == "open" and status["commitments"] == 2
        job.commit(2)  # past the deadline with a quorum now: the set closes at once
        assert job.round()["status"] == "committed"
        for i in range(3):
            job.upload(i)
        job.audit(range(3))
        job.wait_status(["released"], timeout=60)
        job.check_model(range(3))
    finally:
        job.close()
