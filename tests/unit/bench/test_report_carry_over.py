"""``bench.report.carry_over``: a regenerated BENCHMARKS.md keeps the sections that other
benchmarks wrote into it."""

from __future__ import annotations

from bench.report import carry_over


def test_sections_the_report_does_not_write_survive_it() -> None:
    old = "# B\n\nintro\n\n## Accuracy\n\nold numbers\n\n## Flower app\n\nflower table\n"
    new = "# B\n\nnew intro\n\n## Accuracy\n\nnew numbers\n"
    merged = carry_over(old, new)
    assert "new numbers" in merged and "old numbers" not in merged
    assert merged.endswith("## Flower app\n\nflower table\n")
    assert merged.count("## Accuracy") == 1
    assert carry_over(new, new) == new
    assert carry_over("", new) == new
