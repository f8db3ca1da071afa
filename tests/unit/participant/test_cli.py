"""``trapdoor node serve``: options and ``TRAPDOOR_NODE_*`` settings that reach the node."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import trapdoor.participant.cli as node_cli
from trapdoor.cli import cli
from trapdoor.kgc.settings import KgcSettings
from trapdoor.participant.settings import NodeSettings
from trapdoor.ps.settings import PsSettings

serve_command = node_cli.node.commands["serve"]


class _Started:
    """What ``serve`` was asked to do, instead of serving (``create_app`` and ``serve`` stubbed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.config: dict[str, Any] = {}
        self.bound: tuple[str, int] | None = None
        monkeypatch.setattr(node_cli, "restrict_new_files", lambda: None)
        monkeypatch.setattr(node_cli, "create_app", self._create_app)
        monkeypatch.setattr(node_cli, "serve", self._serve)

    def _create_app(self, config: dict[str, Any]) -> Any:
        self.config = config
        return SimpleNamespace(extensions={"participant_node": SimpleNamespace(close=lambda: None)})

    def _serve(self, _app: Any, host: str, port: int, *_args: Any) -> None:
        self.bound = (host, port)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> _Started:
    for field in ("database_url", "admin_token", "host", "port"):
        monkeypatch.delenv(NodeSettings.variable(field), raising=False)
    monkeypatch.setenv("TRAPDOOR_NODE_PASSPHRASE", "node pass")
    return _Started(monkeypatch)


def test_min_quorum_is_an_option_of_node_serve() -> None:
    assert serve_command.make_context("serve", ["--min-quorum", "2"]).params["min_quorum"] == 2
    assert serve_command.make_context("serve", []).params["min_quorum"] is None  # 3


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_min_quorum_must_be_a_positive_integer(value: str) -> None:
    result = CliRunner().invoke(cli, ["node", "serve", "--min-quorum", value])
    assert result.exit_code == 2
    assert "--min-quorum" in result.output


def test_each_service_has_its_own_default_port() -> None:
    """KGC, parameter server and node can all run on one machine with their defaults."""
    ports = {"kgc": KgcSettings().port, "ps": PsSettings().port, "node": NodeSettings().port}
    assert ports == {"kgc": 8700, "ps": 8600, "node": 8800}


def test_settings_reach_the_node_and_options_override_them(
    started: _Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAPDOOR_NODE_ADMIN_TOKEN", "node-admin")
    monkeypatch.setenv("TRAPDOOR_NODE_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("TRAPDOOR_NODE_PORT", "9100")
    monkeypatch.setenv("TRAPDOOR_KGC_ADMIN_TOKEN", "kgc-admin")  # not the node's
    result = CliRunner().invoke(cli, ["node", "serve", "--min-quorum", "2"])
    assert result.exit_code == 0, result.output
    assert started.bound == ("127.0.0.1", 9100)
    assert started.config["ADMIN_TOKEN"] == "node-admin"
    assert started.config["PASSPHRASE"] == "node pass"
    assert started.config["DATABASE_URL"] == "sqlite:///from-env.db"
    assert started.config["MIN_QUORUM"] == 2

    result = CliRunner().invoke(cli, ["node", "serve", "--db", "sqlite:///opt.db", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert started.bound == ("127.0.0.1", 0)
    assert started.config["DATABASE_URL"] == "sqlite:///opt.db"
    assert started.config["MIN_QUORUM"] == 3


def test_node_serve_refusals(started: _Started, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["node", "serve", "--host", "0.0.0.0"])
    assert (result.exit_code, started.bound) == (2, None)
    assert "loopback only" in result.output
    monkeypatch.setenv("TRAPDOOR_NODE_PORT", "http")
    result = CliRunner().invoke(cli, ["node", "serve"])
    assert (result.exit_code, started.bound) == (2, None)
    assert "error: TRAPDOOR_NODE_PORT must be an integer" in result.output
    monkeypatch.delenv("TRAPDOOR_NODE_PORT")
    monkeypatch.delenv("TRAPDOOR_NODE_PASSPHRASE")
    result = CliRunner().invoke(cli, ["node", "serve"])
    assert (result.exit_code, started.bound) == (2, None)
    assert "error: set TRAPDOOR_NODE_PASSPHRASE" in result.output


def test_own_data_options_reach_the_node(started: _Started) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "node", "serve", "--data-path", "rows.csv", "--data-label", "target",
            "--data-test-fraction", "0.25", "--data-split-seed", "7",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {k: started.config[k] for k in started.config if k.startswith("DATA_")} == {
        "DATA_PATH": "rows.csv",
        "DATA_TEST_PATH": None,
        "DATA_TEST_FRACTION": 0.25,
        "DATA_SPLIT_SEED": 7,
        "DATA_LABEL": "target",
    }


@pytest.mark.parametrize(
    "args",
    [["--data-test-fraction", "0.2"], ["--data-path", "x.csv", "--data-test-fraction", "1.5"]],
)
def test_misplaced_data_options_are_refused(started: _Started, args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["node", "serve", *args])
    assert result.exit_code == 2
    assert started.config == {}  # the node was never built


def test_bad_data_at_start_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN in the owner's CSV stops ``serve`` with the file and column named, no trace."""
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,label\n1,2,0\n3,nan,1\n5,6,0\n7,8,1\n")
    monkeypatch.setenv("TRAPDOOR_NODE_PASSPHRASE", "node pass")
    monkeypatch.setattr(node_cli, "restrict_new_files", lambda: None)
    result = CliRunner().invoke(
        cli,
        [
            "node", "serve", "--db", f"sqlite:///{tmp_path}/n.db", "--data-path", str(rows),
            "--data-test-fraction", "0.5",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert str(rows) in result.output and "Traceback" not in result.output
    assert "nan" in result.output.lower() or "NaN" in result.output
