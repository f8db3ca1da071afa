"""What the three services share: Flask plumbing, errors, database, migrations, HTTP client.

Owns no protocol logic. May import Flask, SQLAlchemy, Alembic, requests and tenacity;
never another ``trapdoor`` layer except :mod:`trapdoor.crypto` data formats.
"""
