"""``PUT /v1/jobs/<id>/participation``: a participant's node joined a job or declined it.

The operator's view of the job shows each participant's latest word (and only the
operator's: the reasons are between a node and the operator); a bad notice is 400 and
changes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ps_api_support import ApiWorld
from ps_api_support import expect_error as _error
from sqlalchemy import select

from trapdoor.ps.models import Job
from trapdoor.ps.testing import make_definition

PATH = "/v1/jobs/job-a/participation"


def _create(api: ApiWorld) -> None:
    w0 = np.random.default_rng(1).normal(0.0, 0.5, 40)
    definition = make_definition("job-a", api.participants, w0)
    assert api.client.post("/v1/jobs", json=definition, headers=api.admin).status_code == 201


def _stored(api: ApiWorld) -> dict[str, Any]:
    with api.engine.connect() as conn:
        value = conn.scalar(select(Job.participation).where(Job.job_id == "job-a"))
    return dict(value or {})


def test_the_operator_sees_who_joined_and_who_declined_and_why(api: ApiWorld) -> None:
    _create(api)
    p1, p2, p3, _ = api.participants
    joined = api.client.put(PATH, json={"status": "joined"}, headers=api.auth(p1))
    assert joined.status_code == 200, joined.get_json()
    assert joined.get_json()["status"] == "joined" and joined.get_json()["reason"] is None
    reason = "bad-data: the node's data has 7 feature columns, but the model takes 8 inputs"
    declined = {"status": "declined", "reason": reason}
    assert api.client.put(PATH, json=declined, headers=api.auth(p2)).status_code == 200

    view = api.client.get("/v1/jobs/job-a", headers=api.admin).get_json()
    said = view["participation"]
    assert said["p1"]["status"] == "joined"
    assert said["p2"] == {"status": "declined", "reason": reason, "at": said["p2"]["at"]}
    assert "p3" not in said
    # A participant's view of the job carries none of it.
    assert "participation" not in api.client.get("/v1/jobs/job-a", headers=api.auth(p3)).get_json()
    # The latest word replaces the earlier one (the node fixed its data and joined).
    assert api.client.put(PATH, json={"status": "joined"}, headers=api.auth(p2)).status_code == 200
    assert _stored(api)["p2"]["status"] == "joined"


def test_bad_notices_change_nothing(api: ApiWorld) -> None:
    _create(api)
    p1 = api.participants[0]
    _error(api.client.put(PATH, json={"status": "joined"}), 401)
    _error(api.client.put(PATH, json={"status": "joined"}, headers=api.admin), 401)
    _error(
        api.client.put(PATH, json={"status": "joined"}, headers=api.auth(api.stranger)),
        403,
        "not-a-participant",
    )
    _error(
        api.client.put(
            "/v1/jobs/nope/participation", json={"status": "joined"}, headers=api.auth(p1)
        ),
        404,
    )
    for body in (
        {"status": "maybe"},
        {"status": "declined"},
        {"status": "declined", "reason": "  "},
        {"status": "declined", "reason": "x" * 501},
        {"status": "declined", "reason": "line\nbreak"},
        {"status": "joined", "reason": "why not"},
        {"status": "joined", "extra": 1},
        [],
    ):
        response = api.client.put(PATH, json=body, headers=api.auth(p1))
        _error(response, 400)
    assert _stored(api) == {}
