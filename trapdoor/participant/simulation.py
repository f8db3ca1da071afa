"""A federated job in one process: the participants' own apps on their own arrays.

The same app (:class:`~trapdoor.participant.app.NumPyApp`) runs from a script or a
notebook, inside a node, and here::

    from trapdoor.participant.simulation import simulate

    history = simulate(
        [ModelApp(data) for data in partitions],  # participant i is apps[i]
        model.init_parameters(np.random.default_rng(0)),
        rounds=5,
        model=model,
        training={"learning_rate": 0.1, "local_epochs": 2},
    )
    history.metrics_distributed["accuracy"]  # [(round, example-weighted accuracy), ...]

Every round goes as in a real job: each contributor's app runs through
:func:`~trapdoor.participant.app.checked_fit` from ``W_t`` with the ``config`` a node
would give it (:func:`trapdoor.participant.client.app_config`'s keys and values, with
``job_id`` ``"simulation"``); its ``Δ_i`` is clipped, scaled by the public weight ``w_i``
and fixed-point encoded as that mode's participants encode it; the encodings are summed;
and ``W_{t+1}`` is decoded as the contributors decode it. Then each contributor scores
``W_{t+1}`` with its app's ``evaluate`` (:func:`~trapdoor.participant.app.checked_evaluate`),
and the round's evaluation is the example-weighted average the parameter server shows
(:func:`trapdoor.protocol.metrics.aggregate_metrics`).

Nothing is encrypted, and no KGC, PS, key, database or HTTP is involved, yet the models
are the ones an encrypted run of the same job releases, to the last bit: encryption and
homomorphic addition are exact on the encoded integers (BCP adds plaintexts modulo ``N``,
and the masked mode's masks cancel exactly modulo ``2^k``), so what a contributor decodes
is the decoding of the sum of the encodings, which is what is computed here:

- ``"masked"`` (a job definition's default): ``encode_update`` of each contributor and
  :func:`trapdoor.protocol.bundle.next_model`, the function a contributor opens a masked
  release with (its masks omitted: their sum is zero);
- ``"bcp"``: ``encode_vector`` of each contributor, summed modulo ``N`` with the chain of
  aggregates the PS keeps (it starts from the encoded ``W_0``), and ``decode_vector``.
  The packing's modulus is a 2048-bit stand-in for the KGC's ``N`` unless one is given:
  the decoded numbers do not depend on it (packing is linear and every slot is read back
  exactly while it fits, which the layout guarantees);
- ``"plaintext"``: float FedAvg with no clipping or encoding, the arithmetic of
  :func:`trapdoor.ml.training.run_plaintext_fedavg` (bit-identical to it for
  :class:`~trapdoor.participant.app.ModelApp`).

The public weights are fixed before round 0, as the protocol fixes them from the
participants' public example counts: ``w_i = n_i / Σ n_j``. A participant that does not
contribute to a round (``participants_per_round``) counts as a zero update; the others'
weights are not renormalised.

Imports the crypto, protocol and ml layers and the participant's app module only: no
HTTP, no database.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trapdoor.crypto.encoding import (
    ClipReport,
    EncodingError,
    PackingLayout,
    as_finite_floats,
    decode_vector,
    encode_vector,
)
from trapdoor.ml.models import Model, model_from_spec
from trapdoor.ml.spec import training_spec
from trapdoor.ml.training import FitResult, ParticipantSelector, fedavg_aggregate
from trapdoor.participant.app import (
    AppResultError,
    NumPyApp,
    checked_evaluate,
    checked_fit,
    round_config,
)
from trapdoor.protocol.bundle import next_model
from trapdoor.protocol.job import (
    ENCODING_DEFAULTS,
    MASKED_ENCODING_DEFAULTS,
    MaskedLayout,
    initial_plaintexts,
    masked_layout,
)
from trapdoor.protocol.metrics import aggregate_metrics
from trapdoor.protocol.upload import encode_update

__all__ = [
    "AGGREGATIONS",
    "BCP_ENCODING_DEFAULTS",
    "MASKED_ENCODING_DEFAULTS",
    "SIMULATION_JOB_ID",
    "STANDIN_MODULUS",
    "EvaluateRecord",
    "FitRecord",
    "SimulatedRound",
    "SimulationError",
    "SimulationHistory",
    "simulate",
]

Vector = npt.NDArray[np.float64]

#: What ``aggregation`` may be: the two modes of a real job, and float FedAvg.
AGGREGATIONS = ("masked", "bcp", "plaintext")
#: The ``job_id`` in every app's ``config``.
SIMULATION_JOB_ID = "simulation"
#: A job definition's ``encoding`` defaults, as the parameter server fills them in (the
#: bcp key ``width`` only sizes ciphertext blocks: it changes no decoded number).
BCP_ENCODING_DEFAULTS: dict[str, Any] = {k: v for k, v in ENCODING_DEFAULTS.items() if k != "width"}
#: Accepted in a bcp ``encoding`` and ignored: the job key's block width changes how
#: plaintexts are grouped into ciphertexts, never a number.
_BCP_IGNORED = frozenset({"width"})
#: The bcp packing's modulus when none is given: 2048 bits, like the KGC's ``N``.
STANDIN_MODULUS = (1 << 2048) - 1


class SimulationError(ValueError):
    """A round cannot go on: an app's result a node would refuse, or a release that would
    not decode. ``round`` and ``participant`` (None for the whole round) say where."""

    def __init__(self, message: str, *, round: int, participant: int | None = None) -> None:
        super().__init__(message)
        self.round = round
        self.participant = participant


@dataclass(frozen=True)
class FitRecord:
    """One contributor's training in one round."""

    participant: int
    num_examples: int
    #: The app's own fit metrics (``ModelApp``: ``train_loss``, ``steps``).
    metrics: dict[str, Any]
    #: The public weight ``w_i`` its update was scaled by.
    weight: float
    #: What clipping did to ``Δ_i`` before encoding (None in plaintext mode: no clipping).
    clip: ClipReport | None


@dataclass(frozen=True)
class EvaluateRecord:
    """One contributor's ``evaluate`` of the model released at the end of a round.

    ``error`` is set (and the numbers are not) when the app's answer could not be shared:
    as in a node, that is recorded and the job goes on.
    """

    participant: int
    loss: float | None
    num_examples: int | None
    metrics: dict[str, float]
    error: str | None = None


@dataclass(frozen=True)
class SimulatedRound:
    """Round ``round``: who contributed, their fits, and their scores of ``W_{round+1}``."""

    round: int
    contributors: tuple[int, ...]
    fits: tuple[FitRecord, ...]
    evaluations: tuple[EvaluateRecord, ...]
    #: :func:`trapdoor.protocol.metrics.aggregate_metrics` over the contributors'
    #: evaluations (``reporters``, ``num_examples``, ``loss``, ``metrics``,
    #: ``coverage``); None when ``evaluate=False``.
    evaluation: dict[str, Any] | None
    #: ``W_{round+1}`` when ``simulate(..., keep_parameters=True)``, else None.
    parameters: Vector | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SimulationHistory:
    """What :func:`simulate` ran and what came of it."""

    aggregation: str
    #: The public weights ``w_i``, by participant index (empty if no round ran and none
    #: were given).
    weights: tuple[float, ...]
    #: The encoding settings used (the job definition's ``encoding``, defaults filled in;
    #: empty in plaintext mode).
    encoding: dict[str, Any]
    rounds: tuple[SimulatedRound, ...]
    initial_parameters: Vector = field(repr=False)
    #: The model after the last round.
    parameters: Vector = field(repr=False)

    @property
    def losses_distributed(self) -> list[tuple[int, float]]:
        """``(round, example-weighted loss)`` of each evaluated round (Flower's name)."""
        return [
            (r.round, float(r.evaluation["loss"]))
            for r in self.rounds
            if r.evaluation is not None and r.evaluation["loss"] is not None
        ]

    @property
    def metrics_distributed(self) -> dict[str, list[tuple[int, float]]]:
        """Each evaluate metric's ``(round, example-weighted average)`` (Flower's name)."""
        series: dict[str, list[tuple[int, float]]] = {}
        for r in self.rounds:
            if r.evaluation is None:
                continue
            for name, value in r.evaluation["metrics"].items():
                series.setdefault(name, []).append((r.round, float(value)))
        return series


# --------------------------------------------------------------------------- settings


def _number(settings: Mapping[str, Any], name: str) -> float:
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"encoding.{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"encoding.{name} must be finite and > 0, got {value!r}")
    return float(value)


def _integer(settings: Mapping[str, Any], name: str) -> int:
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"encoding.{name} must be an integer, got {value!r}")
    return value


def _encoding(
    aggregation: str, encoding: Mapping[str, Any] | None, clip_bound: float | None
) -> dict[str, Any]:
    """The job definition's ``encoding`` for ``aggregation``, its defaults filled in."""
    given = dict(encoding or {})
    if clip_bound is not None:
        if "clip_bound" in given and given["clip_bound"] != clip_bound:
            raise ValueError(
                f"clip_bound={clip_bound!r} differs from encoding['clip_bound']="
                f"{given['clip_bound']!r}; give it once"
            )
        given["clip_bound"] = clip_bound
    if aggregation == "plaintext":
        known = set(BCP_ENCODING_DEFAULTS) | set(MASKED_ENCODING_DEFAULTS) | _BCP_IGNORED
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown encoding fields {unknown}")
        return {}  # float FedAvg: nothing is clipped or encoded
    defaults = BCP_ENCODING_DEFAULTS if aggregation == "bcp" else MASKED_ENCODING_DEFAULTS
    ignored = _BCP_IGNORED if aggregation == "bcp" else frozenset()
    unknown = sorted(set(given) - set(defaults) - ignored)
    if unknown:
        raise ValueError(f"unknown encoding fields for a {aggregation} job: {unknown}")
    merged = {**defaults, **{k: v for k, v in given.items() if k not in ignored}}
    checked: dict[str, Any] = {}
    for name in defaults:
        checked[name] = _integer(merged, name) if name.endswith("_bits") else _number(merged, name)
    return checked


def _weights_from(counts: Sequence[Any], what: str) -> tuple[float, ...]:
    """``n_i / Σ n_j``, as the parameter server derives a job's public weights."""
    for i, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"{what}[{i}] must be a positive integer, got {n!r}")
    sizes = [int(n) for n in counts]
    total = sum(sizes)
    return tuple(n / total for n in sizes)


def _checked_weights(weights: Sequence[float], k: int) -> tuple[float, ...]:
    if len(weights) != k:
        raise ValueError(f"got {len(weights)} weights for {k} participants")
    for i, w in enumerate(weights):
        if (
            isinstance(w, bool)
            or not isinstance(w, int | float | np.floating)
            or not (math.isfinite(w) and 0 < w <= 1)
        ):
            raise ValueError(f"weights[{i}] must be a number in (0, 1] (as the KGC signs them)")
    return tuple(float(w) for w in weights)


def _contributors(selector: ParticipantSelector | None, t: int, k: int) -> tuple[int, ...]:
    """Who sends an update in round ``t`` (everyone without a selector), sorted."""
    if selector is None:
        return tuple(range(k))
    if not callable(selector) and t >= len(selector):
        raise ValueError(f"participants_per_round has no entry for round {t}")
    chosen = selector(t) if callable(selector) else selector[t]
    indices = set()
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < k:
            raise ValueError(f"round {t}: participant index {i!r} is not in [0, {k})")
        indices.add(int(i))
    return tuple(sorted(indices))


def _models(model: Model | Mapping[str, Any] | None, k: int, length: int) -> list[Any]:
    """One model per participant, as each node builds its own from the job's spec (a
    model with state, such as a torch module's local buffers, is never shared)."""
    if model is None:
        return [None] * k
    if isinstance(model, Mapping):
        models = [model_from_spec(dict(model)) for _ in range(k)]
    elif isinstance(model, Model):
        models = [copy.deepcopy(model) for _ in range(k)]
    else:
        raise TypeError(f"model must be a trapdoor.ml model or its spec, got {type(model)}")
    if models and models[0].num_parameters != length:
        raise ValueError(
            f"the model has {models[0].num_parameters} parameters, initial_parameters {length}"
        )
    return models


def _layouts(
    aggregation: str,
    settings: Mapping[str, Any],
    initial: Vector,
    k: int,
    rounds: int,
    modulus: int | None,
) -> tuple[PackingLayout | None, MaskedLayout | None]:
    """The bcp packing or the masked layout a parameter server would make for this job,
    with its check of ``W_0`` (ValueError, as the PS refuses the definition)."""
    if modulus is not None and aggregation != "bcp":
        raise ValueError(f"modulus is the bcp packing's; this run is {aggregation}")
    largest = float(np.abs(initial).max())
    if aggregation == "bcp":
        try:
            packing = PackingLayout(
                modulus=STANDIN_MODULUS if modulus is None else modulus,
                length=initial.size,
                frac_bits=settings["frac_bits"],
                slot_bits=settings["slot_bits"],
                slot_bound=settings["slot_bound"],
                max_terms=max(1024, 4 * k),  # the parameter server's choice
            )
        except EncodingError as exc:
            raise ValueError(f"encoding: {exc}") from None
        if largest > packing.slot_bound / 2:
            raise ValueError(
                f"initial_parameters must lie within ±slot_bound/2 = {packing.slot_bound / 2}"
            )
        return packing, None
    if aggregation == "masked":
        try:
            layout = masked_layout(
                length=initial.size,
                frac_bits=settings["frac_bits"],
                model_bound=settings["model_bound"],
                clip_bound=settings["clip_bound"],
                participants=k,
                rounds=max(rounds, 1),
            )
        except EncodingError as exc:
            raise ValueError(f"encoding: {exc}") from None
        if largest > layout.model_bound:
            raise ValueError(
                f"initial_parameters must lie within ±model_bound = {layout.model_bound}"
            )
        return None, layout
    return None, None


# --------------------------------------------------------------------------- aggregation


class _Plaintext:
    """Float FedAvg: ``W_t + Σ_i w_i Δ_i`` over every participant, absent ones as zeros."""

    def __init__(self, weights: tuple[float, ...]) -> None:
        self.weights = weights
        self.updates: dict[int, Vector] = {}

    def add(self, participant: int, update: Vector) -> ClipReport | None:
        self.updates[participant] = update
        return None

    def release(self, current: Vector) -> Vector:
        zeros = np.zeros_like(current)
        updates = [self.updates.get(i, zeros) for i in range(len(self.weights))]
        self.updates = {}
        return fedavg_aggregate(current, updates, self.weights)


class _Bcp:
    """Packed fixed point summed modulo ``N``: the chain of aggregates the PS keeps,
    ``Agg_{t+1} = Agg_t + Σ encode(w_i Δ_i)``, which each contributor decodes."""

    def __init__(
        self, packing: PackingLayout, initial: Vector, weights: tuple[float, ...], clip: float
    ) -> None:
        self.packing = packing
        self.weights = weights
        self.clip_bound = clip
        self.aggregate = [int(p) for p in initial_plaintexts(packing, initial)]
        self.round_sum = [0] * packing.num_plaintexts

    def add(self, participant: int, update: Vector) -> ClipReport | None:
        plaintexts, report = encode_vector(
            update, self.packing, clip_bound=self.clip_bound, scale=self.weights[participant]
        )
        self.round_sum = [a + int(p) for a, p in zip(self.round_sum, plaintexts, strict=True)]
        return report

    def release(self, current: Vector) -> Vector:
        n = self.packing.modulus
        aggregate = [(a + s) % n for a, s in zip(self.aggregate, self.round_sum, strict=True)]
        self.round_sum = [0] * self.packing.num_plaintexts
        model = decode_vector(aggregate, self.packing)
        self.aggregate = aggregate
        return model


class _Masked:
    """Ring encodings of ``w_i Δ_i``; the model is opened with the contributors' own
    :func:`~trapdoor.protocol.bundle.next_model`, masks and their sum left out."""

    def __init__(self, layout: MaskedLayout, weights: tuple[float, ...]) -> None:
        self.layout = layout
        self.weights = weights
        self.uploads: list[Any] = []

    def add(self, participant: int, update: Vector) -> ClipReport | None:
        encoded, report = encode_update(update, self.layout, self.weights[participant])
        self.uploads.append(encoded)
        return report

    def release(self, current: Vector) -> Vector:
        uploads, self.uploads = self.uploads, []
        no_masks = np.zeros(self.layout.length, dtype=self.layout.ring.dtype)
        return next_model(self.layout, current, uploads, no_masks)


# --------------------------------------------------------------------------- the run


def _progress_bar(enabled: bool, rounds: int, aggregation: str) -> Any:
    from tqdm import tqdm  # a core dependency; imported only when a run starts

    return tqdm(total=rounds, desc=f"simulate ({aggregation})", unit="round", disable=not enabled)


def _where(participant: int, t: int, stage: str) -> str:
    return f"participant {participant}, round {t} ({stage})"


def simulate(
    apps: Sequence[NumPyApp],
    initial_parameters: npt.ArrayLike,
    *,
    rounds: int,
    weights: Sequence[float] | None = None,
    num_examples: Sequence[int] | None = None,
    training: Mapping[str, Any] | None = None,
    model: Model | Mapping[str, Any] | None = None,
    aggregation: str = "masked",
    clip_bound: float | None = None,
    encoding: Mapping[str, Any] | None = None,
    modulus: int | None = None,
    participants_per_round: ParticipantSelector | None = None,
    evaluate: bool = True,
    keep_parameters: bool = False,
    progress: bool = False,
) -> SimulationHistory:
    """Run ``rounds`` rounds of a job whose participant ``i`` is ``apps[i]``, in process.

    ``initial_parameters`` is ``W_0``. The public weights are ``weights`` (each in
    ``(0, 1]``), else ``n_i / Σ n_j`` of ``num_examples`` (the counts a job definition
    lists), else of the example counts each app's round-0 ``fit`` reports (everyone must
    contribute to round 0 then). ``training`` is the job definition's ``training``
    (``learning_rate``, ``local_epochs``, ``batch_size``, ``mode``, ``seed``), read with
    :func:`trapdoor.ml.spec.training_spec`, so its defaults are a real job's. ``model``
    (a ``trapdoor.ml`` model or its spec) reaches each app as ``config["model"]``, one
    copy per participant; :class:`~trapdoor.participant.app.ModelApp` needs it.

    ``aggregation`` is ``"masked"`` (a job definition's default), ``"bcp"`` or
    ``"plaintext"`` (the module's docstring says what each computes). ``encoding`` is the
    job definition's ``encoding`` (bcp: ``frac_bits``, ``slot_bits``, ``slot_bound``,
    ``clip_bound``; masked: ``frac_bits``, ``clip_bound``, ``model_bound``), with the
    parameter server's defaults (:data:`BCP_ENCODING_DEFAULTS`,
    :data:`MASKED_ENCODING_DEFAULTS`); ``clip_bound`` is a shorthand for its field.
    ``W_0`` must lie within the bounds a parameter server checks (bcp: ``slot_bound / 2``;
    masked: ``model_bound``). ``modulus`` replaces the bcp packing's stand-in ``N``.

    ``participants_per_round`` (a callable ``round -> indices`` or a list indexed by
    round, as for :func:`~trapdoor.ml.training.run_plaintext_fedavg`) limits who
    contributes; a round without contributors releases nothing and leaves the model as it
    is. With ``evaluate``, each contributor's ``evaluate`` of ``W_{t+1}`` is averaged
    weighted by its examples. ``keep_parameters`` keeps each round's model in the
    history; ``progress`` shows a tqdm bar.

    A ``fit`` answer a node would refuse raises :class:`SimulationError` naming the
    participant and the round (any other exception from an app propagates, with a note
    saying whose it was); an ``evaluate`` answer that could not be shared is recorded in
    the round (:attr:`EvaluateRecord.error`), with a warning, and the run goes on, as in a
    node. A release that would not decode (a bcp slot overflow, a masked model beyond
    ``model_bound``) raises :class:`SimulationError`.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    apps = list(apps)
    k = len(apps)
    if k == 0:
        raise ValueError("need at least one participant app")
    for i, app in enumerate(apps):
        if isinstance(app, type) or not isinstance(app, NumPyApp):
            raise TypeError(f"apps[{i}] is not an app (an object with fit and evaluate)")
    try:
        current = np.array(as_finite_floats(initial_parameters, "initial_parameters"))
    except EncodingError as exc:
        raise ValueError(str(exc)) from None
    if current.size == 0:
        raise ValueError("initial_parameters is empty")
    initial = current.copy()
    spec = training_spec(dict(training or {}))
    models = _models(model, k, current.size)
    settings = _encoding(aggregation, encoding, clip_bound)

    packing, layout = _layouts(aggregation, settings, current, k, rounds, modulus)

    selector = participants_per_round
    if selector is not None and not callable(selector) and len(selector) < rounds:
        raise ValueError(f"participants_per_round has no entry for round {len(selector)}")
    chosen: dict[int, tuple[int, ...]] = {}

    def contributors_of(t: int) -> tuple[int, ...]:
        """Round ``t``'s contributors; the selector is asked once per round."""
        if t not in chosen:
            chosen[t] = _contributors(selector, t, k)
        return chosen[t]

    if weights is not None and num_examples is not None:
        raise ValueError("give weights or num_examples, not both")
    public: tuple[float, ...] | None = None
    if weights is not None:
        public = _checked_weights(weights, k)
    elif num_examples is not None:
        if len(num_examples) != k:
            raise ValueError(f"got {len(num_examples)} example counts for {k} participants")
        public = _weights_from(num_examples, "num_examples")
    elif rounds > 0 and contributors_of(0) != tuple(range(k)):
        raise ValueError(
            "not every participant contributes to round 0, so the weights cannot come from "
            "its fits: give num_examples (the job's public counts) or weights"
        )

    def aggregator(fixed: tuple[float, ...]) -> _Plaintext | _Bcp | _Masked:
        if packing is not None:
            if settings["clip_bound"] * max(fixed) > packing.slot_bound:
                raise ValueError(
                    "clip_bound * largest weight exceeds slot_bound: one update cannot fit"
                )
            return _Bcp(packing, initial, fixed, settings["clip_bound"])
        if layout is not None:
            return _Masked(layout, fixed)
        return _Plaintext(fixed)

    aggregate = aggregator(public) if public is not None else None
    training_config = spec.config

    def config(t: int, i: int) -> dict[str, Any]:
        """What a node gives participant ``i`` (the client's builder, our job id)."""
        return round_config(
            job_id=SIMULATION_JOB_ID,
            round_number=t,
            seed=spec.seed,
            participant_index=i,
            training=training_config,
            model=models[i],
        )

    history: list[SimulatedRound] = []
    with _progress_bar(progress, rounds, aggregation) as bar:
        for t in range(rounds):
            contributors = contributors_of(t)
            fits = {i: _fit(apps[i], current, config(t, i), i, t) for i in contributors}
            if aggregate is None:  # weights from round 0's fits, everyone's
                public = _weights_from([fits[i].num_examples for i in range(k)], "num_examples")
                aggregate = aggregator(public)
            assert public is not None
            records = []
            for i in contributors:
                try:
                    clip = aggregate.add(i, fits[i].update)
                except EncodingError as exc:
                    raise SimulationError(
                        f"{_where(i, t, 'encoding')}: {exc}", round=t, participant=i
                    ) from exc
                records.append(
                    FitRecord(i, fits[i].num_examples, dict(fits[i].metrics), public[i], clip)
                )
            if contributors:
                try:
                    current = aggregate.release(current)
                except EncodingError as exc:
                    raise SimulationError(
                        f"round {t}: the released model does not decode: {exc}", round=t
                    ) from exc
            evaluations: tuple[EvaluateRecord, ...] = ()
            summary = None
            if evaluate:
                scored = []
                for i in contributors:  # a loop, so a warning's stacklevel is the caller's
                    scored.append(_evaluate(apps[i], current, config(t, i), i, t))
                evaluations = tuple(scored)
                summary = aggregate_metrics(
                    (e.loss, e.num_examples, e.metrics)
                    for e in evaluations
                    if e.loss is not None and e.num_examples is not None
                )
                if summary["loss"] is not None:
                    bar.set_postfix(loss=f"{summary['loss']:.4g}", refresh=False)
            history.append(
                SimulatedRound(
                    round=t,
                    contributors=contributors,
                    fits=tuple(records),
                    evaluations=evaluations,
                    evaluation=summary,
                    parameters=current.copy() if keep_parameters else None,
                )
            )
            bar.update(1)
    return SimulationHistory(
        aggregation=aggregation,
        weights=public or (),
        encoding=settings,
        rounds=tuple(history),
        initial_parameters=initial,
        parameters=current.copy(),
    )


def _fit(app: NumPyApp, current: Vector, config: dict[str, Any], i: int, t: int) -> FitResult:
    """:func:`checked_fit`, its refusal named by participant and round."""
    try:
        return checked_fit(app, current, config)
    except AppResultError as exc:
        raise SimulationError(f"{_where(i, t, 'fit')}: {exc}", round=t, participant=i) from exc
    except Exception as exc:
        exc.add_note(f"raised by the app of {_where(i, t, 'fit')} in a trapdoor simulation")
        raise


def _evaluate(
    app: NumPyApp, parameters: Vector, config: dict[str, Any], i: int, t: int
) -> EvaluateRecord:
    """:func:`checked_evaluate`; an answer that could not be shared is recorded, as a node
    records it, and does not stop the run."""
    try:
        loss, examples, metrics = checked_evaluate(app, parameters, config)
    except AppResultError as exc:
        message = f"{_where(i, t, 'evaluate')}: {exc}"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return EvaluateRecord(i, None, None, {}, error=str(exc))
    except Exception as exc:
        exc.add_note(f"raised by the app of {_where(i, t, 'evaluate')} in a trapdoor simulation")
        raise
    return EvaluateRecord(i, loss, examples, dict(metrics))
