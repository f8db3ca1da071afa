"""Reliability table: run the fault and hostile-input tests, write docs/RELIABILITY.md's table.

``python -m bench.reliability`` runs ``pytest tests/faults tests/e2e/test_hostile_inputs.py``
with a junit XML report, and rewrites the part of docs/RELIABILITY.md between the
``<!-- reliability:begin -->`` and ``<!-- reliability:end -->`` markers: one row per test
(category, what it checks, result, seconds) and the totals. Data lost is counted from the
tests themselves: every fault test asserts that each acknowledged upload is still there and
that the model equals the plaintext answer, so a pass means zero lost; a failure counts as
"unknown" (never as zero). Exits non-zero when a test failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Result", "main", "parse_junit", "render"]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
TARGETS = ["tests/faults", "tests/e2e/test_hostile_inputs.py"]

# What each test file stands for in the table.
CATEGORY = {
    "test_load": "load held",
    "test_crash": "fault survived",
    "test_deadlines": "fault survived",
    "test_node_restart": "fault survived",
    "test_logs": "secrecy",
    "test_hostile_inputs": "bad input refused",
}


@dataclass(frozen=True)
class Result:
    """One test case from the junit report."""

    module: str
    name: str
    outcome: str  # passed, failed, error, skipped
    seconds: float

    @property
    def category(self) -> str:
        if "logs" in self.name:  # the log check inside test_node_restart
            return "secrecy"
        return CATEGORY.get(self.module, "other")


def parse_junit(path: Path) -> list[Result]:
    """Test cases of a pytest ``--junitxml`` report."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
        results.append(Result(module, case.get("name", ""), outcome, float(case.get("time", 0))))
    return results


def render(results: Sequence[Result], wall_seconds: float) -> str:
    """The markdown table and the totals (load, faults, bad inputs, data lost)."""
    lines = ["| category | test | result | seconds |", "|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r.category, r.module, r.name)):
        lines.append(f"| {r.category} | `{r.module}::{r.name}` | {r.outcome} | {r.seconds:.1f} |")

    def count(category: str) -> str:
        mine = [r for r in results if r.category == category]
        return f"{sum(r.outcome == 'passed' for r in mine)} of {len(mine)} passed"

    data_tests = [r for r in results if r.category in ("load held", "fault survived")]
    lost = (
        "0 (every acknowledged upload found, every model equal to plaintext)"
        if data_tests and all(r.outcome == "passed" for r in data_tests)
        else "unknown: a load or fault test did not pass"
    )
    totals = [
        "",
        "| summary | |",
        "|---|---|",
        f"| load held | {count('load held')} |",
        f"| faults survived | {count('fault survived')} |",
        f"| bad inputs refused | {count('bad input refused')} |",
        f"| secrecy of logs | {count('secrecy')} |",
        f"| data lost | {lost} |",
        f"| wall time of the run | {wall_seconds:.0f} s |",
    ]
    return "\n".join(lines + totals) + "\n"


def write_doc(table: str, doc: Path = DOC) -> None:
    """Replace the generated block of the document (append it if the markers are missing)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{table}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    parser.add_argument("--doc", type=Path, default=DOC, help="document to update")
    parser.add_argument("--junit", type=Path, help="keep the junit XML report here")
    parser.add_argument("targets", nargs="*", default=TARGETS, help="pytest targets")
    args = parser.parse_args(argv)
    junit = args.junit or Path(tempfile.mkdtemp(prefix="reliability-")) / "junit.xml"
    import time

    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *args.targets,
            f"--junitxml={junit}",
        ],
        cwd=str(ROOT),
        check=False,
    )
    wall = time.monotonic() - start
    if not junit.exists():
        print("error: pytest wrote no report", file=sys.stderr)
        return 2
    table = render(parse_junit(junit), wall)
    write_doc(table, args.doc)
    print(table)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
