"""The ``trapdoor`` command: one click group that assembles each package's own group.

``trapdoor kgc|ps|node ...`` and ``trapdoor demo`` live next to what they run
(:mod:`trapdoor.kgc.cli`, :mod:`trapdoor.ps.cli`, :mod:`trapdoor.participant.cli`,
:mod:`trapdoor.demo.job`). Each is imported only when it is used (or listed by
``--help``), so ``trapdoor node serve`` loads neither the KGC nor the demo, and a group whose
optional packages are not installed says so instead of breaking the whole command.
``trapdoor bench NAME`` runs ``bench/NAME.py``, which ships with a source checkout only.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import click

from trapdoor.service.cli import exit_status, fail

__all__ = ["cli", "main"]

#: Subcommand -> ``module:attribute`` of its click group or command.
GROUPS = {
    "kgc": "trapdoor.kgc.cli:kgc",
    "ps": "trapdoor.ps.cli:ps",
    "node": "trapdoor.participant.cli:node",
    "demo": "trapdoor.demo.job:demo",
}


def _unavailable(name: str, exc: ImportError) -> click.Command:
    """A stand-in for a group whose module needs a package this install lacks."""
    reason = str(exc)

    @click.command(
        name=name,
        help=f"(unavailable in this install: {reason})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    def stand_in() -> None:
        fail(f"`trapdoor {name}` cannot run here: {reason}")

    return stand_in


class _LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *GROUPS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = GROUPS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "trapdoor").split(".")[0] == "trapdoor":
                raise  # our own code is broken: that is a bug, not a missing extra
            return _unavailable(cmd_name, exc)
        command: click.Command = getattr(module, attribute)
        return command


@click.group(name="trapdoor", cls=_LazyGroup)
def cli() -> None:
    """Trapdoor FL: federated learning where neither the server nor the other parties see
    an update. One group per party, the demo, and the benchmarks."""


def _bench_package() -> ModuleType:
    """The top-level ``bench`` package: installed, or the checkout in the working folder
    (found the way ``python -m bench.NAME`` finds it from the repository's root)."""
    try:
        return importlib.import_module("bench")
    except ModuleNotFoundError as exc:
        checkout = Path.cwd()
        if exc.name != "bench" or not (checkout / "bench" / "__init__.py").is_file():
            raise
    sys.path.insert(0, str(checkout))
    return importlib.import_module("bench")


@cli.command(
    short_help="Run a benchmark of bench/ (from a source checkout).",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run the benchmark NAME (a module of bench/: crypto_bench, round_bench, ...) with
    ARGS, e.g. `trapdoor bench crypto_bench --quick`. From a source checkout's root."""
    try:
        package = _bench_package()
    except ModuleNotFoundError:
        fail(
            "benchmarks run from a source checkout: bench/ is not installed with trapdoor; "
            "run `trapdoor bench NAME` in the repository's root folder"
        )
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)
    if name not in names:
        fail(f"no benchmark {name!r}; choose one of: {', '.join(names)}")
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        fail(f"bench.{name} needs {exc.name}: pip install -e '.[bench]' (or the extra for it)")
    if not callable(getattr(module, "main", None)):
        fail(f"bench.{name} is a helper module, not a benchmark (it has no main)")
    status = module.main(list(args))
    raise click.exceptions.Exit(int(status or 0))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``trapdoor`` console script; returns the exit status."""
    return exit_status(cli, argv, "trapdoor")


if __name__ == "__main__":
    sys.exit(main())
