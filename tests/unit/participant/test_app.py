"""User training apps (``NumPyApp``) inside the protocol, ``ModelApp`` and ``load_app``.

The KGC and the PS are the fakes of :mod:`trapdoor.participant.testing`; the job is a
softmax regression (an MLP without hidden layer), so a user's own numpy code fits it.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner

import trapdoor.participant.cli as node_cli
import trapdoor.participant.client as client_module
from trapdoor.cli import cli
from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import decrypt_vector
from trapdoor.crypto.encoding import encode_vector
from trapdoor.ml.data import LocalData
from trapdoor.participant.app import AppLoadError, ModelApp, NumPyApp, load_app
from trapdoor.participant.client import ClientError, JobView, ParticipantClient
from trapdoor.participant.testing import KGC_URL, PS_URL, FakeNetwork, JobWorld
from trapdoor.protocol.job import masked_layout

Vector = npt.NDArray[np.float64]
FEATURES, CLASSES = 8, 3


class LogisticApp:
    """A user's own softmax regression: ``W`` (8x3) then ``b`` (3), full-batch steps."""

    def __init__(self, X: np.ndarray, y: np.ndarray, steps: int = 3) -> None:
        self.X, self.y, self.steps = X, y, steps

    def _split(self, p: Vector) -> tuple[Vector, Vector]:
        return p[: FEATURES * CLASSES].reshape(FEATURES, CLASSES), p[FEATURES * CLASSES :]

    def _proba(self, p: Vector) -> Vector:
        W, b = self._split(p)
        z = self.X @ W + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def fit(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[Vector, int, dict[str, float]]:
        p = parameters.copy()
        onehot = np.eye(CLASSES)[self.y]
        for _ in range(self.steps):
            g = (self._proba(p) - onehot) / len(self.y)
            p -= config["learning_rate"] * np.concatenate([(self.X.T @ g).ravel(), g.sum(axis=0)])
        return p, len(self.y), {"train_loss": self.evaluate(p, config)[0]}

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        proba = self._proba(parameters)[np.arange(len(self.y)), self.y]
        return float(-np.log(proba).mean()), len(self.y), {}


class BadApp:
    """Returns whatever the test sets as its parameters."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def fit(self, parameters: Vector, config: dict[str, Any]) -> tuple[Any, int, dict[str, float]]:
        return self.result, 10, {}

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        return 0.0, 10, {}


def _data() -> tuple[np.ndarray, np.ndarray]:
    data_rng = np.random.default_rng(3)
    return data_rng.random((40, FEATURES)), data_rng.integers(0, CLASSES, 40)


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    return JobWorld(params_1024[0], rng, ["p0", "bob", "p2"], layers=(FEATURES, CLASSES))


@pytest.fixture
def bob(world: JobWorld, network: FakeNetwork, rng: random.Random) -> Iterator[ParticipantClient]:
    client = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng, clock=network.kgc.clock)
    yield client
    client.close()


def _encrypted_plaintexts(params: tuple[PublicParams, MasterKey], vector: Any) -> list[int]:
    """What bob's ciphertext holds (the test knows the master key)."""
    return list(decrypt_vector(params[1], vector))


def test_a_user_app_trains_and_its_update_is_what_is_encrypted(
    bob: ParticipantClient, params_1024: tuple[PublicParams, MasterKey]
) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    app = LogisticApp(X, y)
    assert isinstance(app, NumPyApp)
    prepared = bob.prepare_update(job, 0, job.initial_weights, app=app)
    config = {"learning_rate": job.training.learning_rate}
    new, n, _ = app.fit(job.initial_weights.copy(), config)
    assert prepared.metrics["num_examples"] == n == 40
    expected = new - job.initial_weights
    assert np.abs(expected).max() > 0
    plaintexts, _ = encode_vector(
        expected, job.bcp_packing, clip_bound=job.clip_bound, scale=job.weights["bob"]
    )
    assert _encrypted_plaintexts(params_1024, prepared.vector) == list(plaintexts)


def test_model_app_is_bit_identical_to_the_x_y_path(
    bob: ParticipantClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    encoded: list[Vector] = []
    monkeypatch.setattr(
        "trapdoor.participant.client.encode_vector",
        _recording(client_module.encode_vector, encoded),
    )
    bob.prepare_update(job, 0, job.initial_weights, X, y)
    empty = np.zeros((0, FEATURES))
    data = LocalData(X, y, empty, np.zeros(0, int), "test")
    bob.prepare_update(job, 0, job.initial_weights, app=ModelApp(data))
    assert len(encoded) == 2
    assert encoded[0].tobytes() == encoded[1].tobytes()


def _recording(function: Any, seen: list[Vector]) -> Any:
    def wrapper(update: Vector, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.array(update, copy=True))
        return function(update, *args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (np.zeros(5), "shape"),
        (np.full(FEATURES * CLASSES + CLASSES, np.nan), "NaN"),
        ("weights", "numeric"),
    ],
)
def test_a_bad_app_result_is_refused_before_any_upload(
    bob: ParticipantClient, network: FakeNetwork, result: Any, message: str
) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    with pytest.raises(ClientError, match=message) as caught:
        bob.prepare_update(job, 0, job.initial_weights, app=BadApp(result))
    assert caught.value.code == "bad-app-result"
    assert network.ps.uploads == []
    assert [r for r in network.ps.requests if r[0] == "POST"] == []


def test_data_and_app_together_are_refused(bob: ParticipantClient) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    with pytest.raises(ClientError, match="either X and y or app"):
        bob.prepare_update(job, 0, job.initial_weights, X, y, app=LogisticApp(X, y))
    with pytest.raises(ClientError, match="either X and y or app"):
        bob.prepare_update(job, 0, job.initial_weights)


def _masked(job: JobView) -> JobView:
    layout = masked_layout(
        length=len(job.initial_weights),
        frac_bits=16,
        model_bound=64.0,
        clip_bound=job.clip_bound,
        participants=len(job.participants),
        rounds=job.rounds_total,
    )
    return dataclasses.replace(job, packing=None, layout=layout)


class _SeenError(Exception):
    """Raised by the spy once it saw the update the masked upload would encode."""


def test_a_user_app_masked_update_is_new_minus_w_t(
    bob: ParticipantClient, network: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _masked(bob.fetch_job(PS_URL, "unit-1"))
    X, y = _data()
    app = LogisticApp(X, y)
    seen: list[Vector] = []

    def spy(update: Vector, *_: Any) -> Any:
        seen.append(np.array(update, copy=True))
        raise _SeenError

    monkeypatch.setattr("trapdoor.participant.client.encode_update", spy)
    with pytest.raises(_SeenError):
        bob.prepare_masked_update(job, 0, job.initial_weights, app=app)
    new, _, _ = app.fit(job.initial_weights.copy(), {"learning_rate": job.training.learning_rate})
    assert seen[0].tobytes() == (new - job.initial_weights).tobytes()

    with pytest.raises(ClientError, match="NaN"):
        bob.prepare_masked_update(job, 0, job.initial_weights, app=BadApp(new * np.inf))
    assert len(seen) == 1
    assert network.ps.uploads == []


# --------------------------------------------------------------------------- load_app

APP_MODULE = "trapdoor_test_user_app"


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(APP_MODULE)
    module.app = BadApp(np.zeros(3))  # type: ignore[attr-defined]
    module.AppClass = BadApp  # type: ignore[attr-defined]
    module.number = 3  # type: ignore[attr-defined]
    module.make_app = lambda data: ModelApp(data)  # type: ignore[attr-defined]
    module.make_nothing = lambda data: 42  # type: ignore[attr-defined]
    module.make_badly = lambda data: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, APP_MODULE, module)
    return module


def test_load_app_finds_module_object(user_module: types.ModuleType) -> None:
    assert load_app(f"{APP_MODULE}:app") is user_module.app


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (":app", "must be module:object"),
        (f"{APP_MODULE}:", "must be module:object"),
        ("trapdoor_no_such_module_x:app", "cannot be imported"),
        (f"{APP_MODULE}:missing", "has no object 'missing'"),
        (f"{APP_MODULE}:number", "is not an app"),
        (f"{APP_MODULE}:AppClass", "is a factory: it needs the node's data"),
        ("no-such-entry-point", "no app 'no-such-entry-point' in the 'trapdoor.apps'"),
        ("", "non-empty"),
    ],
)
def test_load_app_errors_are_clear(
    user_module: types.ModuleType, reference: str, message: str
) -> None:
    with pytest.raises(AppLoadError, match=message):
        load_app(reference)


def test_a_factory_makes_the_app_from_the_nodes_data(user_module: types.ModuleType) -> None:
    X, y = _data()
    data = LocalData(X, y, X, y, "test")
    made = load_app(f"{APP_MODULE}:make_app", data)
    assert isinstance(made, ModelApp) and made.data is data
    assert isinstance(load_app(f"{APP_MODULE}:AppClass", data), BadApp)  # a class is a factory
    with pytest.raises(AppLoadError, match="returned int, not an app"):
        load_app(f"{APP_MODULE}:make_nothing", data)
    with pytest.raises(AppLoadError, match=r"factory .* failed: ZeroDivisionError"):
        load_app(f"{APP_MODULE}:make_badly", data)
    with pytest.raises(AppLoadError, match=r"number.* is not an app"):
        load_app(f"{APP_MODULE}:number", data)


def test_app_dir_finds_a_module_beside_the_data(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trapdoor_test_beside.py").write_text(
        "from trapdoor.participant.app import ModelApp\n"
        "def make(data):\n"
        "    return ModelApp(data)\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    monkeypatch.delitem(sys.modules, "trapdoor_test_beside", raising=False)
    X, y = _data()
    data = LocalData(X, y, X, y, "test")
    with pytest.raises(AppLoadError, match="cannot be imported"):
        load_app("trapdoor_test_beside:make", data)
    assert isinstance(load_app("trapdoor_test_beside:make", data, app_dir=tmp_path), ModelApp)


def test_app_option_reaches_the_node_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def create_app(config: dict[str, Any]) -> Any:
        seen.update(config)
        return types.SimpleNamespace(
            extensions={"participant_node": types.SimpleNamespace(close=lambda: None)}
        )

    monkeypatch.setenv("TRAPDOOR_NODE_PASSPHRASE", "node pass")
    monkeypatch.setattr(node_cli, "restrict_new_files", lambda: None)
    monkeypatch.setattr(node_cli, "create_app", create_app)
    monkeypatch.setattr(node_cli, "serve", lambda *_a, **_k: None)
    result = CliRunner().invoke(cli, ["node", "serve", "--app", "mypkg.apps:trainer"])
    assert result.exit_code == 0, result.output
    assert seen["APP"] == "mypkg.apps:trainer"
    result = CliRunner().invoke(cli, ["node", "serve"])
    assert seen["APP"] is None


# --------------------------------------------------------------------------- evaluate


class _Evaluating:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[Vector] = []

    def fit(self, parameters: Vector, config: dict[str, Any]) -> Any:
        return parameters, 1, {}

    def evaluate(self, parameters: Vector, config: dict[str, Any]) -> Any:
        self.seen.append(parameters)
        parameters[:] = 0.0  # an app that scribbles on its input changes nothing of ours
        return self.answer


def test_evaluate_answers_are_checked_and_numpy_scalars_become_numbers(
    bob: ParticipantClient, world: JobWorld
) -> None:
    job = bob.fetch_job(PS_URL, world.job_id)
    weights = np.asarray(world.initial_weights, dtype=np.float64)
    kept = weights.copy()
    app = _Evaluating((np.float32(0.5), np.int64(12), {"auc": np.float64(0.9), "f1": 1}))
    loss, examples, metrics = bob.evaluate_model(job, 0, weights, app)
    assert (loss, examples, metrics) == (0.5, 12, {"auc": 0.9, "f1": 1.0})
    assert type(loss) is float and type(examples) is int and type(metrics["auc"]) is float
    np.testing.assert_array_equal(weights, kept)
    for answer, match in [
        ((0.5, 12), "loss, num_examples, metrics"),
        ((float("nan"), 12, {}), "loss"),
        ((0.5, 0, {}), "num_examples"),
        ((0.5, 12, {"not a name": 1.0}), "name"),
        ((0.5, 12, {"auc": "good"}), "finite"),
    ]:
        with pytest.raises(ClientError, match=match) as caught:
            bob.evaluate_model(job, 0, weights, _Evaluating(answer))
        assert caught.value.code == "bad-app-result"


def test_metrics_are_never_sent_for_a_job_that_did_not_opt_in(
    bob: ParticipantClient, world: JobWorld, network: FakeNetwork
) -> None:
    job = bob.fetch_job(PS_URL, world.job_id)
    assert job.share_metrics is False
    before = len(network.ps.requests)
    with pytest.raises(ClientError) as caught:
        bob.report_metrics(job, 0, 0.5, 10, {"accuracy": 1.0})
    assert caught.value.code == "metrics-not-shared"
    assert len(network.ps.requests) == before


def test_a_job_whose_share_metrics_is_not_a_boolean_is_refused(
    bob: ParticipantClient, world: JobWorld
) -> None:
    world.definition["share_metrics"] = "yes"
    world.resign()
    with pytest.raises(ClientError, match="share_metrics"):
        bob.fetch_job(PS_URL, world.job_id, refresh=True)
