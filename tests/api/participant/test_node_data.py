"""A node's own data checked against the job at join, through the operator API.

A CSV the job's model cannot train (a feature count or a label it has no class for) is
refused at join with 422 ``bad-data`` naming the file, shown in the node's status, and
nothing is uploaded; a CSV that fits joins and uploads. Fake KGC and PS of
:mod:`trapdoor.participant.testing`; the job's model is ``MLP([8, 5, 3])``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.ml.data import DataError
from trapdoor.participant.node_api import create_app
from trapdoor.participant.testing import KGC_URL, PS_URL, FakeNetwork, JobWorld

ADMIN = {"Authorization": "Bearer node-admin"}


def _csv(path: Path, features: int, classes: int, rows: int = 40) -> Path:
    gen = np.random.default_rng(2)
    table = np.column_stack([gen.random((rows, features)), gen.integers(0, classes, rows)])
    header = ",".join([f"f{i}" for i in range(features)] + ["label"])
    np.savetxt(path, table, delimiter=",", header=header, comments="")
    return path


def _app(tmp_path: Path, data: Path) -> Flask:
    return create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/node.db",
            "ADMIN_TOKEN": "node-admin",
            "PASSPHRASE": "node-pass",
            "BACKGROUND": False,
            "DATA_PATH": str(data),
            "DATA_TEST_FRACTION": 0.25,
            "POLL_SECONDS": 0.05,
        }
    )


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    return JobWorld(params_1024[0], rng, ["p0", "node", "p2"])  # MLP([8, 5, 3])


@pytest.fixture
def enrolled(
    request: pytest.FixtureRequest, tmp_path: Path, world: JobWorld, network: FakeNetwork
) -> Iterator[FlaskClient]:
    """The operator's client of a node serving the CSV ``(features, classes)`` of the
    test's parameter, enrolled as ``node`` in the fake KGC's signed job."""
    features, classes = request.param
    app = _app(tmp_path, _csv(tmp_path / "mine.csv", features, classes))
    client = app.test_client()
    network.kgc.codes["node"] = "code-node"
    body = {"kgc_url": KGC_URL, "subject_id": "node", "code": "code-node"}
    assert client.post("/v1/enrol", json=body, headers=ADMIN).status_code == 201
    world.identities["node"] = app.extensions["participant_node"].client().identity
    world.resign()
    yield client
    app.extensions["participant_node"].close()


def _join(client: FlaskClient) -> tuple[int, dict[str, str]]:
    response = client.post("/v1/jobs", json={"ps_url": PS_URL, "job_id": "unit-1"}, headers=ADMIN)
    return response.status_code, response.json


@pytest.mark.parametrize(
    ("enrolled", "problem"),
    [
        ((7, 3), "7 feature columns, but the job's model takes 8 inputs"),
        ((8, 5), "labels outside 0..2, the job's model has 3 classes"),
    ],
    indirect=["enrolled"],
)
def test_data_the_model_cannot_train_is_refused_at_join_and_nothing_uploaded(
    enrolled: FlaskClient, network: FakeNetwork, tmp_path: Path, problem: str
) -> None:
    status, body = _join(enrolled)
    assert status == 422 and body["error"] == "bad-data"
    assert problem in body["message"] and str(tmp_path / "mine.csv") in body["message"]
    [job] = enrolled.get("/v1/status", headers=ADMIN).json["jobs"]
    assert job["status"] == "refused" and problem in job["error"]
    assert enrolled.get("/v1/jobs/unit-1", headers=ADMIN).json["error"].startswith("bad-data:")
    time.sleep(0.2)
    assert network.ps.uploads == []
    assert [r for r in network.ps.requests if r[0] == "POST"] == []
    # The PS's operator is told why, but not where the node keeps its data.
    told = network.ps.participation["node"]
    assert told["status"] == "declined" and problem in told["reason"]
    assert str(tmp_path) not in told["reason"] and "the node's data" in told["reason"]


@pytest.mark.parametrize("enrolled", [(8, 3)], indirect=True)
def test_a_csv_that_fits_the_model_joins_and_uploads(
    enrolled: FlaskClient, network: FakeNetwork
) -> None:
    status, body = _join(enrolled)
    assert status == 201, body
    assert network.ps.participation["node"] == {"status": "joined", "reason": None}
    deadline = time.monotonic() + 60
    while not network.ps.uploads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [t for t, _frame in network.ps.uploads[:1]] == [0]


def test_a_node_does_not_start_on_data_with_nan(tmp_path: Path) -> None:
    path = _csv(tmp_path / "mine.csv", 8, 3)
    lines = path.read_text().splitlines()
    lines[5] = "nan," + lines[5].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mine\.csv: X_\w+ column 0 \('f0'\) has NaN"):
        _app(tmp_path, path)
