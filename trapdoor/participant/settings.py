"""The participant node's settings: ``TRAPDOOR_NODE_*`` environment variables.

``trapdoor node serve`` starts from these (:mod:`trapdoor.service.settings`); its options
override them for one run. The data options (dataset, partition) are per run and stay
options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from trapdoor.service.settings import ServiceSettings, secret, tcp_port

__all__ = ["NodeSettings"]


@dataclass(frozen=True)
class NodeSettings(ServiceSettings):
    """Where the node keeps its keys and jobs, who operates it, and how it serves."""

    PREFIX: ClassVar[str] = "TRAPDOOR_NODE_"

    database_url: str = "sqlite:///instance/participant.db"
    #: The node operator's bearer token.
    admin_token: str | None = secret()
    #: Seals the node's identity keys and its released models at rest.
    passphrase: str | None = secret()
    host: str = "127.0.0.1"
    port: int = tcp_port(8800)

    def app_config(self) -> dict[str, Any]:
        """The Flask configuration these settings fill."""
        return {
            "DATABASE_URL": self.database_url,
            "ADMIN_TOKEN": self.admin_token,
            "PASSPHRASE": self.passphrase,
        }
