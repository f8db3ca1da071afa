"""``GET /metrics`` on the parameter server: the operator's Prometheus scrape.

Request counts by URL rule (never by job id), latency, refusals by error code, and the
domain's counts (jobs, rounds, uploads stored, release latency, database size).
"""

from __future__ import annotations

import numpy as np
from ps_api_support import ApiWorld
from ps_api_support import expect_error as _error

from trapdoor.ps.testing import make_definition


def _scrape(api: ApiWorld) -> str:
    response = api.client.get("/metrics", headers=api.admin)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in the scrape")


def test_the_operator_scrapes_requests_errors_and_the_domains_counts(api: ApiWorld) -> None:
    _error(api.client.get("/metrics"), 401)
    _error(api.client.get("/metrics", headers=api.auth(api.participants[0])), 401)
    w0 = np.random.default_rng(1).normal(0.0, 0.5, 40)
    created = api.client.post(
        "/v1/jobs", json=make_definition("secret-job-name", api.participants, w0), headers=api.admin
    )
    assert created.status_code == 201
    api.client.get("/v1/jobs/nope", headers=api.admin)  # 404 job-not-found
    text = _scrape(api)

    assert (
        _value(text, 'trapdoor_http_requests_total{endpoint="/v1/jobs",method="POST",status="201"}')
        == 1
    )
    assert _value(text, 'trapdoor_errors_total{code="job-not-found"}') == 1
    assert _value(text, 'trapdoor_errors_total{code="unauthorized"}') == 2
    assert 'endpoint="/v1/jobs/<job_id>"' in text and "secret-job-name" not in text
    assert "trapdoor_http_request_seconds_bucket" in text
    assert _value(text, 'trapdoor_jobs{status="running"}') == 1
    assert _value(text, 'trapdoor_rounds{status="open"}') == 1
    assert _value(text, "trapdoor_uploads_stored") == 0
    assert _value(text, "trapdoor_database_bytes") > 0
    # The scrape itself is counted from the next one on.
    assert (
        _value(
            _scrape(api),
            'trapdoor_http_requests_total{endpoint="/metrics",method="GET",status="200"}',
        )
        >= 1
    )
