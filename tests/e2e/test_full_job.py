"""A whole job over real processes: KGC, parameter server and participant nodes.

Runs :func:`trapdoor.demo.job.run_demo` in-process (it spawns the services on loopback
with the shipped 1024-bit demo parameters), in both aggregation modes (masked, the
default, and bcp), and checks the encrypted model against
plaintext FedAvg, the contributor counts, that the participant that skipped a round
is refused the model and cannot open a contributor's bundle, and that the contributors'
evaluations shared with the PS average to each node's accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trapdoor.demo.job import parse_demo_options, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("aggregation", ["masked", "bcp"])
def test_full_job_matches_plaintext_and_withholds_from_skipper(
    aggregation: str, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    plot_path = tmp_path / "curves.png"
    args = parse_demo_options(
        [
            "--aggregation",
            aggregation,
            "--participants",
            "4",
            "--rounds",
            "2",
            "--dataset",
            "digits",
            "--bits",
            "1024",
            "--skip-round",
            "1",
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
    )
    summary = run_demo(args)

    assert summary == json.loads(summary_path.read_text())
    assert summary["aggregation"] == aggregation
    assert plot_path.stat().st_size > 0
    assert len(summary["rounds"]) == 2
    for r in summary["rounds"]:
        assert abs(r["encrypted_accuracy"] - r["plaintext_accuracy"]) <= 0.001
    assert summary["max_abs_accuracy_diff"] <= 0.001
    assert summary["contributors_per_round"] == [4, 3]
    assert summary["non_contributor_refused"] is True
    assert summary["contributor_accuracy_spread"] == 0.0
    assert summary["transfer"]["bytes_up"] > 0 and summary["transfer"]["bytes_down"] > 0

    # shared metrics (on by default): every contributor reported its evaluation to the PS,
    # and as every node scores the same model on the same digits test set, the weighted
    # average at the PS is each node's accuracy
    assert summary["share_metrics"] is True
    assert summary["shared_metrics_complete"] is True
    assert summary["max_abs_shared_diff"] <= 1e-9
    for r in summary["rounds"]:
        assert r["reporters"] == r["contributors"]
        assert r["shared_num_examples"] == r["contributors"] * 360  # digits: 360 test rows
        assert abs(r["shared_accuracy"] - r["encrypted_accuracy"]) <= 1e-9
        assert all(a == r["encrypted_accuracy"] for a in r["contributor_accuracies"])
        assert r["shared_loss"] is not None and r["shared_loss"] > 0
