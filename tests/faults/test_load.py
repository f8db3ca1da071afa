"""Load: 50 participants upload into one round at once, across 3 gunicorn workers.

The uploads are encrypted beforehand (one encryptor, the job key) and fired together from
a thread pool, so the workers race on the same round row. Ten participants also send a
second, different encryption of the same update at the same moment: exactly one of the two
may be accepted. The aggregate must be ``W_0 + Σ w_i Δ_i`` with each update counted once.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import KGC_WORKERS, PARTICIPANTS, PS_WORKERS, Deployment
from fault_support import create_job

from trapdoor.service.http import ServiceClient, ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

DOUBLE_SENDERS = 10


def test_services_run_under_gunicorn_with_several_workers(deployment: Deployment) -> None:
    cluster = deployment.cluster
    assert cluster.kgc is not None and cluster.param_server is not None
    for proc, workers in ((cluster.kgc, KGC_WORKERS), (cluster.param_server, PS_WORKERS)):
        log = proc.log_text()
        assert "gunicorn" in " ".join(proc.argv)
        assert log.count("Booting worker") >= workers, log[-2000:]
        health = ServiceClient(proc.url).get_json("/healthz")
        assert health["status"] == "ok" and health["database"]


def test_concurrent_uploads_counted_exactly_once(deployment: Deployment) -> None:
    cluster, clients = deployment.cluster, deployment.clients
    job = create_job(cluster, clients, "load-50", quorum=3)
    try:
        n = len(clients)
        assert n == PARTICIPANTS
        for i in range(n):
            job.commit(i)  # the last commitment closes the set
        frames = [job.frame(i) for i in range(n)]
        extra = {i: job.frame(i, fresh=True) for i in range(DOUBLE_SENDERS)}  # not committed
        tokens = [c.ps_token(job.ps_url) for c in clients]  # fetched up front: only uploads race
        work: list[tuple[int, bytes]] = [(i, f) for i, f in enumerate(frames)]
        work += list(extra.items())
        path = f"/v1/jobs/{job.job_id}/rounds/0/uploads"

        def send(item: tuple[int, bytes]) -> tuple[int, bytes, Any]:
            i, data = item
            try:
                receipt = ServiceClient(job.ps_url, tokens[i], timeout=300).post_bytes(path, data)
            except ServiceError as exc:
                return i, data, exc
            return i, data, receipt

        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(send, work))
        elapsed = time.monotonic() - start

        accepted: dict[int, dict[str, Any]] = {}
        for i, data, answer in results:
            if isinstance(answer, ServiceError):
                assert (answer.status, answer.code) in (
                    (409, "duplicate-upload"),
                    (409, "round-not-open"),
                    (422, "upload-mismatch"),  # a second, uncommitted ciphertext
                ), answer
                continue
            assert i not in accepted, f"participant {i} accepted twice"
            accepted[i] = answer
            receipt = answer["receipt"]
            assert receipt["subject_id"] == job.subjects[i]
            header_digest = hashlib.sha256(data[9 + int.from_bytes(data[5:9], "big") :])
            assert receipt["sha256"] == header_digest.hexdigest()
        assert sorted(accepted) == list(range(n)), "every participant has exactly one upload"
        job.audit(range(n))

        job.wait_status(["released"], timeout=120)
        status = job.round()
        assert status["uploads"] == n
        assert status["contributors"] == sorted(job.subjects)
        job.check_model(range(n), openers=[0, n // 2, n - 1])
        print(f"{len(work)} uploads ({n} participants) in {elapsed:.1f} s")
    finally:
        job.close()
