"""WSGI entry point for gunicorn: ``gunicorn 'trapdoor.ps.wsgi:app'``.

Configured from ``TRAPDOOR_*`` environment variables (:func:`trapdoor.ps.app.config_from_env`);
use PostgreSQL (``TRAPDOOR_PS_DATABASE_URL=postgresql+psycopg://...``) with several workers.
"""

from trapdoor.ps.app import config_from_env, create_app
from trapdoor.service.web import restrict_new_files

restrict_new_files()  # the database, its journal and any file it writes: owner-only

app = create_app(config_from_env())
