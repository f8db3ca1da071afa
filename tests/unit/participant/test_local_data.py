"""A data owner's rows in the forms people have them, and every refusal naming its cause.

Loaders: arrays, a pandas DataFrame, a CSV with a header, a ``.npz`` (four arrays, or X and
y split by a seeded fraction). Refusals: NaN (with its column), X/y row counts, a negative
or fractional label, a label or feature count the job's model does not have; training
refuses mismatched rows instead of truncating; every model kind refuses unknown spec keys.
A torch Dataset or DataLoader gives the same rows as arrays, without torch being imported
for any other source.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trapdoor.ml.cnn import CNN
from trapdoor.ml.data import (
    DataError,
    LocalData,
    check_local_data,
    load_local_data,
    model_io_sizes,
)
from trapdoor.ml.extras import MissingExtraError
from trapdoor.ml.models import MLP, model_from_spec
from trapdoor.ml.rnn import GRU
from trapdoor.ml.training import TrainingConfig, evaluate, local_fit
from trapdoor.participant.node import load_local_data as node_local_data


def _arrays(rows: int = 40, features: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(5)
    return gen.random((rows, features)), gen.integers(0, classes, rows)


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, label: str = "label") -> Path:
    header = ",".join([f"f{i}" for i in range(X.shape[1])] + [label])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="")
    return path


def _data(**parts: Any) -> LocalData:
    """Valid 4-feature, 3-class data with ``parts`` replaced."""
    X, y = _arrays()
    base: dict[str, Any] = {"X_train": X[:30], "y_train": y[:30], "X_test": X[30:]}
    base["y_test"] = y[30:]
    return LocalData(**{**base, **parts}, source="rows.csv")


# --------------------------------------------------------------------------- loaders


def test_arrays_split_by_a_seeded_fraction() -> None:
    X, y = _arrays()
    data = load_local_data((X, y), test_fraction=0.25, seed=3)
    again = load_local_data((X, y), test_fraction=0.25, seed=3)
    assert (len(data.y_train), len(data.y_test)) == (30, 10)
    assert data.X_train.dtype == np.float64 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.X_test, again.X_test)
    assert sorted(np.concatenate([data.y_train, data.y_test])) == sorted(y)
    assert data.source == "arrays"


def test_arrays_with_a_separate_test_part_keep_their_rows() -> None:
    X, y = _arrays()
    data = load_local_data((X[:30], y[:30]), (X[30:], y[30:]))
    np.testing.assert_array_equal(data.X_test, X[30:])
    assert data.summary() == {
        "source": "arrays (test: arrays)",
        "num_train": 30,
        "num_test": 10,
        "num_features": 4,
    }


def test_a_dataframe_with_a_label_column() -> None:
    pd = pytest.importorskip("pandas")
    X, y = _arrays()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(target=y)
    data = load_local_data(frame, label="target", test_fraction=0.5)
    assert data.feature_names == ("a", "b", "c", "d")
    assert data.X_train.shape == (20, 4) and data.source == "DataFrame"
    with pytest.raises(DataError, match=r"DataFrame: no label column 'label'.*'target'"):
        load_local_data(frame, test_fraction=0.5)
    frame["b"] = ["x"] * len(frame)
    with pytest.raises(DataError, match=r"DataFrame: feature column 'b' is not numeric"):
        load_local_data(frame, label="target", test_fraction=0.5)


def test_a_csv_with_a_header_for_each_part(tmp_path: Path) -> None:
    X, y = _arrays()
    train = _write_csv(tmp_path / "train.csv", X[:30], y[:30], label="y")
    test = _write_csv(tmp_path / "test.csv", X[30:], y[30:], label="y")
    data = load_local_data(train, test, label="y")
    np.testing.assert_allclose(data.X_train, X[:30])
    np.testing.assert_array_equal(data.y_test, y[30:])
    assert data.feature_names == ("f0", "f1", "f2", "f3")
    assert data.source == f"{train} (test: {test})"


def test_an_npz_with_four_arrays_or_with_x_and_y(tmp_path: Path) -> None:
    X, y = _arrays()
    both = tmp_path / "both.npz"
    np.savez(both, X_train=X[:30], y_train=y[:30], X_test=X[30:], y_test=y[30:])
    data = load_local_data(both)
    assert (len(data.y_train), len(data.y_test), data.source) == (30, 10, str(both))
    table = tmp_path / "table.npz"
    np.savez(table, X=X, y=y)
    assert len(load_local_data(table, test_fraction=0.1).y_test) == 4
    np.savez(tmp_path / "odd.npz", features=X)
    with pytest.raises(DataError, match=r"odd\.npz: a \.npz holds either X_train"):
        load_local_data(tmp_path / "odd.npz", test_fraction=0.1)


def test_the_node_reads_its_csv_and_splits_it(tmp_path: Path) -> None:
    X, y = _arrays()
    path = _write_csv(tmp_path / "mine.csv", X, y, label="class")
    config = {"DATA_PATH": str(path), "DATA_LABEL": "class", "DATA_TEST_FRACTION": 0.25}
    data = node_local_data(config)
    assert data.summary()["num_train"] == 30 and data.source == str(path)


def test_sources_it_cannot_read_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_local_data(tmp_path / "nope.csv", test_fraction=0.2)
    (tmp_path / "rows.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match=r"unknown file type '\.xlsx'"):
        load_local_data(tmp_path / "rows.xlsx", test_fraction=0.2)
    with pytest.raises(DataError, match="a test source or a test_fraction"):
        load_local_data(_arrays())
    with pytest.raises(DataError, match=r"test_fraction must be in \(0, 1\)"):
        load_local_data(_arrays(), test_fraction=1.5)


def test_parquet_without_pyarrow_names_what_to_install(tmp_path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("pyarrow is installed")
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingExtraError, match="pip install pyarrow"):
        load_local_data(tmp_path / "rows.parquet", test_fraction=0.2)


# --------------------------------------------------------------------------- refusals


def test_nan_names_the_source_column_and_rows(tmp_path: Path) -> None:
    X, y = _arrays()
    X[[2, 7, 9], 1] = np.nan
    X[4, 3] = np.inf
    path = _write_csv(tmp_path / "rows.csv", X, y)
    with pytest.raises(DataError) as caught:
        load_local_data(path, (np.zeros((5, 4)), y[:5]))
    message = str(caught.value)
    assert str(path) in message and "X_train column 1 ('f1')" in message
    assert "NaN or inf in 3 of 40 rows" in message and "4 rows" in message


def test_a_nan_in_a_dataframe_column_is_named() -> None:
    pd = pytest.importorskip("pandas")
    X, y = _arrays()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(label=y)
    frame.loc[3, "c"] = None
    with pytest.raises(DataError, match=r"DataFrame.*column 2 \('c'\) has NaN or inf in 1"):
        load_local_data(frame, (X, y))


def test_30_rows_with_25_labels_are_refused() -> None:
    X, y = _arrays(30)
    with pytest.raises(DataError, match=r"arrays: X has 30 rows but y has 25 labels"):
        load_local_data((X, y[:25]), test_fraction=0.2)
    with pytest.raises(DataError, match=r"rows\.csv: X_train has 30 rows but y_train has 25"):
        check_local_data(_data(X_train=X, y_train=y[:25]))


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (-1, r"y_train has 1 of 30 negative labels \(e\.g\. -1\)"),
        (1.5, r"y_train has 1 of 30 labels that are not integers \(e\.g\. 1\.5\)"),
    ],
)
def test_a_negative_or_fractional_label_is_refused(label: float, expected: str) -> None:
    _, y = _arrays()
    y_train = y[:30].astype(np.float64)
    y_train[4] = label
    with pytest.raises(DataError, match=r"rows\.csv: " + expected):
        check_local_data(_data(y_train=y_train))


def test_labels_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(DataError, match="y_test must hold integer class labels"):
        check_local_data(_data(y_test=np.array(["cat"] * 10)))


def test_the_job_s_model_must_fit_the_data() -> None:
    data = _data()
    check_local_data(data, features=4, classes=3)
    with pytest.raises(
        DataError, match=r"rows\.csv: 4 feature columns, but the job's model takes 5"
    ):
        check_local_data(data, features=5, classes=3)
    with pytest.raises(DataError, match=r"y_train has \d+ of 30 labels outside 0\.\.1"):
        check_local_data(data, features=4, classes=2)
    with pytest.raises(DataError, match="X_train has 4 feature columns but X_test has 2"):
        check_local_data(_data(X_test=np.zeros((10, 2))))
    with pytest.raises(DataError, match=r"X_train must be 2-D"):
        check_local_data(_data(X_train=np.zeros(30)))


def test_model_sizes_come_from_the_model() -> None:
    assert model_io_sizes(MLP([4, 8, 3])) == (4, 3)
    assert model_io_sizes(CNN(input_shape=(1, 8, 8), num_classes=4)) == (64, 4)
    assert model_io_sizes(GRU(input_shape=(5, 3), num_classes=2)) == (15, 2)

    class Opaque:  # a torch model whose kwargs say neither size
        def __init__(self) -> None:
            self.kwargs = {"channels": 8}

    assert model_io_sizes(Opaque()) == (None, None)


# --------------------------------------------------------------------------- training, specs


def test_training_refuses_mismatched_rows_instead_of_truncating() -> None:
    X, y = _arrays(30)
    model = MLP([4, 3])
    params = model.init_parameters(np.random.default_rng(0))
    with pytest.raises(DataError, match="X has 30 rows but y has 25 labels"):
        local_fit(model, params, X, y[:25], TrainingConfig(), np.random.default_rng(0))
    with pytest.raises(DataError, match="X has 30 rows but y has 29 labels"):
        evaluate(model, params, X, y[:29])


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "mlp", "layer_sizes": [4, 3], "dropout": 0.5},
        {"kind": "cnn", "input_shape": [1, 8, 8], "dropout": 0.5},
        {"kind": "gru", "input_shape": [5, 3], "dropout": 0.5},
    ],
)
def test_every_model_kind_refuses_unknown_spec_keys(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"unknown \w+ spec keys \['dropout'\]"):
        model_from_spec(spec)


# --------------------------------------------------------------------------- torch sources


def test_reading_data_never_imports_torch() -> None:
    """Only an object of an already imported torch can be a torch source, so the loader
    recognises one without importing torch (a node's core install has none)."""
    probe = (
        "import sys, numpy as np\n"
        "from trapdoor.ml.data import load_local_data\n"
        "load_local_data((np.zeros((4, 2)), np.arange(4) % 2), test_fraction=0.5)\n"
        "try:\n"
        "    load_local_data(object(), test_fraction=0.5)\n"
        "except ValueError:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_a_torch_dataset_or_loader_gives_the_arrays_rows() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    X, y = _arrays()
    images = torch.from_numpy(X.reshape(40, 1, 2, 2).astype(np.float32))
    dataset = TensorDataset(images, torch.from_numpy(y))
    expected = load_local_data((X[:30], y[:30]), (X[30:], y[30:]))
    for train, test in (
        (TensorDataset(*dataset[:30]), TensorDataset(*dataset[30:])),
        (DataLoader(TensorDataset(*dataset[:30]), batch_size=7), (X[30:], y[30:])),
    ):
        data = load_local_data(train, test)
        assert data.X_train.dtype == np.float64 and data.y_train.dtype == np.int64
        assert data.X_train.shape == (30, 4)  # each (1, 2, 2) image is one row
        np.testing.assert_allclose(data.X_train, expected.X_train, rtol=1e-6)
        np.testing.assert_array_equal(data.y_train, expected.y_train)
        np.testing.assert_allclose(data.X_test, expected.X_test, rtol=1e-6)
    assert load_local_data(dataset, test_fraction=0.25).source == "torch TensorDataset"


def test_a_bad_torch_source_is_named() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    X, y = _arrays()
    X[5, 2] = np.nan
    with pytest.raises(
        DataError, match=r"torch TensorDataset \(test: arrays\): X_train column 2 has NaN"
    ):
        load_local_data(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), (X, y))
    only_x = DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=8)
    with pytest.raises(DataError, match=r"torch DataLoader: items must be \(x, y\) pairs"):
        load_local_data(only_x, test_fraction=0.2)
    with pytest.raises(
        DataError, match=r"torch TensorDataset \(test: arrays\): the train part has no rows"
    ):
        load_local_data(TensorDataset(torch.zeros(0, 4), torch.zeros(0)), (X, y))
    with pytest.raises(DataError, match="or a torch Dataset or DataLoader"):
        load_local_data([1, 2, 3], test_fraction=0.2)
