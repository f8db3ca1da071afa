"""Command line of the parameter server: ``python -m trapdoor.ps serve ...``.

On first start it enrols with the KGC (``--enrol-subject`` and ``--enrol-code`` from the
KGC operator): it makes an Ed25519 key, has the KGC certify it and stores it sealed under
``TRAPDOOR_PS_PASSPHRASE``. Then it serves on loopback with Werkzeug's threaded server
(gunicorn with :mod:`trapdoor.ps.wsgi` is the deployment path). ``enrol`` does only the
first step (migrate, enrol, store the sealed key) and exits: gunicorn workers cannot enrol,
so a deployment runs it once before ``gunicorn trapdoor.ps.wsgi:app``
(docs/RELIABILITY.md, "Deployment").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.sealing import SealError
from trapdoor.ps.app import DEFAULTS, create_app, ensure_sqlite_dir
from trapdoor.ps.identity import enrol, load_identity
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.web import serve

__all__ = ["main"]

PASSPHRASE_ENV = "TRAPDOOR_PS_PASSPHRASE"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trapdoor.ps", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="enrol on first start, then serve the API")
    serve.add_argument(
        "--db",
        default=os.environ.get("TRAPDOOR_PS_DATABASE_URL", DEFAULTS["DATABASE_URL"]),
        help="SQLAlchemy URL (default: %(default)s)",
    )
    serve.add_argument("--kgc", default=os.environ.get("TRAPDOOR_KGC_URL"), help="KGC base URL")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8600, help="0 picks a free port")
    serve.add_argument("--enrol-subject", help="subject id given by the KGC operator")
    serve.add_argument("--enrol-code", help="one-time enrolment code")
    enrol_cmd = commands.add_parser("enrol", help="enrol with the KGC and exit (for gunicorn)")
    enrol_cmd.add_argument(
        "--db",
        default=os.environ.get("TRAPDOOR_PS_DATABASE_URL", DEFAULTS["DATABASE_URL"]),
        help="SQLAlchemy URL (default: %(default)s)",
    )
    enrol_cmd.add_argument("--kgc", default=os.environ.get("TRAPDOOR_KGC_URL"), help="KGC URL")
    enrol_cmd.add_argument("--enrol-subject", help="subject id given by the KGC operator")
    enrol_cmd.add_argument("--enrol-code", help="one-time enrolment code")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve" and args.host not in LOOPBACK:
        print(
            "error: the built-in server serves loopback only; deploy with gunicorn "
            "(trapdoor.ps.wsgi) behind TLS for anything else",
            file=sys.stderr,
        )
        return 2
    passphrase = os.environ.get(PASSPHRASE_ENV, "")
    if not passphrase:
        print(f"error: set {PASSPHRASE_ENV} (it seals this server's signing key)", file=sys.stderr)
        return 2
    ensure_sqlite_dir(args.db)
    migrate("param_server", args.db)
    sessions = sessionmaker(make_engine(args.db), expire_on_commit=False)
    try:
        identity = load_identity(sessions, passphrase)
    except SealError:
        print(f"error: {PASSPHRASE_ENV} does not open the stored signing key", file=sys.stderr)
        return 2
    if identity is None:
        if not (args.kgc and args.enrol_subject and args.enrol_code):
            print(
                "error: not enrolled yet: pass --kgc URL --enrol-subject ID --enrol-code CODE",
                file=sys.stderr,
            )
            return 2
        try:
            identity = enrol(
                sessions,
                args.kgc,
                subject_id=args.enrol_subject,
                code=args.enrol_code,
                passphrase=passphrase,
            )
        except KgcError as exc:
            print(f"error: enrolment failed: {exc}", file=sys.stderr)
            return 1
        print(f"enrolled with the KGC as {identity.subject_id}", flush=True)
    elif args.enrol_subject or args.enrol_code:
        print(f"already enrolled as {identity.subject_id}; ignoring --enrol-*", flush=True)
    if args.command == "enrol":
        return 0
    app = create_app(
        {
            "DATABASE_URL": args.db,
            "AUTO_MIGRATE": False,
            "KGC_URL": args.kgc or identity.kgc_url,
            "ADMIN_TOKEN": os.environ.get("TRAPDOOR_ADMIN_TOKEN") or None,
            "SIGNING_KEY": identity.signing_key,
            "SUBJECT_ID": identity.subject_id,
            "BACKGROUND": True,
        }
    )

    def _stop() -> None:
        ticker = app.extensions.get("param_server_ticker")
        if ticker is not None:
            ticker.stop()
        app.extensions["param_server"].close()

    serve(app, args.host, args.port, "parameter server", _stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
