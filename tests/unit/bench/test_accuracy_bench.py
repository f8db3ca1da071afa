"""``bench.accuracy_bench``: argument handling and the configuration matrix (no demo run)."""

from __future__ import annotations

import pytest

from bench import accuracy_bench


def test_defaults_are_mlp_masked_over_the_eight_configurations() -> None:
    args = accuracy_bench.parse_args([])
    assert args.models == ["mlp"]
    assert args.aggregations == ["masked"]
    configs = accuracy_bench._configs(args)
    assert len(configs) == 8  # {digits, mnist} x {iid, dirichlet} x {5, 10}
    assert {(c["model"], c["aggregation"]) for c in configs} == {("mlp", "masked")}


def test_models_and_aggregations_multiply_the_matrix() -> None:
    args = accuracy_bench.parse_args(
        [
            "--datasets",
            "digits",
            "mnist",
            "--schemes",
            "iid",
            "--participants",
            "5",
            "--models",
            "mlp",
            "cnn",
            "rnn",
            "--aggregations",
            "masked",
            "bcp",
            "--digits-rounds",
            "2",
            "--mnist-bits",
            "2048",
        ]
    )
    configs = accuracy_bench._configs(args)
    assert len(configs) == 2 * 3 * 2
    assert {c["model"] for c in configs} == {"mlp", "cnn", "rnn"}
    assert {c["aggregation"] for c in configs} == {"masked", "bcp"}
    digits = next(c for c in configs if c["dataset"] == "digits")
    mnist = next(c for c in configs if c["dataset"] == "mnist")
    assert (digits["rounds"], mnist["bits"]) == (2, 2048)
    assert "cnn" in accuracy_bench._label(next(c for c in configs if c["model"] == "cnn"))


def test_quick_keeps_the_models_and_aggregations_given() -> None:
    args = accuracy_bench.parse_args(["--quick", "--models", "cnn", "--aggregations", "bcp"])
    configs = accuracy_bench._configs(args)
    assert configs == [
        {
            "dataset": "digits",
            "scheme": "iid",
            "participants": 5,
            "model": "cnn",
            "aggregation": "bcp",
            "rounds": 2,
            "bits": 1024,
        }
    ]


@pytest.mark.parametrize("flag", ["--models", "--aggregations"])
def test_unknown_choices_are_refused(flag: str) -> None:
    with pytest.raises(SystemExit):
        accuracy_bench.parse_args([flag, "nonsense"])
