"""``trapdoor demo --data``: a whole job over real processes on the participants' own files.

Three CSV partitions of scikit-learn's breast cancer data (standardised, label column
``diagnosis``) go to three nodes, one file each; every node holds out its own test rows.
The model is sized from the files (30 features -> 32 -> 2 classes). The encrypted accuracy
is the contributors' shared accuracy at the PS (weighted by their test rows), which must
match plaintext FedAvg on the same rows scored on the union of those test rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trapdoor.demo.job import parse_demo_options, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def write_partitions(folder: Path, parts: int = 3, seed: int = 3) -> list[Path]:
    """``parts`` CSV files of the standardised breast cancer rows, label column first."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    names = [f"f{j}" for j in range(X.shape[1])]
    order = np.random.default_rng(seed).permutation(len(y))
    paths = []
    for i, rows in enumerate(np.array_split(order, parts)):
        path = folder / f"hospital-{i}.csv"
        table = np.column_stack([y[rows], X[rows]])
        np.savetxt(path, table, delimiter=",", header=",".join(["diagnosis", *names]), comments="")
        paths.append(path)
    return paths


def test_demo_on_own_csv_files_matches_plaintext(tmp_path: Path) -> None:
    files = write_partitions(tmp_path)
    summary_path = tmp_path / "summary.json"
    plot_path = tmp_path / "curves.png"
    argv = [
        "--rounds",
        "2",
        "--bits",
        "1024",
        "--aggregation",
        "masked",
        "--data-label",
        "diagnosis",
        "--seed",
        "7",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(summary_path),
        "--plot",
        str(plot_path),
        "--quiet",
        "--timeout",
        "600",
    ]
    for path in files:
        argv += ["--data", str(path)]
    args = parse_demo_options(argv)
    assert args.participants == 3 and args.share_metrics
    summary = run_demo(args)

    assert summary == json.loads(summary_path.read_text())
    assert plot_path.stat().st_size > 0
    assert summary["dataset"] == "data"
    assert summary["participants"] == 3
    assert summary["num_features"] == 30 and summary["num_classes"] == 2
    assert summary["model"] == {"kind": "mlp", "layer_sizes": [30, 32, 2]}
    assert summary["encrypted_accuracy_source"] == "ps-shared-metrics"
    assert [d["num_test"] for d in summary["data"]] == [38, 38, 38]
    assert summary["contributors_per_round"] == [3, 3]
    assert summary["non_contributor_refused"] is None  # 3 participants, quorum 3: no skip
    assert summary["shared_metrics_complete"] is True
    assert summary["max_abs_shared_diff"] <= 1e-9
    assert len(summary["rounds"]) == 2
    for r in summary["rounds"]:
        assert r["reporters"] == 3
        assert r["shared_num_examples"] == 114
        assert r["encrypted_accuracy"] == r["shared_accuracy"]
        assert abs(r["shared_accuracy"] - r["plaintext_accuracy"]) <= 0.001
        assert r["plaintext_accuracy"] > 0.8  # it learns
    assert summary["max_abs_accuracy_diff"] <= 0.001
