"""WSGI entry point for gunicorn: ``gunicorn 'trapdoor.ps.wsgi:app'``.

Configured from the ``TRAPDOOR_PS_*`` environment variables
(:class:`~trapdoor.ps.settings.PsSettings`, read by :func:`trapdoor.ps.app.config_from_env`);
use PostgreSQL (``TRAPDOOR_PS_DATABASE_URL=postgresql+psycopg://...``) with several workers.
The PS must be enrolled first (``trapdoor ps enrol``): gunicorn workers cannot enrol.
"""

from trapdoor.ps.app import config_from_env, create_app
from trapdoor.service.web import restrict_new_files

restrict_new_files()  # the database, its journal and any file it writes: owner-only

app = create_app(config_from_env())
