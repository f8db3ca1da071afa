"""WSGI entry point for gunicorn: ``gunicorn 'param_server.wsgi:app'``.

Configured from ``TRAPDOOR_*`` environment variables (:func:`param_server.app.config_from_env`);
use PostgreSQL (``TRAPDOOR_PS_DATABASE_URL=postgresql+psycopg://...``) with several workers.
"""

from common.service import restrict_new_files
from param_server.app import config_from_env, create_app

restrict_new_files()  # the database, its journal and any file it writes: owner-only

app = create_app(config_from_env())
