"""The one ``trapdoor`` command: its groups, usage errors, and ``trapdoor bench``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import trapdoor.cli
from trapdoor.cli import cli, main

GROUPS = ("kgc", "ps", "node", "demo", "bench")
CONSOLE_SCRIPT = Path(sys.executable).with_name("trapdoor")


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_help_lists_every_group() -> None:
    code, output = _invoke("--help")
    assert code == 0
    commands = output.split("Commands:", 1)[1].split()
    assert set(GROUPS) <= set(commands)


@pytest.mark.parametrize(
    ("group", "subcommands"),
    [("kgc", ("init", "serve")), ("ps", ("enrol", "serve")), ("node", ("serve",))],
)
def test_each_party_group_lists_its_subcommands(group: str, subcommands: tuple[str, ...]) -> None:
    code, output = _invoke(group, "--help")
    assert code == 0
    assert set(subcommands) <= set(output.split("Commands:", 1)[1].split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "No such option"),
        (["nope"], "No such command 'nope'"),
        (["kgc", "serve", "--port", "x"], "Invalid value for '--port'"),
        (["demo", "--bits", "512"], "Invalid value for '--bits'"),
        (["demo", "--participants"], "requires an argument"),
    ],
)
def test_a_bad_option_exits_2_with_a_message(argv: list[str], message: str) -> None:
    code, output = _invoke(*argv)
    assert code == 2
    assert message in output.replace('"', "'") and "Error:" in output


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Usage: trapdoor" in capsys.readouterr().out
    assert main(["--nope"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_bench_with_an_unknown_name_lists_the_benchmarks() -> None:
    code, output = _invoke("bench", "no_such_bench")
    assert code == 2
    assert "no benchmark 'no_such_bench'" in output
    assert "crypto_bench" in output and "round_bench" in output


def test_bench_names_are_modules_not_paths() -> None:
    code, output = _invoke("bench", "../crypto_bench")
    assert code == 2
    assert "no benchmark" in output


def test_a_group_whose_extra_is_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(trapdoor.cli.GROUPS, "extra", "no_such_package_xyz.cli:group")
    code, output = _invoke("--help")
    assert code == 0 and "unavailable in this install" in output
    code, output = _invoke("extra", "--any", "args")
    assert code == 2
    assert "error: `trapdoor extra` cannot run here" in output
    assert "no_such_package_xyz" in output


def test_a_broken_trapdoor_module_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(trapdoor.cli.GROUPS, "broken", "trapdoor.no_such_module:group")
    result = CliRunner().invoke(cli, ["broken"])
    assert isinstance(result.exception, ModuleNotFoundError)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder holding a ``bench`` package with one benchmark, ``hello``."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "hello.py").write_text(
        textwrap.dedent(
            """
            def main(argv):
                print("hello", argv)
                return 3
            """
        )
    )
    return tmp_path


def _run_console_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the trapdoor console script is not installed next to this interpreter")
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_bench_runs_a_module_of_the_checkout_with_its_arguments(checkout: Path) -> None:
    """The console script does not have the checkout on its path; ``bench`` finds it in the
    working folder, as ``python -m bench.NAME`` would, and hands every argument on."""
    done = _run_console_script(["bench", "hello", "--help", "-x", "1"], checkout)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "hello ['--help', '-x', '1']"


def test_bench_outside_a_checkout_says_where_benchmarks_run(tmp_path: Path) -> None:
    done = _run_console_script(["bench", "crypto_bench"], tmp_path)
    assert done.returncode == 2
    assert "benchmarks run from a source checkout" in done.stderr
