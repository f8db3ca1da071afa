"""The KGC's settings: ``TRAPDOOR_KGC_*`` environment variables (:mod:`trapdoor.service.settings`).

The command line and the gunicorn entry point both start from these; command-line options
(``--db``, ``--host``, ``--port``) override them for one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trapdoor.service.settings import ServiceSettings, at_least, secret, tcp_port

__all__ = ["KgcSettings"]


@dataclass(frozen=True)
class KgcSettings(ServiceSettings):
    """Where the KGC keeps its keys, who operates it, and how it serves."""

    PREFIX: ClassVar[str] = "TRAPDOOR_KGC_"

    database_url: str = "sqlite:///var/kgc.db"
    #: The operator's bearer token; without it enrolment is disabled.
    admin_token: str | None = secret()
    #: Seals the master key and the signing key; or give ``passphrase_file`` (exactly one).
    passphrase: str | None = secret()
    #: A file holding the passphrase (its trailing newline dropped), e.g. a mounted secret.
    passphrase_file: Path | None = None
    #: Accept the public demo parameters (gunicorn; the command line asks for ``--demo``).
    demo: bool = False
    host: str = "127.0.0.1"
    port: int = tcp_port(8700)
    #: The cap on any request body, in bytes (a release is also capped by its job's frame).
    max_content_length: int = at_least(1, 64 * 1024 * 1024)
    #: Threads for master decryption, the KGC's one heavy step (gmpy2 drops the GIL).
    release_workers: int = at_least(1, lambda: os.cpu_count() or 1)

    def app_config(self) -> dict[str, Any]:
        """The Flask configuration these settings fill (the passphrase is read apart:
        :func:`trapdoor.kgc.keystore.passphrase_from_settings`)."""
        return {
            "DATABASE_URL": self.database_url,
            "ADMIN_TOKEN": self.admin_token,
            "DEMO": self.demo,
            "MAX_CONTENT_LENGTH": self.max_content_length,
            "RELEASE_WORKERS": self.release_workers,
        }
