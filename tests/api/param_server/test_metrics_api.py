"""Shared evaluation metrics at the PS: ``POST /v1/jobs/<id>/rounds/<t>/metrics``.

Opt-in per job (``share_metrics``); only a contributor of a released round may report,
once, signed; every refusal stores nothing, and the round's view shows the example-weighted
average of what was reported.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from ps_api_support import ApiWorld
from ps_api_support import expect_error as _error
from sqlalchemy import select

from trapdoor.crypto.blocks import VectorEncryptor
from trapdoor.crypto.signing import sign_json
from trapdoor.protocol.metrics import MAX_METRICS, MetricsReport, build_metrics_report
from trapdoor.ps.models import Round
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
)

LENGTH = 40
PATH = "/v1/jobs/{job}/rounds/{t}/metrics"


def _released_job(api: ApiWorld, job_id: str, *, share: bool, contributors: int = 3) -> Any:
    """A job whose round 0 was released over ``contributors`` of the four participants."""
    w0 = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    definition = make_definition(job_id, api.participants, w0, quorum=2, share_metrics=share)
    created = api.client.post("/v1/jobs", json=definition, headers=api.admin)
    assert created.status_code == 201, created.get_json()
    job = created.get_json()
    assert job["definition"]["share_metrics"] is share
    terms = job_terms_of(job, api.kgc.info(), param_server=PS_SUBJECT_ID)
    encryptor = VectorEncryptor(job_key_of(job), window=4)
    rng = random.Random(5)
    members = api.participants[:contributors]
    vectors = [(p, p.encrypt(job, np.full(LENGTH, 0.01), encryptor, rng)) for p in members]
    for p, vector in vectors:
        p.commit(api.port, terms, 0, vector)
    # The others never commit: the operator closes the set with the quorum.
    closed = api.client.post(f"/v1/jobs/{job_id}/rounds/0/close", headers=api.admin)
    assert closed.status_code == 200, closed.get_json()
    for p, vector in vectors:
        p.upload(api.port, terms, 0, vector)
    for p, _ in vectors:
        p.audit(api.port, terms, 0)
    assert api.ps.tick().released == [(job_id, 0)]
    return terms


def _report(
    terms: Any, p: TestParticipant, *, t: int = 0, loss: float = 0.5, n: int = 10, **metrics: Any
) -> dict[str, Any]:
    return build_metrics_report(
        p.signing_key,
        terms,
        round_number=t,
        subject_id=p.subject_id,
        loss=loss,
        num_examples=n,
        metrics=metrics or {"accuracy": 0.9},
    )


def _stored(api: ApiWorld, job_id: str) -> dict[str, Any]:
    with api.engine.connect() as conn:
        value = conn.scalar(
            select(Round.metric_reports).where(Round.job_id == job_id, Round.round == 0)
        )
    return dict(value or {})


def test_contributors_report_and_the_round_shows_the_weighted_average(api: ApiWorld) -> None:
    terms = _released_job(api, "shared", share=True)
    p1, p2, p3, p4 = api.participants
    path = PATH.format(job="shared", t=0)
    first = api.client.post(
        path, json=_report(terms, p1, loss=1.0, n=10, accuracy=0.5), headers=api.auth(p1)
    )
    assert first.status_code == 201, first.get_json()
    assert first.get_json() == {"job_id": "shared", "round": 0, "run": 0, "subject_id": "p1"}
    again = api.client.post(
        path, json=_report(terms, p1, loss=1.0, n=10, accuracy=0.5), headers=api.auth(p1)
    )
    assert again.status_code == 200  # a retry of the same report
    second = _report(terms, p2, loss=2.0, n=30, accuracy=1.0, auc=0.75)
    assert api.client.post(path, json=second, headers=api.auth(p2)).status_code == 201

    view = api.client.get("/v1/jobs/shared/rounds/0", headers=api.admin).get_json()
    shared = view["shared_metrics"]
    assert shared["reporters"] == 2 and shared["num_examples"] == 40
    assert shared["reported"] == ["p1", "p2"]
    assert shared["loss"] == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)
    assert shared["metrics"]["accuracy"] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert shared["metrics"]["auc"] == pytest.approx(0.75)  # only p2 gave it
    assert shared["coverage"] == {"accuracy": 40, "auc": 30}
    # A participant of the job sees the same view.
    assert (
        api.client.get("/v1/jobs/shared/rounds/0", headers=api.auth(p3)).get_json()[
            "shared_metrics"
        ]
        == shared
    )
    assert set(_stored(api, "shared")) == {"p1", "p2"}
    del p4


def test_refusals_store_nothing(api: ApiWorld) -> None:
    terms = _released_job(api, "shared", share=True)
    p1, p2, p3, p4 = api.participants
    path = PATH.format(job="shared", t=0)
    good = _report(terms, p1)
    _error(api.client.post(path, json=good), 401)
    _error(api.client.post(path, json=good, headers=api.admin), 401)
    # p4 did not contribute to round 0: it cannot open the model, so it has nothing to score.
    _error(
        api.client.post(path, json=_report(terms, p4), headers=api.auth(p4)),
        403,
        "not-a-contributor",
    )
    _error(
        api.client.post(path, json=_report(terms, api.stranger), headers=api.auth(api.stranger)),
        403,
        "not-a-participant",
    )
    # Someone else's report, posted by p2: signed by another participant.
    _error(api.client.post(path, json=good, headers=api.auth(p2)), 422, "metrics_report-mismatch")
    _error(
        api.client.post(path, json={**good, "signature": "0" * 128}, headers=api.auth(p1)),
        403,
        "bad-metrics_report-signature",
    )
    # Signed, but for round 1 (posted to round 0) or changed after signing.
    _error(
        api.client.post(path, json=_report(terms, p1, t=1), headers=api.auth(p1)),
        422,
    )
    tampered = {**good, "metrics_report": {**good["metrics_report"], "loss": 0.0}}
    _error(
        api.client.post(path, json=tampered, headers=api.auth(p1)),
        403,
        "bad-metrics_report-signature",
    )
    bad_json = {"data": "{", "content_type": "application/json", "headers": api.auth(p1)}
    _error(api.client.post(path, **bad_json), 400)
    _error(api.client.post(path, json=[1], headers=api.auth(p1)), 400, "malformed-json")
    _error(api.client.post(path, json={"x": 1}, headers=api.auth(p1)), 422, "bad-metrics_report")
    # A round that is not released, a job or round that does not exist.
    _error(
        api.client.post(
            PATH.format(job="shared", t=1), json=_report(terms, p1, t=1), headers=api.auth(p1)
        ),
        409,
        "not-released",
    )
    _error(api.client.post(PATH.format(job="nope", t=0), json=good, headers=api.auth(p1)), 404)
    _error(api.client.post(PATH.format(job="shared", t=9), json=good, headers=api.auth(p1)), 404)
    assert _stored(api, "shared") == {}
    # A second, different report after the first is a conflict; the first stays.
    assert api.client.post(path, json=good, headers=api.auth(p1)).status_code == 201
    other = _report(terms, p1, loss=0.1)
    _error(api.client.post(path, json=other, headers=api.auth(p1)), 409, "duplicate-metrics")
    stored = _stored(api, "shared")["p1"]
    assert MetricsReport.from_json(stored["metrics_report"]).loss == 0.5
    del p3


def test_a_job_that_did_not_opt_in_takes_no_report_and_shows_none(api: ApiWorld) -> None:
    terms = _released_job(api, "private", share=False)
    p1 = api.participants[0]
    _error(
        api.client.post(
            PATH.format(job="private", t=0), json=_report(terms, p1), headers=api.auth(p1)
        ),
        409,
        "metrics-not-shared",
    )
    view = api.client.get("/v1/jobs/private/rounds/0", headers=api.admin).get_json()
    assert "shared_metrics" not in view
    assert _stored(api, "private") == {}


def test_values_a_report_cannot_carry(api: ApiWorld) -> None:
    terms = _released_job(api, "shared", share=True)
    p1 = api.participants[0]
    good = _report(terms, p1)
    body = good["metrics_report"]
    for change in (
        {"loss": "0.5"},
        {"num_examples": 0},
        {"num_examples": True},
        {"metrics": {"bad name": 1.0}},
        {"metrics": {"accuracy": "high"}},
        {"metrics": {f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}},
    ):
        # Re-signed by p1, so only the value check can refuse it.
        changed = {**body, **change}
        signed = {"metrics_report": changed, "signature": sign_json(p1.signing_key, changed)}
        _error(
            api.client.post(PATH.format(job="shared", t=0), json=signed, headers=api.auth(p1)),
            422,
            "bad-metrics_report",
        )
    with pytest.raises(ValueError, match="finite"):
        _report(terms, p1, accuracy=float("nan"))
    assert _stored(api, "shared") == {}
