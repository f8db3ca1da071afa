"""``bench.flower_bench``: Flower SecAgg+ vs plain FedAvg (issue 12).

The benchmark run needs Flower (``pip install 'flwr==1.42.0'``) and is skipped without it;
the missing-Flower message is checked either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import flower_bench

TINY_ARGS = ["--k", "2", "--rounds", "1", "--warmup", "0", "--model", "tiny"]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_tiny_run_writes_the_expected_json(tmp_path: Path) -> None:
    pytest.importorskip("flwr")

    assert flower_bench.main([*TINY_ARGS, "--out", str(tmp_path)]) == 0

    doc = json.loads((tmp_path / "flower_bench.json").read_text())
    assert (tmp_path / "flower_bench.txt").read_text().startswith("Flower ")
    assert (tmp_path / "flower_bench.png").stat().st_size > 0
    for key in ("flwr", "runtime", "model", "training", "k", "secaggplus", "machine", "checks"):
        assert key in doc
    assert doc["k"] == [2]
    assert doc["model"]["params"] == 46
    assert doc["secaggplus"]["num_shares"] == 3
    assert doc["secaggplus"]["reconstruction_threshold"] == 2

    by_mode = {r["mode"]: r for r in doc["results"]}
    assert set(by_mode) == {"plain", "secaggplus"}
    assert by_mode["plain"]["round_trips"] == 1
    assert by_mode["secaggplus"]["round_trips"] == 4
    assert by_mode["secaggplus"]["stages"] == [
        "setup",
        "share_keys",
        "collect_masked_vectors",
        "unmask",
    ]
    for result in by_mode.values():
        assert result["k"] == 2
        assert len(result["per_round"]) == 1
        for value in (
            result["round_wall_s"],
            result["parallel_estimate_s"],
            result["server"]["compute_wall_s"],
            result["server"]["aggregation_wall_s"],
            result["client_mean"]["wall_s"],
            result["client_mean"]["cpu_s"],
            result["client_mean"]["app_wall_s"],
            result["bytes_per_client"]["up"],
            result["bytes_per_client"]["down"],
        ):
            assert _positive(value), (result["mode"], value)
    # The SecAgg+ mod does real work; its masked upload is int64, twice float32.
    secure, plain = by_mode["secaggplus"], by_mode["plain"]
    assert secure["client_mean"]["mod_wall_s"] > plain["client_mean"]["mod_wall_s"]
    assert secure["bytes_per_client"]["up"] > plain["bytes_per_client"]["up"]

    (check,) = doc["checks"]
    assert check["secaggplus_vs_exact_max_abs"] <= check["tolerance"]


def test_missing_flower_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "flwr", None)  # `import flwr` now raises ImportError

    assert flower_bench.main([*TINY_ARGS, "--out", str(tmp_path)]) == 2

    assert "pip install 'flwr==1.42.0'" in capsys.readouterr().err
    assert not (tmp_path / "flower_bench.json").exists()
