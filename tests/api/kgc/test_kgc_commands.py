"""``trapdoor kgc enrol``: a client of a real KGC app on a loopback port."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from kgc_api_support import ADMIN_TOKEN, ApiWorld

from tests.loopback import serving
from trapdoor.cli import cli
from trapdoor.kgc.models import Subject
from trapdoor.kgc.settings import KgcSettings


@pytest.fixture(autouse=True)
def _no_environment_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KgcSettings.variable("admin_token"), raising=False)


def test_enrol_prints_the_subject_id_and_code_and_never_the_token(
    api: ApiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KgcSettings.variable("admin_token"), ADMIN_TOKEN)
    with serving(api.app) as url:
        result = CliRunner().invoke(
            cli, ["kgc", "enrol", "--name", "Clinic A", "--role", "participant", "--url", url]
        )
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines()[:2])
    assert lines["subject id"].strip() and lines["one-time code"].strip()
    assert ADMIN_TOKEN not in result.output
    assert api.count(Subject) == 1


def test_enrol_with_a_wrong_token_exits_1_and_enrols_nobody(api: ApiWorld) -> None:
    with serving(api.app) as url:
        result = CliRunner().invoke(
            cli,
            ["kgc", "enrol", "--name", "A", "--role", "participant", "--url", url, "--token", "no"],
        )
    assert result.exit_code == 1
    assert "401 unauthorized" in result.output and "admin token" in result.output
    assert api.count(Subject) == 0


def test_enrol_without_any_token_says_which_variable_to_set() -> None:
    result = CliRunner().invoke(cli, ["kgc", "enrol", "--name", "A", "--role", "participant"])
    assert result.exit_code == 2
    assert KgcSettings.variable("admin_token") in result.output
