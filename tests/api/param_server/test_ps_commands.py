"""``trapdoor ps create-job`` and ``trapdoor ps status``: clients of a real PS app on a
loopback port (a fake KGC behind it, as in the other API tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from ps_api_support import ADMIN_TOKEN, ApiWorld
from sqlalchemy import func, select

from tests.loopback import serving
from trapdoor.cli import cli
from trapdoor.ps.models import Job
from trapdoor.ps.settings import PsSettings
from trapdoor.ps.testing import make_definition


@pytest.fixture
def url(api: ApiWorld, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(PsSettings.variable("admin_token"), ADMIN_TOKEN)
    with serving(api.app) as base:
        yield base


def _definition_file(api: ApiWorld, tmp_path: Path, **overrides: Any) -> Path:
    w0 = np.random.default_rng(1).normal(0.0, 0.5, 40)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(make_definition("job-a", api.participants, w0, **overrides)))
    return path


def _ps(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["ps", *args, "--url", url])


def _jobs(api: ApiWorld) -> int:
    with api.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job)) or 0)


def test_create_job_then_status_lists_it_and_its_rounds(
    api: ApiWorld, url: str, tmp_path: Path
) -> None:
    created = _ps(url, "create-job", "--definition", str(_definition_file(api, tmp_path)))
    assert created.exit_code == 0, created.output
    assert "job job-a created: running, round 0" in created.output
    listed = _ps(url, "status")
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()[:2]
    assert header.split() == ["job_id", "status", "current_round", "rounds_total"]
    assert row.split()[:3] == ["job-a", "running", "0"]
    rounds = _ps(url, "status", "job-a")
    assert rounds.exit_code == 0, rounds.output
    assert rounds.output.splitlines()[2].split()[:2] == ["0", "open"]
    assert "not heard from yet: p1, p2, p3, p4" in rounds.output
    assert ADMIN_TOKEN not in created.output + listed.output + rounds.output


def test_a_refused_definition_exits_1_with_the_code_and_what_to_do(
    api: ApiWorld, url: str, tmp_path: Path
) -> None:
    path = _definition_file(api, tmp_path, rounds=0)
    result = _ps(url, "create-job", "--definition", str(path))
    assert result.exit_code == 1
    assert "creating the job failed (4" in result.output
    assert "definition" in result.output.split(" -- ")[-1]
    assert _jobs(api) == 0


def test_a_file_that_is_not_json_is_refused_before_any_call(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text("{not json")
    result = CliRunner().invoke(
        cli, ["ps", "create-job", "--definition", str(path), "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert "is not JSON" in result.output and "line 1" in result.output


def test_status_of_an_unknown_job_exits_1(url: str) -> None:
    result = _ps(url, "status", "nope")
    assert result.exit_code == 1
    assert "404" in result.output
