"""``POST /v1/jobs`` checks the whole job definition before the KGC is asked for anything.

What each participant would otherwise find out only when it rebuilds the job to train
(the model spec against the registry, the initial weights against the model's size, the
training settings), and the counts that make a job runnable at all (quorum, rounds, the
participants' weights), are refused at creation: a bad request (400 ``bad-definition``)
for a wrong type, invalid (422 ``invalid-definition``) for a value out of range, the
message naming the field, and nothing stored or sent to the KGC.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from ps_api_support import ApiWorld
from sqlalchemy import func, select

from trapdoor.ml.models import MLP
from trapdoor.ps.models import Job, ModelChunk, Round
from trapdoor.ps.testing import encode_weights, make_definition

LENGTH = 300
TORCH_SPEC = {"kind": "torch", "name": "torch-mlp", "kwargs": {"layer_sizes": [4, 3]}}


def _definition(api: ApiWorld, **fields: Any) -> dict[str, Any]:
    """A valid definition (an MLP of LENGTH parameters) with ``fields`` replaced."""
    w0 = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    return {**make_definition("job-a", api.participants, w0), **fields}


def _training(**fields: Any) -> dict[str, Any]:
    return {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 8, "seed": 7, **fields}


def _participants(api: ApiWorld, *samples: int) -> list[dict[str, Any]]:
    return [
        {"subject_id": p.subject_id, "num_samples": n}
        for p, n in zip(api.participants, samples, strict=False)
    ]


def _stored_nothing(api: ApiWorld) -> bool:
    with api.engine.connect() as conn:
        counts = [
            int(conn.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Job, ModelChunk, Round)
        ]
    return counts == [0, 0, 0] and not api.kgc.jobs


def _refused(api: ApiWorld, definition: dict[str, Any], status: int, names: str) -> None:
    response = api.client.post("/v1/jobs", json=definition, headers=api.admin)
    body = response.get_json()
    assert response.status_code == status, body
    code = "bad-definition" if status == 400 else "invalid-definition"
    assert body == {"error": code, "message": body["message"]}
    assert names in body["message"], body
    assert _stored_nothing(api)


# Each case: the fields that replace the valid definition's, the status, and what the
# message must name.
MODEL_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "model not an object": ({"model": ["mlp"]}, 400, "model"),
    "unknown model kind": ({"model": {"kind": "transformer"}}, 422, "model"),
    "model without a kind": ({"model": {"layer_sizes": [295, 1, 2]}}, 422, "model"),
    "mlp with one layer": ({"model": {"kind": "mlp", "layer_sizes": [300]}}, 422, "model"),
    "mlp layer sizes not ints": (
        {"model": {"kind": "mlp", "layer_sizes": ["295", 1, 2]}},
        422,
        "model",
    ),
    "cnn with an unknown key": ({"model": {"kind": "cnn", "filters": 8}}, 422, "model"),
    "cnn kernel larger than its input": (
        {"model": {"kind": "cnn", "input_shape": [1, 2, 2], "kernel": 3}},
        422,
        "model",
    ),
    "gru with a negative hidden size": ({"model": {"kind": "gru", "hidden": -1}}, 422, "model"),
    "torch spec without a name": ({"model": {"kind": "torch", "kwargs": {}}}, 400, "model"),
    "torch spec with an unknown key": (
        {"model": {**TORCH_SPEC, "module": "os.system"}},
        422,
        "model",
    ),
    "weights shorter than the model": (
        {"model": {"kind": "mlp", "layer_sizes": [296, 1, 2]}},
        422,
        "initial_weights",
    ),
    "weights longer than the model": (
        {"model": MLP([4, 3]).spec()},
        422,
        "initial_weights",
    ),
}

TRAINING_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "training not an object": ({"training": [0.1]}, 400, "training"),
    "unknown training field": ({"training": _training(momentum=0.9)}, 400, "training"),
    "learning rate a string": (
        {"training": _training(learning_rate="0.1")},
        400,
        "training.learning_rate",
    ),
    "learning rate zero": ({"training": _training(learning_rate=0)}, 422, "learning_rate"),
    "learning rate negative": ({"training": _training(learning_rate=-0.5)}, 422, "learning_rate"),
    "learning rate past any float": (
        {"training": _training(learning_rate=10**400)},
        422,
        "training.learning_rate",
    ),
    "local epochs fractional": (
        {"training": _training(local_epochs=1.5)},
        400,
        "training.local_epochs",
    ),
    "local epochs zero": ({"training": _training(local_epochs=0)}, 422, "local_epochs"),
    "batch size a boolean": (
        {"training": _training(batch_size=True)},
        400,
        "training.batch_size",
    ),
    "batch size zero": ({"training": _training(batch_size=0)}, 422, "batch_size"),
    "mode not a string": ({"training": _training(mode=1)}, 400, "training.mode"),
    "unknown mode": ({"training": _training(mode="adam")}, 422, "mode"),
    "seed fractional": ({"training": _training(seed=0.5)}, 400, "training.seed"),
    "seed negative": ({"training": _training(seed=-1)}, 422, "training.seed"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_a_model_no_participant_could_build_is_refused(api: ApiWorld, case: str) -> None:
    overrides, status, names = MODEL_CASES[case]
    _refused(api, _definition(api, **overrides), status, names)


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_training_settings_no_participant_could_use_are_refused(api: ApiWorld, case: str) -> None:
    overrides, status, names = TRAINING_CASES[case]
    _refused(api, _definition(api, **overrides), status, names)


def test_counts_that_make_a_job_unrunnable_are_refused(api: ApiWorld) -> None:
    _refused(api, _definition(api, quorum=5), 422, "quorum")  # 4 participants
    _refused(api, _definition(api, quorum=0), 422, "quorum")
    _refused(api, _definition(api, rounds=0), 422, "rounds")
    _refused(api, _definition(api, rounds=-3), 422, "rounds")
    _refused(
        api, _definition(api, participants=_participants(api, 100, 0, 300, 400)), 422, "num_samples"
    )
    # A count so small next to another that its public weight rounds to 0.
    weightless = _participants(api, 1, 10**400, 1, 1)
    _refused(api, _definition(api, participants=weightless, quorum=2), 422, "participants")


def test_initial_weights_that_are_not_a_finite_model_are_refused(api: ApiWorld) -> None:
    w0 = np.random.default_rng(1).normal(0.0, 0.5, LENGTH)
    w0[7] = np.nan
    _refused(api, _definition(api, initial_weights=encode_weights(w0)), 422, "initial_weights")
    _refused(api, _definition(api, initial_weights="AAAA"), 400, "initial_weights")


def test_a_definition_every_participant_can_train_is_accepted(api: ApiWorld) -> None:
    """The defaults a participant fills in are accepted too (training may be ``{}``)."""
    definition = _definition(api, training={}, model={"kind": "mlp", "layer_sizes": [99, 3]})
    response = api.client.post("/v1/jobs", json=definition, headers=api.admin)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["definition"]["training"] == {}


def test_a_torch_spec_is_checked_for_its_shape_only(api: ApiWorld) -> None:
    """The PS cannot count a torch module (only a participant that imports torch builds
    it), so a well-formed torch spec is accepted whatever the weights' length."""
    response = api.client.post(
        "/v1/jobs", json=_definition(api, model=TORCH_SPEC), headers=api.admin
    )
    assert response.status_code == 201, response.get_json()


def test_the_ps_checks_model_specs_without_importing_torch() -> None:
    script = (
        "import sys\n"
        "import trapdoor.ps.app\n"
        "from trapdoor.ml.spec import check_model_spec\n"
        f"assert check_model_spec({TORCH_SPEC!r}).num_parameters is None\n"
        "for spec in ({'kind': 'mlp', 'layer_sizes': [4, 3]}, {'kind': 'cnn'}, {'kind': 'gru'}):\n"
        "    assert check_model_spec(spec).num_parameters > 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'\n"
        "                or m in ('trapdoor.ml.torch_adapter', 'trapdoor.participant'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
