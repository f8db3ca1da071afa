"""``trapdoor demo``'s options and its checks of ``--data`` files (no service is started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from trapdoor.demo import job as demo_job
from trapdoor.demo.job import (
    DEFAULT_PARTICIPANTS,
    DemoError,
    build_data_model,
    demo,
    load_demo_data,
    parse_demo_options,
    run_demo,
)
from trapdoor.ml.models import MLP


def write_csv(
    path: Path,
    y: Any,
    features: int = 3,
    *,
    seed: int = 0,
    label: str = "label",
    names: list[str] | None = None,
) -> Path:
    """A CSV of ``len(y)`` rows of ``features`` random numbers and the label column first."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.float64)
    table = np.column_stack([y, rng.normal(size=(len(y), features))])
    header = [label, *(names or [f"x{j}" for j in range(features)])]
    np.savetxt(path, table, delimiter=",", header=",".join(header), comments="")
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three good participant files, labels 0..2."""
    return [write_csv(tmp_path / f"p{i}.csv", [0, 1, 2] * 10, seed=i) for i in range(3)]


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the demo gets as far as starting services."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a service was started")

    monkeypatch.setattr(demo_job, "LocalCluster", refuse)


# --------------------------------------------------------------------------- options


def test_defaults_are_the_bundled_digits_demo_with_shared_metrics() -> None:
    args = parse_demo_options([])
    assert args.participants == DEFAULT_PARTICIPANTS == 5
    assert args.dataset == "digits" and args.model == "mlp"
    assert args.share_metrics is True
    assert args.data == () and args.hidden_layers is None
    assert parse_demo_options(["--no-share-metrics"]).share_metrics is False
    assert parse_demo_options(["--participants", "4"]).participants == 4


def test_data_files_set_the_participant_count(files: list[Path]) -> None:
    argv = [arg for f in files for arg in ("--data", str(f))]
    args = parse_demo_options(argv)
    assert args.participants == 3
    assert args.data == tuple(str(f) for f in files)
    assert args.data_label == "label" and args.data_test_fraction == 0.2
    # the same count said twice is fine
    assert parse_demo_options([*argv, "--participants", "3"]).participants == 3
    args = parse_demo_options(
        [*argv, "--hidden-layers", "16,8", "--data-label", "y", "--data-test-fraction", "0.3"]
    )
    assert args.hidden_layers == (16, 8)
    assert args.data_label == "y" and args.data_test_fraction == 0.3
    assert parse_demo_options([*argv, "--hidden-layers", "none"]).hidden_layers == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--participants", "5"], "--participants 5 but 3 --data file"),
        (["--dataset", "mnist"], "--dataset does not go with --data"),
        (["--partition-scheme", "dirichlet"], "--partition-scheme does not go with --data"),
        (["--hidden-layers", "8,x"], "not a comma-separated list"),
        (["--hidden-layers", "8,0"], "at least 1"),
        (["--data-test-fraction", "1.0"], "not in the range"),
    ],
)
def test_clashing_options_are_usage_errors(
    files: list[Path], extra: list[str], message: str
) -> None:
    argv = [arg for f in files for arg in ("--data", str(f))]
    with pytest.raises(click.UsageError, match=message):
        parse_demo_options([*argv, *extra])


@pytest.mark.parametrize(
    "argv", [["--hidden-layers", "16"], ["--data-label", "y"], ["--data-test-fraction", "0.5"]]
)
def test_data_options_need_data(argv: list[str]) -> None:
    with pytest.raises(click.UsageError, match="goes with --data"):
        parse_demo_options(argv)


def test_a_missing_data_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="does not exist"):
        parse_demo_options(["--data", str(tmp_path / "nowhere.csv")])


def test_the_command_line_refuses_a_participant_count_clash(files: list[Path]) -> None:
    argv = ["--participants", "2", *(arg for f in files for arg in ("--data", str(f)))]
    result = CliRunner().invoke(demo, argv)
    assert result.exit_code == 2
    assert "--participants 2 but 3 --data file(s)" in result.output


# --------------------------------------------------------------------------- the data


def test_load_demo_data_reads_and_sizes_each_participants_file(files: list[Path]) -> None:
    own = load_demo_data([str(f) for f in files], seed=7)
    assert own.num_features == 3 and own.num_classes == 3
    assert [len(p.y_train) for p in own.parts] == [24, 24, 24]
    assert [len(p.y_test) for p in own.parts] == [6, 6, 6]
    node = own.files[0]
    assert node.test_fraction == 0.2 and node.split_seed == 7 and node.label == "label"
    argv = node.argv()
    assert argv[argv.index("--data-path") + 1] == str(files[0].resolve())
    # the plaintext reference: every participant's rows one after the other
    dataset, parts = own.reference()
    assert dataset.X_train.shape == (72, 3) and dataset.X_test.shape == (18, 3)
    assert [p.tolist() for p in parts] == [list(range(i * 24, i * 24 + 24)) for i in range(3)]
    np.testing.assert_array_equal(dataset.X_train[parts[1]], own.parts[1].X_train)
    some, _ = own.reference([0, 2])
    np.testing.assert_array_equal(
        some.y_test, np.concatenate([own.parts[0].y_test, own.parts[2].y_test])
    )
    assert own.summary()[1]["num_test"] == 6


def test_an_npz_with_its_own_test_part_keeps_it(tmp_path: Path, files: list[Path]) -> None:
    rng = np.random.default_rng(1)
    npz = tmp_path / "own.npz"
    np.savez(
        npz,
        X_train=rng.normal(size=(20, 3)),
        y_train=np.arange(20) % 3,
        X_test=rng.normal(size=(5, 3)),
        y_test=np.arange(5) % 3,
    )
    own = load_demo_data([str(files[0]), str(npz)])
    assert own.files[1].test_fraction is None
    assert "--data-test-fraction" not in own.files[1].argv()
    assert len(own.parts[1].y_test) == 5


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1.5, 2] * 10, "not integers"),
        ([0, -1, 2] * 10, "negative labels"),
        ([0, float("nan"), 1] * 10, "not integers"),
    ],
)
def test_a_file_with_bad_labels_is_refused_by_name(
    tmp_path: Path, files: list[Path], labels: list[float], message: str
) -> None:
    bad = write_csv(tmp_path / "bad.csv", labels)
    with pytest.raises(DemoError, match=message) as caught:
        load_demo_data([str(files[0]), str(bad)])
    assert str(bad) in str(caught.value)


def test_labels_must_be_class_numbers_from_zero(tmp_path: Path) -> None:
    one_based = [write_csv(tmp_path / f"p{i}.csv", [1, 2] * 10, seed=i) for i in range(2)]
    with pytest.raises(DemoError, match=r"class numbers 0\.\.k-1.*but no \[0\]") as caught:
        load_demo_data([str(f) for f in one_based])
    assert all(str(f) in str(caught.value) for f in one_based)
    single = write_csv(tmp_path / "single.csv", [0] * 10)
    with pytest.raises(DemoError, match="k >= 2"):
        load_demo_data([str(single)])


def test_feature_columns_must_match_across_files(tmp_path: Path, files: list[Path]) -> None:
    wide = write_csv(tmp_path / "wide.csv", [0, 1, 2] * 10, features=4)
    with pytest.raises(DemoError, match=r"4 feature columns, but .* has 3") as caught:
        load_demo_data([str(files[0]), str(wide)])
    assert str(wide) in str(caught.value) and str(files[0]) in str(caught.value)
    swapped = write_csv(tmp_path / "swapped.csv", [0, 1, 2] * 10, names=["x1", "x0", "x2"])
    with pytest.raises(DemoError, match="same columns in the same order"):
        load_demo_data([str(files[0]), str(swapped)])


def test_a_file_without_the_label_column_is_refused_by_name(
    tmp_path: Path, files: list[Path]
) -> None:
    other = write_csv(tmp_path / "other.csv", [0, 1, 2] * 10, label="target")
    with pytest.raises(DemoError, match="no label column 'label'") as caught:
        load_demo_data([str(files[0]), str(other)])
    assert str(other) in str(caught.value)


def test_a_bad_file_is_refused_before_any_service_starts(
    tmp_path: Path, files: list[Path], no_cluster: None
) -> None:
    bad = write_csv(tmp_path / "bad.csv", [0, 7.5, 1] * 10)
    args = parse_demo_options(["--data", str(files[0]), "--data", str(bad), "--quiet"])
    with pytest.raises(DemoError, match=r"bad\.csv"):
        run_demo(args)
    result = CliRunner().invoke(demo, ["--data", str(files[0]), "--data", str(bad), "--quiet"])
    assert result.exit_code == 1
    assert "demo failed:" in result.output and str(bad) in result.output


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_service_starts(
    files: list[Path], no_cluster: None
) -> None:
    args = parse_demo_options([*(a for f in files for a in ("--data", str(f))), "--model", "cnn"])
    with pytest.raises(DemoError, match="3 features are not one"):
        run_demo(args)


# --------------------------------------------------------------------------- the model


def test_the_model_is_sized_from_the_data() -> None:
    model = build_data_model("mlp", 30, 2)
    assert isinstance(model, MLP) and model.layer_sizes == [30, 32, 2]
    assert build_data_model("mlp", 4, 3, (8, 8)).spec() == {
        "kind": "mlp",
        "layer_sizes": [4, 8, 8, 3],
    }
    assert build_data_model("mlp", 4, 3, ()).spec()["layer_sizes"] == [4, 3]
    cnn = build_data_model("cnn", 64, 4)
    assert cnn.spec()["num_classes"] == 4
    with pytest.raises(DemoError, match="square images"):
        build_data_model("rnn", 30, 2)
    with pytest.raises(DemoError, match="unknown model"):
        build_data_model("forest", 30, 2)
