"""What the services' command lines share (click): settings under options, errors, loopback.

Each service keeps its own click group next to its code (``trapdoor/kgc/cli.py``, ...);
:mod:`trapdoor.cli` assembles them into the one ``trapdoor`` command. An operator error
(a missing passphrase, a bad variable, a public host for the built-in server) prints
``error: ...`` on stderr and exits 2, as a usage error does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from trapdoor.service.settings import ServiceSettings, SettingsError

__all__ = ["LOOPBACK", "exit_status", "fail", "load_settings", "require_loopback", "setting_option"]

#: The hosts the built-in (Werkzeug) server may bind: it is for one machine, not for a network.
LOOPBACK = ("127.0.0.1", "localhost", "::1")

S = TypeVar("S", bound=ServiceSettings)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def require_loopback(host: str, wsgi_module: str | None = None) -> None:
    """Refuse a non-loopback host: a service open to a network runs under gunicorn
    (``wsgi_module``) behind TLS."""
    if host not in LOOPBACK:
        deploy = f"; deploy with gunicorn ({wsgi_module}) behind TLS for anything else"
        fail("the built-in server serves loopback only" + (deploy if wsgi_module else ""))


def setting_option(
    settings: type[ServiceSettings], field: str, *decls: str, help: str, **kwargs: Any
) -> Callable[[F], F]:
    """An option that overrides the setting ``field`` for one run.

    Its click default is ``None`` ("not given"), so :func:`load_settings` can tell an
    option from the environment; the help names the variable and the built-in default.
    """
    default = getattr(settings(), field)
    otherwise = "" if default is None else f", else {default}"
    return click.option(
        *decls,
        default=None,
        help=f"{help} (default: ${settings.variable(field)}{otherwise})",
        **kwargs,
    )


def load_settings(settings: type[S], **options: Any) -> S:
    """The service's settings from the environment, with the options given (not ``None``)
    on top; a bad variable exits 2 with its name."""
    try:
        loaded = settings.from_env()
        given = {name: value for name, value in options.items() if value is not None}
        return dataclasses.replace(loaded, **given)
    except SettingsError as exc:
        fail(str(exc))


def exit_status(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run ``command`` as from a shell (argv, or ``sys.argv``) and return its exit status.

    The ``main(argv) -> int`` of each command line, for ``python -m`` and for tests that
    call it in-process: click's standalone mode prints usage errors and always exits.
    """
    try:
        command.main(args=None if argv is None else list(argv), prog_name=prog_name)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        click.echo(exc.code, err=True)
        return 1
    return 0
