"""The one logging set-up of every ``serve`` (``trapdoor.service.logs``): plain text or
JSON lines, and no terminal colour codes in a file, Werkzeug's request lines included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests.loopback import serving
from trapdoor.service.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def _served_log(tmp_path: Path, log_format: str) -> str:
    """A served app's log, written to a file, after a 200, a 404 and a 500."""
    app = Flask("logged")

    @app.get("/ok")
    def ok() -> str:
        logging.getLogger("trapdoor.ps.rounds").info("job j round 0 opened")
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    path = tmp_path / "service.log"
    with path.open("w") as log_file:
        configure_logging(log_format, stream=log_file)
        with serving(app) as url:
            for route in ("/ok", "/missing", "/boom"):
                requests.get(url + route, timeout=10)
        log_file.flush()
    return path.read_text()


def test_a_log_file_has_no_colour_codes(tmp_path: Path) -> None:
    text = _served_log(tmp_path, "text")
    assert "\x1b[" not in text
    assert '"GET /missing HTTP/1.1" 404' in text  # the request line Werkzeug colours yellow
    assert "INFO trapdoor.ps.rounds: job j round 0 opened" in text


def test_the_json_format_is_one_object_per_line(tmp_path: Path) -> None:
    lines = _served_log(tmp_path, "json").splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert {"logger": "trapdoor.ps.rounds", "level": "INFO"}.items() <= entries[0].items()
    assert any("/missing" in e["message"] and e["logger"] == "werkzeug" for e in entries)
    assert any("exception" in e for e in entries)  # the 500's traceback, inside its object
    assert "\x1b[" not in "".join(lines)


def test_an_unknown_format_is_refused_and_changes_nothing() -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("xml")
    assert logging.getLogger().handlers == before


def test_serving_twice_does_not_log_each_line_twice(tmp_path: Path) -> None:
    path = tmp_path / "twice.log"
    with path.open("w") as stream:
        configure_logging("text", stream=stream)
        configure_logging("text", stream=stream)
        logging.getLogger("trapdoor.test").warning("once")
    assert path.read_text().count("once") == 1
