"""The parameter server's settings: ``TRAPDOOR_PS_*`` environment variables.

The command line and the gunicorn entry point both start from these
(:mod:`trapdoor.service.settings`); command-line options override them for one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from trapdoor.service.settings import ServiceSettings, at_least, secret, tcp_port

__all__ = ["PsSettings"]


@dataclass(frozen=True)
class PsSettings(ServiceSettings):
    """Where the PS keeps its state, which KGC it uses, who operates it, how it serves."""

    PREFIX: ClassVar[str] = "TRAPDOOR_PS_"

    database_url: str = "sqlite:///var/param_server.db"
    #: The operator's bearer token (creating jobs, closing rounds).
    admin_token: str | None = secret()
    #: Seals the PS's Ed25519 signing key at rest.
    passphrase: str | None = secret()
    #: The KGC's base URL; once enrolled, the one stored with the identity is the default.
    kgc_url: str | None = None
    host: str = "127.0.0.1"
    port: int = tcp_port(8600)
    #: Run the ticker (deadlines, releases) in each gunicorn worker.
    background: bool = True
    #: The cap on any request body, in bytes (an upload is also capped by its job's frame).
    max_content_length: int = at_least(1, 64 * 1024 * 1024)

    def app_config(self) -> dict[str, Any]:
        """The Flask configuration these settings fill."""
        return {
            "DATABASE_URL": self.database_url,
            "ADMIN_TOKEN": self.admin_token,
            "KGC_URL": self.kgc_url,
            "PASSPHRASE": self.passphrase,
            "BACKGROUND": self.background,
            "MAX_CONTENT_LENGTH": self.max_content_length,
        }
