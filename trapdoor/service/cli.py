"""What the services' command lines share (click): settings under options, errors, loopback.

Each service keeps its own click group next to its code (``trapdoor/kgc/cli.py``, ...);
:mod:`trapdoor.cli` assembles them into the one ``trapdoor`` command. An operator error
(a missing passphrase, a bad variable, a public host for the built-in server) prints
``error: ...`` on stderr and exits 2, as a usage error does.

The operator commands (``kgc enrol``, ``ps create-job``, ``node join``, ...) are clients
of the service's own HTTP API, never of its database: :func:`operator_client` finds the
service where its settings say it serves and uses its admin token (``--url`` and
``--token`` override both), and :func:`refusals` turns a refusal into one line naming
what to do, exit 1. A token is never printed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from trapdoor.service.http import ServiceClient, ServiceError
from trapdoor.service.logs import LOG_FORMATS
from trapdoor.service.settings import ServiceSettings, SettingsError

__all__ = [
    "LOOPBACK",
    "client_options",
    "echo_table",
    "exit_status",
    "fail",
    "load_settings",
    "log_format_option",
    "operator_client",
    "read_json_file",
    "refusals",
    "require_loopback",
    "setting_option",
]

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


#: ``--log-format`` of every ``serve`` (:func:`trapdoor.service.logs.configure_logging`).
log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text lines, or one JSON object per line (time, level, logger, message)",
)


def client_options(settings: type[ServiceSettings], what: str) -> Callable[[F], F]:
    """``--url`` and ``--token`` of an operator command: where ``what`` serves, and its
    admin token (defaults: the service's own settings)."""
    defaults = settings()
    where = f"http://{getattr(defaults, 'host', '127.0.0.1')}:{getattr(defaults, 'port', '')}"
    token_variable = settings.variable("admin_token")

    def decorate(command: F) -> F:
        command = click.option(
            "--token",
            default=None,
            help=f"the {what}'s admin token (default: ${token_variable}; never echoed)",
        )(command)
        return click.option(
            "--url",
            default=None,
            help=f"the {what}'s base URL (default: http://HOST:PORT from "
            f"${settings.variable('host')} and ${settings.variable('port')}, "
            f"else {where})",
        )(command)

    return decorate


def operator_client(
    settings: type[ServiceSettings], url: str | None, token: str | None
) -> ServiceClient:
    """A client of the service at ``url`` (else where its settings serve) with ``token``
    (else its ``admin_token`` setting); exits 2 without a token."""
    loaded: Any = load_settings(settings)
    base = url or f"http://{loaded.host}:{loaded.port}"
    if not base.startswith(("http://", "https://")):
        fail(f"--url must be an http(s) URL, not {base!r}")
    secret = token or loaded.admin_token
    if not secret:
        fail(f"no admin token: set {settings.variable('admin_token')} or pass --token")
    return ServiceClient(base, secret, timeout=30.0)


#: What to do about a refusal, by HTTP status, when a command has nothing more specific.
_GENERIC = {
    0: "is the service running at that URL?",
    401: "the admin token was not accepted (check --token or the service's admin-token variable)",
    403: "operator endpoints are off where the service has no admin token set",
    404: "not found",
    409: "it conflicts with the service's state",
    413: "the request is too large for the service",
    422: "the service refused the request",
    502: "a service it depends on refused or failed",
    503: "the service is not ready (is it configured?)",
}


@contextmanager
def refusals(action: str, hints: Mapping[str, str] | None = None) -> Iterator[None]:
    """A :class:`ServiceError` inside becomes ``error: <action> refused (<status> <code>):
    <message> -- <hint>`` on stderr, exit 1; ``hints`` by error code come first."""
    try:
        yield
    except ServiceError as exc:
        hint = (hints or {}).get(exc.code) or _GENERIC.get(exc.status, "")
        where = "no answer" if exc.status == 0 else f"{exc.status} {exc.code}"
        fail(f"{action} failed ({where}): {exc.message}" + (f" -- {hint}" if hint else ""), code=1)


def read_json_file(path: str, what: str) -> Any:
    """The JSON in ``path``; exits 2 naming the file and the line of a syntax error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror or exc}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} {path} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")


def echo_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as a left-aligned text table under ``columns`` (``-`` for a missing value)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
