"""``trapdoor kgc``: ``init`` once, then ``serve``; ``enrol`` (also ``python -m trapdoor.kgc``).

``init`` generates fresh BCP parameters (tens of seconds at 2048 bits, with a progress
bar) and an Ed25519 key, and stores both sealed under the passphrase from
``TRAPDOOR_KGC_PASSPHRASE`` (or the file in ``TRAPDOOR_KGC_PASSPHRASE_FILE``). ``serve``
opens them and serves on loopback with Werkzeug's threaded server; gunicorn with
:mod:`trapdoor.kgc.wsgi` is the deployment path. Every ``TRAPDOOR_KGC_*`` setting
(:class:`~trapdoor.kgc.settings.KgcSettings`) applies; ``--db``, ``--host`` and ``--port``
override theirs for one run. The operator token is ``TRAPDOOR_KGC_ADMIN_TOKEN``.

``enrol`` is the operator's client of the running KGC's ``POST /v1/enrolments``: it
prints the new subject id and its one-time code, to hand to the participant or the PS.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import click
from tqdm import tqdm

from trapdoor.crypto.signing import public_key_from_hex, public_key_hex
from trapdoor.kgc.app import create_app, service_from_keys
from trapdoor.kgc.keystore import (
    KeystoreError,
    KgcKeys,
    NotInitialisedError,
    init_kgc,
    load_kgc,
    passphrase_from_settings,
)
from trapdoor.kgc.settings import KgcSettings
from trapdoor.service.audit_log import verify_entries
from trapdoor.service.cli import (
    client_options,
    exit_status,
    fail,
    load_settings,
    log_format_option,
    operator_client,
    refusals,
    require_loopback,
    setting_option,
)
from trapdoor.service.db import migrate
from trapdoor.service.web import serve

__all__ = ["kgc", "main"]

_db_option = setting_option(KgcSettings, "database_url", "--db", help="SQLAlchemy URL")
_bits_option = click.option(
    "--bits", type=int, default=2048, show_default=True, help="size of N for a new key"
)


@click.group(name="kgc")
def kgc() -> None:
    """The key generation center: `init` once, then `serve`; `enrol` each subject."""


@contextmanager
def _keystore_errors() -> Iterator[None]:
    """A keystore refusal (no passphrase, wrong one, keys already there...) exits 2."""
    try:
        yield
    except KeystoreError as exc:
        fail(str(exc))


def _progress() -> tuple[Callable[[int], None], tqdm[None]]:
    """A tqdm bar fed by ``generate_params``' per-prime candidate counter."""
    bar = tqdm(desc="searching safe primes", unit=" candidates", file=sys.stderr)
    last = [0]

    def update(tries: int) -> None:
        step = tries - last[0] if tries >= last[0] else tries  # counter restarts per prime
        last[0] = tries
        bar.update(step)

    return update, bar


def _init(db: str, passphrase: str, bits: int, demo: bool) -> KgcKeys:
    """Make and seal the keys, and say so (the passphrase is never printed)."""
    if demo:
        keys = init_kgc(db, passphrase, bits=bits, demo=True)
    else:
        update, bar = _progress()
        try:
            keys = init_kgc(db, passphrase, bits=bits, progress=update)
        finally:
            bar.close()
    kind = "PUBLIC DEMO parameters" if keys.demo else "fresh parameters"
    click.echo(
        f"KGC initialised at {db}: {keys.master_key.params.bits}-bit N, {kind}; "
        f"verify key {public_key_hex(keys.signing_key)}"
    )
    return keys


@kgc.command("init")
@_db_option
@_bits_option
@click.option("--demo", is_flag=True, help="use the shipped PUBLIC demo parameters (insecure)")
def init_command(db: str | None, bits: int, demo: bool) -> None:
    """Generate and seal the master key (once)."""
    settings = load_settings(KgcSettings, database_url=db)
    with _keystore_errors():
        _init(settings.database_url, passphrase_from_settings(settings), bits, demo)


@kgc.command("serve")
@_db_option
@setting_option(KgcSettings, "host", "--host", help="loopback address to bind")
@setting_option(
    KgcSettings, "port", "--port", type=click.IntRange(0, 65535), help="0 picks a free port"
)
@click.option("--demo", is_flag=True, help="accept the public demo parameters")
@click.option("--init", "init_first", is_flag=True, help="initialise an empty database first")
@_bits_option
@log_format_option
def serve_command(
    db: str | None,
    host: str | None,
    port: int | None,
    demo: bool,
    init_first: bool,
    bits: int,
    log_format: str,
) -> None:
    """Serve the KGC API on loopback (gunicorn: trapdoor.kgc.wsgi)."""
    settings = load_settings(KgcSettings, database_url=db, host=host, port=port)
    with _keystore_errors():
        passphrase = passphrase_from_settings(settings)
        require_loopback(settings.host, "trapdoor.kgc.wsgi")
        url = settings.database_url
        migrate("kgc", url)
        try:
            keys = load_kgc(url, passphrase, demo=demo)
        except NotInitialisedError:
            if not init_first:
                fail("this KGC is not initialised: run `init` or pass --init")
            keys = _init(url, passphrase, bits, demo)
    if settings.admin_token is None:
        click.echo(
            f"warning: no {KgcSettings.variable('admin_token')}: enrolment is disabled", err=True
        )
    config = settings.app_config()
    app = create_app({**config, "SERVICE": service_from_keys(keys, url, config)})
    serve(app, settings.host, settings.port, "KGC", None, log_format)


#: What the operator can do about each refusal of an enrolment.
_ENROL_HINTS = {
    "forbidden": f"start the KGC with {KgcSettings.variable('admin_token')} set",
    "bad-field": "--role is participant or param_server; --name must be non-empty",
}


@kgc.command("enrol")
@click.option("--name", required=True, help="who the subject is (an organisation's name)")
@click.option(
    "--role",
    type=click.Choice(("participant", "param_server")),
    required=True,
    help="a data owner's node, or the parameter server",
)
@client_options(KgcSettings, "KGC")
def enrol_command(name: str, role: str, url: str | None, token: str | None) -> None:
    """Enrol a subject at the running KGC: print its id and one-time code."""
    client = operator_client(KgcSettings, url, token)
    with refusals("enrolment", _ENROL_HINTS):
        answer = client.post_json("/v1/enrolments", {"name": name, "role": role})
    click.echo(f"subject id:    {answer['subject_id']}")
    click.echo(f"one-time code: {answer['code']}")
    click.echo("hand both to the subject; the code works once (it may start with '-').")


@kgc.group("audit-log")
def audit_log() -> None:
    """The KGC's tamper-evident audit log: export it, verify an export."""


@audit_log.command("export")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="the JSON Lines file to write"
)
@client_options(KgcSettings, "KGC")
def audit_export_command(out: str, url: str | None, token: str | None) -> None:
    """Write every row of the running KGC's audit log, one JSON object per line."""
    client = operator_client(KgcSettings, url, token)
    with refusals("exporting the audit log"):
        answer = client.get_json("/v1/audit-log")
    entries = answer["entries"]
    with open(out, "w") as handle:
        for entry in entries:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    head = entries[-1] if entries else None
    click.echo(f"{len(entries)} rows -> {out}; verify key {answer['verify_key']}")
    if head is not None:
        click.echo(f"head: {head['seq']}:{head['sha256']} (keep it to check later exports)")


@audit_log.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--verify-key", required=True, help="the KGC's Ed25519 key (hex, GET /v1/info)")
@click.option("--head", help="SEQ:SHA256 of an earlier export's head, which must still be in it")
def audit_verify_command(path: str, verify_key: str, head: str | None) -> None:
    """Check an exported audit log: chain, digests, signatures (exit 1 on any problem,
    2 for a bad argument or file)."""
    try:
        key = public_key_from_hex(verify_key)
    except ValueError:
        fail("--verify-key must be an Ed25519 public key (64 hex characters)")
    expected = None
    if head is not None:
        seq, _, digest = head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            fail("--head is SEQ:SHA256, as export prints it")
        expected = (int(seq), digest)
    entries = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                fail(f"{path} line {number} is not JSON")
    result = verify_entries(entries, key, expected_head=expected)
    for problem in result.problems:
        click.echo(f"PROBLEM {problem}")
    if not result.ok:
        fail(f"{path}: {len(result.problems)} problems in {result.entries} rows", code=1)
    click.echo(
        f"{path}: {result.entries} rows, chain and signatures intact; "
        f"head {result.head_seq}:{result.head_sha256}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trapdoor.kgc ARGV``; returns the exit status."""
    return exit_status(kgc, argv, "python -m trapdoor.kgc")
