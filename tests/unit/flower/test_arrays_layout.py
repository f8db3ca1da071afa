"""The ``arrays`` model kind (trapdoor.ml.arrays): a job's named arrays <-> one vector."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trapdoor.ml.arrays import MAX_ARRAYS, ArrayLayout
from trapdoor.ml.models import model_from_spec
from trapdoor.ml.spec import SpecError, check_model_spec

_SHAPES = st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), min_size=1, max_size=5)


@given(_SHAPES, st.integers(0, 2**32 - 1))
def test_split_inverts_flatten_and_the_spec_round_trips(shapes: list, seed: int) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    arrays = {f"layer{i}.w": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
    layout = ArrayLayout.of(arrays)
    vector = layout.flatten(arrays)
    assert vector.dtype == np.float64 and vector.shape == (layout.num_parameters,)
    back = layout.split(vector)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)
    again = model_from_spec(layout.spec())
    assert isinstance(again, ArrayLayout) and again.spec() == layout.spec()
    assert check_model_spec(layout.spec()).num_parameters == layout.num_parameters


def test_integer_arrays_are_rounded_back() -> None:
    layout = ArrayLayout.of({"w": np.zeros(2, np.float32), "count": np.zeros((), np.int64)})
    out = layout.split(np.array([0.25, -1.5, 6.9999999]))
    assert out["count"].dtype == np.int64 and int(out["count"]) == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "arrays"}, "lists its arrays"),
        ({"kind": "arrays", "arrays": []}, "at least one array"),
        ({"kind": "arrays", "arrays": [{"name": "w", "shape": [2]}]}, "'name', 'shape', 'dtype'"),
        ({"kind": "arrays", "arrays": [{"name": "", "shape": [2], "dtype": "float32"}]}, "name"),
        ({"kind": "arrays", "arrays": [{"name": "w", "shape": [-1], "dtype": "float32"}]}, "shape"),
        ({"kind": "arrays", "arrays": [{"name": "w", "shape": [2], "dtype": "object"}]}, "dtype"),
        (
            {"kind": "arrays", "arrays": [{"name": "w", "shape": [1], "dtype": "float32"}] * 2},
            "distinct",
        ),
        ({"kind": "arrays", "arrays": [{"name": "w", "shape": [0], "dtype": "float32"}]}, "values"),
        ({"kind": "arrays", "arrays": [], "extra": 1}, "unknown"),
    ],
)
def test_bad_specs_are_refused_naming_the_array(spec: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SpecError, match=message):
        check_model_spec(spec)


def test_too_many_arrays_and_wrong_inputs() -> None:
    many = {
        "kind": "arrays",
        "arrays": [
            {"name": f"a{i}", "shape": [], "dtype": "float32"} for i in range(MAX_ARRAYS + 1)
        ],
    }
    with pytest.raises(SpecError, match="at most"):
        check_model_spec(many)
    layout = ArrayLayout.of({"w": np.zeros((2, 2)), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="same names, same order"):
        layout.flatten({"b": np.zeros(2), "w": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        layout.flatten({"w": np.zeros((2, 3)), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="the layout holds 6"):
        layout.split(np.zeros(5))
    with pytest.raises(NotImplementedError, match="own app"):
        layout.predict_proba(np.zeros(6), np.zeros((1, 2)))
