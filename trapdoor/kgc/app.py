"""Flask application factory of the KGC.

``create_app(config)`` opens the sealed keys (or takes an already built ``SERVICE``),
registers the blueprint (which also maps domain errors to JSON), the common error
handlers and ``/healthz`` + ``/openapi.json``.
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
from trapdoor.kgc.keystore import KgcKeys, ensure_sqlite_dir, load_kgc, passphrase_from_env
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
DEFAULT_DATABASE_URL = "sqlite:///var/kgc.db"
DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": DEFAULT_DATABASE_URL,
    "ADMIN_TOKEN": None,
    "PASSPHRASE": None,
    "DEMO": False,
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    "AUTO_MIGRATE": True,
    # Master decryption is the KGC's one heavy step and gmpy2 drops the GIL: use the cores.
    "RELEASE_WORKERS": os.cpu_count() or 1,
    "CLOCK": None,
    "RNG": None,
    "RANDOM_BYTES": None,
    "SERVICE": None,
}


def build_service(config: Mapping[str, Any]) -> KgcService:
    """Open the sealed keys of ``DATABASE_URL`` and wrap them in a :class:`KgcService`."""
    url = str(config["DATABASE_URL"])
    ensure_sqlite_dir(url)
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
    )
    return app


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Configuration from ``TRAPDOOR_*`` environment variables (for gunicorn).

    ``TRAPDOOR_KGC_DATABASE_URL``, ``TRAPDOOR_KGC_ADMIN_TOKEN`` (else
    ``TRAPDOOR_ADMIN_TOKEN``), ``TRAPDOOR_KGC_DEMO``, ``TRAPDOOR_KGC_MAX_CONTENT_LENGTH``,
    ``TRAPDOOR_KGC_RELEASE_WORKERS``; the passphrase as :func:`passphrase_from_env` reads it.
    """
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {
        "DATABASE_URL": env.get("TRAPDOOR_KGC_DATABASE_URL") or DEFAULT_DATABASE_URL,
        "ADMIN_TOKEN": env.get("TRAPDOOR_KGC_ADMIN_TOKEN")
        or env.get("TRAPDOOR_ADMIN_TOKEN")
        or None,
        "PASSPHRASE": passphrase_from_env(env),
        "DEMO": _flag(env.get("TRAPDOOR_KGC_DEMO")),
    }
    if env.get("TRAPDOOR_KGC_MAX_CONTENT_LENGTH"):
        config["MAX_CONTENT_LENGTH"] = int(env["TRAPDOOR_KGC_MAX_CONTENT_LENGTH"])
    if env.get("TRAPDOOR_KGC_RELEASE_WORKERS"):
        config["RELEASE_WORKERS"] = int(env["TRAPDOOR_KGC_RELEASE_WORKERS"])
    return config
