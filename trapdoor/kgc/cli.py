"""Command line of the KGC: ``init`` once, then ``serve`` (``python -m trapdoor.kgc ...``).

``init`` generates fresh BCP parameters (tens of seconds at 2048 bits, with a progress
bar) and an Ed25519 key, and stores both sealed under the passphrase from
``TRAPDOOR_KGC_PASSPHRASE`` (or the file in ``TRAPDOOR_KGC_PASSPHRASE_FILE``). ``serve``
opens them and serves on loopback with Werkzeug's threaded server; gunicorn with
:mod:`trapdoor.kgc.wsgi` is the deployment path. The operator token is ``TRAPDOOR_ADMIN_TOKEN``
(or ``TRAPDOOR_KGC_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from trapdoor.crypto.signing import public_key_hex
from trapdoor.kgc.app import DEFAULT_DATABASE_URL, create_app, service_from_keys
from trapdoor.kgc.keystore import (
    KeystoreError,
    KgcKeys,
    NotInitialisedError,
    ensure_sqlite_dir,
    init_kgc,
    load_kgc,
    passphrase_from_env,
)
from trapdoor.service.db import migrate
from trapdoor.service.web import serve

__all__ = ["main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trapdoor.kgc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    db_default = os.environ.get("TRAPDOOR_KGC_DATABASE_URL") or DEFAULT_DATABASE_URL

    init = commands.add_parser("init", help="generate and seal the master key (once)")
    init.add_argument("--db", default=db_default, help="SQLAlchemy URL (default: %(default)s)")
    init.add_argument("--bits", type=int, default=2048, help="size of N (default: %(default)s)")
    init.add_argument(
        "--demo", action="store_true", help="use the shipped PUBLIC demo parameters (insecure)"
    )

    serve = commands.add_parser("serve", help="serve the KGC API")
    serve.add_argument("--db", default=db_default, help="SQLAlchemy URL (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    serve.add_argument("--demo", action="store_true", help="accept the public demo parameters")
    serve.add_argument("--init", action="store_true", help="initialise an empty database first")
    serve.add_argument("--bits", type=int, default=2048, help="size of N for --init")
    return parser


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
    if demo:
        return init_kgc(db, passphrase, bits=bits, demo=True)
    update, bar = _progress()
    try:
        return init_kgc(db, passphrase, bits=bits, progress=update)
    finally:
        bar.close()


def _describe(keys: KgcKeys) -> str:
    kind = "PUBLIC DEMO parameters" if keys.demo else "fresh parameters"
    return (
        f"{keys.master_key.params.bits}-bit N, {kind}; "
        f"verify key {public_key_hex(keys.signing_key)}"
    )


def _cmd_init(args: argparse.Namespace, passphrase: str) -> int:
    keys = _init(args.db, passphrase, args.bits, args.demo)
    print(f"KGC initialised at {args.db}: {_describe(keys)}", flush=True)
    return 0


def _cmd_serve(args: argparse.Namespace, passphrase: str) -> int:
    if args.host not in LOOPBACK:
        print(
            "error: the built-in server serves loopback only; deploy with gunicorn "
            "(trapdoor.kgc.wsgi) behind TLS for anything else",
            file=sys.stderr,
        )
        return 2
    ensure_sqlite_dir(args.db)
    migrate("kgc", args.db)
    try:
        keys = load_kgc(args.db, passphrase, demo=args.demo)
    except NotInitialisedError:
        if not args.init:
            print("error: this KGC is not initialised: run `init` or pass --init", file=sys.stderr)
            return 2
        keys = _init(args.db, passphrase, args.bits, args.demo)
        print(f"KGC initialised at {args.db}: {_describe(keys)}", flush=True)
    admin_token = (
        os.environ.get("TRAPDOOR_KGC_ADMIN_TOKEN") or os.environ.get("TRAPDOOR_ADMIN_TOKEN") or None
    )
    if admin_token is None:
        print("warning: no TRAPDOOR_ADMIN_TOKEN: enrolment is disabled", file=sys.stderr)
    app = create_app(
        {
            "DATABASE_URL": args.db,
            "ADMIN_TOKEN": admin_token,
            "SERVICE": service_from_keys(keys, args.db),
        }
    )
    serve(app, args.host, args.port, "KGC")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        passphrase = passphrase_from_env()
        if args.command == "init":
            return _cmd_init(args, passphrase)
        return _cmd_serve(args, passphrase)
    except KeystoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
