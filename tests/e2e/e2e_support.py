"""What the e2e tests share: reading a service's SQLite database as its operator can."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

from common.db import make_engine


def read_rows(database: Path, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` in the SQLite file ``database`` (opened and closed per call)."""
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def json_column(value: Any) -> Any:
    """A JSON column's value: SQLite hands back text, PostgreSQL the object."""
    return json.loads(value) if isinstance(value, str) else value
