"""The ``trapdoor`` command: the demo, the participant node, and the other services.

``trapdoor kgc ...``, ``trapdoor ps ...`` and ``trapdoor bench-crypto`` hand their arguments
to those packages' own command lines; they are imported only when asked for, so the node
runs without them installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")

_DELEGATES = {
    "kgc": "trapdoor.kgc.cli",
    "ps": "trapdoor.ps.cli",
    "bench-crypto": "bench.crypto_bench",
}


def _delegate(name: str, rest: list[str]) -> int:
    module_name = _DELEGATES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"error: {module_name} is not available: {exc}", file=sys.stderr)
        return 2
    result = module.main(rest)
    return int(result or 0)


def _node_parser(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="node_command", required=True)
    serve = commands.add_parser("serve", help="serve the participant node API (loopback)")
    serve.add_argument(
        "--db",
        default=os.environ.get("TRAPDOOR_NODE_DATABASE_URL", "sqlite:///instance/participant.db"),
        help="SQLAlchemy URL (default: %(default)s)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    # KGC 8700, PS 8600, node 8800: one machine can run all three on their defaults
    serve.add_argument("--port", type=int, default=8800, help="0 picks a free port")
    serve.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    serve.add_argument("--partition-index", type=int, default=0)
    serve.add_argument("--num-partitions", type=int, default=1)
    serve.add_argument("--partition-scheme", choices=("iid", "dirichlet"), default="iid")
    serve.add_argument("--partition-seed", type=int, default=0)
    serve.add_argument("--data-path", help=".npz with X_train, y_train, X_test, y_test")
    serve.add_argument("--encrypt-workers", type=int, default=1)
    serve.add_argument("--poll-seconds", type=float, default=0.5)
    serve.add_argument(
        "--min-quorum",
        type=_positive_int,
        default=None,
        help="refuse jobs whose quorum is below this (default: 3, the protocol's default)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _serve_node(args: argparse.Namespace) -> int:
    from trapdoor.participant.node import PASSPHRASE_ENV
    from trapdoor.participant.node_api import create_app
    from trapdoor.protocol.messages import DEFAULT_MIN_QUORUM
    from trapdoor.service.web import restrict_new_files, serve

    if args.host not in LOOPBACK:
        print("error: the built-in server serves loopback only", file=sys.stderr)
        return 2
    if not os.environ.get(PASSPHRASE_ENV):
        print(f"error: set {PASSPHRASE_ENV} (it seals this node's keys)", file=sys.stderr)
        return 2
    restrict_new_files()  # the database, its journal and logs: owner-only
    app = create_app(
        {
            "DATABASE_URL": args.db,
            "ADMIN_TOKEN": os.environ.get("TRAPDOOR_ADMIN_TOKEN") or None,
            "DATASET": args.dataset,
            "PARTITION_INDEX": args.partition_index,
            "NUM_PARTITIONS": args.num_partitions,
            "PARTITION_SCHEME": args.partition_scheme,
            "PARTITION_SEED": args.partition_seed,
            "DATA_PATH": args.data_path,
            "ENCRYPT_WORKERS": args.encrypt_workers,
            "POLL_SECONDS": args.poll_seconds,
            "MIN_QUORUM": args.min_quorum or DEFAULT_MIN_QUORUM,
        }
    )
    serve(app, args.host, args.port, "participant node", app.extensions["participant_node"].close)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapdoor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a whole encrypted job locally", add_help=False)
    _node_parser(commands.add_parser("node", help="the participant node"))
    for name in _DELEGATES:
        commands.add_parser(name, help=f"delegates to {_DELEGATES[name]}", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATES:
        return _delegate(argv[0], argv[1:])
    if argv and argv[0] == "demo":
        from trapdoor.demo.job import main as demo_main

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "node" and args.node_command == "serve":
        return _serve_node(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
