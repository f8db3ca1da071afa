"""WSGI entry point for gunicorn: ``gunicorn 'trapdoor.kgc.wsgi:app'`` (or ``…:create()``).

Configured from the ``TRAPDOOR_KGC_*`` environment variables
(:class:`~trapdoor.kgc.settings.KgcSettings`, read by :func:`trapdoor.kgc.app.config_from_env`);
use PostgreSQL (``TRAPDOOR_KGC_DATABASE_URL=postgresql+psycopg://...``) with several
workers. ``app`` is built on first access, so importing this module opens nothing.
"""

from __future__ import annotations

from flask import Flask

from trapdoor.kgc.app import config_from_env, create_app
from trapdoor.service.web import restrict_new_files

__all__ = ["app", "create"]  # noqa: F822 (app comes from __getattr__)

_app: Flask | None = None


def create() -> Flask:
    """A new app from the environment (gunicorn's application-factory form).

    Files the service creates from here on (database, journal) are owner-only.
    """
    restrict_new_files()
    return create_app(config_from_env())


def __getattr__(name: str) -> Flask:
    """``trapdoor.kgc.wsgi.app``: built once, lazily (PEP 562)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create()
    return _app
