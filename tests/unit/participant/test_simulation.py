"""The local simulation (:mod:`trapdoor.participant.simulation`): users' apps, in process.

Plaintext mode is checked against :func:`trapdoor.ml.training.run_plaintext_fedavg`; the
encoded modes against the fixed-point bound of one round, and against what real
participant clients upload (the fakes of :mod:`trapdoor.participant.testing`; the test
knows the master key, so it opens what they encrypted).
"""

from __future__ import annotations

import dataclasses
import inspect
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import decrypt_vector
from trapdoor.crypto.encoding import decode_vector
from trapdoor.crypto.masking import derive_mask, open_seed, ring_sum, vector_from_bytes
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame
from trapdoor.ml.data import LocalData
from trapdoor.ml.datasets import Dataset, load_dataset, partition
from trapdoor.ml.models import MLP
from trapdoor.ml.training import (
    FitResult,
    TrainingConfig,
    fedavg_aggregate,
    local_fit,
    participant_rng,
    run_plaintext_fedavg,
)
from trapdoor.participant.app import ModelApp
from trapdoor.participant.client import JobView, ParticipantClient, app_config
from trapdoor.participant.simulation import (
    BCP_ENCODING_DEFAULTS,
    MASKED_ENCODING_DEFAULTS,
    SIMULATION_JOB_ID,
    SimulationError,
    SimulationHistory,
    simulate,
)
from trapdoor.participant.testing import KGC_URL, PS_URL, FakeNetwork, JobWorld
from trapdoor.protocol.bundle import next_model
from trapdoor.protocol.job import initial_plaintexts, masked_layout
from trapdoor.protocol.upload import mask_context, seed_from_obj
from trapdoor.ps import definition as ps_definition

Vector = npt.NDArray[np.float64]
SEED = 3
TRAINING = {"learning_rate": 0.1, "local_epochs": 2, "batch_size": 32, "seed": SEED}


# --------------------------------------------------------------------------- apps


class Recording:
    """Wraps an app and records each call: (round, participant, W_t copy, config, update)."""

    def __init__(self, inner: ModelApp) -> None:
        self.inner = inner
        self.fits: list[tuple[int, int, Vector, dict[str, Any], Vector]] = []

    def fit_update(self, parameters: Vector, config: dict[str, Any]) -> FitResult:
        result = self.inner.fit_update(parameters, config)
        self.fits.append(
            (config["round"], config["participant_index"], parameters.copy(), config, result.update)
        )
        return result

    def fit(self, parameters: Vector, config: dict[str, Any]) -> tuple[Vector, int, dict]:
        return self.inner.fit(parameters, config)

    def evaluate(self, parameters: Vector, config: dict[str, Any]) -> tuple[float, int, dict]:
        return self.inner.evaluate(parameters, config)


class FitOnly:
    """A plain NumPyApp (no ``fit_update``): its update is ``new - W_t``."""

    def __init__(self, inner: ModelApp) -> None:
        self.inner = inner
        self.configs: list[dict[str, Any]] = []

    def fit(self, parameters: Vector, config: dict[str, Any]) -> tuple[Vector, int, dict]:
        self.configs.append(config)
        return self.inner.fit(parameters, config)

    def evaluate(self, parameters: Vector, config: dict[str, Any]) -> tuple[float, int, dict]:
        return self.inner.evaluate(parameters, config)


class Pull:
    """A tiny user app: each fit moves halfway to its own ``target``; scores by distance."""

    def __init__(
        self,
        target: float,
        examples: int,
        metrics: dict[str, float] | None = None,
        *,
        bad_round: int | None = None,
        bad_result: Any = None,
        bad_loss: Any = None,
    ) -> None:
        self.target, self.examples, self.metrics = target, examples, metrics or {}
        self.bad_round, self.bad_result, self.bad_loss = bad_round, bad_result, bad_loss
        self.rounds: list[int] = []

    def fit(self, parameters: Vector, config: dict[str, Any]) -> tuple[Any, int, dict]:
        self.rounds.append(config["round"])
        if config["round"] == self.bad_round and self.bad_result is not None:
            return self.bad_result, self.examples, {}
        new = parameters + 0.5 * (self.target - parameters)
        return new, self.examples, {"moved": float(np.abs(new - parameters).max())}

    def evaluate(self, parameters: Vector, config: dict[str, Any]) -> tuple[Any, int, dict]:
        if config["round"] == self.bad_round and self.bad_loss is not None:
            return self.bad_loss, self.examples, {}
        loss = float(np.mean((parameters - self.target) ** 2))
        return loss, self.examples, dict(self.metrics)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model() -> MLP:
    return MLP([64, 16, 10])


def _parts(digits: Dataset, k: int = 4) -> list[np.ndarray]:
    return partition(digits.y_train, k, np.random.default_rng(0), scheme="dirichlet", alpha=2.0)


def _apps(digits: Dataset, parts: list[np.ndarray]) -> list[ModelApp]:
    """ModelApp partitions; every participant scores on the whole test set, as the
    plaintext reference does."""
    return [
        ModelApp(LocalData(digits.X_train[p], digits.y_train[p], digits.X_test, digits.y_test, ""))
        for p in parts
    ]


def _reference_parameters(
    model: MLP, digits: Dataset, parts: list[np.ndarray], rounds: int, selector: Any
) -> Vector:
    """``run_plaintext_fedavg``'s arithmetic, for the final model it does not return."""
    config = TrainingConfig(learning_rate=0.1, local_epochs=2, batch_size=32)
    params = model.init_parameters(np.random.default_rng(SEED))
    sizes = [len(p) for p in parts]
    weights = [s / sum(sizes) for s in sizes]
    for t in range(rounds):
        active = set(range(len(parts))) if selector is None else set(selector[t])
        updates = [
            local_fit(
                model,
                params,
                digits.X_train[p],
                digits.y_train[p],
                config,
                participant_rng(SEED, i, t),
            ).update
            if i in active
            else np.zeros_like(params)
            for i, p in enumerate(parts)
        ]
        params = fedavg_aggregate(params, updates, weights)
    return params


@pytest.mark.parametrize("selector", [None, [[0, 1, 2, 3], [0, 2], [1, 2, 3], [3]]])
def test_plaintext_reproduces_run_plaintext_fedavg(
    digits: Dataset, model: MLP, selector: Any
) -> None:
    parts = _parts(digits)
    rounds = 4
    reference = run_plaintext_fedavg(
        model,
        digits,
        parts,
        TrainingConfig(learning_rate=0.1, local_epochs=2, batch_size=32),
        rounds,
        SEED,
        participants_per_round=selector,
    )
    history = simulate(
        _apps(digits, parts),
        model.init_parameters(np.random.default_rng(SEED)),
        rounds=rounds,
        model=model,
        training=TRAINING,
        aggregation="plaintext",
        num_examples=[len(p) for p in parts],
        participants_per_round=selector,
    )
    assert isinstance(history, SimulationHistory)
    assert len(history.rounds) == rounds
    for ref, got in zip(reference, history.rounds, strict=True):
        assert got.round == ref["round"]
        assert len(got.contributors) == ref["num_contributors"]
        for scored in got.evaluations:  # the same model on the same rows: the same numbers
            assert scored.metrics["accuracy"] == ref["test_accuracy"]
            assert scored.loss == ref["test_loss"]
        assert got.evaluation is not None
        assert got.evaluation["metrics"]["accuracy"] == pytest.approx(ref["test_accuracy"])
        assert got.evaluation["loss"] == pytest.approx(ref["test_loss"], rel=1e-14)
        train_losses = [f.metrics["train_loss"] for f in got.fits]
        assert float(np.mean(train_losses)) == ref["train_loss"]
        assert all(f.clip is None for f in got.fits)
    expected = _reference_parameters(model, digits, parts, rounds, selector)
    assert history.parameters.tobytes() == expected.tobytes()
    if selector is None:  # weights from the round-0 fits: n_i / sum n_j, as the PS's
        derived = simulate(
            _apps(digits, parts),
            history.initial_parameters,
            rounds=rounds,
            model=model,
            training=TRAINING,
            aggregation="plaintext",
        )
        assert derived.weights == history.weights
        assert derived.parameters.tobytes() == expected.tobytes()


# --------------------------------------------------------------------------- fixed point


@pytest.mark.parametrize(
    ("aggregation", "frac_bits"), [("masked", 20), ("bcp", 20), ("masked", 12), ("bcp", 14)]
)
def test_encoded_modes_are_within_one_rounding_per_term_of_plaintext(
    digits: Dataset, model: MLP, aggregation: str, frac_bits: int
) -> None:
    """One round from the same ``W_t`` and the same updates: the released model is
    ``round(W_t 2^f) + Σ_i round(w_i Δ_i 2^f)`` over ``2^f``, so it is within
    ``(K + 1) · 2^-(f+1)`` of the float FedAvg step (``K`` once ``W_t`` is on the grid,
    after round 0), plus the float sum's own error (far below ``1e-12`` here)."""
    parts = _parts(digits)
    apps = [Recording(app) for app in _apps(digits, parts)]
    rounds = 4
    initial = model.init_parameters(np.random.default_rng(SEED))
    history = simulate(
        apps,
        initial,
        rounds=rounds,
        model=model,
        training=TRAINING,
        aggregation=aggregation,
        encoding={"frac_bits": frac_bits},
        keep_parameters=True,
    )
    k = len(apps)
    unit = 2.0 ** -(frac_bits + 1)
    worst = 0.0
    current = initial
    for t, released in enumerate(history.rounds):
        updates = {i: u for app in apps for (r, i, w, _, u) in app.fits if r == t}
        assert all(
            w.tobytes() == current.tobytes() for app in apps for (r, _, w, *_) in app.fits if r == t
        )
        plain = fedavg_aggregate(current, [updates[i] for i in range(k)], history.weights)
        assert released.parameters is not None
        error = float(np.abs(released.parameters - plain).max())
        assert error <= (k + (1 if t == 0 else 0)) * unit + 1e-12
        assert all(f.clip is not None and f.clip.clipped == 0 for f in released.fits)
        # a released model is on the fixed-point grid
        scaled = np.ldexp(released.parameters, frac_bits)
        assert np.array_equal(scaled, np.rint(scaled))
        worst = max(worst, error)
        current = released.parameters
    assert worst > k * unit / 2  # the bound is not loose: reached within a factor 2
    assert history.parameters.tobytes() == current.tobytes()


def test_bcp_and_masked_sum_the_same_integers(digits: Dataset, model: MLP) -> None:
    """Same ``frac_bits`` and ``clip_bound``: the two modes release the same models."""
    parts = _parts(digits)
    runs = [
        simulate(
            _apps(digits, parts),
            model.init_parameters(np.random.default_rng(SEED)),
            rounds=3,
            model=model,
            training=TRAINING,
            aggregation=aggregation,
            encoding={"frac_bits": 18, "clip_bound": 4.0},
        )
        for aggregation in ("bcp", "masked")
    ]
    assert runs[0].parameters.tobytes() == runs[1].parameters.tobytes()
    assert runs[0].metrics_distributed == runs[1].metrics_distributed


def test_encoding_defaults_are_the_parameter_servers() -> None:
    ps_bcp = {k: v for k, v in ps_definition.ENCODING_DEFAULTS.items() if k != "width"}
    assert ps_bcp == BCP_ENCODING_DEFAULTS
    assert ps_definition.MASKED_ENCODING_DEFAULTS == MASKED_ENCODING_DEFAULTS
    aggregation = inspect.signature(simulate).parameters["aggregation"].default
    assert aggregation == ps_definition.DEFAULT_AGGREGATION
    history = simulate([Pull(0.5, 3)], np.zeros(4), rounds=1)
    assert history.encoding == MASKED_ENCODING_DEFAULTS
    assert history.aggregation == "masked"
    bcp = simulate([Pull(0.5, 3)], np.zeros(4), rounds=1, aggregation="bcp", clip_bound=8.0)
    assert bcp.encoding == {**BCP_ENCODING_DEFAULTS, "clip_bound": 8.0}


# --------------------------------------------------------------------------- real clients

SUBJECTS = ["p0", "bob", "p2"]


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    return JobWorld(params_1024[0], rng, SUBJECTS)


@pytest.fixture
def clients(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> Iterator[list[ParticipantClient]]:
    made = [
        ParticipantClient(world.identities[s], KGC_URL, rng=rng, clock=network.kgc.clock)
        for s in SUBJECTS
    ]
    yield made
    for client in made:
        client.close()


def _client_apps() -> list[Any]:
    """Participant 0 a plain ``fit`` app, the others ModelApp, each on its own rows."""
    apps: list[Any] = []
    for i in range(len(SUBJECTS)):
        data_rng = np.random.default_rng(10 + i)
        n = 30 + 10 * i
        data = LocalData(
            data_rng.random((n, 8)),
            data_rng.integers(0, 3, n),
            data_rng.random((12, 8)),
            data_rng.integers(0, 3, 12),
            f"p{i}",
        )
        apps.append(FitOnly(ModelApp(data)) if i == 0 else Recording(ModelApp(data)))
    return apps


def _configs(app: Any) -> list[dict[str, Any]]:
    return app.configs if isinstance(app, FitOnly) else [f[3] for f in app.fits]


def _same_config(real: dict[str, Any], simulated: dict[str, Any], job: JobView) -> None:
    assert set(real) == set(simulated)
    assert real["job_id"] == job.job_id and simulated["job_id"] == SIMULATION_JOB_ID
    assert real["model"].spec() == simulated["model"].spec()
    assert type(real["model"]) is type(simulated["model"])
    for key in set(real) - {"job_id", "model"}:
        assert type(real[key]) is type(simulated[key]), key
        assert real[key] == simulated[key], key


def test_bcp_is_bit_identical_to_what_real_clients_upload_and_decode(
    world: JobWorld,
    clients: list[ParticipantClient],
    params_1024: tuple[PublicParams, MasterKey],
) -> None:
    jobs = [c.fetch_job(PS_URL, world.job_id) for c in clients]
    job = jobs[0]
    packing = job.bcp_packing
    n = packing.modulus
    real_apps = _client_apps()
    # The real run: each client trains and encrypts; the PS multiplies ciphertexts
    # (adds plaintexts mod N) onto the chain from Enc(W_0); a contributor decodes.
    aggregate = [int(p) for p in initial_plaintexts(packing, job.initial_weights)]
    current = job.initial_weights
    released = []
    for t in range(2):
        for client, view, app in zip(clients, jobs, real_apps, strict=True):
            prepared = client.prepare_update(view, t, current, app=app)
            plaintexts = decrypt_vector(params_1024[1], prepared.vector)
            aggregate = [(a + int(p)) % n for a, p in zip(aggregate, plaintexts, strict=True)]
        current = decode_vector(aggregate, packing)
        released.append(current)

    sim_apps = _client_apps()
    settings = {
        "aggregation": "bcp",
        "training": world.definition["training"],
        "model": world.definition["model"],
        "encoding": world.definition["encoding"],
        "weights": [job.weights[s] for s in SUBJECTS],
        "keep_parameters": True,
    }
    history = simulate(sim_apps, job.initial_weights, rounds=2, modulus=n, **settings)
    for got, want in zip(history.rounds, released, strict=True):
        assert got.parameters is not None and got.parameters.tobytes() == want.tobytes()
    # the stand-in modulus packs differently and decodes to the same numbers
    standin = simulate(_client_apps(), job.initial_weights, rounds=2, **settings)
    assert standin.parameters.tobytes() == released[-1].tobytes()
    for real_app, sim_app in zip(real_apps, sim_apps, strict=True):
        for real, simulated in zip(_configs(real_app), _configs(sim_app), strict=True):
            _same_config(real, simulated, job)
        assert len(_configs(real_app)) == 2
    assert _configs(real_apps[1])[0] == app_config(jobs[1], 0, 1)


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


def test_masked_is_bit_identical_to_real_masked_uploads_and_their_mask_sum(
    world: JobWorld,
    clients: list[ParticipantClient],
    params_1024: tuple[PublicParams, MasterKey],
) -> None:
    master = params_1024[1]
    jobs = [_masked(c.fetch_job(PS_URL, world.job_id)) for c in clients]
    job = jobs[0]
    layout = job.masked_layout
    real_apps = _client_apps()
    current = job.initial_weights
    released = []
    for t in range(2):
        uploads, masks = [], []
        for subject, client, view, app in zip(SUBJECTS, clients, jobs, real_apps, strict=True):
            prepared = client.prepare_masked_update(view, t, current, app=app)
            frame = decode_frame(prepared.frame, kind=RING_FRAME_KIND)
            uploads.append(vector_from_bytes(frame.payload, layout.ring, layout.length))
            # what the KGC does for the release: open the seed, derive the mask
            seed = open_seed(
                master,
                job.job_key.component(0),
                seed_from_obj(frame.header["seed"], job.job_key),
            )
            context = mask_context(job.terms, layout, round_number=t, run=0, signer=subject)
            masks.append(derive_mask(seed, int(job.job_key.params.n), context, layout.ring))
        mask_sum = ring_sum(masks, layout.ring, layout.length)
        current = next_model(layout, current, uploads, mask_sum)
        released.append(current)

    history = simulate(
        _client_apps(),
        job.initial_weights,
        rounds=2,
        aggregation="masked",
        training=world.definition["training"],
        model=world.model,
        encoding={"frac_bits": 16, "model_bound": 64.0, "clip_bound": job.clip_bound},
        weights=[job.weights[s] for s in SUBJECTS],
        keep_parameters=True,
    )
    for got, want in zip(history.rounds, released, strict=True):
        assert got.parameters is not None and got.parameters.tobytes() == want.tobytes()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.zeros(5), "shape"), (np.full(4, np.nan), "NaN"), ("weights", "numeric")],
)
@pytest.mark.parametrize("aggregation", ["masked", "plaintext"])
def test_a_bad_fit_names_the_participant_and_the_round(
    bad: Any, message: str, aggregation: str
) -> None:
    apps = [Pull(0.5, 10), Pull(-0.5, 20, bad_round=2, bad_result=bad), Pull(0.1, 5)]
    with pytest.raises(SimulationError, match=rf"participant 1, round 2 \(fit\): .*{message}") as e:
        simulate(apps, np.zeros(4), rounds=4, aggregation=aggregation)
    assert (e.value.participant, e.value.round) == (1, 2)
    assert apps[0].rounds == [0, 1, 2] and apps[2].rounds == [0, 1]  # in index order


def test_an_exception_in_an_app_keeps_its_type_and_says_whose_it_was() -> None:
    class Broken(Pull):
        def fit(self, parameters: Vector, config: dict[str, Any]) -> Any:
            raise KeyError("oops")

    with pytest.raises(KeyError) as caught:
        simulate([Pull(0.5, 3), Broken(0.0, 3)], np.zeros(4), rounds=1)
    assert any("participant 1, round 0 (fit)" in note for note in caught.value.__notes__)


def test_an_unsharable_evaluation_is_recorded_and_the_run_goes_on() -> None:
    apps = [Pull(0.5, 10), Pull(-0.5, 30, bad_round=1, bad_loss=float("nan"))]
    with pytest.warns(RuntimeWarning, match=r"participant 1, round 1 \(evaluate\)"):
        history = simulate(apps, np.zeros(4), rounds=3, num_examples=[10, 30])
    second = history.rounds[1]
    assert second.evaluations[1].error is not None and "finite" in second.evaluations[1].error
    assert second.evaluation is not None and second.evaluation["reporters"] == 1
    assert second.evaluation["loss"] == second.evaluations[0].loss
    assert history.rounds[2].evaluation is not None
    assert history.rounds[2].evaluation["reporters"] == 2


def test_a_release_that_would_not_decode_stops_the_run() -> None:
    apps = [Pull(60.0, 10), Pull(60.0, 10)]  # W_1 = 30, W_2 = 45
    with pytest.raises(SimulationError, match="round 1: the released model does not decode") as e:
        simulate(apps, np.zeros(3), rounds=3, encoding={"model_bound": 40.0, "clip_bound": 60.0})
    assert (e.value.round, e.value.participant) == (1, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregation": "secagg"}, "aggregation must be one of"),
        ({"encoding": {"slot_bits": 30}}, "unknown encoding fields for a masked job"),
        ({"encoding": {"frac_bits": 2.5}}, "encoding.frac_bits must be an integer"),
        ({"encoding": {"clip_bound": 8.0}, "clip_bound": 4.0}, "give it once"),
        ({"weights": [0.5, 1.5]}, r"weights\[1\] must be a number in \(0, 1\]"),
        ({"weights": [0.5]}, "got 1 weights for 2 participants"),
        ({"weights": [0.5, 0.5], "num_examples": [1, 1]}, "not both"),
        ({"num_examples": [3, 0]}, r"num_examples\[1\] must be a positive integer"),
        ({"participants_per_round": [[0], [1]]}, "give num_examples"),
        ({"participants_per_round": [[0, 2], [0]], "num_examples": [1, 1]}, "not in"),
        ({"participants_per_round": [[0, 1]]}, "no entry for round 1"),
        ({"modulus": 2**61 - 1}, "modulus is the bcp packing's"),
        ({"initial": np.full(4, 33.0)}, "within ±model_bound = 32.0"),
        ({"initial": np.full(4, 33.0), "aggregation": "bcp"}, "within ±slot_bound/2 = 32.0"),
        ({"initial": np.array([0.0, np.nan])}, "NaN"),
        ({"training": {"epochs": 3}}, "unknown fields"),
        ({"model": MLP([2, 2])}, "the model has 6 parameters, initial_parameters 4"),
        ({"rounds": -1}, "rounds must be"),
    ],
)
def test_settings_a_job_would_refuse_are_refused_up_front(
    kwargs: dict[str, Any], message: str
) -> None:
    apps = [Pull(0.5, 3), Pull(0.1, 3)]
    initial = kwargs.pop("initial", np.zeros(4))
    kwargs.setdefault("rounds", 2)
    with pytest.raises(ValueError, match=message):
        simulate(apps, initial, **kwargs)
    assert apps[0].rounds == []


# --------------------------------------------------------------------------- who contributes


@pytest.mark.parametrize("aggregation", ["plaintext", "masked", "bcp"])
def test_an_absent_participant_counts_as_a_zero_update(aggregation: str) -> None:
    apps = [Pull(1.0, 10), Pull(-1.0, 30), Pull(0.25, 60)]
    selector = [[0, 1, 2], [0, 2], [1]]
    history = simulate(
        apps,
        np.zeros(3),
        rounds=3,
        aggregation=aggregation,
        participants_per_round=selector,
        keep_parameters=True,
    )
    assert [app.rounds for app in apps] == [[0, 1], [0, 2], [0, 1]]
    assert history.weights == (0.1, 0.3, 0.6)  # fixed in round 0, never renormalised
    assert [r.contributors for r in history.rounds] == [(0, 1, 2), (0, 2), (1,)]
    for r in history.rounds:
        assert [e.participant for e in r.evaluations] == list(r.contributors)
        assert [f.participant for f in r.fits] == list(r.contributors)
    w1, w2, w3 = (r.parameters for r in history.rounds)
    assert w1 is not None and w2 is not None and w3 is not None
    # round 1: only 0 and 2 move the model, by their own weights: 0.1·Δ_0 + 0.6·Δ_2
    expected = w1 + 0.1 * 0.5 * (1.0 - w1) + 0.6 * 0.5 * (0.25 - w1)
    tolerance = 0.0 if aggregation == "plaintext" else 3 * 2.0**-21
    np.testing.assert_allclose(w2, expected, rtol=0, atol=tolerance + 1e-15)
    expected = w2 + 0.3 * 0.5 * (-1.0 - w2)
    np.testing.assert_allclose(w3, expected, rtol=0, atol=tolerance + 1e-15)


def test_a_round_without_contributors_releases_nothing() -> None:
    apps = [Pull(1.0, 10), Pull(-1.0, 10)]
    history = simulate(
        apps, np.full(2, 0.3), rounds=2, num_examples=[1, 1], participants_per_round=[[0], []]
    )
    first, second = history.rounds
    assert second.contributors == () and second.fits == ()
    assert second.evaluation is not None and second.evaluation["reporters"] == 0
    assert history.losses_distributed == [(0, first.evaluation["loss"])]  # type: ignore[index]
    assert apps[1].rounds == []


# --------------------------------------------------------------------------- evaluation


def test_evaluations_are_averaged_weighted_by_examples() -> None:
    apps = [
        Pull(0.5, 10, {"auc": 0.9, "recall": 0.5}),
        Pull(-0.5, 30, {"auc": 0.7}),
        Pull(0.0, 60, {"auc": 0.6, "recall": 0.25}),
    ]
    history = simulate(apps, np.full(5, 0.2), rounds=2, aggregation="bcp")
    for r in history.rounds:
        assert r.evaluation is not None
        losses = [e.loss for e in r.evaluations]
        assert None not in losses
        assert r.evaluation["reporters"] == 3 and r.evaluation["num_examples"] == 100
        expected_loss = (10 * losses[0] + 30 * losses[1] + 60 * losses[2]) / 100  # type: ignore[operator]
        assert r.evaluation["loss"] == pytest.approx(expected_loss, rel=1e-12)
        assert r.evaluation["metrics"]["auc"] == pytest.approx((9 + 21 + 36) / 100)
        assert r.evaluation["metrics"]["recall"] == pytest.approx((5 + 15) / 70)
        assert r.evaluation["coverage"] == {"auc": 100, "recall": 70}
    assert history.metrics_distributed == {
        "auc": [(0, pytest.approx(0.66)), (1, pytest.approx(0.66))],
        "recall": [(0, pytest.approx(20 / 70)), (1, pytest.approx(20 / 70))],
    }
    assert [t for t, _ in history.losses_distributed] == [0, 1]
    assert history.rounds[0].fits[2].metrics["moved"] == pytest.approx(0.1)


def test_without_evaluate_no_app_is_scored() -> None:
    class NoScore(Pull):
        def evaluate(self, parameters: Vector, config: dict[str, Any]) -> Any:
            raise AssertionError("evaluate must not run")

    history = simulate([NoScore(0.5, 3)], np.zeros(2), rounds=2, evaluate=False, progress=True)
    assert all(r.evaluation is None and r.evaluations == () for r in history.rounds)
    assert history.losses_distributed == [] and history.metrics_distributed == {}


def test_each_participant_gets_its_own_copy_of_the_model(model: MLP) -> None:
    class Seen(Pull):
        def __init__(self) -> None:
            super().__init__(0.0, 1)
            self.models: list[Any] = []

        def fit(self, parameters: Vector, config: dict[str, Any]) -> Any:
            self.models.append(config["model"])
            return super().fit(parameters, config)

    apps = [Seen(), Seen()]
    initial = model.init_parameters(np.random.default_rng(0))
    simulate(apps, initial, rounds=2, model=model, aggregation="plaintext")
    first, second = apps[0].models, apps[1].models
    assert first[0] is first[1] and second[0] is second[1]  # kept across rounds
    assert first[0] is not second[0] and first[0] is not model
    assert first[0].spec() == second[0].spec() == model.spec()
    from_spec = [Seen()]
    simulate(from_spec, initial, rounds=1, model=model.spec(), aggregation="plaintext")
    assert isinstance(from_spec[0].models[0], MLP)
