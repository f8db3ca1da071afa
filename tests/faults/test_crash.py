"""Crashes: the parameter server SIGKILLed mid-round, the KGC down during a release.

Both services run under gunicorn on PostgreSQL (tests/faults/conftest.py). A restart uses
the same command, port and database, as a supervisor (systemd, Kubernetes) would.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import Deployment
from fault_support import create_job
from sqlalchemy import text

from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]


def _count(url: str, sql: str, **params: Any) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())
    finally:
        engine.dispose()


def test_ps_sigkill_mid_round_keeps_every_acknowledged_upload(deployment: Deployment) -> None:
    cluster, clients = deployment.cluster, deployment.clients[:4]
    job = create_job(cluster, clients, "crash-ps", quorum=3)
    try:
        for i in range(4):
            job.commit(i)  # the last commitment closes the set
        acknowledged = {i: job.upload(i) for i in (0, 1)}
        in_flight = job.frame(2)
        with ThreadPoolExecutor(max_workers=1) as pool:  # an upload racing the crash
            future = pool.submit(job.upload, 2, in_flight)
            time.sleep(0.05)
            assert cluster.param_server is not None
            cluster.kill(cluster.param_server)
            try:
                acknowledged[2] = future.result()
            except Exception:
                job.accepted.pop(2, None)
        cluster.restart(cluster.param_server)

        status = job.round()
        assert status["status"] == "committed"
        stored = set(status["contributors"])
        assert {job.subjects[i] for i in acknowledged} <= stored, "an acknowledged upload was lost"
        if job.subjects[2] not in stored:
            job.upload(2)  # the client retries an upload that was never acknowledged
        else:
            with pytest.raises(ServiceError) as info:  # stored before the crash: a repeat is 409
                job.upload(2)
            assert info.value.status == 409
        job.upload(3)
        job.audit(range(4))
        job.wait_status(["released"], timeout=90)
        assert job.round()["contributors"] == sorted(job.subjects)
        job.check_model(range(4))
    finally:
        job.close()


def test_kgc_down_during_release_leaves_round_closed_then_releases(
    deployment: Deployment,
) -> None:
    cluster, clients = deployment.cluster, deployment.clients[4:8]
    job = create_job(cluster, clients, "crash-kgc", quorum=3)
    try:
        for i in range(4):
            job.commit(i)
        frames = [job.frame(i) for i in range(4)]
        for c in clients:
            c.ps_token(cluster.ps_url)  # cached for 300 s: uploads need no KGC
        assert cluster.kgc is not None
        cluster.kill(cluster.kgc)
        for i in range(4):
            job.upload(i, frames[i])
        job.audit(range(4))  # audits go to the PS only
        assert job.wait_status(["closed", "released"]) == "closed"
        time.sleep(7)  # past one retry back-off (5 s): still not released, nothing half-done
        assert job.round()["status"] == "closed"
        with pytest.raises(ServiceError) as info:
            clients[0].download_bundle(job.ps_url, job.job_id, 0)
        assert (info.value.status, info.value.code) == (409, "not-released")
        db = deployment.database_url
        assert (
            _count(
                db,
                "SELECT count(*) FROM releases WHERE job_id = :j AND bundle IS NOT NULL",
                j=job.job_id,
            )
            == 0
        )
        assert _count(db, "SELECT count(*) FROM kgc_releases WHERE job_id = :j", j=job.job_id) == 0

        cluster.restart(cluster.kgc)
        job.wait_status(["released"], timeout=60)
        job.check_model(range(4))
        assert (
            _count(
                db,
                "SELECT count(*) FROM releases WHERE job_id = :j AND bundle IS NOT NULL "
                "AND request IS NULL",
                j=job.job_id,
            )
            == 1
        )
        assert _count(db, "SELECT count(*) FROM kgc_releases WHERE job_id = :j", j=job.job_id) == 1
        assert job.as_participant(0).get_json(f"/v1/jobs/{job.job_id}")["status"] == "finished"
    finally:
        job.close()
