"""The participant node's domain over a real SQLite database, with fake KGC and PS.

Released models are sealed at rest under a key only the unlocked identity gives; an
identity from an older database pins the KGC's key once; the Alembic history builds the
models' schema.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.sealing import SealError, open_with_passphrase, seal_with_passphrase
from trapdoor.crypto.signing import b64decode, generate_signing_key, public_key_hex
from trapdoor.participant.client import ClientError
from trapdoor.participant.node import (
    LocalData,
    ModelSealer,
    ParticipantNode,
    load_identity,
)
from trapdoor.participant.node_models import NodeIdentity, NodeJob, NodeModel, metadata
from trapdoor.participant.testing import KGC_URL, PS_URL, FakeNetwork, JobWorld
from trapdoor.service.db import make_engine, migrate, session_scope
from trapdoor.service.errors import TrapdoorError, http_status
from trapdoor.service.http import ServiceError

PASSPHRASE = "node passphrase"


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    return JobWorld(params_1024[0], rng, ["p0", "bob", "p2"])


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/node.db"
    migrate("participant", url)
    return url


def _data() -> LocalData:
    rows = np.random.default_rng(0)
    return LocalData(
        rows.random((12, 8)),
        rows.integers(0, 3, 12),
        rows.random((6, 8)),
        rows.integers(0, 3, 6),
        "t",
    )


def _sessions(url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(url), expire_on_commit=False)


def _node(url: str, **kwargs: object) -> ParticipantNode:
    return ParticipantNode(_sessions(url), _data(), PASSPHRASE, poll_seconds=0.01, **kwargs)  # type: ignore[arg-type]


def _store_identity(
    url: str, world: JobWorld, subject: str = "bob", *, pinned: bool = True
) -> None:
    identity = world.identities[subject]
    sealed = identity.to_sealed(PASSPHRASE)
    if not pinned:  # what a node database from before pinning holds
        plain = json.loads(open_with_passphrase(sealed, PASSPHRASE))
        del plain["kgc_verify_key"]
        sealed = seal_with_passphrase(json.dumps(plain).encode(), PASSPHRASE)
    with session_scope(_sessions(url)) as session:
        session.add(
            NodeIdentity(
                id=1,
                subject_id=subject,
                kgc_url=KGC_URL,
                sealed=sealed,
                certificate=identity.certificate,
                created_at=0.0,
            )
        )


def _add_job(url: str, job_id: str = "unit-1", next_round: int = 0) -> None:
    with session_scope(_sessions(url)) as session:
        session.add(
            NodeJob(
                job_id=job_id,
                ps_url=PS_URL,
                skip_rounds=[],
                status="finished",
                next_round=next_round,
                holds_model=True,
                joined_at=0.0,
            )
        )


def _raw_models(url: str) -> list[tuple[str, int, bytes, str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, round, weights, sealing FROM node_models"))
            return [(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
    finally:
        engine.dispose()


@pytest.fixture
def nodes() -> Iterator[list[ParticipantNode]]:
    made: list[ParticipantNode] = []
    yield made
    for node in made:
        node.close()


# --------------------------------------------------------------------------- models at rest


def test_released_models_are_sealed_at_rest_and_survive_a_restart(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    _add_job(db_url, next_round=3)
    weights = np.random.default_rng(5).normal(size=63)
    node = _node(db_url)
    nodes.append(node)
    with session_scope(node.sessions) as session:
        node._store_model(session, "unit-1", 2, weights)

    [(job_id, round_number, blob, sealing)] = _raw_models(db_url)
    assert (job_id, round_number, sealing) == ("unit-1", 2, "a256gcm-v1")
    plain = np.asarray(weights, dtype="<f8").tobytes()
    assert plain not in blob
    assert not any(plain[i : i + 8] in blob for i in range(0, len(plain), 8))  # no one weight
    assert len(blob) == 12 + len(plain) + 16  # nonce, ciphertext, tag

    restarted = _node(db_url)  # same database and passphrase: the same identity
    nodes.append(restarted)
    served = restarted.latest_model("unit-1")
    assert served["round"] == 2
    np.testing.assert_array_equal(np.frombuffer(b64decode(served["weights"]), "<f8"), weights)
    view = restarted.client().fetch_job(PS_URL, "unit-1")
    t, resumed = restarted._initial_state("unit-1", view)
    assert t == 3 and resumed is not None
    np.testing.assert_array_equal(resumed, weights)


def test_each_round_and_job_status_is_one_log_line(
    db_url: str,
    world: JobWorld,
    network: FakeNetwork,
    nodes: list[ParticipantNode],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator follows the protocol in the node's log: one line per event."""
    _store_identity(db_url, world)
    _add_job(db_url, next_round=0)
    node = _node(db_url)
    nodes.append(node)
    with caplog.at_level(logging.INFO, logger="trapdoor.participant.node"):
        node._put_round("unit-1", 0, status="committed")
        node._put_round("unit-1", 0, status="uploaded", contributed=True)
        node._put_round("unit-1", 0, metrics={"note": "no status change"})
        node._set_job("unit-1", status="finished")
    assert [r.getMessage() for r in caplog.records] == [
        "job unit-1 round 0: committed",
        "job unit-1 round 0: uploaded",
        "job unit-1: finished",
    ]


def test_a_sealed_model_opens_only_for_its_job_round_and_identity(world: JobWorld) -> None:
    sealer = ModelSealer(world.identities["bob"])
    blob = sealer.seal("unit-1", 0, np.arange(4.0))
    np.testing.assert_array_equal(sealer.open("unit-1", 0, blob), np.arange(4.0))
    for job_id, round_number in (("unit-2", 0), ("unit-1", 1)):
        with pytest.raises(SealError):
            sealer.open(job_id, round_number, blob)
    with pytest.raises(SealError):
        ModelSealer(world.identities["p0"]).open("unit-1", 0, blob)
    with pytest.raises(SealError):
        sealer.open("unit-1", 0, blob[:-1] + bytes([blob[-1] ^ 1]))
    assert repr(sealer) == "ModelSealer()"  # never the key


def test_a_model_stored_in_the_clear_is_sealed_when_the_identity_unlocks(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    _add_job(db_url, next_round=1)
    weights = np.linspace(-1, 1, 63)
    with session_scope(_sessions(db_url)) as session:  # as an older node wrote it
        session.add(
            NodeModel(
                job_id="unit-1",
                round=0,
                weights=np.asarray(weights, "<f8").tobytes(),
                sealing="none",
            )
        )
    node = _node(db_url)
    nodes.append(node)
    node.client()
    [(_, _, blob, sealing)] = _raw_models(db_url)
    assert sealing == "a256gcm-v1" and np.asarray(weights, "<f8").tobytes() not in blob
    served = node.latest_model("unit-1")
    np.testing.assert_array_equal(np.frombuffer(b64decode(served["weights"]), "<f8"), weights)


# --------------------------------------------------------------------------- pinned KGC key


def test_an_older_identity_pins_the_kgc_key_once_and_stores_it(
    db_url: str, world: JobWorld, network: FakeNetwork
) -> None:
    _store_identity(db_url, world, pinned=False)
    sessions = _sessions(db_url)
    identity = load_identity(sessions, PASSPHRASE)
    assert identity is not None and identity.kgc_verify_key == world.kgc_verify_key
    del network.services[KGC_URL]  # from now on the key comes from the database
    again = load_identity(sessions, PASSPHRASE)
    assert again is not None and again.kgc_verify_key == world.kgc_verify_key


def test_an_older_identity_does_not_pin_a_key_that_did_not_sign_its_certificate(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world, pinned=False)
    network.kgc.info["verify_key"] = public_key_hex(generate_signing_key())
    with pytest.raises(ClientError):
        load_identity(_sessions(db_url), PASSPHRASE)
    node = _node(db_url)
    nodes.append(node)
    with pytest.raises(TrapdoorError) as caught:
        node.client()
    assert caught.value.code == "bad-certificate"
    del network.services[KGC_URL]
    with pytest.raises(TrapdoorError) as caught:
        node.client()
    assert caught.value.code == "kgc-unreachable"


# --------------------------------------------------------------------------- joining


def test_a_refused_job_is_recorded_and_never_uploaded(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    world.resign(kgc_key=generate_signing_key())
    node = _node(db_url)
    nodes.append(node)
    with pytest.raises(TrapdoorError) as caught:
        node.join(PS_URL, "unit-1")
    assert (http_status(caught.value), caught.value.code) == (422, "job-refused")
    assert "bad-job-signature" in caught.value.message
    [job] = node.status()["jobs"]
    assert job["status"] == "refused" and "bad-job-signature" in job["error"]
    assert network.ps.uploads == [] and not node._threads

    world.resign()  # the KGC's own signature: joining again is accepted
    assert node.join(PS_URL, "unit-1")["status"] in ("joined", "running")


def test_a_quorum_below_the_node_minimum_is_refused(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    world.definition["quorum"] = 2
    world.resign()
    node = _node(db_url)
    nodes.append(node)
    with pytest.raises(TrapdoorError) as caught:
        node.join(PS_URL, "unit-1")
    assert caught.value.code == "job-refused" and "quorum-too-small" in caught.value.message
    lowered = _node(db_url, min_quorum=2)
    nodes.append(lowered)
    joined = lowered.join(PS_URL, "unit-1")
    assert joined["ps_subject_id"] == world.ps_subject


# --------------------------------------------------------------------------- schema


def test_the_migrations_build_the_models_schema_and_downgrade(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path}/schema.db"
    migrate("participant", url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": "alembic_version_participant"}
            )
            assert list(compare_metadata(context, metadata)) == []
    finally:
        engine.dispose()
    migrate_to(url, "0001_initial")
    engine = make_engine(url)
    try:
        assert "sealing" not in {c["name"] for c in inspect(engine).get_columns("node_models")}
    finally:
        engine.dispose()
    migrate("participant", url)


def migrate_to(url: str, revision: str) -> None:
    from alembic import command

    from trapdoor.service.db import _alembic_config

    command.downgrade(_alembic_config("participant", url), revision)


def test_transient_errors_are_retried_with_backoff_and_others_are_not(
    db_url: str, nodes: list[ParticipantNode]
) -> None:
    """A PS or KGC restart (connection refused, 502/503/504) is ridden out with waits
    doubling from ``poll_seconds``; a real refusal is raised at once; a stop ends it."""
    node = ParticipantNode(_sessions(db_url), _data(), PASSPHRASE, poll_seconds=0.001)
    nodes.append(node)
    waits: list[float] = []
    node._sleep_unless_stopped = waits.append  # type: ignore[method-assign]

    def outcomes(*results: object) -> Callable[[], object]:
        queue = list(results)

        def call() -> object:
            outcome = queue.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return call

    assert node._retry(outcomes(ServiceError(503, "down", ""), ServiceError(0, "x", ""), 7)) == 7
    assert waits == [0.001, 0.002]
    with pytest.raises(ServiceError) as refused:
        node._retry(outcomes(ServiceError(409, "duplicate", "")))
    assert refused.value.status == 409 and waits == [0.001, 0.002]  # not retried
    down = [ServiceError(502, "down", "")] * 3
    with pytest.raises(ServiceError) as gave_up:
        node._retry(outcomes(*down), attempts=3)
    assert gave_up.value.status == 502 and len(waits) == 4
    stopped = ParticipantNode(_sessions(db_url), _data(), PASSPHRASE, poll_seconds=0.001)
    nodes.append(stopped)
    stopped._stop.set()
    with pytest.raises(ClientError, match="stopped"):
        stopped._retry(outcomes(ServiceError(503, "down", ""), 1))


# --------------------------------------------------------------------------- evaluation


class _ScoringApp:
    """A user's app whose evaluate reports a metric of its own (and numpy scalars)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.configs: list[dict[str, object]] = []

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return parameters, 1, {}

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        self.configs.append(config)
        if self.fail:
            return float("nan"), 4, {}
        return np.float64(0.25), np.int64(40), {"auc": np.float64(0.875), "accuracy": 0.5}


def _joined_view(node: ParticipantNode) -> object:
    return node.client().fetch_job(PS_URL, "unit-1")


def test_the_node_scores_released_models_with_its_app_and_shares_only_when_the_job_says(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    app = _ScoringApp()
    node = _node(db_url, app=app)
    nodes.append(node)
    view = _joined_view(node)
    weights = np.asarray(world.initial_weights)

    private = node._evaluate(node.client(), view, 0, weights)  # type: ignore[arg-type]
    assert private == {"loss": 0.25, "num_examples": 40, "metrics": {"auc": 0.875, "accuracy": 0.5}}
    assert app.configs[-1]["round"] == 0 and app.configs[-1]["job_id"] == "unit-1"
    assert network.ps.rounds.get(0) is None or network.ps.rounds[0].metric_reports == {}

    world.definition["share_metrics"] = True
    world.resign()
    node.client().forget_job("unit-1")
    shared = node._evaluate(
        node.client(), node.client().fetch_job(PS_URL, "unit-1", refresh=True), 0, weights
    )
    assert shared["reported"] is True
    [report] = network.ps.rounds[0].metric_reports.values()
    body = report["metrics_report"]
    assert (body["subject_id"], body["loss"], body["num_examples"]) == ("bob", 0.25, 40)
    assert body["metrics"] == {"auc": 0.875, "accuracy": 0.5}


def test_an_app_whose_evaluation_fails_is_recorded_and_nothing_is_reported(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    world.definition["share_metrics"] = True
    world.resign()
    node = _node(db_url, app=_ScoringApp(fail=True))
    nodes.append(node)
    result = node._evaluate(node.client(), _joined_view(node), 0, np.asarray(world.initial_weights))  # type: ignore[arg-type]
    assert set(result) == {"error"} and "finite" in result["error"]
    assert network.ps.rounds.get(0) is None or network.ps.rounds[0].metric_reports == {}


def test_joined_jobs_record_their_model_spec_for_download(
    db_url: str, world: JobWorld, network: FakeNetwork, nodes: list[ParticipantNode]
) -> None:
    _store_identity(db_url, world)
    node = _node(db_url)
    nodes.append(node)
    joined = node.join(PS_URL, "unit-1")
    assert joined["model"] == world.definition["model"] and joined["share_metrics"] is False
