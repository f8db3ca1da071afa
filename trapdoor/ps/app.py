"""Flask application factory of the parameter server.

``create_app(config)`` wires the database, the KGC gateway, the signing key and the
domain service, registers the blueprint, the JSON error handlers and ``/healthz`` +
``/openapi.json``. Everything can be injected (``CLOCK``, ``RNG``, ``GATEWAY``,
``SIGNING_KEY``, ``SERVICE``) so tests need no KGC process and no real time.

Configuration keys (see :data:`DEFAULTS`): ``DATABASE_URL``, ``ADMIN_TOKEN``,
``KGC_URL``, ``PASSPHRASE`` (unseals the signing key; dropped from the config once
used), ``MAX_CONTENT_LENGTH`` (64 MiB: the cap on any body; JSON views take 64 KiB, a
job definition up to 64 MiB, an upload up to its job's frame size), ``SUBJECT_ID`` (the
PS's enrolled subject id: its tokens' audience; from the identity unless injected),
``BACKGROUND`` (run :meth:`tick` every
``TICK_SECONDS`` in a thread), ``AUTO_MIGRATE``, ``CHUNK_ELEMENTS``,
``RELEASE_RETRY_SECONDS``. The PS encrypts nothing (``Enc(W_0)`` and the blind are
trivial encryptions), so it has no encryption settings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy.orm import sessionmaker

from trapdoor.ps.api import bp
from trapdoor.ps.domain import DEFAULT_CHUNK_ELEMENTS, ParameterServer
from trapdoor.ps.identity import load_identity
from trapdoor.ps.kgc_gateway import HttpKgcGateway, KgcGateway
from trapdoor.ps.settings import PsSettings
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.web import add_common_routes, limit_request_bodies, register_error_handlers

__all__ = ["DEFAULTS", "SERVICE_NAME", "Ticker", "config_from_env", "create_app"]

log = logging.getLogger(__name__)

SERVICE_NAME = "trapdoor-param-server"
VERSION = "0.1.0"
DEFAULTS: dict[str, Any] = {
    # the environment's defaults (one place for them: PsSettings) ...
    **PsSettings().app_config(),
    # ... but an app built in-process (tests, tools) runs no ticker unless asked to
    "BACKGROUND": False,
    "TICK_SECONDS": 1.0,
    "AUTO_MIGRATE": True,
    "CHUNK_ELEMENTS": DEFAULT_CHUNK_ELEMENTS,
    "RELEASE_RETRY_SECONDS": 5.0,
    "CLOCK": None,
    "RNG": None,
    "GATEWAY": None,
    "SIGNING_KEY": None,
    "SUBJECT_ID": None,
    "SERVICE": None,
}


class Ticker:
    """Background worker: calls ``service.tick()`` every interval, or at once when woken."""

    def __init__(self, service: ParameterServer, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ps-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._service.tick()
            except Exception as exc:  # keep ticking; never log payloads
                log.error("tick failed: %s", type(exc).__name__)
            self._wake.wait(self._interval)
            self._wake.clear()


def _build_service(config: Mapping[str, Any]) -> ParameterServer:
    url = str(config["DATABASE_URL"])
    if config["AUTO_MIGRATE"]:
        migrate("param_server", url)
    sessions = sessionmaker(make_engine(url), expire_on_commit=False)
    signing_key = config["SIGNING_KEY"]
    subject_id = config["SUBJECT_ID"]
    kgc_url = config["KGC_URL"]
    if signing_key is None:
        passphrase = config["PASSPHRASE"]
        if not passphrase:
            raise RuntimeError("PASSPHRASE (TRAPDOOR_PS_PASSPHRASE) is needed to unseal the key")
        identity = load_identity(sessions, str(passphrase))
        if identity is None:
            raise RuntimeError(
                "this parameter server is not enrolled: run "
                "`python -m trapdoor.ps serve --enrol-subject ID --enrol-code CODE` once"
            )
        signing_key, subject_id = identity.signing_key, identity.subject_id
        kgc_url = kgc_url or identity.kgc_url
    if not subject_id:
        raise RuntimeError(
            "SUBJECT_ID (the PS's enrolled subject id, its tokens' audience) is required"
        )
    clock = config["CLOCK"] or time.time
    gateway: KgcGateway | None = config["GATEWAY"]
    if gateway is None:
        if not kgc_url:
            raise RuntimeError("KGC_URL is needed to reach the KGC")
        gateway = HttpKgcGateway(str(kgc_url), str(subject_id), signing_key, clock=clock)
    return ParameterServer(
        sessions,
        gateway,
        signing_key,
        clock=clock,
        rng=config["RNG"],
        chunk_elements=int(config["CHUNK_ELEMENTS"]),
        release_retry_seconds=float(config["RELEASE_RETRY_SECONDS"]),
        subject_id=str(subject_id),
    )


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the parameter-server app (see the module docstring for the config keys)."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    service: ParameterServer = app.config["SERVICE"] or _build_service(app.config)
    app.config.pop("PASSPHRASE", None)
    app.extensions["param_server"] = service

    app.register_blueprint(bp)
    register_error_handlers(app)
    limit_request_bodies(app)

    add_common_routes(
        app,
        SERVICE_NAME,
        VERSION,
        health=lambda: {"database": service.ping()},
        stats=service.stats,
    )

    if app.config["BACKGROUND"]:
        ticker = Ticker(service, float(app.config["TICK_SECONDS"]))
        service.on_release_pending = ticker.wake
        app.extensions["param_server_ticker"] = ticker
        ticker.start()
    return app


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Configuration from the ``TRAPDOOR_PS_*`` environment variables (for gunicorn).

    :class:`~trapdoor.ps.settings.PsSettings` lists them; the ticker runs unless
    ``TRAPDOOR_PS_BACKGROUND`` turns it off.
    """
    return PsSettings.from_env(environ).app_config()
