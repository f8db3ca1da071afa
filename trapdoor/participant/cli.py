"""``trapdoor node serve``: a data owner's participant node, on loopback.

The node only calls out (to the KGC and the PS), so it runs behind its owner's firewall;
its API serves that owner's operator alone. Every ``TRAPDOOR_NODE_*`` setting
(:class:`~trapdoor.participant.settings.NodeSettings`) applies; ``--db``, ``--host`` and
``--port`` override theirs for one run, and the data options say which local data it
trains on.
"""

from __future__ import annotations

import click

from trapdoor.participant.node import PASSPHRASE_ENV
from trapdoor.participant.node_api import create_app
from trapdoor.participant.settings import NodeSettings
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.cli import fail, load_settings, require_loopback, setting_option
from trapdoor.service.web import restrict_new_files, serve

__all__ = ["node"]


@click.group(name="node")
def node() -> None:
    """The participant node: one per data owner, behind its firewall."""


@node.command("serve")
@setting_option(NodeSettings, "database_url", "--db", help="SQLAlchemy URL")
@setting_option(NodeSettings, "host", "--host", help="loopback address to bind")
@setting_option(
    NodeSettings, "port", "--port", type=click.IntRange(0, 65535), help="0 picks a free port"
)
@click.option(
    "--dataset", type=click.Choice(("digits", "mnist")), default="digits", show_default=True
)
@click.option("--partition-index", type=int, default=0, show_default=True)
@click.option("--num-partitions", type=int, default=1, show_default=True)
@click.option(
    "--partition-scheme", type=click.Choice(("iid", "dirichlet")), default="iid", show_default=True
)
@click.option("--partition-seed", type=int, default=0, show_default=True)
@click.option("--data-path", help=".npz with X_train, y_train, X_test, y_test")
@click.option("--encrypt-workers", type=int, default=1, show_default=True)
@click.option("--poll-seconds", type=float, default=0.5, show_default=True)
@click.option(
    "--min-quorum",
    type=click.IntRange(min=1),
    default=None,
    help=f"refuse jobs whose quorum is below this (default: {DEFAULT_MIN_QUORUM}, "
    "the protocol's default)",
)
def serve_command(
    db: str | None,
    host: str | None,
    port: int | None,
    dataset: str,
    partition_index: int,
    num_partitions: int,
    partition_scheme: str,
    partition_seed: int,
    data_path: str | None,
    encrypt_workers: int,
    poll_seconds: float,
    min_quorum: int | None,
) -> None:
    """Serve the participant node API on loopback."""
    settings = load_settings(NodeSettings, database_url=db, host=host, port=port)
    require_loopback(settings.host)
    if not settings.passphrase:
        fail(f"set {PASSPHRASE_ENV} (it seals this node's keys)")
    restrict_new_files()  # the database, its journal and logs: owner-only
    app = create_app(
        {
            **settings.app_config(),
            "DATASET": dataset,
            "PARTITION_INDEX": partition_index,
            "NUM_PARTITIONS": num_partitions,
            "PARTITION_SCHEME": partition_scheme,
            "PARTITION_SEED": partition_seed,
            "DATA_PATH": data_path,
            "ENCRYPT_WORKERS": encrypt_workers,
            "POLL_SECONDS": poll_seconds,
            "MIN_QUORUM": min_quorum or DEFAULT_MIN_QUORUM,
        }
    )
    serve(
        app,
        settings.host,
        settings.port,
        "participant node",
        app.extensions["participant_node"].close,
    )
