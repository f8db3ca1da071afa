"""Database plumbing shared by the services: engines, sessions, naming, Alembic.

SQLite is the embedded default; the same code runs on PostgreSQL
(``postgresql+psycopg://...``). Each service has its own metadata and its own Alembic
history inside its own package (``trapdoor/<package>/migrations/``, shipped in the wheel)
with its own version table, so the services can share one PostgreSQL database or use
separate ones, and an installed service creates its database from any folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "NAMING_CONVENTION",
    "make_engine",
    "make_metadata",
    "migrate",
    "migrations_dir",
    "prepare_sqlite_file",
    "run_alembic_env",
    "session_scope",
    "sqlite_path",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The Alembic history of each service, by the name its callers use.
_MIGRATION_PACKAGES = {"kgc": "kgc", "param_server": "ps", "participant": "participant"}


def migrations_dir(service: str) -> Path:
    """The folder of ``service``'s Alembic history, inside the installed package."""
    try:
        package = _MIGRATION_PACKAGES[service]
    except KeyError:
        raise ValueError(f"no migrations for service {service!r}") from None
    return Path(__file__).resolve().parent.parent / package / "migrations"


def make_metadata() -> MetaData:
    """A fresh MetaData with the project's constraint naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///...`` URL (None for in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def prepare_sqlite_file(url: str) -> None:
    """Create a SQLite database owner-only: its folder 0700 (if we make it), the file 0600.

    The databases hold ciphertexts, sealed keys and (on a node) sealed models: nobody but
    the service's own user has any business reading them. SQLite gives its ``-wal`` and
    ``-shm`` files the mode of the database file.
    """
    path = sqlite_path(url)
    if path is None:
        return
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    with contextlib.suppress(PermissionError):  # a file we do not own keeps its mode
        os.chmod(path, 0o600)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with sane defaults: SQLite gets WAL, foreign keys and a busy timeout.

    A SQLite file is created owner-only (:func:`prepare_sqlite_file`).
    """
    if url.startswith("sqlite"):
        prepare_sqlite_file(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def database_bytes(bind: Engine | Connection) -> int:
    """The database's size on disk: the SQLite file (and its journal), or PostgreSQL's
    ``pg_database_size``; 0 for an in-memory database. ``bind``: what a session's
    ``get_bind()`` gives."""
    engine = bind if isinstance(bind, Engine) else bind.engine
    path = sqlite_path(str(engine.url))
    if engine.dialect.name == "sqlite":
        if path is None:
            return 0
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0
            )
    return 0


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(service: str, url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service)))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["service"] = service
    return config


def migrate(service: str, url: str, revision: str = "head") -> None:
    """Bring the service's schema to ``revision`` with its Alembic history."""
    from alembic import command

    command.upgrade(_alembic_config(service, url), revision)


def run_alembic_env(target_metadata: MetaData, version_table: str) -> None:
    """The body of every service's ``migrations/env.py`` (one copy of the logic)."""
    from alembic import context

    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=target_metadata,
            version_table=version_table,
            literal_binds=True,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(str(url))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
