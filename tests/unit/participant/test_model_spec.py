"""The one reading of a job's ``model`` and ``training`` (:mod:`trapdoor.ml.spec`).

The parameter server checks a definition with these functions when the job is created
and the participant builds its job view with them, so the two cannot disagree.
"""

from __future__ import annotations

import numpy as np
import pytest

from trapdoor.ml.cnn import CNN
from trapdoor.ml.models import MLP
from trapdoor.ml.rnn import GRU
from trapdoor.ml.spec import (
    TRAINING_DEFAULTS,
    SpecError,
    check_model_spec,
    torch_spec_fields,
    training_spec,
)
from trapdoor.ml.training import TrainingConfig


@pytest.mark.parametrize(
    "model", [MLP([6, 5, 3]), CNN((1, 6, 6), 2, 3, 2, None, 3), GRU((4, 3), 5)]
)
def test_a_numpy_model_is_counted_as_the_registry_builds_it(model: MLP | CNN | GRU) -> None:
    spec = check_model_spec(model.spec())
    assert (spec.kind, spec.num_parameters) == (model.spec()["kind"], model.num_parameters)
    assert model.init_parameters(np.random.default_rng(0)).size == spec.num_parameters


def test_a_torch_spec_has_no_count_and_one_shape() -> None:
    spec = {"kind": "torch", "name": "torch-mlp", "kwargs": {"layer_sizes": [4, 3]}}
    assert check_model_spec(spec).num_parameters is None
    assert torch_spec_fields(spec) == ("torch-mlp", {"layer_sizes": [4, 3]})
    assert torch_spec_fields({"kind": "torch", "name": "n"}) == ("n", {})
    with pytest.raises(SpecError) as malformed:
        torch_spec_fields({"kind": "torch", "name": "", "kwargs": {}})
    assert malformed.value.malformed and malformed.value.field == "model"
    with pytest.raises(SpecError) as unknown:
        check_model_spec({**spec, "import": "os"})
    assert not unknown.value.malformed


def test_training_defaults_are_the_training_configs() -> None:
    parsed = training_spec({})
    assert parsed.config == TrainingConfig() and parsed.seed == 0
    assert {**vars(TrainingConfig()), "seed": 0} == TRAINING_DEFAULTS
    given = training_spec({"learning_rate": 2, "mode": "fedsgd", "seed": 9})
    assert given.config == TrainingConfig(learning_rate=2.0, mode="fedsgd") and given.seed == 9
    assert isinstance(given.config.learning_rate, float)


@pytest.mark.parametrize(
    ("training", "field", "malformed"),
    [
        ({"batch_size": 2.0}, "training.batch_size", True),
        ({"seed": None}, "training.seed", True),
        ({"lr": 0.1}, "training", True),
        ({"batch_size": 0}, "training", False),
        ({"learning_rate": float("nan")}, "training", False),
        ({"learning_rate": 10**309}, "training.learning_rate", False),
        ({"seed": -2}, "training.seed", False),
    ],
)
def test_a_refusal_names_its_field_and_says_if_it_is_malformed(
    training: dict[str, object], field: str, malformed: bool
) -> None:
    with pytest.raises(SpecError) as refused:
        training_spec(training)
    assert (refused.value.field, refused.value.malformed) == (field, malformed)
    assert str(refused.value).startswith(f"{field}: ")
    assert isinstance(refused.value, ValueError)  # what the client's job parsing catches
