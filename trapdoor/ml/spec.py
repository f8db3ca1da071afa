"""What a job definition's ``model`` and ``training`` mean, checked without training anything.

The parameter server checks a definition when a job is created, and every participant reads
the same fields back before it trains: both call these functions, so a job the PS accepts
is one each participant can build and train, with the same defaults, and a refusal names
the field at fault. The numpy models (``mlp``, ``cnn``, ``gru``) are built through the
model registry (:func:`trapdoor.ml.models.model_from_spec`) only to count their parameters;
no weights are drawn. A ``torch`` spec is checked for its shape only: its module is built
from a factory registered on the participant's side, so only a process that imports torch
can count it, and the parameter server never does.

Pure: numpy only (no torch, no protocol, no web layer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from trapdoor.ml.models import model_from_spec
from trapdoor.ml.training import TrainingConfig

__all__ = [
    "TORCH_BUFFER_MODES",
    "TRAINING_DEFAULTS",
    "ModelSpec",
    "SpecError",
    "TrainingSpec",
    "check_model_spec",
    "torch_buffers",
    "torch_spec_fields",
    "training_spec",
]

#: What a participant uses for a ``training`` field the definition leaves out:
#: :class:`~trapdoor.ml.training.TrainingConfig`'s defaults, and seed 0.
TRAINING_DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(TrainingConfig)},
    "seed": 0,
}
_TORCH_FIELDS = frozenset({"kind", "name", "kwargs", "buffers"})
#: A torch job's choice for the module's buffers (BatchNorm running statistics): kept on
#: each participant (``local``, the default) or averaged with the parameters
#: (``federated``: floating-point buffers only; integer counters stay local).
TORCH_BUFFER_MODES = ("local", "federated")


class SpecError(ValueError):
    """A refused ``model`` or ``training`` field.

    ``field`` names it (``"training.batch_size"``); ``malformed`` says it has the wrong
    JSON type, as opposed to a well-typed value that is out of range or unknown, so a
    service can answer the two as it answers every other field.
    """

    def __init__(self, field: str, message: str, *, malformed: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.malformed = malformed


@dataclass(frozen=True)
class ModelSpec:
    """A model spec the registry accepts."""

    kind: str
    #: The length of its flat parameter vector (of ``initial_weights`` and every update);
    #: None for a ``torch`` spec, which only a participant that imports torch can count.
    num_parameters: int | None


@dataclass(frozen=True)
class TrainingSpec:
    """A definition's ``training``, its defaults filled in."""

    config: TrainingConfig
    #: The job's seed of :func:`trapdoor.ml.training.participant_rng`.
    seed: int


def torch_spec_fields(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered name and the keyword arguments of a ``torch`` spec; ValueError
    (a :class:`SpecError`) for any other shape."""
    unknown = set(spec) - _TORCH_FIELDS
    if unknown:
        raise SpecError("model", f"unknown keys in torch model spec: {sorted(unknown)}")
    name, kwargs = spec.get("name"), spec.get("kwargs", {})
    if not isinstance(name, str) or not name or not isinstance(kwargs, dict):
        raise SpecError(
            "model", "a torch model spec needs a string 'name' and a dict 'kwargs'", malformed=True
        )
    torch_buffers(spec)
    return name, kwargs


def torch_buffers(spec: dict[str, Any]) -> str:
    """A ``torch`` spec's buffer choice (``"local"`` when absent); :class:`SpecError` for
    any other value, so a job cannot mean one thing to the PS and another to a node."""
    mode = spec.get("buffers", TORCH_BUFFER_MODES[0])
    if not isinstance(mode, str):
        raise SpecError("model.buffers", "must be a string", malformed=True)
    if mode not in TORCH_BUFFER_MODES:
        raise SpecError(
            "model.buffers", f"unknown buffer mode {mode!r}; use one of {list(TORCH_BUFFER_MODES)}"
        )
    return mode


def check_model_spec(spec: object) -> ModelSpec:
    """``spec`` as the model registry reads it; :class:`SpecError` if it cannot be built."""
    if not isinstance(spec, dict):
        raise SpecError("model", "a model spec is an object", malformed=True)
    kind = spec.get("kind")
    if kind == "torch":
        torch_spec_fields(spec)
        return ModelSpec("torch", None)
    try:
        model = model_from_spec(spec)
    except (ValueError, TypeError, OverflowError) as exc:  # every bad value, by the models
        raise SpecError("model", str(exc)) from None
    return ModelSpec(str(kind), model.num_parameters)


def _typed(training: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = training.get(name, TRAINING_DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise SpecError(f"training.{name}", f"must be {what}", malformed=True)
    return value


def training_spec(training: object) -> TrainingSpec:
    """``training`` with the participants' defaults (:data:`TRAINING_DEFAULTS`) filled in;
    :class:`SpecError` for an unknown field, a wrongly typed one or a value out of range."""
    if not isinstance(training, dict):
        raise SpecError("training", "must be an object", malformed=True)
    unknown = set(training) - set(TRAINING_DEFAULTS)
    if unknown:
        raise SpecError("training", f"unknown fields {sorted(map(str, unknown))}", malformed=True)
    rate = _typed(training, "learning_rate", (int, float), "a number")
    local_epochs = _typed(training, "local_epochs", (int,), "an integer")
    batch_size = _typed(training, "batch_size", (int,), "an integer")
    mode = _typed(training, "mode", (str,), "a string")
    seed = _typed(training, "seed", (int,), "an integer")
    if seed < 0:  # numpy's SeedSequence takes no negative entropy
        raise SpecError("training.seed", "must be non-negative")
    try:
        learning_rate = float(rate)
    except OverflowError:  # an integer past any float
        raise SpecError("training.learning_rate", "must be finite") from None
    try:  # the ranges are TrainingConfig's own (its message names the field)
        config = TrainingConfig(learning_rate, local_epochs, batch_size, mode)
    except ValueError as exc:
        raise SpecError("training", str(exc)) from None
    return TrainingSpec(config, seed)
