"""The training a participant runs inside the protocol, shaped like Flower's ``NumPyClient``.

A user supplies an object with ``fit`` and ``evaluate`` (:class:`NumPyApp`); the client
(:meth:`~trapdoor.participant.client.ParticipantClient.prepare_update` with ``app=``)
runs ``fit`` from ``W_t``, checks what comes back, and encodes ``new - W_t``. The same
object works from a script, a notebook or a node (``node serve --app module:object``, or
a name in the ``trapdoor.apps`` entry-point group; never from a job definition, which
the PS serves and must not choose code run at the participant).

``config`` is built by the client for each round and holds:

- ``job_id`` (str), ``round`` (int), ``seed`` (int: the job's training seed),
  ``participant_index`` (int: our position in the signed participant list);
- the job's training settings: ``learning_rate`` (float), ``local_epochs`` (int),
  ``batch_size`` (int), ``mode`` (``"fedavg"`` or ``"fedsgd"``);
- ``model``: the job's :class:`trapdoor.ml.models.Model`, built from the KGC-signed spec
  (a user app with its own model ignores it).

:class:`ModelApp` is the built-in app: the job's ``trapdoor.ml`` model trained by
:func:`~trapdoor.ml.training.local_fit` on the node's :class:`~trapdoor.ml.data.LocalData`.
It also offers ``fit_update``, which hands the client ``local_fit``'s own update: the
round trip ``(W_t + Δ) - W_t`` is not exact in floating point, and encrypted runs must
match plaintext FedAvg to the last digit.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from trapdoor.ml.data import LocalData
from trapdoor.ml.models import Model
from trapdoor.ml.training import FitResult, TrainingConfig, evaluate, local_fit, participant_rng
from trapdoor.protocol.metrics import check_metric_values

__all__ = [
    "APP_ENTRY_POINTS",
    "AppLoadError",
    "AppResultError",
    "ExactUpdateApp",
    "ModelApp",
    "NumPyApp",
    "checked_evaluate",
    "checked_fit",
    "load_app",
    "round_config",
]

#: The entry-point group a package declares its apps in (``load_app("name")``).
APP_ENTRY_POINTS = "trapdoor.apps"

Vector = npt.NDArray[np.float64]


@runtime_checkable
class NumPyApp(Protocol):
    """A participant's own training: flat float64 parameters in, flat parameters out."""

    def fit(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[Vector, int, dict[str, float]]:
        """Train from ``parameters``; (new parameters, examples used, metrics)."""
        ...

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        """Score ``parameters`` on local test data; (loss, examples, metrics)."""
        ...


@runtime_checkable
class ExactUpdateApp(Protocol):
    """An app that computes ``W_local - W_t`` itself (exactly as plaintext FedAvg does)."""

    def fit_update(self, parameters: Vector, config: dict[str, Any]) -> FitResult: ...


class ModelApp:
    """The built-in app: the job's ``trapdoor.ml`` model, SGD by the job's settings."""

    def __init__(self, data: LocalData) -> None:
        self.data = data

    @staticmethod
    def _model(config: dict[str, Any]) -> Model:
        model = config.get("model")
        if not isinstance(model, Model):
            raise ValueError("ModelApp needs the job's trapdoor.ml model in config['model']")
        return model

    def fit_update(self, parameters: Vector, config: dict[str, Any]) -> FitResult:
        """``local_fit`` with the participant's seeded generator: today's numbers exactly."""
        training = TrainingConfig(
            learning_rate=config["learning_rate"],
            local_epochs=config["local_epochs"],
            batch_size=config["batch_size"],
            mode=config["mode"],
        )
        rng = participant_rng(config["seed"], config["participant_index"], config["round"])
        return local_fit(
            self._model(config), parameters, self.data.X_train, self.data.y_train, training, rng
        )

    def fit(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[Vector, int, dict[str, float]]:
        result = self.fit_update(parameters, config)
        return parameters + result.update, result.num_examples, dict(result.metrics)

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        scores = evaluate(self._model(config), parameters, self.data.X_test, self.data.y_test)
        return scores["loss"], len(self.data.y_test), {"accuracy": scores["accuracy"]}


def round_config(
    *,
    job_id: str,
    round_number: int,
    seed: int,
    participant_index: int,
    training: TrainingConfig,
    model: object,
) -> dict[str, Any]:
    """The ``config`` an app's ``fit`` and ``evaluate`` get (its keys: this module's
    docstring): one builder for the client and for ``simulate``."""
    return {
        "job_id": job_id,
        "round": round_number,
        "seed": seed,
        "participant_index": participant_index,
        "learning_rate": training.learning_rate,
        "local_epochs": training.local_epochs,
        "batch_size": training.batch_size,
        "mode": training.mode,
        "model": model,
    }


class AppResultError(ValueError):
    """An app's ``fit`` returned something that must not be encoded (wrong shape, NaN,
    no examples): nothing of it is uploaded."""


def _checked_vector(value: object, length: int, what: str) -> npt.NDArray[np.float64]:
    """``value`` as a finite float64 vector of the job's length, else :class:`AppResultError`."""
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise AppResultError(f"{what} is not a numeric vector") from None
    if vector.shape != (length,):
        raise AppResultError(f"{what} has shape {vector.shape}; the job has {length} parameters")
    bad = int(np.count_nonzero(~np.isfinite(vector)))
    if bad:
        raise AppResultError(f"{what} has {bad} NaN or infinite values")
    return vector


def checked_fit(
    app: NumPyApp, current: npt.NDArray[np.float64], config: dict[str, Any]
) -> FitResult:
    """Run the app's training from a copy of ``W_t`` and check what it returns.

    An :class:`~trapdoor.participant.app.ExactUpdateApp` hands its own ``Δ`` (bit-identical
    to plaintext FedAvg); any other app returns new parameters and ``Δ = new - W_t``.
    """
    length = len(current)
    if isinstance(app, ExactUpdateApp):
        fit = app.fit_update(current.copy(), config)
        update = _checked_vector(fit.update, length, "the app's update")
        num_examples, metrics = fit.num_examples, fit.metrics
    else:
        answer = app.fit(current.copy(), config)
        if not isinstance(answer, tuple) or len(answer) != 3:
            raise AppResultError("the app's fit must return (parameters, num_examples, metrics)")
        new, num_examples, metrics = answer
        update = _checked_vector(new, length, "the app's parameters") - current
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise AppResultError("the app's num_examples is not an integer")
    if num_examples < 1:
        raise AppResultError(f"the app trained on {num_examples} examples")
    if not isinstance(metrics, dict):
        raise AppResultError("the app's metrics are not a dict")
    return FitResult(update, int(num_examples), dict(metrics))


def checked_evaluate(
    app: NumPyApp, parameters: Vector, config: dict[str, Any]
) -> tuple[float, int, dict[str, float]]:
    """Run the app's ``evaluate`` on a copy of ``parameters`` and check what it returns.

    numpy scalars become Python numbers; the loss and every metric must be finite, the
    example count positive, metric names short and plain (the bounds a shared report
    must meet, :func:`trapdoor.protocol.metrics.check_metric_values`). :class:`AppResultError`
    otherwise.
    """
    answer = app.evaluate(parameters.copy(), config)
    if not isinstance(answer, tuple) or len(answer) != 3:
        raise AppResultError("the app's evaluate must return (loss, num_examples, metrics)")
    loss, num_examples, metrics = answer
    if isinstance(num_examples, np.integer):
        num_examples = int(num_examples)
    if isinstance(loss, np.floating | np.integer):
        loss = float(loss)
    if isinstance(metrics, dict):
        metrics = {
            name: float(value) if isinstance(value, np.floating | np.integer) else value
            for name, value in metrics.items()
        }
    try:
        return check_metric_values(loss, num_examples, metrics)
    except ValueError as exc:
        raise AppResultError(f"the app's evaluate: {exc}") from None


class AppLoadError(ValueError):
    """``load_app`` could not produce an app; the message says which part failed."""


def _from_entry_point(name: str) -> object:
    found = importlib.metadata.entry_points(group=APP_ENTRY_POINTS, name=name)
    for entry in found:
        try:
            return entry.load()
        except (ImportError, AttributeError) as exc:
            raise AppLoadError(
                f"entry point {name!r} ({entry.value}) does not load: {exc}"
            ) from exc
    known = sorted(e.name for e in importlib.metadata.entry_points(group=APP_ENTRY_POINTS))
    raise AppLoadError(
        f"no app {name!r} in the {APP_ENTRY_POINTS!r} entry points (known: {known or 'none'}); "
        "or give module:object"
    )


def _from_reference(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"app reference {reference!r} must be module:object")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"app module {module_name!r} cannot be imported: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise AppLoadError(f"app module {module_name!r} has no object {attribute!r}")
        obj = getattr(obj, part)
    return obj


def load_app(
    reference: str, data: LocalData | None = None, *, app_dir: str | Path | None = None
) -> NumPyApp:
    """The app named by ``module:object`` or by an entry point of ``trapdoor.apps``.

    The object is an app (``fit`` and ``evaluate``), or a factory that makes one from the
    node's own data: a function or class called as ``factory(data)`` with the node's
    :class:`~trapdoor.ml.data.LocalData` (Flower's ``client_fn`` has the same role), so
    one module serves every data owner. ``app_dir`` is put first on ``sys.path`` (like
    uvicorn's ``--app-dir``), so a module beside the user's data loads without being
    installed.

    Only the node's operator names it (command line or node config): code is never
    loaded from a job definition. :class:`AppLoadError` when it cannot be loaded, a
    factory fails or gives something else than an app, or it is not an app.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise AppLoadError("an app reference is a non-empty string (module:object or a name)")
    reference = reference.strip()
    if app_dir is not None:
        folder = str(Path(app_dir).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
    obj = _from_reference(reference) if ":" in reference else _from_entry_point(reference)
    if not isinstance(obj, type) and isinstance(obj, NumPyApp):
        return obj
    if not callable(obj):
        raise AppLoadError(
            f"{reference!r} is not an app: it must be an object with fit(parameters, config) "
            "and evaluate(parameters, config) methods, or a factory(data) that returns one"
        )
    if data is None:
        raise AppLoadError(f"{reference!r} is a factory: it needs the node's data")
    try:
        made = obj(data)
    except Exception as exc:  # the user's code: say whose it was
        raise AppLoadError(
            f"the app factory {reference!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(made, type) or not isinstance(made, NumPyApp):
        raise AppLoadError(
            f"the app factory {reference!r} returned {type(made).__name__}, not an app "
            "(an object with fit and evaluate)"
        )
    return made
