"""``bench.flower_app_bench``: the Flower quickstart app plain, with Trapdoor, with SecAgg+
(issue 15).

The run needs Flower with Ray, PyTorch and scikit-learn, and is skipped without them; it
starts Ray three times and a KGC and a PS (about 1-2 minutes on two cores). The refusals
(missing dependencies, bad options) are checked either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import flower_app_bench


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_one_round_writes_three_rows_with_positive_numbers(tmp_path: Path) -> None:
    for module in ("flwr", "ray", "torch", "sklearn", "matplotlib"):
        pytest.importorskip(module)

    args = ["--nodes", "3", "--rounds", "1", "--bits", "1024", "--out", str(tmp_path)]
    assert flower_app_bench.main(args) == 0

    doc = json.loads((tmp_path / "flower_app_bench.json").read_text())
    assert (tmp_path / "flower_app_bench.png").stat().st_size > 0
    assert (tmp_path / "flower_app_bench.txt").read_text().startswith("Flower ")
    assert (doc["nodes"], doc["rounds"], doc["bits"]) == (3, 1, 1024)
    by_mode = {r["mode"]: r for r in doc["results"]}
    assert list(by_mode) == ["plain", "trapdoor", "secaggplus"]
    for mode, result in by_mode.items():
        assert len(result["per_round"]) == doc["warmup"] + 1, mode
        assert len(result["round_wall_s"]) == 1, mode
        mean = result["mean_per_round"]
        for value in (
            result["round_wall_median_s"],
            mean["total_bytes"],
            mean["flower_down"],
            mean["flower_up"],
            result["final_accuracy"],
        ):
            assert _positive(value), (mode, value)
    # Only Trapdoor talks HTTP, and its server never sees a parameter: its Flower
    # messages are far smaller than plain Flower's, which carry the model both ways.
    trapdoor, plain = by_mode["trapdoor"]["mean_per_round"], by_mode["plain"]["mean_per_round"]
    assert trapdoor["nodes_ps_up"] > 0 and trapdoor["nodes_ps_down"] > 0
    assert trapdoor["ps_kgc_up"] > 0 and trapdoor["ps_kgc_down"] > 0
    assert trapdoor["flower_bytes"] < plain["flower_bytes"] / 5
    for mode in ("plain", "secaggplus"):
        assert by_mode[mode]["mean_per_round"]["trapdoor_http_bytes"] == 0
    assert by_mode["plain"]["mean_per_round"]["flower_round_trips"] == 2
    assert by_mode["secaggplus"]["mean_per_round"]["flower_round_trips"] == 5  # 4 + evaluate
    # Same seeds, same app: the three learn the same model (to fixed-point rounding).
    for result in by_mode.values():
        assert result["max_abs_accuracy_diff_vs_plain"] <= 0.001


def test_missing_dependencies_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    real = flower_app_bench.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "ray" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(flower_app_bench.importlib.util, "find_spec", find_spec)
    assert flower_app_bench.main(["--out", str(tmp_path)]) == 2
    assert "needs ray" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_too_few_nodes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert flower_app_bench.main(["--nodes", "2"]) == 2
    assert "--nodes >= 3" in capsys.readouterr().err
