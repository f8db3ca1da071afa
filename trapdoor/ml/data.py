"""A data owner's own rows, in the forms people have them, checked before anything trains.

A participant trains on ``X`` (rows x features, float) and ``y`` (one integer label in
``[0, classes)`` per row), and evaluates released models on a test part of the same shape.
This module turns what a data scientist holds into that, and refuses early what would fail
late: a node checks the shape when it starts and the fit to the job's model when it joins,
so a bad file is reported with its path, column and row count before a round's upload is
spent, never as a bare ``ValueError`` in round 0.

Sources (:func:`load_local_data`): numpy arrays ``(X, y)``; a pandas DataFrame with a label
column (used through its own methods, so pandas is never imported here); a ``.csv`` file with
a header row, read with numpy's ``genfromtxt`` (plain comma-separated numbers: no quoted
fields); a ``.parquet`` file, read with ``pyarrow`` when it is installed; and a ``.npz``
holding either the four arrays ``X_train, y_train, X_test, y_test`` (train and test in one
file) or one table ``X, y``; a torch ``Dataset`` or ``DataLoader`` of ``(x, y)`` items, whose
rows are read once and flattened (recognised only when torch is already imported: no torch
object can exist otherwise, so a node without the extra never imports it). The test part is
a second source, or a seeded fraction of the one.

Numpy only at import time.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trapdoor.ml.extras import MissingExtraError

__all__ = [
    "DEFAULT_LABEL",
    "NPZ_KEYS",
    "DataError",
    "LocalData",
    "check_local_data",
    "load_local_data",
    "model_io_sizes",
    "read_table",
]

#: The arrays of a ``.npz`` that holds train and test parts together.
NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
#: The label column of a CSV, Parquet file or DataFrame when none is named.
DEFAULT_LABEL = "label"


class DataError(ValueError):
    """Local data that cannot train the job: the message names the source, the column or
    part at fault and how many rows."""


@dataclass
class LocalData:
    """This data owner's training rows and the test rows it evaluates released models on."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    #: Where the rows came from (a file path, ``"DataFrame"``, a bundled partition).
    source: str
    #: The feature columns' names when the source has a header (errors name them).
    feature_names: tuple[str, ...] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_train": len(self.y_train),
            "num_test": len(self.y_test),
            "num_features": int(self.X_train.shape[1]) if self.X_train.ndim == 2 else 0,
        }


# --------------------------------------------------------------------------- checks


def _column(data: LocalData, index: int) -> str:
    names = data.feature_names
    if names is not None and index < len(names):
        return f"column {index} ({names[index]!r})"
    return f"column {index}"


def _check_features(data: LocalData, part: str, X: np.ndarray) -> None:
    if X.ndim != 2:
        raise DataError(
            f"{data.source}: {part} must be 2-D (rows, features), got shape {X.shape}; "
            "reshape it to (rows, -1)"
        )
    if X.dtype.kind not in "biuf":
        raise DataError(f"{data.source}: {part} must be numeric, got dtype {X.dtype}")
    bad = ~np.isfinite(X.astype(np.float64, copy=False))
    if bad.any():
        per_column = bad.sum(axis=0)
        first = int(np.flatnonzero(per_column)[0])
        raise DataError(
            f"{data.source}: {part} {_column(data, first)} has NaN or inf in "
            f"{int(per_column[first])} of {X.shape[0]} rows ({int(bad.any(axis=1).sum())} rows "
            f"with a NaN or inf in any of {int((per_column > 0).sum())} columns)"
        )


def _check_labels(data: LocalData, part: str, y: np.ndarray, classes: int | None) -> None:
    if y.ndim != 1:
        raise DataError(f"{data.source}: {part} must be one label per row, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise DataError(
            f"{data.source}: {part} must hold integer class labels 0..k-1, got dtype {y.dtype} "
            "(map class names to integers first)"
        )
    values = y.astype(np.float64, copy=False)
    not_integer = ~np.isfinite(values) | (values != np.round(values))
    if not_integer.any():
        first = values[np.flatnonzero(not_integer)[0]]
        raise DataError(
            f"{data.source}: {part} has {int(not_integer.sum())} of {len(y)} labels that are "
            f"not integers (e.g. {first}); labels are class numbers 0..k-1"
        )
    negative = values < 0
    if negative.any():
        raise DataError(
            f"{data.source}: {part} has {int(negative.sum())} of {len(y)} negative labels "
            f"(e.g. {int(values[negative][0])}); labels are class numbers 0..k-1"
        )
    if classes is not None and (too_big := values >= classes).any():
        raise DataError(
            f"{data.source}: {part} has {int(too_big.sum())} of {len(y)} labels outside "
            f"0..{classes - 1}, the job's model has {classes} classes "
            f"(largest label {int(values.max())})"
        )


def check_local_data(
    data: LocalData,
    *,
    features: int | None = None,
    classes: int | None = None,
    source: str | None = None,
) -> None:
    """Refuse ``data`` that cannot train (:class:`DataError`); nothing is changed.

    Always: each part's X is 2-D, numeric and finite, its y one integer-valued label >= 0
    per row of X, train and test have rows and the same feature count. With ``features``
    and ``classes`` (the job's model, :func:`model_io_sizes`), X's width must be the
    model's input size and every label below the class count. ``source`` overrides the
    name errors give (``data.source``).
    """
    if source is not None:
        data = LocalData(
            data.X_train, data.y_train, data.X_test, data.y_test, source, data.feature_names
        )
    parts = (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test))
    for name, X, y in parts:
        X, y = np.asarray(X), np.asarray(y)
        _check_features(data, f"X_{name}", X)
        if X.shape[0] != y.shape[0]:
            raise DataError(
                f"{data.source}: X_{name} has {X.shape[0]} rows but y_{name} has "
                f"{y.shape[0]} labels; every row needs exactly one label"
            )
        if X.shape[0] == 0:
            raise DataError(f"{data.source}: the {name} part has no rows")
        _check_labels(data, f"y_{name}", y, classes)
    width, test_width = np.shape(data.X_train)[1], np.shape(data.X_test)[1]
    if width != test_width:
        raise DataError(
            f"{data.source}: X_train has {width} feature columns but X_test has {test_width}"
        )
    if features is not None and width != features:
        raise DataError(
            f"{data.source}: {width} feature columns, but the job's model takes {features} "
            f"inputs ({np.shape(data.X_train)[0]} training rows)"
        )


def model_io_sizes(model: Any) -> tuple[int | None, int | None]:
    """The input width and class count of a model, ``None`` where it does not say.

    The numpy models know both (``MLP.layer_sizes``; ``input_shape`` and ``num_classes`` of
    the CNN and the GRU, whose rows are flattened). A torch module is opaque: only the
    spec's kwargs ``layer_sizes`` (first and last) or ``num_features`` / ``num_classes``
    give them; otherwise those two checks are skipped.
    """
    sizes = getattr(model, "layer_sizes", None)
    if sizes is not None:
        return int(sizes[0]), int(sizes[-1])
    shape, classes = getattr(model, "input_shape", None), getattr(model, "num_classes", None)
    if shape is not None and classes is not None:
        return int(np.prod(shape)), int(classes)
    kwargs = getattr(model, "kwargs", None)
    if not isinstance(kwargs, dict):
        return None, None
    layers = kwargs.get("layer_sizes")
    if isinstance(layers, list | tuple) and len(layers) >= 2:
        return int(layers[0]), int(layers[-1])
    features, classes = kwargs.get("num_features"), kwargs.get("num_classes")
    return (
        int(features) if isinstance(features, int) else None,
        int(classes) if isinstance(classes, int) else None,
    )


# --------------------------------------------------------------------------- loaders

Table = tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]


def _is_dataframe(obj: object) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _torch_kind(obj: object) -> str | None:
    """``"DataLoader"`` or ``"Dataset"`` for a torch data object, else ``None``; torch is
    looked at only when something has imported it already."""
    if "torch" not in sys.modules:
        return None
    from torch.utils.data import DataLoader, Dataset

    if isinstance(obj, DataLoader):
        return "DataLoader"
    return "Dataset" if isinstance(obj, Dataset) else None


def _torch_name(obj: object) -> str:
    return f"torch {type(obj).__name__}"


def _as_numpy(value: Any) -> np.ndarray:
    """A batch's tensor (or anything array-like) as numpy; floating tensors as float64."""
    if callable(getattr(value, "detach", None)):
        tensor = value.detach().cpu()
        return np.asarray((tensor.double() if tensor.is_floating_point() else tensor).numpy())
    return np.asarray(value)


def _from_torch(data: Any, source: str) -> Table:
    """The rows of a torch Dataset or DataLoader of ``(x, y)`` items, each ``x`` flattened
    to one row (a DataLoader's own order, batches and ``drop_last`` are kept)."""
    from torch.utils.data import DataLoader

    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
    rows: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in loader:
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise DataError(
                f"{source}: items must be (x, y) pairs, got a batch of type {type(batch).__name__}"
            )
        x, y = _as_numpy(batch[0]), _as_numpy(batch[1])
        if len(x) != len(y):
            raise DataError(f"{source}: a batch has {len(x)} rows but {len(y)} labels")
        rows.append(x.reshape(len(x), -1))
        labels.append(y)
    if not rows:
        return np.empty((0, 0)), np.empty(0, dtype=np.int64), None
    X = np.concatenate(rows)
    return (X.astype(np.float64) if X.dtype.kind in "biuf" else X), np.concatenate(labels), None


def _split_label(columns: Sequence[str], label: str, source: str) -> tuple[int, tuple[str, ...]]:
    """The label column's index and the feature columns' names."""
    names = [str(c) for c in columns]
    if label not in names:
        raise DataError(f"{source}: no label column {label!r}; columns are {names}")
    index = names.index(label)
    return index, tuple(n for i, n in enumerate(names) if i != index)


def _from_dataframe(frame: Any, label: str, source: str) -> Table:
    _, features = _split_label(list(frame.columns), label, source)
    columns = []
    for name in features:
        try:
            columns.append(frame[name].to_numpy(dtype=np.float64, na_value=np.nan))
        except (TypeError, ValueError):
            raise DataError(
                f"{source}: feature column {name!r} is not numeric ({frame[name].dtype}, "
                f"{len(frame)} rows); encode it as numbers first"
            ) from None
    X = np.column_stack(columns) if columns else np.empty((len(frame), 0))
    return X, frame[label].to_numpy(), features


def _read_csv(path: Path, label: str) -> Table:
    source = str(path)
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataError(f"{source}: empty file; a CSV needs a header row naming its columns")
    index, features = _split_label([h.strip() for h in header], label, source)
    try:
        table = np.genfromtxt(
            path, delimiter=",", skip_header=1, dtype=np.float64, ndmin=2, invalid_raise=True
        )
    except ValueError as exc:  # a row with the wrong number of fields
        raise DataError(f"{source}: {exc}") from None
    if table.size == 0:
        table = np.empty((0, len(header)))
    if table.shape[1] != len(header):
        raise DataError(
            f"{source}: {table.shape[1]} fields per row but {len(header)} in the header"
        )
    return np.delete(table, index, axis=1), table[:, index], features


def _read_parquet(path: Path, label: str) -> Table:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MissingExtraError(
            f"reading {path} needs pyarrow, which is not installed: pip install pyarrow",
            name="pyarrow",
        ) from None
    table = pq.read_table(path)
    return _from_dataframe(table.to_pandas(), label, str(path))


def _read_npz_table(path: Path) -> Table:
    with np.load(path) as npz:
        if not {"X", "y"} <= set(npz.files):
            raise DataError(
                f"{path}: a .npz holds either {', '.join(NPZ_KEYS)} or X and y; "
                f"found {sorted(npz.files)}"
            )
        return np.asarray(npz["X"]), np.asarray(npz["y"]), None


def read_table(source: Any, label: str = DEFAULT_LABEL) -> Table:
    """``(X, y, feature names)`` of one source: an ``(X, y)`` pair of arrays, a DataFrame
    with column ``label``, a ``.csv``, ``.parquet`` or ``.npz`` (``X``, ``y``) path, or a
    torch ``Dataset`` / ``DataLoader`` of ``(x, y)`` items."""
    if isinstance(source, tuple) and len(source) == 2:
        return np.asarray(source[0]), np.asarray(source[1]), None
    if _is_dataframe(source):
        return _from_dataframe(source, label, "DataFrame")
    if _torch_kind(source) is not None:
        return _from_torch(source, _torch_name(source))
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        readers = {".csv": _read_csv, ".parquet": _read_parquet}
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _read_npz_table(path)
        if suffix in readers:
            return readers[suffix](path, label)
        raise DataError(f"{path}: unknown file type {suffix!r}; use .csv, .parquet or .npz")
    raise DataError(
        f"cannot read data from a {type(source).__name__}: give (X, y) arrays, a DataFrame, "
        "a .csv, .parquet or .npz path, or a torch Dataset or DataLoader"
    )


def _name(source: Any) -> str:
    if isinstance(source, str | Path):
        return str(source)
    if _torch_kind(source) is not None:
        return _torch_name(source)
    return "DataFrame" if _is_dataframe(source) else "arrays"


def _npz_pair(source: Any) -> LocalData | None:
    """The train and test parts of a ``.npz`` holding all four arrays, else ``None``."""
    if not isinstance(source, str | Path) or Path(source).suffix.lower() != ".npz":
        return None
    if not Path(source).is_file():
        raise DataError(f"{source}: no such file")
    with np.load(source) as npz:
        if not set(NPZ_KEYS) <= set(npz.files):
            return None
        X_train, y_train, X_test, y_test = (np.asarray(npz[key]) for key in NPZ_KEYS)
    return LocalData(X_train, y_train, X_test, y_test, str(source))


def _split(table: Table, fraction: float, seed: int, source: str) -> tuple[Table, Table]:
    """A seeded shuffle of one table into train and test rows."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{source}: test_fraction must be in (0, 1), got {fraction}")
    X, y, names = table
    if len(X) != len(y):
        raise DataError(
            f"{source}: X has {len(X)} rows but y has {len(y)} labels; "
            "every row needs exactly one label"
        )
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) - round(len(y) * fraction)
    if not 0 < cut < len(y):
        raise DataError(
            f"{source}: {len(y)} rows are too few to split off a test fraction of {fraction}"
        )
    train, test = order[:cut], order[cut:]
    return (X[train], y[train], names), (X[test], y[test], names)


def load_local_data(
    train: Any,
    test: Any = None,
    *,
    label: str = DEFAULT_LABEL,
    test_fraction: float | None = None,
    seed: int = 0,
) -> LocalData:
    """A data owner's rows from ``train`` (and ``test``), shape-checked, as float64 X and
    int64 y; :class:`DataError` naming the source for anything that cannot train.

    ``train`` and ``test`` are sources of :func:`read_table`; a ``.npz`` with all of
    :data:`NPZ_KEYS` is both parts at once. Without ``test``, ``test_fraction`` of the rows
    (shuffled by ``seed``) become the test part.
    """
    data = _npz_pair(train) if test is None and test_fraction is None else None
    if data is None:
        source = _name(train)
        table = read_table(train, label)
        if test is not None:
            if test_fraction is not None:
                raise DataError(f"{source}: give a test source or a test_fraction, not both")
            source = f"{source} (test: {_name(test)})"
            held_out = read_table(test, label)
        elif test_fraction is not None:
            table, held_out = _split(table, test_fraction, seed, source)
        else:
            raise DataError(f"{source}: give a test source or a test_fraction for the test rows")
        data = LocalData(table[0], table[1], held_out[0], held_out[1], source, table[2])
    check_local_data(data)
    return LocalData(
        np.asarray(data.X_train, dtype=np.float64),
        np.asarray(data.y_train).astype(np.int64),
        np.asarray(data.X_test, dtype=np.float64),
        np.asarray(data.y_test).astype(np.int64),
        data.source,
        data.feature_names,
    )
