"""Flask application factory of the KGC.

``create_app(config)`` opens the sealed keys (or takes an already built ``SERVICE``),
registers the blueprint, the one JSON error handler of every service (which answers the
domain's refusals) and ``/healthz`` + ``/openapi.json``.
Configuration keys (see :data:`DEFAULTS`): ``DATABASE_URL``, ``ADMIN_TOKEN``,
``PASSPHRASE`` (else from the environment; dropped from the config once used), ``DEMO``
(accept the public demo parameters), ``MAX_CONTENT_LENGTH`` (64 MiB: the cap on any body;
JSON bodies are limited to 64 KiB and a release to its job's frame size), ``AUTO_MIGRATE``,
``RELEASE_WORKERS``, and for tests ``CLOCK``, ``RNG``, ``RANDOM_BYTES``, ``SERVICE``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy.orm import sessionmaker

from trapdoor.kgc.api import EXTENSION, bp
from trapdoor.kgc.domain import KgcService
from trapdoor.kgc.keystore import (
    KgcKeys,
    load_kgc,
    passphrase_from_env,
    passphrase_from_settings,
)
from trapdoor.kgc.settings import KgcSettings
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.web import add_common_routes, limit_request_bodies, register_error_handlers

__all__ = [
    "DEFAULTS",
    "SERVICE_NAME",
    "VERSION",
    "build_service",
    "config_from_env",
    "create_app",
    "service_from_keys",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "trapdoor-kgc"
VERSION = "0.1.0"
DEFAULTS: dict[str, Any] = {
    # the environment's defaults (one place for them: KgcSettings); no passphrase
    **KgcSettings().app_config(),
    "PASSPHRASE": None,
    "AUTO_MIGRATE": True,
    "CLOCK": None,
    "RNG": None,
    "RANDOM_BYTES": None,
    "SERVICE": None,
}


def build_service(config: Mapping[str, Any]) -> KgcService:
    """Open the sealed keys of ``DATABASE_URL`` and wrap them in a :class:`KgcService`."""
    url = str(config["DATABASE_URL"])
    if config["AUTO_MIGRATE"]:
        migrate("kgc", url)
    passphrase = config["PASSPHRASE"] or passphrase_from_env()
    keys = load_kgc(url, str(passphrase), demo=bool(config["DEMO"]))
    return service_from_keys(keys, url, config)


def service_from_keys(
    keys: KgcKeys, url: str, config: Mapping[str, Any] | None = None
) -> KgcService:
    """A :class:`KgcService` over ``url`` with already opened keys."""
    settings = {**DEFAULTS, **(config or {})}
    if keys.demo:
        log.warning("KGC runs on the public DEMO parameters: they protect nothing")
    return KgcService(
        keys.master_key,
        keys.signing_key,
        sessionmaker(make_engine(url), expire_on_commit=False),
        clock=settings["CLOCK"] or time.time,
        rng=settings["RNG"],
        random_bytes=settings["RANDOM_BYTES"] or os.urandom,
        demo=keys.demo,
        release_workers=int(settings["RELEASE_WORKERS"]),
    )


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the KGC app (see the module docstring for the configuration keys)."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    service: KgcService = app.config["SERVICE"] or build_service(app.config)
    app.config.pop("PASSPHRASE", None)
    app.extensions[EXTENSION] = service

    app.register_blueprint(bp)
    register_error_handlers(app)
    limit_request_bodies(app)  # 64 KiB per control message; releases: the job's frame

    add_common_routes(
        app,
        SERVICE_NAME,
        VERSION,
        health=lambda: {"database": service.ping(), "demo": service.demo},
        stats=service.stats,
    )
    return app


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Configuration from the ``TRAPDOOR_KGC_*`` environment variables (for gunicorn).

    :class:`~trapdoor.kgc.settings.KgcSettings` lists them; the passphrase is read as
    :func:`~trapdoor.kgc.keystore.passphrase_from_settings` reads it.
    """
    settings = KgcSettings.from_env(environ)
    return {**settings.app_config(), "PASSPHRASE": passphrase_from_settings(settings)}
